//! The daemon's configuration: which capture backend, where its files and attachments live, what is excluded.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// cgroup connect4 + sock_ops + sk_msg + per-pod sk_lookup.
    Ebpf,
    /// istio-init style REDIRECT rules inside each pod's network namespace (baseline and fallback).
    Iptables,
}

/// Traffic that keel leaves alone, as istio-iptables' exclusion flags do.
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    pub outbound_cidrs: Vec<Ipv4Net>,
    pub outbound_ports: Vec<u16>,
    pub inbound_ports: Vec<u16>,
}

/// How `--takeover` runs.
#[derive(Clone, Copy, Debug)]
pub struct Takeover {
    /// The handover protocol version spoken (another one than the running keel's gets the fallback).
    pub version: u32,
    /// A pause after the sockets arrived, before serving them (tests only).
    pub pause: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub capture: CaptureMode,
    /// cgroup v2 directory the connect/sock_ops hooks attach to; pods must live at or below it.
    pub cgroup_root: PathBuf,
    /// bpffs directory keel owns for its pinned maps.
    pub bpffs_dir: PathBuf,
    /// Where enrolled pods are persisted, so a restarted keel takes them over again.
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub admin_addr: SocketAddr,
    pub exclusions: Exclusions,
    pub fast_path: bool,
    /// Same-node bypass verdicts are granted and applied (see `crate::bypass`).
    pub same_node_bypass: bool,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// `--takeover`: take over from a running keel.
    pub takeover: Option<Takeover>,
    /// After a handover, how long the old keel serves its connections before it exits.
    pub drain_max: Duration,
    /// Benchmark mode: keel answers outbound HTTP requests itself.
    pub responder: bool,
    pub certificate_validity: Duration,
    /// Close open connections that a policy change denies.
    pub close_denied_connections: bool,
    /// Where workloads, services and policies come from; `None` only in `--capture-only` mode.
    pub workload_source: Option<crate::xds::setup::WorkloadSource>,
    /// Let capture go with the process (pods talk directly, unauthenticated, while keel is down) instead of
    /// pinning it so that a dead keel means refused connections.
    pub fail_open: bool,
    /// Bounds on what peers can hold (connections, handshakes, idle time).
    pub limits: crate::limits::Limits,
    /// Istio's `outboundTrafficPolicy.mode`.
    pub outbound_policy: crate::plan::OutboundTrafficPolicy,
    /// The DNS server ServiceEntry hosts are resolved with; `None`: the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
    /// Namespaces whose pods a CNI ADD leaves alone (under `--kubernetes` too, before the API's labels).
    pub cni_excluded_namespaces: Vec<String>,
    /// `--kubernetes`: the node agent follows the API for this node's pods.
    pub kubernetes: Option<KubernetesSettings>,
    /// Where the kubelet's readiness probe gets `/healthz/ready` (and nothing else), if anywhere.
    pub readiness_addr: Option<SocketAddr>,
    /// Where Prometheus scrapes `/metrics` (and nothing else), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Span export, if any.
    pub tracing: Option<crate::telemetry::traces::TraceSettings>,
}

#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    /// The API server of this kubeconfig, instead of the cluster keel runs in.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
}

/// The cgroup v2 mount point, from /proc/mounts (hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup v2 filesystem is mounted (eBPF capture needs cgroup v2; --capture iptables does not)")
}

/// Checks that `path` is a directory on a filesystem of the given magic number.
pub fn check_fs_magic(path: &Path, magic: i64, what: &str) -> anyhow::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs fills the zeroed struct; c_path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    if stat.f_type as i64 != magic {
        bail!("{} is not {what}", path.display());
    }
    Ok(())
}

pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
