//! Finding a Kubernetes pod on its node from its UID alone: its cgroup v2 directory (where the kubelet put it, under
//! either cgroup driver) and its network namespace (from any process in that cgroup tree).
//!
//! Pure functions over a root path (the cgroup root, the `/proc` root), so they are tested on directories that mimic
//! both kubelet layouts, and on real cgroups in the lab. keel resolves an `enroll` or CNI request that names a pod
//! by `uid` with them; the Kubernetes node agent uses them to reconcile.
mod cgroup;
mod netns;

pub use cgroup::{pod_cgroup, CgroupDriver, PodCgroup, QosClass};
pub use netns::{pod_netns, ProcNetns};

use std::path::PathBuf;

/// The longest pod UID accepted (an API pod's is a 36-character UUID, a static pod's a 32-character hash).
pub const MAX_UID_LEN: usize = 64;

/// Why a pod could not be found on this node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("pod uid {uid:?}: {reason}")]
    InvalidUid { uid: String, reason: &'static str },
    #[error("pod uid {uid}: no cgroup under {} (looked for kubelet's systemd and cgroupfs layouts: {searched})", root.display())]
    CgroupNotFound { uid: String, root: PathBuf, searched: String },
    #[error("pod uid {uid}: several cgroups match: {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous { uid: String, paths: Vec<PathBuf> },
    #[error("pod cgroup {}: no process in it or below it has a network namespace (is the pod's sandbox running?)", cgroup.display())]
    NoProcess { cgroup: PathBuf },
}

/// A pod UID as the kubelet writes it into cgroup names: ASCII hex digits and `-` only, which also keeps it from
/// naming any other path (`/`, `..`).
pub fn check_uid(uid: &str) -> Result<(), DiscoveryError> {
    let invalid = |reason| Err(DiscoveryError::InvalidUid { uid: uid.to_owned(), reason });
    if uid.is_empty() {
        return invalid("empty");
    }
    if uid.len() > MAX_UID_LEN {
        return invalid("longer than 64 characters");
    }
    if !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return invalid("not a Kubernetes UID (hex digits and '-')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_hex_and_dashes_only() {
        assert!(check_uid("0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11").is_ok());
        assert!(check_uid("5d41402abc4b2a76b9719d911017c592").is_ok(), "a static pod's UID is a hash");
        for bad in ["", "../etc", "a/b", "pod uid", "0b6c1a52_3c1d", &"a".repeat(65)] {
            assert!(matches!(check_uid(bad), Err(DiscoveryError::InvalidUid { .. })), "{bad:?}");
        }
    }
}
