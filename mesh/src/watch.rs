//! Watching the config directory: a cheap poll of file names, sizes and modification times (4 per second), so
//! a change reaches every connected proxy well within a second, on any filesystem, with no extra daemon.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What identifies the directory's content cheaply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut entries: Vec<(PathBuf, u64, Option<SystemTime>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    Fingerprint(entries)
}
