//! cgroup v2 directories for a lab: create, empty (kill what is inside), remove bottom-up.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))
}

/// Kills every process in `root` and its descendants and waits (≤ 5 s) until they are gone.
///
/// `cgroup.kill` (Linux ≥ 5.14) is race-free against forks; on older kernels fall back to SIGKILLing every pid
/// listed, repeated until the cgroups are empty.
pub fn kill_all(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let kill_file = root.join("cgroup.kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_below(root);
        if pids.is_empty() {
            return Ok(());
        }
        if kill_file.exists() {
            std::fs::write(&kill_file, "1").with_context(|| format!("writing {}", kill_file.display()))?;
        } else {
            for pid in &pids {
                let _ = super::sys::signal(*pid, libc::SIGKILL);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("processes {pids:?} still in {} after SIGKILL", root.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every pid in `root` and below.
pub fn pids_below(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for dir in dirs_bottom_up(root) {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids
}

/// Removes `root` and every cgroup below it, deepest first (a cgroup directory is removed with rmdir even though
/// it lists interface files; it must have no children and no processes).
pub fn remove_tree(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for dir in dirs_bottom_up(root) {
        // A cgroup whose last process just died can be briefly busy: retry a little.
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if tries < 50 => {
                    let _ = e;
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    errors.push(format!("rmdir {}: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(errors.join("; "))
    }
}

/// `root` and all its sub-directories, children before parents.
fn dirs_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(root, &mut out);
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}
