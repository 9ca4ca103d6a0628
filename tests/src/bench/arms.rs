//! The arms: the same keel binary, workers, client, server and target; only the setup differs — how many nodes
//! the two pods are spread over, whether keel runs, how it captures, and what it does with what it captures.
//! Adding an arm is one more entry in [`ARMS`].
use crate::lab::Backend;

/// What keel does with a captured connection between the two (enrolled) pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mesh {
    /// No workload source: keel knows no identities and relays plaintext (the "direct" path).
    Plain,
    /// Local mode on every node: one shared `--config-dir` listing both pods (in the mesh) and one shared
    /// `--ca-dir`, so the nodes' keels trust each other. A connection to a pod of another node goes over HBONE
    /// (mTLS, HTTP/2 CONNECT to the destination pod's :15008).
    Hbone,
}

/// How every node's keel runs in an arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeelSetup {
    pub backend: Backend,
    /// The same-node sockmap fast path (`--fast-path on`), eBPF only.
    pub fast_path: bool,
    pub mesh: Mesh,
}

impl KeelSetup {
    /// Arguments that do not depend on the lab (local mode's directories are added when the lab exists).
    pub fn args(&self) -> Vec<String> {
        vec!["--fast-path".into(), if self.fast_path { "on" } else { "off" }.into()]
    }
}

pub struct Arm {
    pub name: &'static str,
    /// 1: client and server pods on one node. 2: the client on node 0, the server on node 1, across the wire.
    pub nodes: usize,
    /// `None`: no keel at all (the physical limit). Otherwise one keel per node, each enrolling its node's pod.
    pub keel: Option<KeelSetup>,
}

impl Arm {
    pub fn cross_node(&self) -> bool {
        self.nodes > 1
    }

    /// The responder workload (keel answers the client itself, never relaying) measures capture on the client's
    /// node alone: it says nothing about an arm without keel, nor about the path between two nodes.
    pub fn runs_responder(&self) -> bool {
        self.keel.is_some() && !self.cross_node()
    }
}

const fn keel(backend: Backend, fast_path: bool, mesh: Mesh) -> Option<KeelSetup> {
    Some(KeelSetup { backend, fast_path, mesh })
}

pub const ARMS: [Arm; 7] = [
    Arm { name: "direct", nodes: 1, keel: None },
    Arm { name: "iptables", nodes: 1, keel: keel(Backend::Iptables, false, Mesh::Plain) },
    Arm { name: "ebpf", nodes: 1, keel: keel(Backend::Ebpf, false, Mesh::Plain) },
    Arm { name: "ebpf+splice", nodes: 1, keel: keel(Backend::Ebpf, true, Mesh::Plain) },
    // Across two nodes. The fast path splices only same-node sockets: off in both keel arms, so HBONE is the
    // only difference between them.
    Arm { name: "x-direct", nodes: 2, keel: None },
    Arm { name: "x-keel-plain", nodes: 2, keel: keel(Backend::Ebpf, false, Mesh::Plain) },
    Arm { name: "x-keel-hbone", nodes: 2, keel: keel(Backend::Ebpf, false, Mesh::Hbone) },
];

/// Arms of repetition `rep` in the order they run: each repetition starts one arm later, so no arm always runs
/// first (cold caches) or last (a warm, maybe throttled machine).
pub fn rotated(arms: &[&'static Arm], rep: u32) -> Vec<&'static Arm> {
    let n = arms.len();
    (0..n).map(|i| arms[(i + rep as usize) % n]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(name: &str) -> Option<&'static Arm> {
        ARMS.iter().find(|a| a.name == name)
    }

    #[test]
    fn every_arm_leads_one_repetition_in_turn() {
        let arms: Vec<&Arm> = ARMS.iter().filter(|a| !a.cross_node()).collect();
        let firsts: Vec<&str> = (0..4).map(|rep| rotated(&arms, rep)[0].name).collect();
        assert_eq!(firsts, ["direct", "iptables", "ebpf", "ebpf+splice"]);
        assert_eq!(rotated(&arms, 5).iter().map(|a| a.name).collect::<Vec<_>>(), ["iptables", "ebpf", "ebpf+splice", "direct"]);
        let all: Vec<&Arm> = ARMS.iter().collect();
        assert_eq!(rotated(&all, 6)[0].name, "x-keel-hbone");
        assert_eq!(rotated(&all, 7)[0].name, "direct");
    }

    #[test]
    fn arms_say_nodes_and_keel_mode() {
        let names: Vec<&str> = ARMS.iter().map(|a| a.name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "arm {n} twice");
            // The report and the chart know the arms by these names.
            assert!(crate::bench::model::ARMS.contains(n) || crate::bench::model::CROSS_NODE_ARMS.contains(n), "{n}");
        }
        let hbone = by_name("x-keel-hbone").unwrap();
        assert_eq!((hbone.nodes, hbone.keel.map(|k| k.mesh)), (2, Some(Mesh::Hbone)));
        assert_eq!(hbone.keel.unwrap().args(), ["--fast-path", "off"]);
        let plain = by_name("x-keel-plain").unwrap();
        assert_eq!(plain.keel.unwrap(), KeelSetup { mesh: Mesh::Plain, ..hbone.keel.unwrap() });
        assert!(by_name("x-direct").unwrap().keel.is_none() && by_name("x-direct").unwrap().cross_node());
        assert_eq!(by_name("ebpf+splice").unwrap().keel.unwrap().args(), ["--fast-path", "on"]);
        assert_eq!(by_name("iptables").unwrap().keel.unwrap().args(), ["--fast-path", "off"]);
        let responders: Vec<&str> = ARMS.iter().filter(|a| a.runs_responder()).map(|a| a.name).collect();
        assert_eq!(responders, ["iptables", "ebpf", "ebpf+splice"]);
        assert!(by_name("nope").is_none());
    }
}
