//! The arms: the same keel binary, workers, client, server and target; only the setup differs — how many nodes
//! the two pods are spread over, whether keel runs, how it captures, and what it does with what it captures.
//! The L7 arms (`l7-*`, see [`L7Proxy`]) compare what stands between the client and the server for requests
//! routed by `Host: catalog` through a table of 1,000 virtual hosts: nothing, nginx, keel relaying bytes, keel's
//! L7 engine. Adding an arm is one more entry in [`ARMS`].
use crate::lab::Backend;

/// What keel does with a captured connection between the two (enrolled) pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mesh {
    /// No workload source: keel knows no identities and relays plaintext (the "direct" path).
    Plain,
    /// Local mode on every node: one shared `--config-dir` listing both pods (in the mesh) and one shared
    /// `--ca-dir`, so the nodes' keels trust each other. A connection to a pod of another node goes over HBONE
    /// (mTLS, HTTP/2 CONNECT to the destination pod's :15008); on one node it takes the same-node path.
    Hbone,
    /// Local mode with the L7 comparison's config dir: the two pods and 1,000 Services, `catalog` selecting the
    /// server pod (see `bench::l7`). What keel does with `catalog` is the arm's [`L7Proxy::Keel`].
    Services,
}

/// How every node's keel runs in an arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeelSetup {
    pub backend: Backend,
    /// The same-node sockmap fast path (`--fast-path on`), eBPF only.
    pub fast_path: bool,
    pub mesh: Mesh,
    /// Same-node bypass (`--same-node-bypass on`): after the first connection of each (pods, port), the kernel
    /// carries the pair's connections without keel. Needs a workload source (`Mesh::Hbone`).
    pub bypass: bool,
}

impl KeelSetup {
    /// Arguments that do not depend on the lab (local mode's directories are added when the lab exists).
    pub fn args(&self) -> Vec<String> {
        let on_off = |on: bool| if on { "on" } else { "off" }.to_owned();
        let mut args = vec!["--fast-path".into(), on_off(self.fast_path)];
        if self.bypass {
            args.extend(["--same-node-bypass".into(), on_off(true)]);
        }
        args
    }
}

pub struct Arm {
    pub name: &'static str,
    /// 1: client and server pods on one node. 2: the client on node 0, the server on node 1, across the wire.
    pub nodes: usize,
    /// `None`: no keel at all (the physical limit). Otherwise one keel per node, each enrolling its node's pod.
    pub keel: Option<KeelSetup>,
    /// The L7 comparison's arms (one node, HTTP workloads with `Host: catalog` only); `None` for the capture and
    /// cross-node arms.
    pub l7: Option<L7Proxy>,
}

/// What answers the client's requests to `catalog` in an L7 arm, in front of the same nginx server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L7Proxy {
    /// No proxy: the client sends `Host: catalog` straight to the server pod (the no-proxy baseline).
    Direct,
    /// nginx as a reverse proxy inside the client pod's network namespace (sidecar-like), with the same 1,000
    /// virtual hosts as server blocks and keep-alive upstream connections.
    Nginx,
    /// keel (eBPF capture, defaults otherwise) in local mode with the 1,000 Services; the client connects to
    /// catalog's VIP. `http`: catalog's port is named `http`, so keel's L7 engine terminates and routes each
    /// request; otherwise `tcp`, so keel relays bytes (L4). `server_in_mesh`: the server pod is enrolled and in
    /// the mesh too (keel's same-node inbound path is a second hop); otherwise it is out of the mesh
    /// (`istio.io/dataplane-mode: none`), so keel is the only proxy on the path, as nginx is.
    Keel { http: bool, server_in_mesh: bool },
}

impl Arm {
    pub fn cross_node(&self) -> bool {
        self.nodes > 1
    }

    /// The responder workload (keel answers the client itself, never relaying) measures capture on the client's
    /// node alone: it says nothing about an arm without keel, nor about the path between two nodes.
    pub fn runs_responder(&self) -> bool {
        self.keel.is_some_and(|k| !k.bypass) && !self.cross_node() && self.l7.is_none()
    }
}

const fn keel(backend: Backend, fast_path: bool, mesh: Mesh) -> Option<KeelSetup> {
    Some(KeelSetup { backend, fast_path, mesh, bypass: false })
}

pub const ARMS: [Arm; 13] = [
    Arm { name: "direct", nodes: 1, keel: None, l7: None },
    Arm { name: "iptables", nodes: 1, keel: keel(Backend::Iptables, false, Mesh::Plain), l7: None },
    Arm { name: "ebpf", nodes: 1, keel: keel(Backend::Ebpf, false, Mesh::Plain), l7: None },
    Arm { name: "ebpf+splice", nodes: 1, keel: keel(Backend::Ebpf, true, Mesh::Plain), l7: None },
    // Both pods in the mesh (local mode) and the same-node bypass on: once each port's first connection went
    // through keel (the warm-up), the kernel carries the pair's connections.
    Arm { name: "bypass", nodes: 1, keel: Some(KeelSetup { backend: Backend::Ebpf, fast_path: false, mesh: Mesh::Hbone, bypass: true }), l7: None },
    // Across two nodes. The fast path splices only same-node sockets: off in both keel arms, so HBONE is the
    // only difference between them.
    Arm { name: "x-direct", nodes: 2, keel: None, l7: None },
    Arm { name: "x-keel-plain", nodes: 2, keel: keel(Backend::Ebpf, false, Mesh::Plain), l7: None },
    Arm { name: "x-keel-hbone", nodes: 2, keel: keel(Backend::Ebpf, false, Mesh::Hbone), l7: None },
    // L7 on one node: keel as it ships (eBPF capture, fast path on, 2 worker threads) against nginx with 2
    // workers; keel L4 is the same config with catalog's port named `tcp`.
    Arm { name: "l7-direct", nodes: 1, keel: None, l7: Some(L7Proxy::Direct) },
    Arm { name: "l7-nginx", nodes: 1, keel: None, l7: Some(L7Proxy::Nginx) },
    Arm {
        name: "l7-keel-l4",
        nodes: 1,
        keel: keel(Backend::Ebpf, true, Mesh::Services),
        l7: Some(L7Proxy::Keel { http: false, server_in_mesh: false }),
    },
    Arm { name: "l7-keel", nodes: 1, keel: keel(Backend::Ebpf, true, Mesh::Services), l7: Some(L7Proxy::Keel { http: true, server_in_mesh: false }) },
    Arm {
        name: "l7-keel-meshed",
        nodes: 1,
        keel: keel(Backend::Ebpf, true, Mesh::Services),
        l7: Some(L7Proxy::Keel { http: true, server_in_mesh: true }),
    },
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
        let arms: Vec<&Arm> = ARMS.iter().filter(|a| !a.cross_node() && a.l7.is_none()).collect();
        let firsts: Vec<&str> = (0..4).map(|rep| rotated(&arms, rep)[0].name).collect();
        assert_eq!(firsts, ["direct", "iptables", "ebpf", "ebpf+splice"]);
        assert_eq!(rotated(&arms, 6).iter().map(|a| a.name).collect::<Vec<_>>(), ["iptables", "ebpf", "ebpf+splice", "bypass", "direct"]);
        let all: Vec<&Arm> = ARMS.iter().collect();
        assert_eq!(rotated(&all, 7)[0].name, "x-keel-hbone");
        assert_eq!(rotated(&all, 13)[0].name, "direct");
    }

    #[test]
    fn arms_say_nodes_and_keel_mode() {
        let names: Vec<&str> = ARMS.iter().map(|a| a.name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "arm {n} twice");
            // The report and the chart know the arms by these names.
            use crate::bench::model::{ARMS, CROSS_NODE_ARMS, L7_ARMS};
            assert!(ARMS.contains(n) || CROSS_NODE_ARMS.contains(n) || L7_ARMS.contains(n), "{n}");
        }
        let hbone = by_name("x-keel-hbone").unwrap();
        assert_eq!((hbone.nodes, hbone.keel.map(|k| k.mesh)), (2, Some(Mesh::Hbone)));
        assert_eq!(hbone.keel.unwrap().args(), ["--fast-path", "off"]);
        let plain = by_name("x-keel-plain").unwrap();
        assert_eq!(plain.keel.unwrap(), KeelSetup { mesh: Mesh::Plain, ..hbone.keel.unwrap() });
        assert!(by_name("x-direct").unwrap().keel.is_none() && by_name("x-direct").unwrap().cross_node());
        assert_eq!(by_name("ebpf+splice").unwrap().keel.unwrap().args(), ["--fast-path", "on"]);
        assert_eq!(by_name("iptables").unwrap().keel.unwrap().args(), ["--fast-path", "off"]);
        let bypass = by_name("bypass").unwrap();
        assert_eq!((bypass.nodes, bypass.keel.map(|k| k.mesh)), (1, Some(Mesh::Hbone)), "the bypass needs keel's policy engine");
        assert_eq!(bypass.keel.unwrap().args(), ["--fast-path", "off", "--same-node-bypass", "on"]);
        let responders: Vec<&str> = ARMS.iter().filter(|a| a.runs_responder()).map(|a| a.name).collect();
        assert_eq!(responders, ["iptables", "ebpf", "ebpf+splice"]);
        assert!(by_name("nope").is_none());
        // The L7 arms: one node; keel's L4 and L7 arms differ only in what catalog's port is named.
        for arm in ARMS.iter().filter(|a| a.l7.is_some()) {
            assert!(arm.name.starts_with("l7-") && arm.nodes == 1, "{}", arm.name);
            assert_eq!(arm.keel.is_some(), matches!(arm.l7, Some(L7Proxy::Keel { .. })), "{}", arm.name);
            assert!(arm.keel.is_none_or(|k| k.mesh == Mesh::Services && k.fast_path), "{}", arm.name);
        }
        let (l4, l7) = (by_name("l7-keel-l4").unwrap(), by_name("l7-keel").unwrap());
        assert_eq!(l4.keel, l7.keel);
        assert_eq!(l4.l7, Some(L7Proxy::Keel { http: false, server_in_mesh: false }));
        assert_eq!(l7.l7, Some(L7Proxy::Keel { http: true, server_in_mesh: false }));
    }
}
