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
            // Read per process by the L7 arms (`processes_cpu_s`), not from cgroups.
            proxy_s: 0.0,
            proxy_user_s: 0.0,
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
/// A cgroup's user+sys CPU so far, seconds.
pub fn cgroup_cpu_s(cgroup: &Path) -> Result<f64> {
    Ok(cgroup_cpu_usec(cgroup, "usage_usec")? as f64 / 1e6)
}

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

/// CPU seconds (user, system) a set of processes has used so far, from /proc/<pid>/stat (all threads, dead ones
/// included): the proxy's cost measured the same way whatever the proxy is — keel's one process, or nginx's master
/// and workers.
pub fn processes_cpu_s(pids: &[u32]) -> Result<(f64, f64)> {
    let ticks = clock_ticks_per_second();
    let (mut user, mut system) = (0u64, 0u64);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
        let (u, s) = parse_pid_stat_times(&stat).with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
        user += u;
        system += s;
    }
    Ok((user as f64 / ticks, system as f64 / ticks))
}

/// The fields after the command name (which may hold spaces and parentheses) of /proc/<pid>/stat, from field 3
/// (state) on.
fn pid_stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect())
}

/// (utime, stime) in clock ticks: fields 14 and 15 of /proc/<pid>/stat.
fn parse_pid_stat_times(stat: &str) -> Option<(u64, u64)> {
    let f = pid_stat_fields(stat)?;
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// The processes whose parent is `parent` (nginx's workers under its master), from /proc/*/stat.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| pid_stat_fields(&s)?.get(1)?.parse::<u32>().ok()) == Some(parent)
        })
        .collect();
    children.sort_unstable();
    children
}

/// Proportional set size (Pss from smaps_rollup) of a process, KiB: pages shared with other processes counted
/// by their share. 0 if unreadable.
pub fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok().and_then(|s| parse_kib_field(&s, "Pss:")).unwrap_or(0)
}

/// `Key:   1234 kB` from /proc status-like files.
fn parse_kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set of a process now (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| parse_kib_field(&s, "VmRSS:")).unwrap_or(0)
}

/// Threads of a process now (0 if unreadable).
pub fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// Peak resident set of a process (VmHWM), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| parse_kib_field(&s, "VmHWM:")).unwrap_or(0)
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
    fn parses_process_counters() {
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        let stat = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 300 0 0 0 1500 250 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_pid_stat_times(stat), Some((1500, 250)));
        assert_eq!(pid_stat_fields(stat).unwrap()[1], "4241");
        assert_eq!(parse_pid_stat_times("4242 (keel) S 1 2"), None);
        let rollup = "55d0a000-7ffd0000 ---p 00000000 00:00 0  [rollup]\nRss:               10240 kB\nPss:                4096 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(4096));
        assert_eq!(parse_kib_field("VmHWM:\t   20480 kB\n", "VmHWM:"), Some(20480));
        // This process is measurable; a process that does not exist is an error, not 0.
        let me = std::process::id();
        assert!(processes_cpu_s(&[me]).is_ok() && pss_kib(me) > 0 && peak_rss_kib(me) > 0);
        assert!(processes_cpu_s(&[u32::MAX]).is_err());
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
