//! Files named by config (a CA bundle for TLS origination, a gateway's certificate files), read bounded: the path
//! comes from config, and a device, a FIFO or a huge file there must not stall or bloat the update that reads it.
use std::io::Read as _;

/// The largest file keel reads for config (the system CA bundle is about 200 KiB).
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// A regular file of at most [`MAX_FILE_SIZE`] bytes.
pub fn read(path: &str) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if metadata.len() > MAX_FILE_SIZE {
        return Err(std::io::Error::other(format!("larger than {MAX_FILE_SIZE} bytes")));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}
