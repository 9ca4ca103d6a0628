//! The lab: "node" network namespaces with a bridge each, "pods" hanging off them, and cleanup that always runs.
//!
//! ```text
//!   node netns <prefix>-node            pod netns <prefix>-<name>
//!   br0 10.244.0.1/24 ── vp<N> ═══veth═══ eth0 10.244.0.<10+N>/24, default via 10.244.0.1
//!   keel (cgroup <lab>/keel)            apps (cgroup <lab>/pods/<name>)
//! ```
//! keel's `--cgroup` is the lab cgroup root, so its cgroup hooks see exactly this lab's pods (labs run in
//! parallel, each fully separate: own namespaces, cgroups, bpffs dir, API socket).
//!
//! [`Lab::with_nodes`] builds 2..=4 such nodes (node k: bridge 10.244.k.1/24, its own cgroup subtree, pins, state
//! and socket; see `node.rs`) joined by a wire (one switch in an underlay namespace, node k at 172.30.0.(k+1);
//! see `wire.rs`), so pod-to-pod traffic between nodes is routed across it, where [`Lab::capture_wire`] sees it.

pub mod api;
mod bins;
mod cgroup;
pub mod cni_runtime;
mod control;
mod gateway;
mod http;
mod keel;
pub mod mesh_config;
mod names;
mod node;
pub mod pcap;
mod pod;
pub mod port_forward;
mod prereqs;
pub mod process;
pub mod prometheus;
mod sandbox;
mod sweep;
pub mod sys;
mod wire;
mod wire_capture;

pub use api::{counter, port_of, refused, Connection};
pub use bins::{workspace_root, Binaries};
pub use control::{ControlPlane, CONTROL_ADDR, CONTROL_PORT, NODE_NAME};
pub use keel::{Keel, KeelSpec};
pub use node::Node;
pub use pod::{Pod, ServeMode, RUN_TIMEOUT};
pub use prereqs::{require_root_and_prereqs, Machine};
pub use process::{tail, ChildGuard};
pub use wire::{node_wire_ip, MAX_NODES, NODE_UPLINK, WIRE_BRIDGE};
pub use wire_capture::{podapp_payload, CapturedBytes, WireCapture};

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// keel's capture backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ebpf,
    Iptables,
}

impl Backend {
    pub fn as_arg(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Iptables => "iptables",
        }
    }
}

/// The node bridge's address: pods' default gateway (node 0's; node k's is 10.244.k.1).
pub const NODE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// keel's admin address inside the node namespace.
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";

#[derive(Default)]
struct Created {
    /// Network namespaces made, in order (deleted in reverse).
    netns: Vec<String>,
    /// Every pod's name: unique across the lab (each is a namespace and a cgroup named after it).
    pods: Vec<String>,
    /// Pods per node: the next default host octet and veth name.
    pods_per_node: Vec<u8>,
    /// Every keel log, in start order (their tails are printed when a test fails).
    keel_logs: Vec<PathBuf>,
    wire_captures: u32,
}

/// A lab. Dropping it removes everything it made, in an order that cannot fail because of what is still running:
/// kill every process in the lab cgroup (keels, keel-control, apps, tcpdump), remove keel's bpffs dirs, delete the
/// namespaces (which takes their veths along), remove the cgroups, remove the temp dir (kept, and its path
/// printed, when the test panicked: it holds the logs).
pub struct Lab {
    prefix: String,
    machine: Machine,
    bins: Binaries,
    dir: PathBuf,
    /// The lab's cgroup: every node's subtree (a single node's IS this root) and the wire capture's.
    cgroup_root: PathBuf,
    nodes: Vec<node::NodeLayout>,
    created: Mutex<Created>,
    spawned: Arc<AtomicU32>,
    failed: AtomicBool,
}

impl Lab {
    /// A lab named after the test, using the binaries from [`Binaries::locate`].
    pub fn new(test_name: &str) -> Result<Lab> {
        Self::with_binaries(test_name, Binaries::locate())
    }

    pub fn with_binaries(test_name: &str, bins: Binaries) -> Result<Lab> {
        Self::with_nodes_and_binaries(test_name, 1, bins)
    }

    /// A lab of `nodes` nodes (1..=4) joined by a wire; `with_nodes(name, 1)` is [`Lab::new`].
    pub fn with_nodes(test_name: &str, nodes: usize) -> Result<Lab> {
        Self::with_nodes_and_binaries(test_name, nodes, Binaries::locate())
    }

    pub fn with_nodes_and_binaries(test_name: &str, nodes: usize, bins: Binaries) -> Result<Lab> {
        if !(1..=wire::MAX_NODES).contains(&nodes) {
            bail!("a lab has 1..={} nodes, not {nodes}", wire::MAX_NODES);
        }
        let machine = require_root_and_prereqs();
        let prefix = names::new_prefix(test_name);
        let lab_name = format!("keel-lab-{prefix}");
        let dir = std::env::temp_dir().join(&lab_name);
        let cgroup_root = machine.cgroup2.join(&lab_name);
        let bpffs = Path::new(prereqs::BPFFS_ROOT).join(&lab_name);
        let lab = Lab {
            nodes: node::NodeLayout::plan(&prefix, nodes, &dir, &cgroup_root, &bpffs),
            dir,
            cgroup_root,
            prefix,
            machine,
            bins,
            created: Mutex::new(Created { pods_per_node: vec![0; nodes], ..Created::default() }),
            spawned: Arc::new(AtomicU32::new(0)),
            failed: AtomicBool::new(false),
        };
        // From here on any error returns `lab`, whose Drop undoes the partial setup.
        lab.setup().with_context(|| format!("setting up lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).context("creating the lab temp dir")?;
        let wire_netns = self.wire_netns();
        if let Some(w) = &wire_netns {
            self.add_netns(w)?;
            wire::create_switch(w)?;
        }
        for node in &self.nodes {
            self.create_node(node)?;
            if let Some(w) = &wire_netns {
                wire::plug(w, node)?;
            }
        }
        if wire_netns.is_some() {
            wire::route_between(&self.nodes)?;
        }
        Ok(())
    }

    /// `ip netns add NAME` with loopback up, recorded for cleanup before anything else can fail.
    fn add_netns(&self, name: &str) -> Result<()> {
        if Path::new("/var/run/netns").join(name).exists() {
            bail!("network namespace {name} already exists");
        }
        sys::ip(&["netns", "add", name])?;
        self.created.lock().unwrap().netns.push(name.to_string());
        sys::ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Adds a pod on node 0 at 10.244.0.<10+N> (N = 1, 2, ...).
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        self.add_pod_on(0, name)
    }

    /// Adds a pod on node 0 at 10.244.0.<host> (e.g. to put a server on an excluded address).
    pub fn add_pod_at(&self, name: &str, host: u8) -> Result<Pod> {
        self.add_pod_at_on(0, name, host)
    }

    /// Starts keel on node 0 with `backend` and `extra_args` (exclusions, `--fast-path`, ...). Every start uses the
    /// same state dir, bpffs dir and API socket, so a second start after `kill9` is a restart.
    pub fn start_keel(&self, backend: Backend, extra_args: &[&str]) -> Result<Keel> {
        self.start_keel_on(0, backend, extra_args)
    }

    /// Starts keel-control in node 0's namespace, serving `config_dir` (see [`ControlPlane`],
    /// [`Lab::start_control_on`]).
    pub fn start_control(&self, config_dir: &Path) -> Result<ControlPlane> {
        self.start_control_on(0, config_dir)
    }

    /// `iptables-save` inside a pod's network namespace (where the iptables backend puts its rules).
    pub fn iptables_save(&self, pod: &Pod) -> Result<String> {
        let mut cmd = Command::new("iptables-save");
        let _fds = sys::place(&mut cmd, &sys::Placement { netns: Some(&pod.netns_path), cgroup: None })?;
        sys::run(&mut cmd)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Node 0's network namespace (`ip netns` name).
    pub fn node_netns(&self) -> String {
        self.nodes[0].netns.clone()
    }
    pub fn node_netns_path(&self) -> PathBuf {
        self.nodes[0].netns_path()
    }
    /// The lab's cgroup v2 root, holding everything the lab runs. In a single-node lab that is keel's `--cgroup`;
    /// node k's of a multi-node lab is [`Node::cgroup_root`].
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
    /// Node 0's keel `--bpffs` pin directory (keel creates it).
    pub fn bpffs_dir(&self) -> &Path {
        &self.nodes[0].bpffs
    }
    pub fn state_dir(&self) -> PathBuf {
        self.nodes[0].state_dir()
    }
    pub fn api_socket(&self) -> PathBuf {
        self.nodes[0].api_socket()
    }
    /// The underlay namespace holding the wire's switch (`None` in a single-node lab).
    pub fn wire_netns(&self) -> Option<String> {
        (self.nodes.len() > 1).then(|| format!("{}-{}", self.prefix, names::WIRE))
    }
    /// The lab's temp dir (logs of keel and of every process started in pods).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn admin_addr(&self) -> SocketAddr {
        ADMIN_ADDR.parse().expect("valid")
    }
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Marks the lab as failed without panicking (e.g. the demo returning an error): on drop it then prints keel's
    /// log tails and keeps its temp dir, as for a panicking test.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

impl Lab {
    /// The tail of each keel log of this lab: printed when a test fails, since keel's view usually explains it.
    fn print_keel_logs(&self) {
        let logs = self.created.lock().map(|c| c.keel_logs.clone()).unwrap_or_default();
        for path in logs {
            let log = process::read_lossy(&path);
            eprintln!("---- keel log tail: {} ----\n{}\n----", path.display(), tail(&log, 60));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let step = |what: &str, r: Result<()>| {
            if let Err(e) = r {
                eprintln!("keel lab {}: cleanup: {what}: {e:#}", self.prefix);
            }
        };
        step("killing lab processes", cgroup::kill_all(&self.cgroup_root));
        for node in &self.nodes {
            if node.bpffs.exists() {
                step(&format!("removing bpffs dir {}", node.bpffs.display()), std::fs::remove_dir_all(&node.bpffs).map_err(Into::into));
            }
        }
        let netns = std::mem::take(&mut self.created.lock().unwrap_or_else(|e| e.into_inner()).netns);
        for ns in netns.iter().rev() {
            step(&format!("deleting netns {ns}"), sys::ip(&["netns", "del", ns]).map(drop));
        }
        step("removing cgroups", cgroup::remove_tree(&self.cgroup_root));
        if std::thread::panicking() || self.failed.load(Ordering::Relaxed) {
            self.print_keel_logs();
            eprintln!("keel lab {}: failed; logs kept in {}", self.prefix, self.dir.display());
        } else if self.dir.exists() {
            step("removing temp dir", std::fs::remove_dir_all(&self.dir).map_err(Into::into));
        }
    }
}
