//! Lab nodes: where each node's namespace, bridge, cgroups, pins, state and socket live, and the per-node API.
//!
//! A single-node lab (`Lab::new`) keeps the layout it always had. In a multi-node lab (`Lab::with_nodes`) node k
//! gets its own everything, so two keels never see each other's pods or pins:
//!
//! | what                   | single node                     | node k of several                          |
//! |------------------------|---------------------------------|--------------------------------------------|
//! | netns                  | `<prefix>-node`                 | `<prefix>-node<k>`                         |
//! | bridge / pod subnet    | br0 10.244.0.1/24               | br0 10.244.k.1/24                          |
//! | wire address (`eth0`)  | none                            | 172.30.0.(k+1)/24                          |
//! | keel `--cgroup`        | `<lab cgroup>`                  | `<lab cgroup>/node<k>`                     |
//! | keel's / pods' cgroups | `<root>/keel`, `<root>/pods/P`  | same, below the node's root                |
//! | bpffs pins             | `/sys/fs/bpf/keel-lab-<prefix>` | `/sys/fs/bpf/keel-lab-<prefix>-node<k>`    |
//! | state, socket, logs    | `<lab dir>/state`, `keel.sock`  | `<lab dir>/node<k>/state`, `keel.sock`     |
//! | node name              | `lab-node`                      | `lab-node-<k>`                             |
//!
//! Pins are siblings rather than children of the lab's bpffs dir because keel treats its pin dir's parent as the
//! bpffs mount point (and mounts one there if it is not bpffs yet). The admin address is 127.0.0.1:15000 on every
//! node: each keel has its own network namespace.

use super::control::{ControlPlane, ControlSpec, NodeCredentials, CONTROL_ADDR, CONTROL_PORT, NODE_NAME};
use super::keel::{Keel, KeelSpec};
use super::pod::Pod;
use super::{cgroup, names, sys, wire, Backend, Lab, ADMIN_ADDR};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where one node's things are. Computed up front, so cleanup knows every path even after a failed setup.
#[derive(Debug, Clone)]
pub(super) struct NodeLayout {
    pub index: usize,
    /// `nodeName` in Pod objects, and what the node's keel claims with `--node-name`.
    pub name: String,
    pub netns: String,
    /// br0's address: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// The node's address on the wire; `None` in a single-node lab (no wire).
    pub wire_ip: Option<Ipv4Addr>,
    /// keel's `--cgroup` for this node: covers exactly this node's keel and pods.
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    /// Holds the node's state dir, API socket, node token and keel logs.
    pub dir: PathBuf,
}

impl NodeLayout {
    /// The layout of every node of a lab with `count` nodes.
    pub fn plan(prefix: &str, count: usize, lab_dir: &Path, lab_cgroup: &Path, lab_bpffs: &Path) -> Vec<NodeLayout> {
        if count == 1 {
            return vec![NodeLayout {
                index: 0,
                name: NODE_NAME.to_string(),
                netns: names::node_netns(prefix, 0, 1),
                gateway: gateway(0),
                wire_ip: None,
                cgroup_root: lab_cgroup.to_path_buf(),
                bpffs: lab_bpffs.to_path_buf(),
                dir: lab_dir.to_path_buf(),
            }];
        }
        (0..count)
            .map(|k| NodeLayout {
                index: k,
                name: format!("{NODE_NAME}-{k}"),
                netns: names::node_netns(prefix, k, count),
                gateway: gateway(k),
                wire_ip: Some(wire::node_wire_ip(k)),
                cgroup_root: lab_cgroup.join(format!("node{k}")),
                bpffs: PathBuf::from(format!("{}-node{k}", lab_bpffs.display())),
                dir: lab_dir.join(format!("node{k}")),
            })
            .collect()
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }
    pub fn keel_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("keel")
    }
    pub fn pods_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("pods")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("keel.sock")
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("node-token")
    }
    /// `10.244.k.0/24`.
    pub fn pod_subnet(&self) -> String {
        let [a, b, c, _] = self.gateway.octets();
        format!("{a}.{b}.{c}.0/24")
    }
    pub fn pod_ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.gateway.octets();
        Ipv4Addr::new(a, b, c, host)
    }
}

/// Node k's bridge address, 10.244.k.1.
fn gateway(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, k as u8, 1)
}

/// One node of a lab: a borrowed view offering the same calls as the single-node [`Lab`] API, on this node.
#[derive(Clone, Copy)]
pub struct Node<'lab> {
    lab: &'lab Lab,
    layout: &'lab NodeLayout,
}

impl<'lab> Node<'lab> {
    pub fn index(&self) -> usize {
        self.layout.index
    }
    /// `nodeName` of this node's pods, and the `--node-name` its keel claims.
    pub fn name(&self) -> &'lab str {
        &self.layout.name
    }
    /// Adds a pod on this node at 10.244.k.<10+N> (N counts this node's pods).
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        self.lab.add_pod_on(self.index(), name)
    }
    /// Adds a pod on this node at 10.244.k.<host>.
    pub fn add_pod_at(&self, name: &str, host: u8) -> Result<Pod> {
        self.lab.add_pod_at_on(self.index(), name, host)
    }
    /// Starts keel in this node's namespace, cgroup, pins and state (see [`Lab::start_keel`]).
    pub fn start_keel(&self, backend: Backend, extra_args: &[&str]) -> Result<Keel> {
        self.lab.start_keel_on(self.index(), backend, extra_args)
    }
    /// Starts keel-control in this node's namespace (see [`Lab::start_control_on`]).
    pub fn start_control(&self, config_dir: &Path) -> Result<ControlPlane> {
        self.lab.start_control_on(self.index(), config_dir)
    }
    pub fn netns(&self) -> &'lab str {
        &self.layout.netns
    }
    pub fn netns_path(&self) -> PathBuf {
        self.layout.netns_path()
    }
    /// br0's address, the default gateway of this node's pods.
    pub fn gateway(&self) -> Ipv4Addr {
        self.layout.gateway
    }
    /// `10.244.k.0/24`.
    pub fn pod_subnet(&self) -> String {
        self.layout.pod_subnet()
    }
    /// This node's address on the wire (`None` in a single-node lab).
    pub fn wire_ip(&self) -> Option<Ipv4Addr> {
        self.layout.wire_ip
    }
    /// keel's `--cgroup` on this node: the node's keel cgroup and its pods' cgroups, nothing of other nodes.
    pub fn cgroup_root(&self) -> &'lab Path {
        &self.layout.cgroup_root
    }
    /// The cgroup keel (and keel-control) run in on this node.
    pub fn keel_cgroup(&self) -> PathBuf {
        self.layout.keel_cgroup()
    }
    pub fn bpffs_dir(&self) -> &'lab Path {
        &self.layout.bpffs
    }
    pub fn state_dir(&self) -> PathBuf {
        self.layout.state_dir()
    }
    pub fn api_socket(&self) -> PathBuf {
        self.layout.api_socket()
    }
    /// keel's admin address inside this node's namespace (the same on every node).
    pub fn admin_addr(&self) -> SocketAddr {
        ADMIN_ADDR.parse().expect("valid")
    }
}

impl Lab {
    /// How many nodes this lab has.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `index` (0-based). Panics when there is no such node: a test asking for node 3 of a 2-node lab is a
    /// bug in the test.
    pub fn node(&self, index: usize) -> Node<'_> {
        match self.nodes.get(index) {
            Some(layout) => Node { lab: self, layout },
            None => panic!("lab {} has {} node(s); there is no node {index}", self.prefix, self.nodes.len()),
        }
    }

    /// Node `index`'s name: `nodeName` of its pods, `--node-name` of its keel (panics like [`Lab::node`]).
    pub fn node_name(&self, index: usize) -> &str {
        self.node(index).name()
    }

    fn layout(&self, index: usize) -> Result<&NodeLayout> {
        match self.nodes.get(index) {
            Some(l) => Ok(l),
            None => bail!("lab {} has {} node(s); there is no node {index}", self.prefix, self.nodes.len()),
        }
    }

    /// Builds one node: state dir, cgroups, namespace, bridge with the pods' gateway, forwarding on.
    pub(super) fn create_node(&self, node: &NodeLayout) -> Result<()> {
        std::fs::create_dir_all(node.state_dir()).with_context(|| format!("creating {}", node.state_dir().display()))?;
        for cg in [node.keel_cgroup(), node.pods_cgroup()] {
            cgroup::create(&cg)?;
        }
        let ns = node.netns.as_str();
        self.add_netns(ns)?;
        sys::ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&["-n", ns, "addr", "add", &format!("{}/24", node.gateway), "dev", "br0"])?;
        sys::ip(&["-n", ns, "link", "set", "br0", "up"])?;
        sys::netns_sysctl(&node.netns_path(), "net/ipv4/ip_forward", "1")?;
        Ok(())
    }

    /// Adds a pod on node `node` at 10.244.<node>.<10+N> (N = 1, 2, ... counting that node's pods).
    pub fn add_pod_on(&self, node: usize, name: &str) -> Result<Pod> {
        self.layout(node)?;
        let n = self.created.lock().unwrap().pods_per_node[node] + 1;
        self.add_pod_at_on(node, name, 10 + n)
    }

    /// Adds a pod on node `node` at 10.244.<node>.<host>. Pod names are unique across the whole lab (each pod is
    /// its own namespace and cgroup, named after it).
    pub fn add_pod_at_on(&self, node: usize, name: &str, host: u8) -> Result<Pod> {
        let layout = self.layout(node)?;
        names::check_pod_name(name).map_err(anyhow::Error::msg)?;
        if !(2..=254).contains(&host) {
            bail!("pod host octet {host} out of 2..=254");
        }
        let ip = layout.pod_ip(host);
        let (netns, veth) = {
            let mut c = self.created.lock().unwrap();
            if c.pods.iter().any(|p| p == name) {
                bail!("pod {name} already exists in this lab");
            }
            c.pods.push(name.to_string());
            c.pods_per_node[node] += 1;
            (format!("{}-{name}", self.prefix), format!("vp{}", c.pods_per_node[node]))
        };
        let node_ns = layout.netns.as_str();
        self.add_netns(&netns)?;
        let cgroup_path = layout.pods_cgroup().join(name);
        cgroup::create(&cgroup_path)?;
        sys::ip(&["-n", node_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        sys::ip(&["-n", node_ns, "link", "set", &veth, "master", "br0", "up"])?;
        sys::ip(&["-n", &netns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        sys::ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        sys::ip(&["-n", &netns, "route", "add", "default", "via", &layout.gateway.to_string()])?;
        Ok(Pod {
            name: name.to_string(),
            namespace: "default".to_string(),
            ip,
            netns_path: Path::new("/var/run/netns").join(&netns),
            netns,
            cgroup_path,
            node,
            node_name: layout.name.clone(),
            podapp: self.bins.podapp.clone(),
            log_dir: self.dir.clone(),
            spawned: self.spawned.clone(),
        })
    }

    /// Starts an eBPF keel on every node, each following `control` (its node's token and name), with `extra_args`.
    pub fn start_keels_following(&self, control: &ControlPlane, extra_args: &[&str]) -> Result<Vec<Keel>> {
        (0..self.nodes())
            .map(|k| {
                let mut args = control.keel_args_for(k);
                args.extend(extra_args.iter().map(|a| a.to_string()));
                self.start_keel_on(k, Backend::Ebpf, &args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect()
    }

    /// Starts keel on node `node` with `backend` and `extra_args`. Every start on a node uses that node's state
    /// dir, bpffs dir and API socket, so a second start after `kill9` is a restart.
    pub fn start_keel_on(&self, node: usize, backend: Backend, extra_args: &[&str]) -> Result<Keel> {
        let layout = self.layout(node)?;
        if !self.bins.podapp.is_file() {
            // Not needed by keel itself, but every suite needs it next: fail with the real cause up front.
            bail!("podapp not found at {} (build keel-tests, or set KEEL_PODAPP)", self.bins.podapp.display());
        }
        let log = {
            let mut c = self.created.lock().unwrap();
            let log = layout.dir.join(format!("keel-{}.log", c.keel_logs.len() + 1));
            c.keel_logs.push(log.clone());
            log
        };
        Keel::start(KeelSpec {
            bin: self.bins.keel.clone(),
            backend,
            cgroup_root: layout.cgroup_root.clone(),
            own_cgroup: layout.keel_cgroup(),
            bpffs: layout.bpffs.clone(),
            state_dir: layout.state_dir(),
            api_socket: layout.api_socket(),
            admin_addr: ADMIN_ADDR.parse().expect("valid"),
            node_netns: layout.netns_path(),
            log,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Starts keel-control in node `node`'s namespace and keel cgroup, serving `config_dir`, with one token per
    /// node of the lab (see [`ControlPlane::keel_args_for`]). In a single-node lab it listens on 127.0.0.1:15012;
    /// in a multi-node lab on the node's wire address (172.30.0.(node+1):15012), which every node's keel reaches.
    pub fn start_control_on(&self, node: usize, config_dir: &Path) -> Result<ControlPlane> {
        self.start_control_with(node, config_dir, &[], &[])
    }

    /// [`Self::start_control_on`] with more `keel-control serve` flags, and tokens for gateway pods
    /// (`<namespace>/<name>`, see [`ControlPlane::gateway_args`]).
    pub fn start_control_with(&self, node: usize, config_dir: &Path, extra_args: &[&str], gateways: &[&str]) -> Result<ControlPlane> {
        let layout = self.layout(node)?;
        let listen = match layout.wire_ip {
            Some(ip) => SocketAddr::new(ip.into(), CONTROL_PORT),
            None => CONTROL_ADDR.parse().expect("valid"),
        };
        ControlPlane::start(ControlSpec {
            bin: &self.bins.keel_control,
            netns: &layout.netns_path(),
            cgroup: &layout.keel_cgroup(),
            dir: &self.dir,
            config_dir,
            listen,
            nodes: self.nodes.iter().map(|n| NodeCredentials { name: n.name.clone(), token_file: n.token_file() }).collect(),
            extra_args,
            gateways,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_layout_is_the_historic_one() {
        let [n] = &NodeLayout::plan(
            "k1-2-t",
            1,
            Path::new("/tmp/keel-lab-k1-2-t"),
            Path::new("/cg/keel-lab-k1-2-t"),
            Path::new("/sys/fs/bpf/keel-lab-k1-2-t"),
        )[..] else {
            panic!("one node")
        };
        assert_eq!(n.netns, "k1-2-t-node");
        assert_eq!(n.name, "lab-node");
        assert_eq!(n.gateway, Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(n.wire_ip, None);
        assert_eq!(n.cgroup_root, Path::new("/cg/keel-lab-k1-2-t"));
        assert_eq!(n.keel_cgroup(), Path::new("/cg/keel-lab-k1-2-t/keel"));
        assert_eq!(n.pods_cgroup(), Path::new("/cg/keel-lab-k1-2-t/pods"));
        assert_eq!(n.bpffs, Path::new("/sys/fs/bpf/keel-lab-k1-2-t"));
        assert_eq!(n.state_dir(), Path::new("/tmp/keel-lab-k1-2-t/state"));
        assert_eq!(n.api_socket(), Path::new("/tmp/keel-lab-k1-2-t/keel.sock"));
        assert_eq!(n.token_file(), Path::new("/tmp/keel-lab-k1-2-t/node-token"));
        assert_eq!(n.pod_ip(11), Ipv4Addr::new(10, 244, 0, 11));
    }

    #[test]
    fn nodes_of_a_multi_node_lab_share_nothing() {
        let nodes = NodeLayout::plan("k1-2-t", 3, Path::new("/tmp/L"), Path::new("/cg/L"), Path::new("/sys/fs/bpf/L"));
        let n1 = &nodes[1];
        assert_eq!(n1.netns, "k1-2-t-node1");
        assert_eq!(n1.name, "lab-node-1");
        assert_eq!(n1.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(n1.pod_subnet(), "10.244.1.0/24");
        assert_eq!(n1.wire_ip, Some(Ipv4Addr::new(172, 30, 0, 2)));
        assert_eq!(n1.cgroup_root, Path::new("/cg/L/node1"));
        assert_eq!(n1.bpffs, Path::new("/sys/fs/bpf/L-node1"));
        assert_eq!(n1.api_socket(), Path::new("/tmp/L/node1/keel.sock"));
        // No node's keel cgroup root contains another node's.
        for a in &nodes {
            for b in nodes.iter().filter(|b| b.index != a.index) {
                assert!(!b.pods_cgroup().starts_with(&a.cgroup_root), "{a:?} covers {b:?}");
                assert_ne!(a.bpffs, b.bpffs);
                assert_ne!(a.netns, b.netns);
                assert_ne!(a.name, b.name);
            }
        }
    }
}
