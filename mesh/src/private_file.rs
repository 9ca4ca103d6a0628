//! Writing private keys to disk so that no one but the owner can ever read them: the file is created 0600 under
//! a temporary name in the same directory (never a moment with wider permissions, whatever the umask), written,
//! synced, then renamed into place, so a reader sees the old file or the whole new one, never a partial key.
use std::{
    fs::{DirBuilder, OpenOptions, Permissions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;

const OWNER_ONLY_FILE: u32 = 0o600;
const OWNER_ONLY_DIR: u32 = 0o700;

/// Creates `dir` and any missing parent 0700 (a directory that already exists keeps its mode: the operator chose
/// it, e.g. a mounted Secret).
pub fn create_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new().recursive(true).mode(OWNER_ONLY_DIR).create(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes `contents` to `path`, readable and writable by the owner only.
pub fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    // Unique per process and call; `create_new` refuses to reuse (or follow a planted link to) an existing file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(OWNER_ONLY_FILE)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        // The umask can only have taken bits away; make the mode exactly 0600 either way.
        file.set_permissions(Permissions::from_mode(OWNER_ONLY_FILE))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path).with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
        // The rename itself survives a crash only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()?;
        anyhow::Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_owner_only_and_replace_the_old_file_whole() {
        let dir = std::env::temp_dir().join(format!("keel-private-file-{}", std::process::id())).join("a/b");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700 & !current_umask());
        let key = dir.join("key.pem");
        write(&key, b"first").unwrap();
        assert_eq!(mode(&key), 0o600);
        write(&key, b"second").unwrap();
        assert_eq!((std::fs::read(&key).unwrap(), mode(&key)), (b"second".to_vec(), 0o600));
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(entries, ["key.pem"], "no temporary file left behind");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
    }

    /// The umask of this process, read without changing it (from /proc; Linux only, as keel).
    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).unwrap()
    }
}
