//! Removes what crashed lab processes left behind (a SIGKILLed test binary cannot run its Drop): network
//! namespaces, cgroups, bpffs pin directories and temp dirs whose name carries the pid of a process that no
//! longer exists. Labs of live processes (other test binaries running now) are never touched.
//!
//! Every name a lab makes starts with its prefix `k<pid>-<seq>-<tag>` (see `names.rs`), so one rule covers them
//! all: namespaces `<prefix>-node`, `<prefix>-node<k>`, `<prefix>-wire` and `<prefix>-<pod>` (their veths go with
//! them), the cgroup `keel-lab-<prefix>` (node subtrees and the wire capture's cgroup are inside it), bpffs dirs
//! `keel-lab-<prefix>` and `keel-lab-<prefix>-node<k>`, and the temp dir `keel-lab-<prefix>` (pcap files inside).

use super::names::owner_pid;
use super::prereqs::{Machine, BPFFS_ROOT};
use std::path::Path;

pub fn sweep_stale(machine: &Machine) {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());

    if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                report("netns", &name, super::sys::ip(&["netns", "del", &name]).map(drop));
            }
        }
    }
    for (root, what) in [(machine.cgroup2.as_path(), "cgroup"), (Path::new(BPFFS_ROOT), "bpffs dir")] {
        for dir in lab_dirs(root).filter(|p| dead(&p.file_name().unwrap_or_default().to_string_lossy())) {
            let res = if what == "cgroup" {
                super::cgroup::kill_all(&dir).and_then(|_| super::cgroup::remove_tree(&dir))
            } else {
                std::fs::remove_dir_all(&dir).map_err(Into::into)
            };
            report(what, &dir.display().to_string(), res);
        }
    }
    for dir in lab_dirs(&std::env::temp_dir()).filter(|p| dead(&p.file_name().unwrap_or_default().to_string_lossy())) {
        report("temp dir", &dir.display().to_string(), std::fs::remove_dir_all(&dir).map_err(Into::into));
    }
}

fn lab_dirs(root: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(root).into_iter().flatten().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("keel-lab-")).map(|e| e.path())
}

fn report(what: &str, name: &str, res: anyhow::Result<()>) {
    match res {
        Ok(()) => eprintln!("keel lab: removed stale {what} {name}"),
        Err(e) => eprintln!("keel lab: could not remove stale {what} {name}: {e:#}"),
    }
}
