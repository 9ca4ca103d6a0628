//! A pod's network namespace from its cgroup: every process of a pod (the sandbox's pause process first) shares
//! the pod's network namespace, reachable as `/proc/<pid>/ns/net`. The processes sit in the container cgroups
//! below the pod's (`cri-containerd-<id>.scope`, `crio-<id>.scope`, or `<id>` under cgroupfs).
use std::path::{Path, PathBuf};

use super::DiscoveryError;

/// How deep below the pod cgroup processes are looked for (containers are one level down; a container that
/// made sub-cgroups adds a few).
const MAX_DEPTH: usize = 4;
/// Cgroup directories read at most (a pod has one per container, plus the sandbox).
const MAX_DIRS: usize = 256;

/// A process of the pod and its network namespace file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcNetns {
    pub pid: u32,
    /// `<proc_root>/<pid>/ns/net`.
    pub path: PathBuf,
}

/// The network namespace of the pod whose cgroup is `cgroup`, through the first process found in it or below it
/// (directories in name order, so the answer is stable) whose `<proc_root>/<pid>/ns/net` exists. The path is only
/// as lasting as that process: open it right away.
pub fn pod_netns(cgroup: &Path, proc_root: &Path) -> Result<ProcNetns, DiscoveryError> {
    let mut stack = vec![(cgroup.to_path_buf(), 0usize)];
    let mut read = 0;
    while let Some((dir, depth)) = stack.pop() {
        if read >= MAX_DIRS {
            break;
        }
        read += 1;
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let path = proc_root.join(pid.to_string()).join("ns").join("net");
                if path.exists() {
                    return Ok(ProcNetns { pid, path });
                }
            }
        }
        if depth < MAX_DEPTH {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut children: Vec<PathBuf> = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
            // Reverse name order on the stack pops them in name order.
            children.sort_by(|a, b| b.cmp(a));
            stack.extend(children.into_iter().map(|c| (c, depth + 1)));
        }
    }
    Err(DiscoveryError::NoProcess { cgroup: cgroup.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs(PathBuf);

    impl Dirs {
        fn new(test: &str) -> Dirs {
            let dir = std::env::temp_dir().join(format!("keel-pod-netns-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dirs(dir)
        }
        fn cgroup(&self, rel: &str, pids: &[u32]) -> PathBuf {
            let path = self.0.join("cg").join(rel);
            std::fs::create_dir_all(&path).unwrap();
            let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(path.join("cgroup.procs"), procs).unwrap();
            path
        }
        /// A fake `/proc/<pid>/ns/net` (a live process's is a namespace file; any file stands in for it).
        fn process(&self, pid: u32) {
            let ns = self.0.join("proc").join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&ns).unwrap();
            std::fs::write(ns.join("net"), "").unwrap();
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_netns_comes_from_a_process_of_a_container_below_the_pod() {
        let d = Dirs::new("container");
        let pod = d.cgroup("kubepods.slice/kubepods-pod1.slice", &[]);
        d.cgroup("kubepods.slice/kubepods-pod1.slice/cri-containerd-aaa.scope", &[4001, 4002]);
        d.cgroup("kubepods.slice/kubepods-pod1.slice/cri-containerd-bbb.scope", &[5001]);
        d.process(4002);
        d.process(5001);
        // 4001 has exited (no /proc entry): skipped; the first live one in name order wins.
        let found = pod_netns(&pod, &d.0.join("proc")).unwrap();
        assert_eq!(found, ProcNetns { pid: 4002, path: d.0.join("proc/4002/ns/net") });
    }

    #[test]
    fn a_process_in_the_pod_cgroup_itself_counts() {
        let d = Dirs::new("self");
        let pod = d.cgroup("kubepods/besteffort/pod1", &[77]);
        d.process(77);
        assert_eq!(pod_netns(&pod, &d.0.join("proc")).unwrap().pid, 77);
    }

    #[test]
    fn a_pod_with_no_live_process_is_an_error_naming_its_cgroup() {
        let d = Dirs::new("empty");
        let pod = d.cgroup("kubepods/pod1", &[]);
        d.cgroup("kubepods/pod1/abc", &[999]);
        let err = pod_netns(&pod, &d.0.join("proc")).unwrap_err();
        assert_eq!(err, DiscoveryError::NoProcess { cgroup: pod.clone() });
        assert!(err.to_string().contains(&pod.display().to_string()));
    }
}
