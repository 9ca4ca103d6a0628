//! Lab naming: unique, short, and recognisable as stale after a crash.
//!
//! Linux limits network-namespace names used by `ip netns` to what fits a path (we keep ≤ 32 chars to be safe)
//! and interface names to 15. A prefix is `k<pid>-<seq>-<tag>`: the pid makes it unique across concurrently
//! running test binaries, the sequence across tests in one binary (they run on threads of one process), and the
//! pid lets a later run sweep leftovers of a process that no longer exists.

use std::sync::atomic::{AtomicU32, Ordering};

/// Longest netns name we create.
pub const MAX_NETNS_NAME: usize = 32;
/// Longest pod name accepted (the pod netns is `<prefix>-<name>` and the prefix is at most 18 chars).
pub const MAX_POD_NAME: usize = MAX_NETNS_NAME - MAX_PREFIX - 1;
const MAX_PREFIX: usize = 18; // "k" + 7-digit pid + "-" + 2-digit seq + "-" + 6-char tag ("k4194304-99-abcdef")
const TAG_LEN: usize = 6;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// A fresh prefix for a lab named after `test_name`.
pub fn new_prefix(test_name: &str) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 100;
    prefix_for(std::process::id(), seq, test_name)
}

pub fn prefix_for(pid: u32, seq: u32, test_name: &str) -> String {
    let tag: String = test_name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).take(TAG_LEN).collect();
    let tag = if tag.is_empty() { "lab".to_string() } else { tag };
    format!("k{pid}-{seq}-{tag}")
}

/// The pid a lab name (netns name, `keel-lab-<prefix>` dir) was created by, if it is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("keel-lab-").unwrap_or(name).strip_prefix('k')?;
    let (pid, rest) = rest.split_once('-')?;
    let (seq, _) = rest.split_once('-')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Validates a pod name: it becomes part of a netns name and a cgroup directory.
pub fn check_pod_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_POD_NAME {
        return Err(format!("pod name {name:?} must be 1..={MAX_POD_NAME} chars (netns names stay ≤ {MAX_NETNS_NAME})"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') || is_reserved(name) {
        return Err(format!("pod name {name:?} must be [a-z0-9-] and not \"node\", \"node<N>\" or \"{WIRE}\" (the lab's own namespaces)"));
    }
    Ok(())
}

/// Suffix of the underlay ("wire") namespace of a multi-node lab: `<prefix>-wire`.
pub const WIRE: &str = "wire";

/// The netns of node `index`: `<prefix>-node` in a single-node lab (as it always was), `<prefix>-node<k>` when there
/// are several. Pods are `<prefix>-<pod>`, so these suffixes are reserved pod names.
pub fn node_netns(prefix: &str, index: usize, nodes: usize) -> String {
    if nodes == 1 {
        format!("{prefix}-node")
    } else {
        format!("{prefix}-node{index}")
    }
}

/// Pod names that would collide with a node or wire namespace of the same lab.
fn is_reserved(name: &str) -> bool {
    name == WIRE || name.strip_prefix("node").is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_short_and_parsable() {
        let p = prefix_for(4_194_304, 99, "outbound_captured_ebpf");
        assert_eq!(p, "k4194304-99-outbou");
        assert!(p.len() <= MAX_PREFIX);
        assert_eq!(owner_pid(&p), Some(4_194_304));
        assert_eq!(owner_pid(&format!("{p}-server-a")), Some(4_194_304));
        assert_eq!(owner_pid(&format!("keel-lab-{p}")), Some(4_194_304));
        assert!(format!("{p}-{}", "a".repeat(MAX_POD_NAME)).len() <= MAX_NETNS_NAME);
    }

    #[test]
    fn node_and_wire_namespaces_fit_and_are_sweepable() {
        let p = prefix_for(4_194_304, 99, "outbound_captured_ebpf");
        assert_eq!(node_netns(&p, 0, 1), format!("{p}-node"));
        assert_eq!(node_netns(&p, 3, 4), format!("{p}-node3"));
        for name in [node_netns(&p, 3, 4), format!("{p}-{WIRE}")] {
            assert!(name.len() <= MAX_NETNS_NAME, "{name}");
            // The sweep finds leftovers by the pid in the name.
            assert_eq!(owner_pid(&name), Some(4_194_304));
        }
        // A multi-node lab's per-node bpffs dirs sit next to the lab's, named `keel-lab-<prefix>-node<k>`.
        assert_eq!(owner_pid(&format!("keel-lab-{p}-node1")), Some(4_194_304));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        assert_eq!(owner_pid("kube-system"), None);
        assert_eq!(owner_pid("k12-x-y"), None);
        assert_eq!(owner_pid("default"), None);
        assert_eq!(prefix_for(1, 2, "___"), "k1-2-lab");
    }

    #[test]
    fn pod_names() {
        assert!(check_pod_name("server-a").is_ok());
        assert!(check_pod_name("Server").is_err());
        assert!(check_pod_name("node").is_err());
        assert!(check_pod_name("node1").is_err());
        assert!(check_pod_name("wire").is_err());
        assert!(check_pod_name("node-a").is_ok());
        assert!(check_pod_name("wire-tap").is_ok());
        assert!(check_pod_name(&"a".repeat(MAX_POD_NAME + 1)).is_err());
    }
}
