//! The lab: one "node" network namespace with a bridge, "pods" hanging off it, and cleanup that always runs.
//!
//! ```text
//!   node netns <prefix>-node            pod netns <prefix>-<name>
//!   br0 10.244.0.1/24 ── vp<N> ═══veth═══ eth0 10.244.0.<10+N>/24, default via 10.244.0.1
//!   keel (cgroup <lab>/keel)            apps (cgroup <lab>/pods/<name>)
//! ```
//! keel's `--cgroup` is the lab cgroup root, so its cgroup hooks see exactly this lab's pods (labs run in
//! parallel, each fully separate: own namespaces, cgroups, bpffs dir, API socket).

pub mod api;
mod bins;
mod cgroup;
mod control;
mod http;
mod keel;
pub mod mesh_config;
mod names;
mod pod;
mod prereqs;
pub mod process;
mod sweep;
pub mod sys;

pub use api::{counter, port_of, Connection};
pub use bins::{workspace_root, Binaries};
pub use control::{ControlPlane, CONTROL_ADDR, NODE_NAME};
pub use keel::{Keel, KeelSpec};
pub use pod::{Pod, ServeMode, RUN_TIMEOUT};
pub use prereqs::{require_root_and_prereqs, Machine};
pub use process::{tail, ChildGuard};

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

/// The node bridge's address: pods' default gateway.
pub const NODE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// keel's admin address inside the node namespace.
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";

#[derive(Default)]
struct Created {
    /// Network namespaces made, node first.
    netns: Vec<String>,
    pods: Vec<String>,
    keel_starts: u32,
}

/// A lab. Dropping it removes everything it made, in an order that cannot fail because of what is still running:
/// kill every process in the lab cgroup (keel and apps), remove keel's bpffs dir, delete the namespaces, remove the
/// cgroups, remove the temp dir (kept, and its path printed, when the test panicked: it holds the logs).
pub struct Lab {
    prefix: String,
    machine: Machine,
    bins: Binaries,
    dir: PathBuf,
    cgroup_root: PathBuf,
    bpffs: PathBuf,
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
        let machine = require_root_and_prereqs();
        let prefix = names::new_prefix(test_name);
        let lab_name = format!("keel-lab-{prefix}");
        let lab = Lab {
            dir: std::env::temp_dir().join(&lab_name),
            cgroup_root: machine.cgroup2.join(&lab_name),
            bpffs: Path::new(prereqs::BPFFS_ROOT).join(&lab_name),
            prefix,
            machine,
            bins,
            created: Mutex::new(Created::default()),
            spawned: Arc::new(AtomicU32::new(0)),
            failed: AtomicBool::new(false),
        };
        // From here on any error returns `lab`, whose Drop undoes the partial setup.
        lab.setup()
            .with_context(|| format!("setting up lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(self.dir.join("state")).context("creating the lab temp dir")?;
        for cg in ["keel", "pods"] {
            cgroup::create(&self.cgroup_root.join(cg))?;
        }
        let node = self.node_netns();
        self.add_netns(&node)?;
        sys::ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE_GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        sys::ip(&["-n", &node, "link", "set", "br0", "up"])?;
        sys::netns_sysctl(&self.node_netns_path(), "net/ipv4/ip_forward", "1")?;
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

    /// Adds a pod at 10.244.0.<10+N> (N = 1, 2, ...).
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        let n = self.created.lock().unwrap().pods.len() as u8 + 1;
        self.add_pod_at(name, 10 + n)
    }

    /// Adds a pod at 10.244.0.<host> (e.g. to put a server on an excluded address).
    pub fn add_pod_at(&self, name: &str, host: u8) -> Result<Pod> {
        names::check_pod_name(name).map_err(anyhow::Error::msg)?;
        if !(2..=254).contains(&host) {
            bail!("pod host octet {host} out of 2..=254");
        }
        let ip = Ipv4Addr::new(10, 244, 0, host);
        let (netns, veth) = {
            let mut c = self.created.lock().unwrap();
            if c.pods.iter().any(|p| p == name) {
                bail!("pod {name} already exists in this lab");
            }
            c.pods.push(name.to_string());
            (
                format!("{}-{name}", self.prefix),
                format!("vp{}", c.pods.len()),
            )
        };
        let node = self.node_netns();
        self.add_netns(&netns)?;
        let cgroup_path = self.cgroup_root.join("pods").join(name);
        cgroup::create(&cgroup_path)?;
        sys::ip(&[
            "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ])?;
        sys::ip(&["-n", &node, "link", "set", &veth, "master", "br0", "up"])?;
        sys::ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        sys::ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        sys::ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &NODE_GATEWAY.to_string(),
        ])?;
        Ok(Pod {
            name: name.to_string(),
            namespace: "default".to_string(),
            ip,
            netns_path: Path::new("/var/run/netns").join(&netns),
            netns,
            cgroup_path,
            podapp: self.bins.podapp.clone(),
            log_dir: self.dir.clone(),
            spawned: self.spawned.clone(),
        })
    }

    /// Starts keel with `backend` and `extra_args` (exclusions, `--fast-path`, ...). Every start uses the same
    /// state dir, bpffs dir and API socket, so a second start after `kill9` is a restart.
    pub fn start_keel(&self, backend: Backend, extra_args: &[&str]) -> Result<Keel> {
        if !self.bins.podapp.is_file() {
            // Not needed by keel itself, but every suite needs it next: fail with the real cause up front.
            bail!(
                "podapp not found at {} (build keel-tests, or set KEEL_PODAPP)",
                self.bins.podapp.display()
            );
        }
        let n = {
            let mut c = self.created.lock().unwrap();
            c.keel_starts += 1;
            c.keel_starts
        };
        Keel::start(KeelSpec {
            bin: self.bins.keel.clone(),
            backend,
            cgroup_root: self.cgroup_root.clone(),
            own_cgroup: self.cgroup_root.join("keel"),
            bpffs: self.bpffs.clone(),
            state_dir: self.state_dir(),
            api_socket: self.api_socket(),
            admin_addr: ADMIN_ADDR.parse().expect("valid"),
            node_netns: self.node_netns_path(),
            log: self.dir.join(format!("keel-{n}.log")),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Starts keel-control in the node namespace, serving `config_dir` (see [`ControlPlane`]).
    pub fn start_control(&self, config_dir: &Path) -> Result<ControlPlane> {
        ControlPlane::start(&self.bins.keel_control, &self.node_netns_path(), &self.cgroup_root.join("keel"), &self.dir, config_dir)
    }

    /// `iptables-save` inside a pod's network namespace (where the iptables backend puts its rules).
    pub fn iptables_save(&self, pod: &Pod) -> Result<String> {
        let mut cmd = Command::new("iptables-save");
        let _fds = sys::place(
            &mut cmd,
            &sys::Placement {
                netns: Some(&pod.netns_path),
                cgroup: None,
            },
        )?;
        sys::run(&mut cmd)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn node_netns(&self) -> String {
        format!("{}-node", self.prefix)
    }
    pub fn node_netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(self.node_netns())
    }
    /// keel's `--cgroup`: the lab's cgroup v2 root.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
    /// keel's `--bpffs` pin directory (keel creates it).
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("keel.sock")
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
        let starts = self.created.lock().map(|c| c.keel_starts).unwrap_or(0);
        for n in 1..=starts {
            let path = self.dir.join(format!("keel-{n}.log"));
            let log = process::read_lossy(&path);
            eprintln!(
                "---- keel log tail: {} ----\n{}\n----",
                path.display(),
                tail(&log, 60)
            );
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
        if self.bpffs.exists() {
            step(
                "removing bpffs dir",
                std::fs::remove_dir_all(&self.bpffs).map_err(Into::into),
            );
        }
        let netns =
            std::mem::take(&mut self.created.lock().unwrap_or_else(|e| e.into_inner()).netns);
        for ns in netns.iter().rev() {
            step(
                &format!("deleting netns {ns}"),
                sys::ip(&["netns", "del", ns]).map(drop),
            );
        }
        step("removing cgroups", cgroup::remove_tree(&self.cgroup_root));
        if std::thread::panicking() || self.failed.load(Ordering::Relaxed) {
            self.print_keel_logs();
            eprintln!(
                "keel lab {}: failed; logs kept in {}",
                self.prefix,
                self.dir.display()
            );
        } else if self.dir.exists() {
            step(
                "removing temp dir",
                std::fs::remove_dir_all(&self.dir).map_err(Into::into),
            );
        }
    }
}
