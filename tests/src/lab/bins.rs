//! Where the `keel` and `podapp` binaries are.
//!
//! Order: the env var (`KEEL_BIN`, `KEEL_PODAPP`, `KEEL_CONTROL_BIN`, `KEEL_CNI_BIN`: what `cargo xtask test` and CI set), then next to the running
//! executable (an integration test runs from `<target>/debug/deps/`, the demo from `<target>/debug/`, so a custom
//! CARGO_TARGET_DIR just works), then `<workspace>/target/debug/`.

use std::path::{Path, PathBuf};

/// The binaries a lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub keel: PathBuf,
    pub podapp: PathBuf,
    pub keel_control: PathBuf,
    /// The CNI plugin, run by the CNI suite as a container runtime runs it.
    pub keel_cni: PathBuf,
}

impl Binaries {
    /// Resolves both binaries. Does not require them to exist yet: a lab without keel (the self test) only needs
    /// podapp, and `start_keel` reports a missing keel with the path it tried.
    pub fn locate() -> Self {
        Self {
            keel: locate("KEEL_BIN", "keel"),
            podapp: locate("KEEL_PODAPP", "podapp"),
            keel_control: locate("KEEL_CONTROL_BIN", "keel-control"),
            keel_cni: locate("KEEL_CNI_BIN", "keel-cni"),
        }
    }
}

fn locate(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(name));
            if dir.file_name().is_some_and(|n| n == "deps") {
                if let Some(up) = dir.parent() {
                    candidates.push(up.join(name));
                }
            }
        }
    }
    let fallback = workspace_root().join("target").join("debug").join(name);
    candidates.push(fallback.clone());
    candidates.into_iter().find(|p| p.is_file()).unwrap_or(fallback)
}

/// The workspace root: this crate lives in `<root>/tests`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}
