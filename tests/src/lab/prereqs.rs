//! What every lab needs from the machine, checked once per process.
//!
//! Missing prerequisites make tests FAIL with a message saying what to install or mount: a suite that silently
//! skips in CI proves nothing.

use super::sys;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where bpffs is expected (keel pins its maps and links below it).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Facts about the machine that labs use.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The cgroup v2 mount point (e.g. `/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
    pub cgroup2: PathBuf,
}

/// Panics with a clear message unless we are root and `ip`, `iptables`, `iptables-save`, cgroup v2 and bpffs are
/// available. Mounts bpffs at /sys/fs/bpf if it is not mounted yet (what any eBPF-using node agent expects; the
/// mount is harmless and idempotent). Also sweeps leftovers of lab processes that died without cleaning up.
pub fn require_root_and_prereqs() -> Machine {
    static MACHINE: OnceLock<Result<Machine, String>> = OnceLock::new();
    match MACHINE.get_or_init(check) {
        Ok(m) => m.clone(),
        Err(e) => panic!("keel lab prerequisites missing: {e}"),
    }
}

/// Fails unless `prog` is on PATH, saying how to install it: for tools only some labs need (tcpdump for wire
/// captures), so a lab without them still runs, while a test that needs one FAILS rather than skips.
pub fn require_program(prog: &str, install: &str) -> anyhow::Result<()> {
    if !sys::on_path(prog) {
        anyhow::bail!("keel lab prerequisite missing: `{prog}` not on PATH ({install})");
    }
    Ok(())
}

fn check() -> Result<Machine, String> {
    let mut missing = Vec::new();
    if !sys::is_root() {
        missing.push("must run as root (network namespaces, veths, cgroups, eBPF)".to_string());
    }
    for prog in ["ip", "iptables", "iptables-save"] {
        if !sys::on_path(prog) {
            missing.push(format!("`{prog}` not on PATH (apt-get install iproute2 iptables)"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cgroup2 = mount_point(&mounts, "cgroup2");
    if cgroup2.is_none() {
        missing.push("no cgroup2 filesystem in /proc/mounts (mount -t cgroup2 none /sys/fs/cgroup)".to_string());
    }
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    ensure_bpffs(&mounts)?;
    let machine = Machine { cgroup2: cgroup2.expect("checked above") };
    super::sweep::sweep_stale(&machine);
    Ok(machine)
}

fn ensure_bpffs(mounts: &str) -> Result<(), String> {
    if mounts_at(mounts, "bpf", BPFFS_ROOT) {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .output()
        .map_err(|e| format!("bpffs not mounted at {BPFFS_ROOT} and `mount` failed to run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpffs not mounted at {BPFFS_ROOT} and `mount -t bpf bpf {BPFFS_ROOT}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    eprintln!("keel lab: mounted bpffs at {BPFFS_ROOT}");
    Ok(())
}

/// The mount point of the first filesystem of type `fstype` in /proc/mounts text.
pub fn mount_point(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[2] == fstype).then(|| PathBuf::from(unescape(f[1])))
    })
}

fn mounts_at(mounts: &str, fstype: &str, at: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[2] == fstype && unescape(f[1]) == at
    })
}

/// /proc/mounts escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                          cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                          bpf /sys/fs/bpf bpf rw 0 0\n\
                          none /mnt/a\\040b tmpfs rw 0 0\n";

    #[test]
    fn finds_cgroup2_generically() {
        assert_eq!(mount_point(MOUNTS, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(mount_point(MOUNTS, "tmpfs"), Some(PathBuf::from("/mnt/a b")));
        assert_eq!(mount_point("", "cgroup2"), None);
        assert!(mounts_at(MOUNTS, "bpf", "/sys/fs/bpf"));
        assert!(!mounts_at(MOUNTS, "bpf", "/sys/fs/bpf/x"));
    }
}
