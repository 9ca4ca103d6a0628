//! A pod's cgroup v2 directory from its UID, as the kubelet lays pods out:
//!
//! | driver     | QoS class  | directory (below the kubepods root)                                 |
//! |------------|------------|---------------------------------------------------------------------|
//! | `systemd`  | Guaranteed | `kubepods.slice/kubepods-pod<UID, - as _>.slice`                    |
//! | `systemd`  | Burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID_>.slice` |
//! | `systemd`  | BestEffort | the same with `besteffort`                                          |
//! | `cgroupfs` | Guaranteed | `kubepods/pod<UID>`                                                 |
//! | `cgroupfs` | Burstable  | `kubepods/burstable/pod<UID>` (`besteffort` likewise)               |
//!
//! The kubepods root is usually right below the cgroup mount, but a kubelet started with `--cgroup-root` (kind
//! uses `/kubelet`) nests it: `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...` (systemd
//! names every slice after its full path) or `kubelet/kubepods/...`. So the kubepods roots are searched for a few
//! levels down, with a bound on how many directories that may read.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use super::{check_uid, DiscoveryError};

/// How deep below the search root a kubepods root may sit (`kubelet.slice/kubelet-kubepods.slice` is 2).
const MAX_KUBEPODS_DEPTH: usize = 3;
/// Directories the search for kubepods roots reads at most (a node's top cgroup levels hold a few hundred).
const MAX_DIRS_SEARCHED: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Where the kubelet put a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: PathBuf,
    pub driver: CgroupDriver,
    pub qos: QosClass,
}

/// The cgroup directory of the pod with `uid` at or below `root` (keel's `--cgroup`, by default the cgroup v2
/// mount). Exactly one directory must match; a cgroup directory is one holding `cgroup.procs`.
pub fn pod_cgroup(root: &Path, uid: &str) -> Result<PodCgroup, DiscoveryError> {
    check_uid(uid)?;
    let kubepods = kubepods_roots(root);
    let mut found: Vec<PodCgroup> = kubepods.iter().flat_map(|k| candidates(k, uid)).filter(|c| c.path.join("cgroup.procs").is_file()).collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(DiscoveryError::CgroupNotFound {
            uid: uid.to_owned(),
            root: root.to_owned(),
            searched: if kubepods.is_empty() {
                "no kubepods.slice or kubepods directory found".to_owned()
            } else {
                kubepods.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", ")
            },
        }),
        _ => Err(DiscoveryError::Ambiguous { uid: uid.to_owned(), paths: found.into_iter().map(|c| c.path).collect() }),
    }
}

/// The kubepods roots at most [`MAX_KUBEPODS_DEPTH`] levels below `root`, breadth first, not looking inside one.
fn kubepods_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut queue = VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut read = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        if depth >= MAX_KUBEPODS_DEPTH || read >= MAX_DIRS_SEARCHED {
            continue;
        }
        read += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut children: Vec<PathBuf> = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
        children.sort();
        for child in children {
            if driver_of(&child).is_some() {
                roots.push(child);
            } else {
                queue.push_back((child, depth + 1));
            }
        }
    }
    roots
}

/// The driver a kubepods root belongs to, from its name; `None` for any other directory.
fn driver_of(dir: &Path) -> Option<CgroupDriver> {
    let name = dir.file_name()?.to_str()?;
    if name == "kubepods" {
        Some(CgroupDriver::Cgroupfs)
    } else if name == "kubepods.slice" || name.ends_with("-kubepods.slice") {
        Some(CgroupDriver::Systemd)
    } else {
        None
    }
}

/// Where a pod of each QoS class would be below the kubepods root `kubepods`.
fn candidates(kubepods: &Path, uid: &str) -> Vec<PodCgroup> {
    let Some(driver) = driver_of(kubepods) else { return Vec::new() };
    let at = |path: PathBuf, qos| PodCgroup { path, driver, qos };
    match driver {
        CgroupDriver::Cgroupfs => vec![
            at(kubepods.join(format!("pod{uid}")), QosClass::Guaranteed),
            at(kubepods.join("burstable").join(format!("pod{uid}")), QosClass::Burstable),
            at(kubepods.join("besteffort").join(format!("pod{uid}")), QosClass::BestEffort),
        ],
        CgroupDriver::Systemd => {
            // systemd names a slice after its whole path: a child of `a-b.slice` is `a-b-<child>.slice`, and a
            // `-` inside a name would read as a level, so the kubelet writes the UID's dashes as `_`.
            let stem = kubepods.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".slice")).unwrap_or("kubepods");
            let uid = uid.replace('-', "_");
            let qos_slice = |qos: &str| kubepods.join(format!("{stem}-{qos}.slice")).join(format!("{stem}-{qos}-pod{uid}.slice"));
            vec![
                at(kubepods.join(format!("{stem}-pod{uid}.slice")), QosClass::Guaranteed),
                at(qos_slice("burstable"), QosClass::Burstable),
                at(qos_slice("besteffort"), QosClass::BestEffort),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11";

    /// A temp directory tree of fake cgroups (each directory gets a `cgroup.procs`), removed on drop.
    struct FakeCgroups(PathBuf);

    impl FakeCgroups {
        fn new(test: &str) -> FakeCgroups {
            let dir = std::env::temp_dir().join(format!("keel-kubelet-pods-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeCgroups(dir)
        }
        /// Creates `rel` and every cgroup on the way, as the kernel does.
        fn cgroup(&self, rel: &str) -> PathBuf {
            let mut path = self.0.clone();
            for part in Path::new(rel).components() {
                path.push(part);
                std::fs::create_dir_all(&path).unwrap();
                std::fs::write(path.join("cgroup.procs"), "").unwrap();
            }
            path
        }
    }

    impl Drop for FakeCgroups {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn systemd_driver_every_qos_class() {
        let uid_ = UID.replace('-', "_");
        for (rel, qos) in [
            (format!("kubepods.slice/kubepods-pod{uid_}.slice"), QosClass::Guaranteed),
            (format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"), QosClass::Burstable),
            (format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"), QosClass::BestEffort),
        ] {
            let fake = FakeCgroups::new(&format!("systemd-{qos:?}"));
            fake.cgroup("system.slice/containerd.service");
            // Another pod of the same class, and a container scope inside ours: neither must confuse the lookup.
            fake.cgroup("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222_3333_4444_555555555555.slice");
            let expected = fake.cgroup(&rel);
            fake.cgroup(&format!("{rel}/cri-containerd-4f1e.scope"));
            let found = pod_cgroup(&fake.0, UID).unwrap();
            assert_eq!(found, PodCgroup { path: expected, driver: CgroupDriver::Systemd, qos }, "{rel}");
        }
    }

    #[test]
    fn cgroupfs_driver_every_qos_class() {
        for (rel, qos) in [
            (format!("kubepods/pod{UID}"), QosClass::Guaranteed),
            (format!("kubepods/burstable/pod{UID}"), QosClass::Burstable),
            (format!("kubepods/besteffort/pod{UID}"), QosClass::BestEffort),
        ] {
            let fake = FakeCgroups::new(&format!("cgroupfs-{qos:?}"));
            fake.cgroup("kubepods/burstable/pod11111111-2222-3333-4444-555555555555");
            let expected = fake.cgroup(&rel);
            fake.cgroup(&format!("{rel}/9a8b7c6d5e4f"));
            assert_eq!(pod_cgroup(&fake.0, UID).unwrap(), PodCgroup { path: expected, driver: CgroupDriver::Cgroupfs, qos }, "{rel}");
        }
    }

    #[test]
    fn a_kubelet_cgroup_root_nests_the_kubepods_root() {
        // kind's kubelet runs with --cgroup-root=/kubelet: systemd names every slice after its full path.
        let fake = FakeCgroups::new("nested-systemd");
        let uid_ = UID.replace('-', "_");
        let expected =
            fake.cgroup(&format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice"));
        assert_eq!(pod_cgroup(&fake.0, UID).unwrap().path, expected);

        let fake = FakeCgroups::new("nested-cgroupfs");
        let expected = fake.cgroup(&format!("kubelet/kubepods/pod{UID}"));
        assert_eq!(pod_cgroup(&fake.0, UID).unwrap().qos, QosClass::Guaranteed);
        assert_eq!(pod_cgroup(&fake.0, UID).unwrap().path, expected);
    }

    #[test]
    fn an_unknown_uid_is_an_error_naming_it_and_where_keel_looked() {
        let fake = FakeCgroups::new("unknown");
        fake.cgroup("kubepods.slice/kubepods-besteffort.slice");
        let err = pod_cgroup(&fake.0, UID).unwrap_err();
        assert!(matches!(&err, DiscoveryError::CgroupNotFound { uid, .. } if uid == UID), "{err}");
        let text = err.to_string();
        assert!(text.contains(UID) && text.contains("kubepods.slice"), "{text}");

        let empty = FakeCgroups::new("no-kubepods");
        let text = pod_cgroup(&empty.0, UID).unwrap_err().to_string();
        assert!(text.contains("no kubepods.slice or kubepods directory"), "{text}");
    }

    #[test]
    fn a_directory_that_is_not_a_cgroup_does_not_count() {
        let fake = FakeCgroups::new("not-cgroup");
        fake.cgroup("kubepods.slice");
        std::fs::create_dir_all(fake.0.join(format!("kubepods.slice/kubepods-pod{}.slice", UID.replace('-', "_")))).unwrap();
        assert!(matches!(pod_cgroup(&fake.0, UID), Err(DiscoveryError::CgroupNotFound { .. })));
    }

    #[test]
    fn two_matches_are_refused_rather_than_guessed() {
        let fake = FakeCgroups::new("ambiguous");
        fake.cgroup(&format!("kubepods/pod{UID}"));
        fake.cgroup(&format!("kubepods.slice/kubepods-pod{}.slice", UID.replace('-', "_")));
        assert!(matches!(pod_cgroup(&fake.0, UID), Err(DiscoveryError::Ambiguous { paths, .. }) if paths.len() == 2));
    }

    #[test]
    fn a_uid_that_could_name_another_path_is_refused_before_any_lookup() {
        let fake = FakeCgroups::new("bad-uid");
        assert!(matches!(pod_cgroup(&fake.0, "../../x"), Err(DiscoveryError::InvalidUid { .. })));
    }
}
