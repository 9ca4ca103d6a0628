//! Deterministic payloads and their checksums.
//!
//! `podapp send` and the suites must agree on what was sent without shipping the bytes around, so the data is a
//! seeded pseudo-random stream (splitmix64: tiny, fast, and not compressible or repetitive, which would hide
//! off-by-a-chunk relay bugs that a repeating pattern can mask).

use sha2::{Digest, Sha256};

/// An endless deterministic byte stream; the same seed always yields the same bytes.
#[derive(Debug, Clone)]
pub struct Payload {
    state: u64,
}

impl Payload {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// Incremental SHA-256 with a byte count, printed as lowercase hex.
#[derive(Default, Clone)]
pub struct Checksum {
    hasher: Sha256,
    bytes: u64,
}

impl Checksum {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn hex(self) -> String {
        hex(&self.hasher.finalize())
    }
}

/// SHA-256 of the first `n` bytes of the payload stream with `seed` (what `podapp send` sends).
pub fn payload_sha256(seed: u64, n: u64) -> String {
    let mut p = Payload::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        sum.update(&buf[..k]);
        left -= k as u64;
    }
    sum.hex()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The nearest-rank percentile (`p` in 0..=100) of unsorted samples; 0 for no samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_chunking_invariant() {
        let mut a = Payload::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        // The same stream filled in 8-byte-aligned pieces gives the same bytes (podapp fills 64 KiB chunks).
        let mut b = Payload::new(7);
        let mut pieces = vec![0u8; 1000];
        for c in pieces.chunks_mut(200) {
            b.fill(c);
        }
        assert_eq!(whole, pieces);
        let mut c = Payload::new(8);
        let mut other = vec![0u8; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn sha256_known_vector() {
        let mut s = Checksum::new();
        s.update(b"abc");
        assert_eq!(s.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(payload_sha256(1, 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
