//! The benchmark's data: one [`Sample`] per (repetition, arm, workload), exactly as measured. Reports and charts
//! are derived from a list of samples and nothing else, so `results.json` can be re-reported later.
use serde::{Deserialize, Serialize};

/// Capture setups compared, in report order. Only the capture differs between them: same keel binary, workers,
/// client, server and target.
pub const ARMS: [&str; 5] = ["direct", "iptables", "ebpf", "ebpf+splice", "bypass"];

/// Cross-node arms (client pod on node 0, server pod on node 1), in report order: reported in their own section,
/// compared with each other (never with the single-node arms).
pub const CROSS_NODE_ARMS: [&str; 3] = ["x-direct", "x-keel-plain", "x-keel-hbone"];

/// The L7 comparison's arms (one node, requests routed by `Host: catalog` through 1,000 virtual hosts), in report
/// order: reported in their own section, compared with each other. `l7-direct` is the no-proxy baseline.
pub const L7_ARMS: [&str; 5] = ["l7-direct", "l7-nginx", "l7-keel-l4", "l7-keel", "l7-keel-meshed"];

/// The L7 arms' workloads, in report order: HTTP/1.1 and HTTP/2 (h2c prior knowledge), each closed loop with 32
/// and with 4 requests in flight, and at a fixed 5,000 requests/s (moderate load).
pub const L7_WORKLOADS: [&str; 6] = ["l7-h1-c32", "l7-h1-c4", "l7-h1-r5k", "l7-h2-c4m8", "l7-h2-c4m1", "l7-h2-r5k"];

/// Workloads, in report order.
pub const WORKLOADS: [&str; 8] = ["keepalive-c1", "keepalive-c32", "keepalive-c128", "newconn-c32", "responder-c32", "bulk-1", "bulk-4", "integrity"];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// CPU seconds spent during the workload's window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    /// keel's process (user + system), from its cgroup's cpu.stat; with a keel on each node, their sum.
    pub keel_s: f64,
    /// keel's user-space share of `keel_s`. keel's system time is also in `kernel_system_s` (machine-wide), so
    /// "keel + kernel" adds only this part to the kernel's time, counting nothing twice.
    #[serde(default)]
    pub keel_user_s: f64,
    /// The load generator's pod cgroup (wrk, iperf3 client).
    pub client_s: f64,
    /// The server pod's cgroup (nginx, iperf3 server).
    pub server_s: f64,
    /// Machine-wide kernel time from /proc/stat: system + softirq (+ irq), all CPUs.
    pub kernel_system_s: f64,
    pub kernel_softirq_s: f64,
    /// Run time of keel's eBPF programs (kernel.bpf_stats_enabled), all programs summed.
    pub bpf_s: f64,
    /// `keel_s` node by node (node 0 first); empty in results from before cross-node arms.
    #[serde(default)]
    pub keel_by_node_s: Vec<f64>,
    /// The proxy's processes (user + system, /proc/<pid>/stat): keel's process, or nginx's master and workers in
    /// the L7 comparison's nginx arm; the same method for both. 0 without a proxy and in older results.
    #[serde(default)]
    pub proxy_s: f64,
    /// The user-space share of `proxy_s` (its system time is also in `kernel_system_s`).
    #[serde(default)]
    pub proxy_user_s: f64,
}

/// Failures are results, not aborts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Failures {
    /// wrk: connect/read/write/timeout errors.
    pub socket_errors: u64,
    /// wrk: non-2xx/3xx responses.
    pub non_2xx: u64,
    /// nstat TcpExtTCPSynRetrans, both pods.
    pub syn_retransmits: u64,
    /// nstat TcpExtListenDrops, both pods.
    pub listen_drops: u64,
    /// iperf3 or integrity transfer errors (a failed run counts 1).
    pub transfer_errors: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.socket_errors + self.non_2xx + self.listen_drops + self.transfer_errors
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub arm: String,
    pub workload: String,
    /// Nodes the arm spread its two pods over: 2 for the cross-node arms (client on node 0, server on node 1);
    /// 1, or 0 in results from before cross-node arms, for one node.
    #[serde(default)]
    pub nodes: u32,
    /// Repetition number, from 0.
    pub rep: u32,
    /// Position of this arm within its repetition (rotating start).
    pub order: u32,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Completed requests (HTTP workloads), 0 otherwise.
    pub requests: u64,
    pub requests_per_s: f64,
    /// Payload bytes moved (bulk and integrity), 0 otherwise.
    pub bytes: u64,
    pub gbit_per_s: f64,
    /// HTTP workloads only.
    pub latency: Option<Latency>,
    pub cpu: Cpu,
    /// keel's peak resident set (VmHWM) at the end of the workload, KiB; 0 for the direct arm. With a keel on
    /// each node, their sum.
    pub keel_rss_kib: u64,
    /// `keel_rss_kib` node by node (node 0 first); empty without keel and in older results.
    #[serde(default)]
    pub keel_rss_by_node_kib: Vec<u64>,
    /// Each keel's resident set (VmRSS, KiB) once it was up with its pods enrolled, before any traffic of its arm:
    /// the idle footprint, node by node. The same for every sample of one keel; empty without keel.
    #[serde(default)]
    pub keel_idle_rss_by_node_kib: Vec<u64>,
    /// Cross-node integrity: how both keels carried the echo, from their own records, once checked against the
    /// arm (e.g. "hbone, mutual TLS (bench-client → bench-server); every inbound record mTLS"); empty otherwise.
    #[serde(default)]
    pub keel_path: String,
    /// The proxy's peak resident set (VmHWM; summed over nginx's master and workers), KiB; 0 without a proxy.
    #[serde(default)]
    pub proxy_rss_kib: u64,
    /// The proxy's proportional set size (Pss, smaps_rollup) at the end of the workload, summed over its
    /// processes: shared pages (nginx's workers share the master's) counted once. KiB; 0 without a proxy.
    #[serde(default)]
    pub proxy_pss_kib: u64,
    /// L7 arms: requests to catalog the proxy itself counted during the workload (keel: `istio_requests_total`;
    /// nginx: access-log lines), checked against the client's count; `None` where nothing counts them.
    #[serde(default)]
    pub proxy_requests: Option<u64>,
    pub failures: Failures,
    /// Integrity: the echoed blob's checksum matched. Other workloads: the tool ran and reported.
    pub ok: bool,
    /// Anything worth knowing (a tool's error text, "n/a for this arm").
    pub note: String,
}

impl Sample {
    /// Measured across two (or more) nodes.
    pub fn cross_node(&self) -> bool {
        self.nodes > 1
    }
}

/// What the run was, for the report header and results.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub started: String,
    pub command: String,
    pub kernel: String,
    pub cpus: u32,
    pub cpu_model: String,
    pub iptables_backend: String,
    pub repetitions: u32,
    pub workload_seconds: f64,
    pub quick: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub info: RunInfo,
    pub samples: Vec<Sample>,
}
