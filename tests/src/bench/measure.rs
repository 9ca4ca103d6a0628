//! Cost counters read before and after each workload: CPU of keel (every node's), client and server (their
//! cgroups' cpu.stat),
//! machine-wide kernel time (/proc/stat), eBPF run time (bpftool, with kernel.bpf_stats_enabled), TCP failure
//! counters of each pod (/proc/net/netstat inside its namespace) and keel's peak RSS.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::model::Cpu;

/// Absolute counter values at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per keel cgroup (one per node running keel), in node order.
    keel_usec: Vec<u64>,
    keel_user_usec: Vec<u64>,
    client_usec: u64,
    server_usec: u64,
    kernel_system_ticks: u64,
    kernel_softirq_ticks: u64,
    bpf_ns: u64,
    syn_retransmits: u64,
    listen_drops: u64,
}

/// Where to read from.
pub struct Probes {
    /// Each node's keel cgroup (none without keel); their CPU is summed.
    pub keel_cgroups: Vec<PathBuf>,
    pub client_cgroup: PathBuf,
    pub server_cgroup: PathBuf,
    pub pod_netns: Vec<PathBuf>,
}

impl Probes {
    pub fn snapshot(&self) -> Result<Snapshot> {
        let (system, softirq) = kernel_ticks()?;
        let (mut syn_retransmits, mut listen_drops) = (0, 0);
        for netns in &self.pod_netns {
            let (s, l) = tcp_failures(netns)?;
            syn_retransmits += s;
            listen_drops += l;
        }
        Ok(Snapshot {
            keel_usec: self.keel_cgroups.iter().map(|c| cgroup_cpu_usec(c, "usage_usec")).collect::<Result<_>>()?,
            keel_user_usec: self.keel_cgroups.iter().map(|c| cgroup_cpu_usec(c, "user_usec")).collect::<Result<_>>()?,
            client_usec: cgroup_cpu_usec(&self.client_cgroup, "usage_usec")?,
            server_usec: cgroup_cpu_usec(&self.server_cgroup, "usage_usec")?,
            kernel_system_ticks: system,
            kernel_softirq_ticks: softirq,
            bpf_ns: keel_bpf_run_time_ns().unwrap_or(0),
            syn_retransmits,
            listen_drops,
        })
    }
}

/// The cost between two snapshots.
pub struct Delta {
    pub cpu: Cpu,
    pub syn_retransmits: u64,
    pub listen_drops: u64,
}

pub fn delta(before: &Snapshot, after: &Snapshot) -> Delta {
    let ticks = clock_ticks_per_second();
    let usec = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    let per_keel = |a: &[u64], b: &[u64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| usec(*a, *b)).collect() };
    // Not `Iterator::sum`: over no keel at all it is -0.0, which the report would print as "-0".
    let total = |v: &[f64]| v.iter().fold(0.0, |t, x| t + x);
    let keel_by_node_s = per_keel(&after.keel_usec, &before.keel_usec);
    Delta {
        cpu: Cpu {
            keel_s: total(&keel_by_node_s),
            keel_user_s: total(&per_keel(&after.keel_user_usec, &before.keel_user_usec)),
            client_s: usec(after.client_usec, before.client_usec),
            server_s: usec(after.server_usec, before.server_usec),
            kernel_system_s: after.kernel_system_ticks.saturating_sub(before.kernel_system_ticks) as f64 / ticks,
            kernel_softirq_s: after.kernel_softirq_ticks.saturating_sub(before.kernel_softirq_ticks) as f64 / ticks,
            bpf_s: after.bpf_ns.saturating_sub(before.bpf_ns) as f64 / 1e9,
            keel_by_node_s,
        },
        syn_retransmits: after.syn_retransmits.saturating_sub(before.syn_retransmits),
        listen_drops: after.listen_drops.saturating_sub(before.listen_drops),
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// A field of a cgroup v2 directory's cpu.stat (present whether or not the cpu controller is enabled).
fn cgroup_cpu_usec(cgroup: &Path, key: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(cgroup.join("cpu.stat")).with_context(|| format!("reading {}/cpu.stat", cgroup.display()))?;
    parse_flat_keyed(&stat, key).with_context(|| format!("no {key} in {}/cpu.stat", cgroup.display()))
}

fn parse_flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// (system + irq, softirq) ticks of all CPUs from /proc/stat.
fn kernel_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&stat).context("unexpected /proc/stat")
}

fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq ...
    Some((f.get(2)? + f.get(5)?, *f.get(6)?))
}

/// (TcpExt.TCPSynRetrans, TcpExt.ListenDrops) inside a network namespace.
fn tcp_failures(netns: &Path) -> Result<(u64, u64)> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["cat", "/proc/net/netstat"])
        .output()
        .context("nsenter cat /proc/net/netstat")?;
    if !out.status.success() {
        bail!("reading /proc/net/netstat in {}: {}", netns.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |name| netstat_value(&text, "TcpExt:", name).unwrap_or(0);
    Ok((get("TCPSynRetrans"), get("ListenDrops")))
}

/// /proc/net/netstat pairs a header line of names with a line of values, both starting with `prefix`.
fn netstat_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names.zip(values).find(|(n, _)| *n == name).and_then(|(_, v)| v.parse().ok())
}

/// Sum of `run_time_ns` over keel's programs (names start with `keel_`).
fn keel_bpf_run_time_ns() -> Result<u64> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("bpftool prog show")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("keel_")))
        .filter_map(|p| p["run_time_ns"].as_u64())
        .sum())
}

/// Peak resident set of a process (VmHWM), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// Turns on per-program run-time accounting for the run and restores the previous value afterwards.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let previous = std::fs::read_to_string(path).context("reading kernel.bpf_stats_enabled")?.trim().to_owned();
        std::fs::write(path, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_counters() {
        let stat = "cpu  100 5 40 9000 3 2 7 0 0 0\ncpu0 50 2 20 4500 1 1 3 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((42, 7)));
        let netstat = "TcpExt: SyncookiesSent ListenDrops TCPSynRetrans\nTcpExt: 0 4 9\nIpExt: InNoRoutes\nIpExt: 1\n";
        assert_eq!(netstat_value(netstat, "TcpExt:", "TCPSynRetrans"), Some(9));
        assert_eq!(netstat_value(netstat, "TcpExt:", "ListenDrops"), Some(4));
        assert_eq!(netstat_value(netstat, "TcpExt:", "Missing"), None);
        assert_eq!(parse_flat_keyed("usage_usec 1234\nuser_usec 1000\n", "usage_usec"), Some(1234));
    }

    #[test]
    fn keel_cpu_is_summed_over_nodes() {
        let before = Snapshot { keel_usec: vec![1_000_000, 2_000_000], keel_user_usec: vec![500_000, 1_000_000], ..Default::default() };
        let after = Snapshot { keel_usec: vec![1_500_000, 4_000_000], keel_user_usec: vec![700_000, 2_000_000], ..Default::default() };
        let cpu = delta(&before, &after).cpu;
        assert_eq!((cpu.keel_s, cpu.keel_user_s), (2.5, 1.2));
        assert_eq!(cpu.keel_by_node_s, [0.5, 2.0]);
        let none = delta(&Snapshot::default(), &Snapshot::default()).cpu;
        assert_eq!((none.keel_s, none.keel_by_node_s.len()), (0.0, 0));
        assert!(none.keel_s.is_sign_positive() && none.keel_user_s.is_sign_positive(), "no keel: +0, not -0");
    }
}
