//! The benchmark's report, derived from [`Results`] alone (so `results.json` can be re-reported later): medians and
//! spread per (workload, arm), ratios between arms of the same run, the targets as a checklist, `report.md`,
//! and the compact summary the runner prints. Everything is a pure function except [`write_all`].
use std::{fmt, fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use super::model::{Failures, Results, RunInfo, Sample, ARMS, CROSS_NODE_ARMS, L7_ARMS, L7_WORKLOADS, WORKLOADS};

/// Shown for anything not measured: a missing (workload, arm), a ratio without its baseline.
pub const MISSING: &str = "–";

/// What a workload measures, which decides its headline metric and its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// wrk: req/s, latency, CPU per request.
    Http,
    /// iperf3: Gbit/s, CPU per GB.
    Bulk,
    /// The echoed blob: ok or not.
    Integrity,
}

pub fn kind(workload: &str) -> Kind {
    if workload.starts_with("bulk") {
        Kind::Bulk
    } else if workload.starts_with("integrity") {
        Kind::Integrity
    } else {
        Kind::Http
    }
}

/// Median and spread over repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` when there is no (finite) value: shown as "–", never as 0.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }
}

/// CPU per unit of work — µs per request (HTTP) or s per GB moved (bulk) — each part the median over repetitions
/// of that repetition's own ratio (so the parts need not add up to `keel_kernel` exactly).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuCost {
    /// keel's user time + kernel (system + softirq, which already holds keel's system time): the cost the
    /// capture choice changes.
    pub keel_kernel: Spread,
    pub keel: Spread,
    pub kernel: Spread,
    pub client: Spread,
    pub server: Spread,
    pub bpf: Spread,
    /// The proxy's processes, user + system (/proc/<pid>/stat): keel, or nginx's master and workers.
    pub proxy: Spread,
    /// The proxy's user time + kernel (system + softirq, all CPUs), as `keel_kernel` is for keel.
    pub proxy_kernel: Spread,
}

/// One (workload, arm) over its repetitions. Medians use only runs whose tool reported (`ok`): a run that did not
/// report has no throughput to speak of; it is counted in `runs - ok` and in the failures instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub workload: String,
    pub arm: String,
    pub kind: Kind,
    /// Samples (repetitions) seen.
    pub runs: usize,
    /// Samples with `ok` (integrity: checksum matched).
    pub ok: usize,
    pub requests_per_s: Option<Spread>,
    pub gbit_per_s: Option<Spread>,
    pub p50_ms: Option<Spread>,
    pub p90_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub cpu: Option<CpuCost>,
    /// keel's peak RSS (KiB) over repetitions; `None` without keel (direct arm). With a keel on each node, the
    /// sum of their peaks.
    pub keel_rss_kib: Option<Spread>,
    /// keel's CPU per unit of work (as in [`CpuCost::keel`]) node by node, node 0 (the client's) first.
    pub keel_cpu_by_node: Vec<Option<Spread>>,
    /// keel's peak RSS (KiB) node by node.
    pub keel_rss_by_node_kib: Vec<Option<Spread>>,
    /// The largest idle RSS (KiB) of the arm's keels, before its first workload (see [`Sample::keel_idle_rss_by_node_kib`]).
    pub keel_idle_rss_kib: Option<Spread>,
    /// How keel carried the checked transfer (cross-node integrity), each distinct description once.
    pub keel_paths: Vec<String>,
    /// The proxy's memory, KiB (L7 arms): PSS at the end of the workload and peak RSS, summed over its processes.
    pub proxy_pss_kib: Option<Spread>,
    pub proxy_rss_kib: Option<Spread>,
    /// L7 arms with a proxy: (requests the proxy counted itself, requests the client completed), summed.
    pub proxy_counted: Option<(u64, u64)>,
    /// Summed over all repetitions, field by field.
    pub failures: Failures,
}

impl Aggregate {
    fn from_samples(workload: &str, arm: &str, samples: &[&Sample]) -> Aggregate {
        let kind = kind(workload);
        let ok: Vec<&Sample> = samples.iter().copied().filter(|s| s.ok).collect();
        let lat = |f: fn(&super::model::Latency) -> f64| Spread::of(ok.iter().filter_map(|s| s.latency.as_ref().map(f)));
        let mut failures = Failures::default();
        for s in samples {
            let f = &s.failures;
            failures.socket_errors += f.socket_errors;
            failures.non_2xx += f.non_2xx;
            failures.syn_retransmits += f.syn_retransmits;
            failures.listen_drops += f.listen_drops;
            failures.transfer_errors += f.transfer_errors;
        }
        let is_http = kind == Kind::Http;
        let per_unit = per_unit(kind, &ok);
        let nodes = samples.iter().map(|s| s.cpu.keel_by_node_s.len().max(s.keel_rss_by_node_kib.len())).max().unwrap_or(0);
        let mut keel_paths: Vec<String> = Vec::new();
        for s in samples.iter().filter(|s| !s.keel_path.is_empty()) {
            if !keel_paths.contains(&s.keel_path) {
                keel_paths.push(s.keel_path.clone());
            }
        }
        Aggregate {
            workload: workload.to_owned(),
            arm: arm.to_owned(),
            kind,
            runs: samples.len(),
            ok: ok.len(),
            requests_per_s: if is_http { Spread::of(ok.iter().map(|s| s.requests_per_s)) } else { None },
            gbit_per_s: if is_http { None } else { Spread::of(ok.iter().map(|s| s.gbit_per_s)) },
            p50_ms: lat(|l| l.p50_ms),
            p90_ms: lat(|l| l.p90_ms),
            p99_ms: lat(|l| l.p99_ms),
            cpu: cpu_cost(&per_unit),
            keel_rss_kib: Spread::of(samples.iter().filter(|s| s.keel_rss_kib > 0).map(|s| s.keel_rss_kib as f64)),
            keel_cpu_by_node: (0..nodes).map(|k| Spread::of(per_unit.iter().filter_map(|(s, d)| Some(s.cpu.keel_by_node_s.get(k)? / d)))).collect(),
            keel_rss_by_node_kib: (0..nodes)
                .map(|k| Spread::of(samples.iter().filter_map(|s| s.keel_rss_by_node_kib.get(k)).filter(|v| **v > 0).map(|v| *v as f64)))
                .collect(),
            keel_paths,
            proxy_pss_kib: Spread::of(samples.iter().filter(|s| s.proxy_pss_kib > 0).map(|s| s.proxy_pss_kib as f64)),
            proxy_rss_kib: Spread::of(samples.iter().filter(|s| s.proxy_rss_kib > 0).map(|s| s.proxy_rss_kib as f64)),
            keel_idle_rss_kib: Spread::of(samples.iter().filter_map(|s| s.keel_idle_rss_by_node_kib.iter().max()).map(|v| *v as f64)),
            proxy_counted: samples.iter().filter_map(|s| Some((s.proxy_requests?, s.requests))).reduce(|(a, b), (c, d)| (a + c, b + d)),
            failures,
        }
    }

    /// The headline metric: req/s (HTTP) or Gbit/s (bulk); integrity has none.
    pub fn headline(&self) -> Option<Spread> {
        match self.kind {
            Kind::Http => self.requests_per_s,
            Kind::Bulk => self.gbit_per_s,
            Kind::Integrity => None,
        }
    }
}

/// Each sample with the work it did, as the divisor turning its CPU seconds into µs per request (HTTP) or
/// s per GB moved (bulk); samples with no such work are left out.
fn per_unit<'a>(kind: Kind, samples: &[&'a Sample]) -> Vec<(&'a Sample, f64)> {
    samples
        .iter()
        .filter_map(|s| {
            let divisor = match kind {
                Kind::Http if s.requests > 0 => s.requests as f64 / 1e6, // seconds / (requests / 1e6) = µs/request
                Kind::Bulk if s.bytes > 0 => s.bytes as f64 / 1e9,       // seconds / GB
                _ => return None,
            };
            Some((*s, divisor))
        })
        .collect()
}

/// Per-sample CPU divided by the work done (requests, or GB moved), then the median of each part.
fn cpu_cost(per_unit: &[(&Sample, f64)]) -> Option<CpuCost> {
    let part = |f: fn(&Sample) -> f64| Spread::of(per_unit.iter().map(|(s, d)| f(s) / d));
    Some(CpuCost {
        keel_kernel: part(|s| s.cpu.keel_user_s + s.cpu.kernel_system_s + s.cpu.kernel_softirq_s)?,
        keel: part(|s| s.cpu.keel_s)?,
        kernel: part(|s| s.cpu.kernel_system_s + s.cpu.kernel_softirq_s)?,
        client: part(|s| s.cpu.client_s)?,
        server: part(|s| s.cpu.server_s)?,
        bpf: part(|s| s.cpu.bpf_s)?,
        proxy: part(|s| s.cpu.proxy_s)?,
        proxy_kernel: part(|s| s.cpu.proxy_user_s + s.cpu.kernel_system_s + s.cpu.kernel_softirq_s)?,
    })
}

/// A metric compared between arms, always on medians.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// req/s (HTTP) or Gbit/s (bulk).
    Headline,
    P50,
    P99,
    /// keel + kernel CPU per request (HTTP) or per GB (bulk).
    CpuPerUnit,
    /// keel's CPU alone (every node's keel) per request or per GB.
    KeelCpuPerUnit,
    /// The proxy's CPU (user + system of its processes) per request: the L7 comparison's.
    ProxyCpuPerUnit,
    /// The proxy's user time + kernel per request.
    ProxyKernelCpuPerUnit,
    /// The proxy's memory (PSS, summed over its processes).
    ProxyPss,
    /// The peak RSS of the arm's largest keel (KiB), i.e. per keel rather than summed over nodes.
    KeelPeakRssPerKeel,
    /// The idle RSS of the arm's largest keel (KiB), before any traffic.
    KeelIdleRssPerKeel,
}

impl Metric {
    fn of(self, a: &Aggregate) -> Option<f64> {
        match self {
            Metric::Headline => a.headline(),
            Metric::P50 => a.p50_ms,
            Metric::P99 => a.p99_ms,
            Metric::CpuPerUnit => a.cpu.map(|c| c.keel_kernel),
            Metric::KeelCpuPerUnit => a.cpu.map(|c| c.keel),
            // No proxy (no process measured, so no memory either): no proxy CPU, rather than 0.
            Metric::ProxyCpuPerUnit => a.proxy_pss_kib.and(a.cpu.map(|c| c.proxy)),
            Metric::ProxyKernelCpuPerUnit => a.proxy_pss_kib.and(a.cpu.map(|c| c.proxy_kernel)),
            Metric::ProxyPss => a.proxy_pss_kib,
            Metric::KeelPeakRssPerKeel => {
                let per_node = a.keel_rss_by_node_kib.iter().flatten().map(|s| s.median).reduce(f64::max);
                return per_node.or(a.keel_rss_kib.map(|s| s.median));
            }
            Metric::KeelIdleRssPerKeel => a.keel_idle_rss_kib,
        }
        .map(|s| s.median)
    }
}

/// Every (workload, arm) of one run, in report order: the known arms and workloads first, then any others found in
/// the samples (a new arm or workload shows up without touching the report).
#[derive(Clone, Debug)]
pub struct Report {
    pub info: RunInfo,
    /// Single-node arms (both pods on one node): the capture comparison, targets and chart.
    pub arms: Vec<String>,
    /// Cross-node arms (client on node 0, server on node 1): their own section, compared among themselves.
    pub cross_arms: Vec<String>,
    /// The L7 comparison's arms: their own section, workloads and targets.
    pub l7_arms: Vec<String>,
    /// Workloads of the capture and cross-node arms.
    pub workloads: Vec<String>,
    /// The L7 arms' workloads.
    pub l7_workloads: Vec<String>,
    /// Only pairs with at least one sample.
    pub rows: Vec<Aggregate>,
}

pub fn aggregate(results: &Results) -> Report {
    let ordered = |known: &[&str], found: &mut dyn Iterator<Item = &String>| {
        let mut all: Vec<String> = known.iter().map(|s| s.to_string()).collect();
        for name in found {
            if !all.contains(name) {
                all.push(name.clone());
            }
        }
        all
    };
    let known_arms: Vec<&str> = ARMS.iter().chain(&CROSS_NODE_ARMS).chain(&L7_ARMS).copied().collect();
    let all_arms = ordered(&known_arms, &mut results.samples.iter().map(|s| &s.arm));
    let is_cross = |a: &String| CROSS_NODE_ARMS.contains(&a.as_str()) || results.samples.iter().any(|s| &s.arm == a && s.cross_node());
    let (l7_arms, others): (Vec<String>, Vec<String>) = all_arms.iter().cloned().partition(|a| is_l7_arm(a));
    let (cross_arms, arms): (Vec<String>, Vec<String>) = others.into_iter().partition(is_cross);
    let (l7_found, found): (Vec<&String>, Vec<&String>) = results.samples.iter().map(|s| &s.workload).partition(|w| is_l7_workload(w));
    let workloads = ordered(&WORKLOADS, &mut found.into_iter());
    let l7_workloads = ordered(&L7_WORKLOADS, &mut l7_found.into_iter());
    let mut rows = Vec::new();
    for w in workloads.iter().chain(&l7_workloads) {
        for a in &all_arms {
            let samples: Vec<&Sample> = results.samples.iter().filter(|s| &s.workload == w && &s.arm == a).collect();
            if !samples.is_empty() {
                rows.push(Aggregate::from_samples(w, a, &samples));
            }
        }
    }
    Report { info: results.info.clone(), arms, cross_arms, l7_arms, workloads, l7_workloads, rows }
}

/// The L7 comparison's arms and workloads go by their `l7-` prefix (so a new one lands in its section unnamed).
fn is_l7_arm(arm: &str) -> bool {
    L7_ARMS.contains(&arm) || arm.starts_with("l7-")
}

fn is_l7_workload(workload: &str) -> bool {
    L7_WORKLOADS.contains(&workload) || workload.starts_with("l7-")
}

impl Report {
    pub fn get(&self, workload: &str, arm: &str) -> Option<&Aggregate> {
        self.rows.iter().find(|r| r.workload == workload && r.arm == arm)
    }

    pub fn median(&self, workload: &str, arm: &str, metric: Metric) -> Option<f64> {
        metric.of(self.get(workload, arm)?)
    }

    /// `arm`'s median over `baseline`'s median, same workload, same run. `None` if either is missing or the
    /// baseline is 0.
    pub fn ratio(&self, workload: &str, arm: &str, baseline: &str, metric: Metric) -> Option<f64> {
        let base = self.median(workload, baseline, metric)?;
        (base != 0.0).then_some(self.median(workload, arm, metric)? / base)
    }

    fn workloads_of(&self, kind: Kind) -> impl Iterator<Item = &String> {
        self.workloads.iter().filter(move |w| self::kind(w) == kind)
    }

    /// Whether any (workload, arm) of `arms` was measured (for `workload`, if given).
    fn measured_any(&self, arms: &[String], workload: Option<&str>) -> bool {
        self.rows.iter().any(|g| arms.contains(&g.arm) && workload.is_none_or(|w| g.workload == w))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Targets (issue 3, "Targets"): declared once, evaluated against the run's medians.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// An input is missing: never counted as a pass.
    NotMeasured,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotMeasured => "NOT MEASURED",
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// `arm / baseline` on `metric` must be ≥ `bound` (`at_least`) or ≤ `bound`.
    Ratio { arm: &'static str, baseline: &'static str, workload: &'static str, metric: Metric, at_least: bool, bound: f64 },
    /// `arm`'s median minus `baseline`'s on a latency `metric`, in µs, must be ≤ `bound_us`.
    AddedUs { arm: &'static str, baseline: &'static str, workload: &'static str, metric: Metric, bound_us: f64 },
    /// Every run reported and no transfer error, over all repetitions.
    ZeroFailures { arm: &'static str, workload: &'static str },
    /// `arm`'s median on `metric`, times `scale` (into `unit`), must be ≤ `bound`.
    AtMost { arm: &'static str, workload: &'static str, metric: Metric, scale: f64, unit: &'static str, bound: f64 },
}

#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub label: &'static str,
    pub rule: Rule,
}

const fn ratio(arm: &'static str, baseline: &'static str, workload: &'static str, metric: Metric, at_least: bool, bound: f64) -> Rule {
    Rule::Ratio { arm, baseline, workload, metric, at_least, bound }
}

pub const TARGETS: [Target; 10] = [
    Target { label: "ebpf vs iptables: newconn-c32 req/s ≥ 1.2×", rule: ratio("ebpf", "iptables", "newconn-c32", Metric::Headline, true, 1.2) },
    Target {
        label: "ebpf vs iptables: keepalive-c32 req/s ≥ 1.0×", rule: ratio("ebpf", "iptables", "keepalive-c32", Metric::Headline, true, 1.0)
    },
    Target { label: "ebpf vs iptables: keepalive-c32 p99 ≤ 1.0×", rule: ratio("ebpf", "iptables", "keepalive-c32", Metric::P99, false, 1.0) },
    Target {
        label: "ebpf vs iptables: newconn-c32 CPU/request (keel+kernel) ≤ 0.8×",
        rule: ratio("ebpf", "iptables", "newconn-c32", Metric::CpuPerUnit, false, 0.8),
    },
    Target {
        label: "ebpf+splice vs iptables: keepalive-c32 req/s ≥ 1.6×",
        rule: ratio("ebpf+splice", "iptables", "keepalive-c32", Metric::Headline, true, 1.6),
    },
    Target {
        label: "ebpf+splice vs iptables: keepalive-c1 (unloaded) p50 ≤ 0.8×",
        rule: ratio("ebpf+splice", "iptables", "keepalive-c1", Metric::P50, false, 0.8),
    },
    Target { label: "ebpf+splice: bulk-1 with zero failures", rule: Rule::ZeroFailures { arm: "ebpf+splice", workload: "bulk-1" } },
    Target { label: "ebpf+splice: bulk-4 with zero failures", rule: Rule::ZeroFailures { arm: "ebpf+splice", workload: "bulk-4" } },
    Target {
        label: "ebpf relay vs direct: keepalive-c32 req/s ≥ 0.6×", rule: ratio("ebpf", "direct", "keepalive-c32", Metric::Headline, true, 0.6)
    },
    Target { label: "ebpf relay vs direct: bulk-1 Gbit/s ≥ 0.6×", rule: ratio("ebpf", "direct", "bulk-1", Metric::Headline, true, 0.6) },
];

#[derive(Clone, Debug, PartialEq)]
pub struct TargetCheck {
    pub label: String,
    /// What was measured, e.g. "1.34×" or "transfer errors 0, runs ok 9/9"; "–" when not measured.
    pub measured: String,
    pub verdict: Verdict,
}

impl fmt::Display for TargetCheck {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:<12}  {} — measured {}", self.verdict.to_string(), self.label, self.measured)
    }
}

pub fn check(report: &Report, target: &Target) -> TargetCheck {
    let (measured, verdict) = match target.rule {
        Rule::Ratio { arm, baseline, workload, metric, at_least, bound } => match report.ratio(workload, arm, baseline, metric) {
            None => (MISSING.to_owned(), Verdict::NotMeasured),
            Some(r) => {
                let pass = if at_least { r >= bound } else { r <= bound };
                (format!("{r:.2}×"), if pass { Verdict::Pass } else { Verdict::Miss })
            }
        },
        Rule::AddedUs { arm, baseline, workload, metric, bound_us } => {
            match (report.median(workload, arm, metric), report.median(workload, baseline, metric)) {
                (Some(a), Some(b)) => {
                    let added = (a - b) * 1e3;
                    (format!("{added:+.0} µs"), if added <= bound_us { Verdict::Pass } else { Verdict::Miss })
                }
                _ => (MISSING.to_owned(), Verdict::NotMeasured),
            }
        }
        Rule::AtMost { arm, workload, metric, scale, unit, bound } => match report.median(workload, arm, metric) {
            None => (MISSING.to_owned(), Verdict::NotMeasured),
            Some(v) => {
                let v = v * scale;
                (format!("{} {unit}", num(v)), if v <= bound { Verdict::Pass } else { Verdict::Miss })
            }
        },
        Rule::ZeroFailures { arm, workload } => match report.get(workload, arm) {
            None => (MISSING.to_owned(), Verdict::NotMeasured),
            Some(a) => {
                let errors = a.failures.transfer_errors;
                let pass = errors == 0 && a.ok == a.runs;
                (format!("transfer errors {errors}, runs ok {}/{}", a.ok, a.runs), if pass { Verdict::Pass } else { Verdict::Miss })
            }
        },
    };
    TargetCheck { label: target.label.to_owned(), measured, verdict }
}

pub fn check_targets(report: &Report) -> Vec<TargetCheck> {
    TARGETS.iter().map(|t| check(report, t)).collect()
}

// Issue 13's targets ("keel fast where it matters"), across the run's sections: same-node traffic bypassing keel once
// authorized, HBONE's CPU per byte and per new connection, L7 requests/s against nginx, and keel's footprint.
const fn at_most(arm: &'static str, workload: &'static str, metric: Metric, (scale, unit): (f64, &'static str), bound: f64) -> Rule {
    Rule::AtMost { arm, workload, metric, scale, unit, bound }
}

const MIB: (f64, &str) = (1.0 / 1024.0, "MiB");

pub const FAST_TARGETS: [Target; 14] = [
    Target {
        label: "bypass vs direct: keepalive-c32 req/s ≥ 0.9×", rule: ratio("bypass", "direct", "keepalive-c32", Metric::Headline, true, 0.9)
    },
    Target { label: "bypass vs direct: bulk-1 Gbit/s ≥ 0.9×", rule: ratio("bypass", "direct", "bulk-1", Metric::Headline, true, 0.9) },
    Target { label: "bypass vs direct: newconn-c32 req/s ≥ 0.8×", rule: ratio("bypass", "direct", "newconn-c32", Metric::Headline, true, 0.8) },
    Target {
        label: "x-keel-hbone: bulk-1 keel CPU (both keels) ≤ 1.0 s/GB",
        rule: at_most("x-keel-hbone", "bulk-1", Metric::KeelCpuPerUnit, (1.0, "s/GB"), 1.0),
    },
    Target {
        label: "x-keel-hbone vs x-direct: bulk-1 Gbit/s ≥ 0.6×",
        rule: ratio("x-keel-hbone", "x-direct", "bulk-1", Metric::Headline, true, 0.6),
    },
    Target {
        label: "x-keel-hbone vs x-direct: keepalive-c32 req/s ≥ 0.65×",
        rule: ratio("x-keel-hbone", "x-direct", "keepalive-c32", Metric::Headline, true, 0.65),
    },
    Target {
        label: "x-keel-hbone vs x-direct: newconn-c32 req/s ≥ 0.40×",
        rule: ratio("x-keel-hbone", "x-direct", "newconn-c32", Metric::Headline, true, 0.40),
    },
    Target {
        label: "x-keel-hbone: newconn-c32 keel CPU (both keels) ≤ 110 µs/connection",
        rule: at_most("x-keel-hbone", "newconn-c32", Metric::KeelCpuPerUnit, (1.0, "µs/connection"), 110.0),
    },
    Target {
        label: "keel L7 vs nginx: l7-h1-c32 req/s (closed loop) ≥ 1.0×",
        rule: ratio("l7-keel", "l7-nginx", "l7-h1-c32", Metric::Headline, true, 1.0),
    },
    Target {
        label: "keel L7 vs nginx: l7-h2-c4m8 req/s (closed loop) ≥ 1.0×",
        rule: ratio("l7-keel", "l7-nginx", "l7-h2-c4m8", Metric::Headline, true, 1.0),
    },
    Target { label: "keel L7 vs nginx: l7-h1-c32 proxy CPU/request ≤ 1.0×", rule: L7_TARGETS[0].rule },
    Target { label: "keel L7: l7-h1-r5k p50 added ≤ nginx's", rule: ratio("l7-keel", "l7-nginx", "l7-h1-r5k", Metric::P50, false, 1.0) },
    Target { label: "ebpf keel RSS idle ≤ 12 MiB", rule: at_most("ebpf", "keepalive-c1", Metric::KeelIdleRssPerKeel, MIB, 12.0) },
    Target {
        label: "ebpf keel peak RSS through keepalive-c128 ≤ 20 MiB",
        rule: at_most("ebpf", "keepalive-c128", Metric::KeelPeakRssPerKeel, MIB, 20.0),
    },
];

const FAST_TARGETS_TITLE: &str = "Targets of issue 13 (same node, HBONE, L7, footprint), from whatever this run measured";

pub fn check_fast_targets(report: &Report) -> Vec<TargetCheck> {
    FAST_TARGETS.iter().map(|t| check(report, t)).collect()
}

// Issue 6's targets for the L7 engine: keel L7 uses no more CPU per request than nginx (the proxies' processes,
// user + system), and adds at most 100 µs to the no-proxy p50 at moderate load.
const fn l7_cpu(workload: &'static str, label: &'static str) -> Target {
    Target { label, rule: ratio("l7-keel", "l7-nginx", workload, Metric::ProxyCpuPerUnit, false, 1.0) }
}

const fn l7_p50(workload: &'static str, label: &'static str) -> Target {
    Target { label, rule: Rule::AddedUs { arm: "l7-keel", baseline: "l7-direct", workload, metric: Metric::P50, bound_us: 100.0 } }
}

pub const L7_TARGETS: [Target; 10] = [
    l7_cpu("l7-h1-c32", "keel L7 vs nginx: l7-h1-c32 proxy CPU/request ≤ 1.0×"),
    l7_cpu("l7-h1-c4", "keel L7 vs nginx: l7-h1-c4 proxy CPU/request ≤ 1.0×"),
    l7_cpu("l7-h1-r5k", "keel L7 vs nginx: l7-h1-r5k proxy CPU/request ≤ 1.0×"),
    l7_cpu("l7-h2-c4m8", "keel L7 vs nginx: l7-h2-c4m8 proxy CPU/request ≤ 1.0×"),
    l7_cpu("l7-h2-c4m1", "keel L7 vs nginx: l7-h2-c4m1 proxy CPU/request ≤ 1.0×"),
    l7_cpu("l7-h2-r5k", "keel L7 vs nginx: l7-h2-r5k proxy CPU/request ≤ 1.0×"),
    l7_p50("l7-h1-r5k", "keel L7: l7-h1-r5k (moderate load, 5,000 req/s) p50 added over no proxy ≤ 100 µs"),
    l7_p50("l7-h2-r5k", "keel L7: l7-h2-r5k (moderate load, 5,000 req/s) p50 added over no proxy ≤ 100 µs"),
    l7_p50("l7-h1-c4", "keel L7: l7-h1-c4 (4 in flight, closed loop) p50 added over no proxy ≤ 100 µs"),
    l7_p50("l7-h2-c4m1", "keel L7: l7-h2-c4m1 (4 in flight, closed loop) p50 added over no proxy ≤ 100 µs"),
];

pub fn check_l7_targets(report: &Report) -> Vec<TargetCheck> {
    L7_TARGETS.iter().map(|t| check(report, t)).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting.

/// Three or so significant digits: 28000, 812, 45.2, 3.25, 0.812.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.to_owned(), num)
}

fn median(s: Option<Spread>) -> String {
    opt(s.map(|s| s.median))
}

fn spread(s: Option<Spread>) -> String {
    s.map_or_else(|| MISSING.to_owned(), |s| format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max)))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.to_owned(), |r| format!("{r:.2}×"))
}

/// The total counted as failures, with the non-zero parts; SYN retransmits are shown but are not failures by
/// themselves (the model's `Failures::total`). Runs whose tool did not report are named too.
pub fn failures_cell(a: &Aggregate) -> String {
    let f = &a.failures;
    let parts: Vec<String> = [
        ("socket", f.socket_errors),
        ("non-2xx", f.non_2xx),
        ("listen drops", f.listen_drops),
        ("transfer", f.transfer_errors),
        ("SYN retrans", f.syn_retransmits),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .chain((a.ok < a.runs).then(|| format!("failed runs {}/{}", a.runs - a.ok, a.runs)))
    .collect();
    if parts.is_empty() {
        f.total().to_string()
    } else {
        format!("{} ({})", f.total(), parts.join(", "))
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", header.iter().map(|_| "---|").collect::<String>());
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// A row of dashes for a (workload, arm) never measured.
fn missing_row(workload: &str, arm: &str, columns: usize) -> Vec<String> {
    let mut row = vec![workload.to_owned(), arm.to_owned()];
    row.resize(columns, MISSING.to_owned());
    row
}

fn mib(kib: f64) -> String {
    format!("{} MiB", num(kib / 1024.0))
}

// ---------------------------------------------------------------------------------------------------------------
// report.md

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let capture = report.shows_capture();
    header(&mut out, &report.info, if capture { "eBPF capture vs iptables redirect" } else { "keel's L7 engine vs keel L4 vs nginx" });
    if capture {
        http_tables(&mut out, report);
        bulk_table(&mut out, report);
        integrity_table(&mut out, report);
        resources_table(&mut out, report);
    }
    cross_node_section(&mut out, report);
    l7_section(&mut out, report);
    if capture {
        targets_section(&mut out, report, "Targets (ratios from this run)", &check_targets(report));
    }
    targets_section(&mut out, report, FAST_TARGETS_TITLE, &check_fast_targets(report));
    method(&mut out, &report.info);
    out
}

impl Report {
    /// The capture comparison's sections and targets: shown unless the run measured the L7 arms alone (a run of
    /// cross-node arms alone keeps them, as before the L7 arms).
    fn shows_capture(&self) -> bool {
        self.measured_any(&self.arms, None) || self.measured_any(&self.cross_arms, None) || !self.measured_any(&self.l7_arms, None)
    }
}

/// The markdown report needs the samples' notes (a tool's error text), which the aggregates do not keep.
pub fn markdown_with_notes(report: &Report, results: &Results) -> String {
    let mut out = markdown(report);
    notes(&mut out, results);
    out
}

fn header(out: &mut String, info: &RunInfo, title: &str) {
    let _ = writeln!(out, "# keel benchmark: {title}\n");
    let lines = [
        ("Date", info.started.clone()),
        ("Command", format!("`{}`", info.command)),
        ("Kernel", info.kernel.clone()),
        ("CPUs", format!("{} × {}", info.cpus, info.cpu_model)),
        ("iptables backend", info.iptables_backend.clone()),
        ("Repetitions", info.repetitions.to_string()),
        ("Seconds per workload", num(info.workload_seconds)),
        ("Mode", if info.quick { "quick".to_owned() } else { "full".to_owned() }),
    ];
    for (k, v) in lines {
        let _ = writeln!(out, "- **{k}**: {}", if v.is_empty() { MISSING.to_owned() } else { v });
    }
    let _ = writeln!(
        out,
        "\n{}\n",
        if info.quick {
            "> **Quick run: a smoke test, not for conclusions.** Too few and too short repetitions for the ratios to mean anything."
        } else {
            "> Quick runs (`--quick`) are smoke tests, not for conclusions; this is a full run."
        }
    );
}

fn http_tables(out: &mut String, r: &Report) {
    let _ = writeln!(out, "## HTTP (wrk against nginx; medians over repetitions, [min–max])\n");
    let header = [
        "workload",
        "arm",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "CPU µs/req keel+kernel",
        "keel µs/req",
        "req/s ×iptables",
        "req/s ×direct",
        "failures",
    ];
    let mut rows = Vec::new();
    let mut ratio_rows = Vec::new();
    let mut cpu_rows = Vec::new();
    for w in r.workloads_of(Kind::Http) {
        for a in &r.arms {
            let Some(ag) = r.get(w, a) else {
                rows.push(missing_row(w, a, header.len()));
                continue;
            };
            rows.push(vec![
                w.clone(),
                a.clone(),
                spread(ag.requests_per_s),
                median(ag.p50_ms),
                median(ag.p90_ms),
                median(ag.p99_ms),
                median(ag.cpu.map(|c| c.keel_kernel)),
                median(ag.cpu.map(|c| c.keel)),
                times(r.ratio(w, a, "iptables", Metric::Headline)),
                times(r.ratio(w, a, "direct", Metric::Headline)),
                failures_cell(ag),
            ]);
            ratio_rows.push(ratio_row(r, w, a));
            cpu_rows.push(cpu_row(w, a, ag.cpu));
        }
    }
    table(out, &header, &rows);
    let _ = writeln!(out, "### Ratios (medians of the same run; p99 and CPU: lower is better)\n");
    table(out, &RATIO_HEADER, &ratio_rows);
    let _ = writeln!(out, "### CPU per request, µs (keel: its cgroup, user + system; kernel: system + softirq, all CPUs; keel+kernel: keel's user time + kernel, so keel's system time is counted once; eBPF: program run time)\n");
    table(out, &CPU_HEADER, &cpu_rows);
}

const RATIO_HEADER: [&str; 8] =
    ["workload", "arm", "headline ×iptables", "headline ×direct", "p99 ×iptables", "p99 ×direct", "CPU ×iptables", "CPU ×direct"];

fn ratio_row(r: &Report, w: &str, a: &str) -> Vec<String> {
    let mut row = vec![w.to_owned(), a.to_owned()];
    for metric in [Metric::Headline, Metric::P99, Metric::CpuPerUnit] {
        for base in ["iptables", "direct"] {
            row.push(times(r.ratio(w, a, base, metric)));
        }
    }
    row
}

const CPU_HEADER: [&str; 8] = ["workload", "arm", "keel+kernel", "keel", "kernel", "client", "server", "eBPF"];

fn cpu_row(w: &str, a: &str, cpu: Option<CpuCost>) -> Vec<String> {
    let mut row = vec![w.to_owned(), a.to_owned()];
    match cpu {
        None => row.resize(CPU_HEADER.len(), MISSING.to_owned()),
        Some(c) => row.extend([c.keel_kernel, c.keel, c.kernel, c.client, c.server, c.bpf].map(|s| num(s.median))),
    }
    row
}

fn bulk_table(out: &mut String, r: &Report) {
    let _ = writeln!(out, "## Bulk transfer (iperf3; medians over repetitions, [min–max])\n");
    let header = ["workload", "arm", "Gbit/s", "CPU s/GB keel+kernel", "keel s/GB", "Gbit/s ×iptables", "Gbit/s ×direct", "failures"];
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    for w in r.workloads_of(Kind::Bulk) {
        for a in &r.arms {
            let Some(ag) = r.get(w, a) else {
                rows.push(missing_row(w, a, header.len()));
                continue;
            };
            rows.push(vec![
                w.clone(),
                a.clone(),
                spread(ag.gbit_per_s),
                median(ag.cpu.map(|c| c.keel_kernel)),
                median(ag.cpu.map(|c| c.keel)),
                times(r.ratio(w, a, "iptables", Metric::Headline)),
                times(r.ratio(w, a, "direct", Metric::Headline)),
                failures_cell(ag),
            ]);
            cpu_rows.push(cpu_row(w, a, ag.cpu));
        }
    }
    table(out, &header, &rows);
    let _ = writeln!(out, "### CPU per GB moved, s\n");
    table(out, &CPU_HEADER, &cpu_rows);
}

fn integrity_table(out: &mut String, r: &Report) {
    let _ = writeln!(out, "## Integrity (a large blob echoed through the path, checksum compared)\n");
    let mut rows = Vec::new();
    for w in r.workloads_of(Kind::Integrity) {
        for a in &r.arms {
            rows.push(match r.get(w, a) {
                None => missing_row(w, a, 4),
                Some(ag) => vec![w.clone(), a.clone(), format!("{}/{}", ag.ok, ag.runs), failures_cell(ag)],
            });
        }
    }
    table(out, &["workload", "arm", "ok/total", "failures"], &rows);
}

fn resources_table(out: &mut String, r: &Report) {
    let _ = writeln!(out, "## Resources\n");
    let newconn: Vec<&String> = r.workloads.iter().filter(|w| w.starts_with("newconn")).collect();
    let mut header =
        vec!["arm".to_owned(), "keel RSS idle (median)".to_owned(), "keel RSS (median of peaks)".to_owned(), "keel RSS (max)".to_owned()];
    header.extend(newconn.iter().map(|w| format!("eBPF µs/connection ({w})")));
    let mut rows = Vec::new();
    for a in &r.arms {
        let arm_rows: Vec<&Aggregate> = r.rows.iter().filter(|g| &g.arm == a).collect();
        let rss: Vec<Spread> = arm_rows.iter().filter_map(|g| g.keel_rss_kib).collect();
        let idle = Spread::of(arm_rows.iter().filter_map(|g| g.keel_idle_rss_kib).map(|s| s.median)).map_or(MISSING.to_owned(), |s| mib(s.median));
        let median_rss = Spread::of(rss.iter().map(|s| s.median)).map_or(MISSING.to_owned(), |s| mib(s.median));
        let max_rss = Spread::of(rss.iter().map(|s| s.max)).map_or(MISSING.to_owned(), |s| mib(s.max));
        let mut row = vec![a.clone(), idle, median_rss, max_rss];
        // A new connection per request: bpf_s / requests is the eBPF cost per connection.
        row.extend(newconn.iter().map(|w| median(r.get(w, a).and_then(|g| g.cpu).map(|c| c.bpf))));
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(out, &header, &rows);
}

// ---------------------------------------------------------------------------------------------------------------
// Cross-node arms: their own section, compared with each other (never with the single-node arms).

/// The cross-node baselines: keel relaying plaintext on both nodes, and no keel at all.
pub const CROSS_PLAIN: &str = "x-keel-plain";
pub const CROSS_DIRECT: &str = "x-direct";

fn cross_node_section(out: &mut String, r: &Report) {
    if !r.measured_any(&r.cross_arms, None) {
        return;
    }
    let _ = writeln!(out, "## Cross-node (client pod on node 0, server pod on node 1; medians over repetitions, [min–max])\n");
    let _ = writeln!(
        out,
        "Two nodes on this machine joined by a bridge (\"the wire\"): {CROSS_DIRECT} is no keel at all, the lab's \
         physical limit; {CROSS_PLAIN} runs keel (eBPF capture, fast path off) on both nodes with both pods enrolled and \
         no workload source, so each node's keel relays plaintext; x-keel-hbone runs the same keels in local mode with one \
         shared config dir and CA, so node 0's keel carries every connection over HBONE (mTLS HTTP/2 CONNECT) to node \
         1's keel. keel CPU is both keels' cgroups summed (user + system), also shown per node (client's node / server's \
         node); keel+kernel adds the kernel's system + softirq time (the nodes share one kernel), counting keel's \
         system time once. RSS is the sum of both keels' peaks. A warm-up echo before measuring (certificates issued, \
         the pooled mTLS connection dialled) is in no sample; after the integrity echo both keels' records of it are \
         checked against the arm (HBONE with mutual TLS and both SPIFFE identities, or a plaintext relay), and the run \
         fails otherwise. The responder workload is single-node only.\n"
    );
    let by_node = |v: &[Option<Spread>], fmt: &dyn Fn(f64) -> String| -> String {
        if v.is_empty() {
            MISSING.to_owned()
        } else {
            v.iter().map(|s| s.map_or(MISSING.to_owned(), |s| fmt(s.median))).collect::<Vec<_>>().join(" / ")
        }
    };
    let x = |w: &str, a: &str, base: &str| times(r.ratio(w, a, base, Metric::Headline));
    let http_header = [
        "workload",
        "arm",
        "req/s",
        "p50 ms",
        "p99 ms",
        "keel µs/req (both keels)",
        "keel µs/req client node / server node",
        "CPU µs/req keel+kernel",
        "req/s ×x-keel-plain",
        "req/s ×x-direct",
        "failures",
    ];
    let rows = cross_rows(r, Kind::Http, http_header.len(), |w, a, ag| {
        vec![
            w.to_owned(),
            a.to_owned(),
            spread(ag.requests_per_s),
            median(ag.p50_ms),
            median(ag.p99_ms),
            median(ag.cpu.map(|c| c.keel)),
            by_node(&ag.keel_cpu_by_node, &num),
            median(ag.cpu.map(|c| c.keel_kernel)),
            x(w, a, CROSS_PLAIN),
            x(w, a, CROSS_DIRECT),
            failures_cell(ag),
        ]
    });
    if !rows.is_empty() {
        let _ = writeln!(out, "### HTTP (wrk against nginx)\n");
        table(out, &http_header, &rows);
    }
    let bulk_header = [
        "workload",
        "arm",
        "Gbit/s",
        "keel s/GB (both keels)",
        "keel s/GB client node / server node",
        "CPU s/GB keel+kernel",
        "Gbit/s ×x-keel-plain",
        "Gbit/s ×x-direct",
        "failures",
    ];
    let rows = cross_rows(r, Kind::Bulk, bulk_header.len(), |w, a, ag| {
        vec![
            w.to_owned(),
            a.to_owned(),
            spread(ag.gbit_per_s),
            median(ag.cpu.map(|c| c.keel)),
            by_node(&ag.keel_cpu_by_node, &num),
            median(ag.cpu.map(|c| c.keel_kernel)),
            x(w, a, CROSS_PLAIN),
            x(w, a, CROSS_DIRECT),
            failures_cell(ag),
        ]
    });
    if !rows.is_empty() {
        let _ = writeln!(out, "### Bulk transfer (iperf3)\n");
        table(out, &bulk_header, &rows);
    }
    let mut rows = Vec::new();
    for w in r.workloads.iter().filter(|w| kind(w) != Kind::Integrity && r.measured_any(&r.cross_arms, Some(w))) {
        for a in r.cross_arms.iter().filter(|a| a.as_str() != CROSS_DIRECT) {
            rows.push(cross_ratio_row(r, w, a));
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(out, "### Ratios (medians of the same run; p50, p99 and CPU: lower is better)\n");
        table(out, &CROSS_RATIO_HEADER, &rows);
    }
    let mut rows = Vec::new();
    for w in r.workloads_of(Kind::Integrity).filter(|w| r.measured_any(&r.cross_arms, Some(w))) {
        for a in &r.cross_arms {
            rows.push(match r.get(w, a) {
                None => missing_row(w, a, 5),
                Some(ag) => vec![
                    w.clone(),
                    a.clone(),
                    format!("{}/{}", ag.ok, ag.runs),
                    if ag.keel_paths.is_empty() { MISSING.to_owned() } else { ag.keel_paths.join("; ") },
                    failures_cell(ag),
                ],
            });
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(out, "### Integrity (32 MiB echoed, checksum compared; keel's path from its own records)\n");
        table(out, &["workload", "arm", "ok/total", "keel's path", "failures"], &rows);
    }
    let mut rows = Vec::new();
    for a in &r.cross_arms {
        let arm_rows: Vec<&Aggregate> = r.rows.iter().filter(|g| &g.arm == a).collect();
        let peaks = |f: &dyn Fn(&Aggregate) -> Option<Spread>, max: bool| {
            let rss: Vec<Spread> = arm_rows.iter().filter_map(|g| f(g)).collect();
            Spread::of(rss.iter().map(|s| if max { s.max } else { s.median })).map_or(MISSING.to_owned(), |s| mib(if max { s.max } else { s.median }))
        };
        let nodes = arm_rows.iter().map(|g| g.keel_rss_by_node_kib.len()).max().unwrap_or(0);
        let per_node: Vec<String> = (0..nodes).map(|k| peaks(&|g: &Aggregate| g.keel_rss_by_node_kib.get(k).copied().flatten(), false)).collect();
        rows.push(vec![
            a.clone(),
            peaks(&|g: &Aggregate| g.keel_rss_kib, false),
            peaks(&|g: &Aggregate| g.keel_rss_kib, true),
            if per_node.is_empty() { MISSING.to_owned() } else { per_node.join(" / ") },
        ]);
    }
    let _ = writeln!(out, "### Resources\n");
    table(out, &["arm", "keel RSS, both keels (median of peaks)", "keel RSS, both keels (max)", "keel RSS client node / server node"], &rows);
}

const CROSS_RATIO_HEADER: [&str; 11] = [
    "workload",
    "arm",
    "headline ×x-keel-plain",
    "headline ×x-direct",
    "p50 ×x-keel-plain",
    "p50 ×x-direct",
    "p99 ×x-keel-plain",
    "p99 ×x-direct",
    "keel CPU ×x-keel-plain",
    "keel+kernel CPU ×x-keel-plain",
    "keel+kernel CPU ×x-direct",
];

fn cross_ratio_row(r: &Report, w: &str, a: &str) -> Vec<String> {
    let mut row = vec![w.to_owned(), a.to_owned()];
    for metric in [Metric::Headline, Metric::P50, Metric::P99] {
        for base in [CROSS_PLAIN, CROSS_DIRECT] {
            row.push(times(r.ratio(w, a, base, metric)));
        }
    }
    // keel's own CPU has no x-direct baseline (no keel there: 0).
    row.push(times(r.ratio(w, a, CROSS_PLAIN, Metric::KeelCpuPerUnit)));
    for base in [CROSS_PLAIN, CROSS_DIRECT] {
        row.push(times(r.ratio(w, a, base, Metric::CpuPerUnit)));
    }
    row
}

// ---------------------------------------------------------------------------------------------------------------
// The L7 comparison: its own section, compared among its arms.

pub const L7_DIRECT: &str = "l7-direct";
pub const L7_NGINX: &str = "l7-nginx";
pub const L7_KEEL_L4: &str = "l7-keel-l4";

fn l7_section(out: &mut String, r: &Report) {
    if !r.measured_any(&r.l7_arms, None) {
        return;
    }
    let _ = writeln!(out, "## L7: keel's L7 engine vs keel L4 vs nginx (one node, 1,000 virtual hosts; medians over repetitions, [min–max])\n");
    let _ = writeln!(
        out,
        "Requests for `catalog` (`Host`/`:authority: catalog`) from the client pod to the same nginx server in the server \
         pod: {L7_DIRECT} straight to the server pod (no proxy); {L7_NGINX} through nginx as a reverse proxy in the client \
         pod (2 workers, 1,000 server blocks, keep-alive upstreams); {L7_KEEL_L4} and l7-keel through keel (eBPF capture, \
         fast path on, 2 worker threads) in local mode with 1,000 Services, catalog's port 80 named `tcp` (keel relays \
         bytes; the HTTP/2 workloads go to catalog's port 81, the server's h2c port, also relayed) or `http` (keel's \
         L7 engine terminates HTTP/1.1 and h2c, routes by host through 1,000 virtual hosts and pools HTTP/1.1 upstream \
         connections); in both keel and nginx arms the server pod is out of the mesh, so one proxy is on the path. \
         l7-keel-meshed puts the server pod in the mesh too (keel's same-node inbound path is a second hop). Closed \
         loop (`-cN`: N requests in flight, as fast as answers come): HTTP/1.1 by wrk, HTTP/2 by h2load (h2c prior \
         knowledge, `-c4m8`: 4 connections × 8 streams); `-r5k`: a fixed 5,000 requests/s over 4 connections by \
         h2load for both protocols (`--h1`, `--rps`), the same offered load for every arm. h2load's percentiles come \
         from its per-request log. Upstreams are HTTP/1.1. \
         Proxy CPU is the proxy's processes' user + system time (/proc/<pid>/stat: keel's process; nginx's master \
         and workers), the same method for both; proxy+kernel adds the machine's kernel time (system + softirq, all \
         CPUs) to the proxy's user time. Memory is the proxy's PSS (summed over its processes, shared pages counted \
         once) at the end of each workload. Before measuring, each arm answered 200 requests over HTTP/1.1 and h2c \
         with 200 and keel's own config was checked (`keel pc listeners`, `keel pc routes`); during every workload \
         the proxy's own count of requests (keel's `istio_requests_total`, nginx's access log) matched the client's \
         ({L7_KEEL_L4}: none counted).\n"
    );
    let header = [
        "workload",
        "arm",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p50 added vs l7-direct, µs",
        "proxy CPU µs/req",
        "proxy+kernel CPU µs/req",
        "proxy memory (PSS)",
        "failures",
    ];
    let added = |w: &str, a: &str| match (r.median(w, a, Metric::P50), r.median(w, L7_DIRECT, Metric::P50)) {
        (Some(x), Some(base)) => format!("{:+.0}", (x - base) * 1e3),
        _ => MISSING.to_owned(),
    };
    let rows = l7_rows(r, header.len(), |w, a, ag| {
        vec![
            w.to_owned(),
            a.to_owned(),
            spread(ag.requests_per_s),
            median(ag.p50_ms),
            median(ag.p99_ms),
            added(w, a),
            opt(Metric::ProxyCpuPerUnit.of(ag)),
            opt(Metric::ProxyKernelCpuPerUnit.of(ag)),
            ag.proxy_pss_kib.map_or(MISSING.to_owned(), |s| mib(s.median)),
            failures_cell(ag),
        ]
    });
    table(out, &header, &rows);

    let _ = writeln!(out, "### Ratios (medians of the same run; p50, p99, CPU and memory: lower is better)\n");
    let mut rows = Vec::new();
    for w in r.l7_workloads.iter().filter(|w| r.measured_any(&r.l7_arms, Some(w))) {
        for a in r.l7_arms.iter().filter(|a| a.as_str() != L7_DIRECT) {
            let mut row = vec![w.clone(), a.clone()];
            for (metric, bases) in [
                (Metric::Headline, &[L7_NGINX, L7_KEEL_L4, L7_DIRECT][..]),
                (Metric::P50, &[L7_NGINX, L7_DIRECT][..]),
                (Metric::P99, &[L7_NGINX, L7_DIRECT][..]),
                (Metric::ProxyCpuPerUnit, &[L7_NGINX, L7_KEEL_L4][..]),
                (Metric::ProxyKernelCpuPerUnit, &[L7_NGINX, L7_KEEL_L4][..]),
                (Metric::ProxyPss, &[L7_NGINX][..]),
            ] {
                row.extend(bases.iter().map(|b| times(r.ratio(w, a, b, metric))));
            }
            rows.push(row);
        }
    }
    table(out, &L7_RATIO_HEADER, &rows);

    let _ = writeln!(out, "### CPU per request, µs (proxy: its processes, user + system; kernel: system + softirq, all CPUs; client: the load generator's pod less any proxy in it)\n");
    let cpu_header = ["workload", "arm", "proxy", "proxy+kernel", "kernel", "client", "server"];
    let rows = l7_rows(r, cpu_header.len(), |w, a, ag| {
        let mut row = vec![w.to_owned(), a.to_owned()];
        match ag.cpu {
            None => row.resize(cpu_header.len(), MISSING.to_owned()),
            Some(c) => {
                row.extend([Metric::ProxyCpuPerUnit.of(ag), Metric::ProxyKernelCpuPerUnit.of(ag)].map(opt));
                row.extend([c.kernel, c.client, c.server].map(|s| num(s.median)));
            }
        }
        row
    });
    table(out, &cpu_header, &rows);

    let _ = writeln!(out, "### Resources and checks\n");
    let mut rows = Vec::new();
    for a in &r.l7_arms {
        let arm_rows: Vec<&Aggregate> = r.rows.iter().filter(|g| &g.arm == a && r.l7_workloads.contains(&g.workload)).collect();
        let memory = |f: fn(&Aggregate) -> Option<Spread>, max: bool| {
            let v: Vec<Spread> = arm_rows.iter().filter_map(|g| f(g)).collect();
            Spread::of(v.iter().map(|s| if max { s.max } else { s.median })).map_or(MISSING.to_owned(), |s| mib(s.median))
        };
        let counted = arm_rows.iter().filter_map(|g| g.proxy_counted).reduce(|(a, b), (c, d)| (a + c, b + d));
        let mut paths: Vec<&str> = Vec::new();
        for p in arm_rows.iter().flat_map(|g| g.keel_paths.iter()) {
            if !paths.contains(&p.as_str()) {
                paths.push(p);
            }
        }
        rows.push(vec![
            a.clone(),
            memory(|g| g.proxy_pss_kib, false),
            memory(|g| g.proxy_rss_kib, false),
            memory(|g| g.proxy_rss_kib, true),
            counted.map_or(MISSING.to_owned(), |(p, c)| format!("{p} / {c}")),
            if paths.is_empty() { MISSING.to_owned() } else { paths.join("; ") },
        ]);
    }
    table(
        out,
        &[
            "arm",
            "proxy PSS (median)",
            "proxy peak RSS, sum of processes (median)",
            "proxy peak RSS (max)",
            "requests counted by the proxy / by the client",
            "path checked before measuring",
        ],
        &rows,
    );

    let checks = check_l7_targets(r);
    let _ = writeln!(out, "### Targets (issue 6; from this run)\n");
    for c in &checks {
        let mark = if c.verdict == Verdict::Pass { "x" } else { " " };
        let _ = writeln!(out, "- [{mark}] **{}** {} — measured {}", c.verdict, c.label, c.measured);
    }
    let _ = writeln!(out, "\n{}\n", verdict_sentence(&checks, r.info.quick));
}

const L7_RATIO_HEADER: [&str; 14] = [
    "workload",
    "arm",
    "req/s ×l7-nginx",
    "req/s ×l7-keel-l4",
    "req/s ×l7-direct",
    "p50 ×l7-nginx",
    "p50 ×l7-direct",
    "p99 ×l7-nginx",
    "p99 ×l7-direct",
    "proxy CPU ×l7-nginx",
    "proxy CPU ×l7-keel-l4",
    "proxy+kernel CPU ×l7-nginx",
    "proxy+kernel CPU ×l7-keel-l4",
    "memory ×l7-nginx",
];

/// One row per measured L7 workload and L7 arm: `cells` for an arm with samples, dashes otherwise.
fn l7_rows(r: &Report, columns: usize, cells: impl Fn(&str, &str, &Aggregate) -> Vec<String>) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for w in r.l7_workloads.iter().filter(|w| r.measured_any(&r.l7_arms, Some(w))) {
        for a in &r.l7_arms {
            rows.push(match r.get(w, a) {
                Some(ag) => cells(w, a, ag),
                None => missing_row(w, a, columns),
            });
        }
    }
    rows
}

fn targets_section(out: &mut String, r: &Report, title: &str, checks: &[TargetCheck]) {
    let _ = writeln!(out, "## {title}\n");
    for c in checks {
        let mark = if c.verdict == Verdict::Pass { "x" } else { " " };
        let _ = writeln!(out, "- [{mark}] **{}** {} — measured {}", c.verdict, c.label, c.measured);
    }
    out.push('\n');
    let _ = writeln!(out, "{}\n", verdict_sentence(checks, r.info.quick));
}

/// Missed targets said plainly, by name.
fn verdict_sentence(checks: &[TargetCheck], quick: bool) -> String {
    let named = |v: Verdict| -> Vec<&str> { checks.iter().filter(|c| c.verdict == v).map(|c| c.label.as_str()).collect() };
    let (missed, unmeasured) = (named(Verdict::Miss), named(Verdict::NotMeasured));
    let passed = checks.len() - missed.len() - unmeasured.len();
    let mut s = format!("{passed} of {} targets met.", checks.len());
    if !missed.is_empty() {
        let _ = write!(s, " **Missed ({}):** {}.", missed.len(), missed.join("; "));
    }
    if !unmeasured.is_empty() {
        let _ = write!(s, " **Not measured ({}):** {}.", unmeasured.len(), unmeasured.join("; "));
    }
    if quick {
        s.push_str(" (Quick run: these verdicts are not conclusions.)");
    }
    s
}

/// Each sample's note (a tool's error text, "n/a for this arm"), once per distinct (workload, arm, note).
fn notes(out: &mut String, results: &Results) {
    const MAX: usize = 30;
    let mut seen: Vec<(&str, &str, &str)> = Vec::new();
    for s in results.samples.iter().filter(|s| !s.note.is_empty()) {
        let key = (s.workload.as_str(), s.arm.as_str(), s.note.as_str());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    if seen.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Notes from the runs
"
    );
    for (w, a, note) in seen.iter().take(MAX) {
        let note: String = note.chars().take(300).collect::<String>().replace('\n', " ");
        let _ = writeln!(out, "- {w} / {a}: {note}");
    }
    if seen.len() > MAX {
        let _ = writeln!(out, "- … and {} more in results.json", seen.len() - MAX);
    }
    out.push('\n');
}

fn method(out: &mut String, info: &RunInfo) {
    let _ = writeln!(
        out,
        "## Method\n\n\
         Each repetition runs every arm once, alternating arms with a rotating start (no arm always runs first or last), \
         and each arm starts from a clean slate: fresh namespaces, no leftover sockets or TIME_WAIT, conntrack flushed, \
         no rule, program, cgroup or pin left behind. Figures are medians over {} repetitions of {} s per workload, \
         with [min–max] the spread; ratios divide medians of the same run. CPU counts the whole path: keel (its \
         cgroup), the kernel (system + softirq time from /proc/stat, all CPUs), client and server cgroups, and eBPF \
         program run time (kernel.bpf_stats_enabled). Runs whose tool did not report are counted as failures and left \
         out of the medians. This is a small shared VM ({} CPUs): differences under ~20% are within its noise.",
        info.repetitions,
        num(info.workload_seconds),
        info.cpus
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The summary printed at the end of a run.

/// The compact fixed-width table and the target verdicts; `Display` prints `text`.
#[derive(Clone, Debug)]
pub struct Summary {
    pub text: String,
    pub targets: Vec<TargetCheck>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub fn summary(report: &Report) -> Summary {
    let mut text = String::new();
    // The single-node table, unless the run measured only cross-node or L7 arms.
    let others = report.measured_any(&report.cross_arms, None) || report.measured_any(&report.l7_arms, None);
    if report.measured_any(&report.arms, None) || !others {
        single_node_summary(&mut text, report);
    }
    if report.measured_any(&report.cross_arms, None) {
        cross_node_summary(&mut text, report);
    }
    let mut targets = Vec::new();
    if report.shows_capture() {
        targets = check_targets(report);
        let _ = writeln!(text, "\nTargets:");
        for t in &targets {
            let _ = writeln!(text, "  {t}");
        }
        let _ = writeln!(text, "{}", verdict_sentence(&targets, report.info.quick).replace("**", ""));
    }
    if report.measured_any(&report.l7_arms, None) {
        let l7 = l7_summary(&mut text, report);
        targets.extend(l7);
    }
    let fast = check_fast_targets(report);
    let _ = writeln!(text, "\n{FAST_TARGETS_TITLE}:");
    for t in &fast {
        let _ = writeln!(text, "  {t}");
    }
    let _ = writeln!(text, "{}", verdict_sentence(&fast, report.info.quick).replace("**", ""));
    Summary { text, targets }
}

/// The L7 arms: headline, latency, the p50 added over no proxy, proxy CPU and its ratio to nginx; then memory and
/// issue 6's targets. Returns the target checks.
fn l7_summary(text: &mut String, report: &Report) -> Vec<TargetCheck> {
    let _ = writeln!(text, "\nL7: catalog through 1,000 virtual hosts on one node (proxy CPU: its processes, user + system)");
    let _ = writeln!(
        text,
        "{:<13}{:<16}{:>15}{:>9}{:>9}{:>12}{:>14}{:>11}{:>13}",
        "workload", "arm", "median", "p50 ms", "p99 ms", "+p50 µs", "proxy CPU", "×nginx", "proxy PSS"
    );
    for w in report.l7_workloads.iter().filter(|w| report.measured_any(&report.l7_arms, Some(w))) {
        for a in &report.l7_arms {
            let line = match report.get(w, a) {
                None => format!("{:>15}", MISSING),
                Some(g) => {
                    let added = match (report.median(w, a, Metric::P50), report.median(w, L7_DIRECT, Metric::P50)) {
                        (Some(x), Some(base)) => format!("{:+.0}", (x - base) * 1e3),
                        _ => MISSING.to_owned(),
                    };
                    format!(
                        "{:>15}{:>9}{:>9}{:>12}{:>14}{:>11}{:>13}",
                        format!("{} req/s", median(g.requests_per_s)),
                        median(g.p50_ms),
                        median(g.p99_ms),
                        added,
                        Metric::ProxyCpuPerUnit.of(g).map_or(MISSING.to_owned(), |v| format!("{} µs/req", num(v))),
                        times(report.ratio(w, a, L7_NGINX, Metric::ProxyCpuPerUnit)),
                        g.proxy_pss_kib.map_or(MISSING.to_owned(), |s| mib(s.median)),
                    )
                }
            };
            let failures = report.get(w, a).map(|g| g.failures.total()).unwrap_or(0);
            let _ = writeln!(text, "{w:<13}{a:<16}{line}{}", if failures > 0 { format!("  failures {failures}") } else { String::new() });
        }
    }
    let checks = check_l7_targets(report);
    let _ = writeln!(text, "\nL7 targets (issue 6):");
    for t in &checks {
        let _ = writeln!(text, "  {t}");
    }
    let _ = writeln!(text, "{}", verdict_sentence(&checks, report.info.quick).replace("**", ""));
    checks
}

fn single_node_summary(text: &mut String, report: &Report) {
    let _ = writeln!(text, "{:<16}{:<13}{:>22}{:>10}{:>16}{:>11}", "workload", "arm", "median", "p99 ms", "CPU keel+kern", "×iptables");
    for w in &report.workloads {
        if !report.measured_any(&report.arms, Some(w)) {
            let _ = writeln!(text, "{w:<16}{:<13}{:>22}", "(all)", "not measured");
            continue;
        }
        for a in &report.arms {
            let line = match report.get(w, a) {
                None => format!("{:>22}", MISSING),
                Some(g) => match g.kind {
                    Kind::Integrity => format!("{:>22}", format!("{}/{} ok", g.ok, g.runs)),
                    k => {
                        let (unit, cpu_unit) = if k == Kind::Http { ("req/s", "µs/req") } else { ("Gbit/s", "s/GB") };
                        let cpu = g.cpu.map_or(MISSING.to_owned(), |c| format!("{} {cpu_unit}", num(c.keel_kernel.median)));
                        format!(
                            "{:>22}{:>10}{:>16}{:>11}",
                            format!("{} {unit}", median(g.headline())),
                            median(g.p99_ms),
                            cpu,
                            times(report.ratio(w, a, "iptables", Metric::Headline)),
                        )
                    }
                },
            };
            let _ = writeln!(text, "{w:<16}{a:<13}{line}");
        }
    }
}

/// Cross-node arms: headline, latency, keel CPU (both keels) and the ratios to the two baselines, then RSS.
fn cross_node_summary(text: &mut String, report: &Report) {
    let _ = writeln!(text, "\nCross-node: client on node 0, server on node 1 (keel CPU and RSS: both keels summed)");
    let _ = writeln!(
        text,
        "{:<16}{:<14}{:>19}{:>9}{:>9}{:>15}{:>15}{:>15}{:>11}",
        "workload", "arm", "median", "p50 ms", "p99 ms", "keel CPU", "keel+kern", "×x-keel-plain", "×x-direct"
    );
    for w in report.workloads.iter().filter(|w| report.measured_any(&report.cross_arms, Some(w))) {
        for a in &report.cross_arms {
            let line = match report.get(w, a) {
                None => format!("{:>19}", MISSING),
                Some(g) if g.kind == Kind::Integrity => {
                    let path = if g.keel_paths.is_empty() { String::new() } else { format!("  keel: {}", g.keel_paths.join("; ")) };
                    format!("{:>19}{path}", format!("{}/{} ok", g.ok, g.runs))
                }
                Some(g) => {
                    let (unit, cpu_unit) = if g.kind == Kind::Http { ("req/s", "µs/req") } else { ("Gbit/s", "s/GB") };
                    let cpu = |f: fn(&CpuCost) -> Spread| g.cpu.as_ref().map_or(MISSING.to_owned(), |c| format!("{} {cpu_unit}", num(f(c).median)));
                    format!(
                        "{:>19}{:>9}{:>9}{:>15}{:>15}{:>15}{:>11}",
                        format!("{} {unit}", median(g.headline())),
                        median(g.p50_ms),
                        median(g.p99_ms),
                        cpu(|c| c.keel),
                        cpu(|c| c.keel_kernel),
                        times(report.ratio(w, a, CROSS_PLAIN, Metric::Headline)),
                        times(report.ratio(w, a, CROSS_DIRECT, Metric::Headline)),
                    )
                }
            };
            let _ = writeln!(text, "{w:<16}{a:<14}{line}");
        }
    }
    let rss: Vec<String> = report
        .cross_arms
        .iter()
        .filter_map(|a| {
            let peaks: Vec<f64> = report.rows.iter().filter(|g| &g.arm == a).filter_map(|g| g.keel_rss_kib.map(|s| s.median)).collect();
            Spread::of(peaks).map(|s| format!("{a} {}", mib(s.median)))
        })
        .collect();
    if !rss.is_empty() {
        let _ = writeln!(text, "keel RSS (both keels, median of peaks): {}", rss.join(", "));
    }
}

/// Writes `results.json` (every raw sample), `report.md` and `report.svg` into `dir`; returns the summary to print.
pub fn write_all(dir: &Path, results: &Results) -> Result<Summary> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(dir.join("results.json"), json + "\n").context("writing results.json")?;
    let report = aggregate(results);
    std::fs::write(dir.join("report.md"), markdown_with_notes(&report, results)).context("writing report.md")?;
    super::chart::write_svg(&dir.join("report.svg"), results).context("writing report.svg")?;
    Ok(summary(&report))
}

/// One row per measured workload of `kind` and cross-node arm: `cells` for an arm that has samples, a row of
/// dashes for one that has none.
fn cross_rows(r: &Report, kind: Kind, columns: usize, cells: impl Fn(&str, &str, &Aggregate) -> Vec<String>) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for w in r.workloads_of(kind).filter(|w| r.measured_any(&r.cross_arms, Some(w))) {
        for a in &r.cross_arms {
            rows.push(match r.get(w, a) {
                Some(ag) => cells(w, a, ag),
                None => missing_row(w, a, columns),
            });
        }
    }
    rows
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::model::{Cpu, Latency};

    /// Repetition factors: the median repetition is the base value, min 0.9×, max 1.2×.
    const FACTORS: [f64; 3] = [0.9, 1.2, 1.0];
    const SECONDS: f64 = 10.0;

    /// An HTTP sample: `rps` req/s, latencies scaled with the repetition, `cost_us` keel+kernel µs per request.
    fn http(arm: &str, workload: &str, rep: u32, rps: f64, lat: (f64, f64, f64), cost_us: f64) -> Sample {
        let f = FACTORS[rep as usize];
        let requests = (rps * f * SECONDS) as u64;
        let total = cost_us * requests as f64 / 1e6;
        Sample {
            arm: arm.into(),
            workload: workload.into(),
            rep,
            order: rep,
            duration_s: SECONDS,
            requests,
            requests_per_s: rps * f,
            latency: Some(Latency { p50_ms: lat.0 * f, p90_ms: lat.1 * f, p99_ms: lat.2 * f }),
            cpu: cpu(total),
            keel_rss_kib: if arm == "direct" { 0 } else { 20480 + 1024 * rep as u64 },
            keel_idle_rss_by_node_kib: if arm == "direct" { Vec::new() } else { vec![11264] },
            ok: true,
            ..Default::default()
        }
    }

    /// keel 50%, kernel system 30% + softirq 20% of `total`; eBPF 5%.
    fn cpu(total: f64) -> Cpu {
        Cpu {
            keel_s: total * 0.5,
            keel_user_s: total * 0.5,
            kernel_system_s: total * 0.3,
            kernel_softirq_s: total * 0.2,
            client_s: 1.0,
            server_s: 1.0,
            bpf_s: total * 0.05,
            keel_by_node_s: Vec::new(),
            proxy_s: total * 0.5,
            proxy_user_s: total * 0.5,
        }
    }

    fn bulk(arm: &str, workload: &str, rep: u32, gbit: f64, cost_s_per_gb: f64) -> Sample {
        let f = FACTORS[rep as usize];
        let bytes = (gbit * f * 1e9 / 8.0 * SECONDS) as u64;
        Sample {
            arm: arm.into(),
            workload: workload.into(),
            rep,
            duration_s: SECONDS,
            bytes,
            gbit_per_s: gbit * f,
            cpu: cpu(cost_s_per_gb * bytes as f64 / 1e9),
            ok: true,
            ..Default::default()
        }
    }

    /// 3 repetitions × 4 arms with known medians, built so that targets 1, 2, 3, 6, 7, 10 pass and 4, 5, 8, 9 miss.
    pub(crate) fn synthetic() -> Results {
        let mut samples = Vec::new();
        for rep in 0..3 {
            for (arm, kc1_p50, kc32, kc32_p99, nc32, nc_cost, bulk1) in [
                ("direct", 0.2, 50_000.0, 1.0, 10_000.0, 50.0, 20.0),
                ("iptables", 0.5, 20_000.0, 4.0, 5_000.0, 100.0, 8.0),
                ("ebpf", 0.45, 22_000.0, 3.6, 6_500.0, 90.0, 14.0),
                ("ebpf+splice", 0.35, 30_000.0, 3.0, 6_000.0, 85.0, 16.0),
            ] {
                samples.push(http(arm, "keepalive-c1", rep, 2_000.0, (kc1_p50, kc1_p50 * 2.0, kc1_p50 * 4.0), 200.0));
                samples.push(http(arm, "keepalive-c32", rep, kc32, (kc32_p99 / 4.0, kc32_p99 / 2.0, kc32_p99), 40.0));
                samples.push(http(arm, "newconn-c32", rep, nc32, (2.0, 4.0, 8.0), nc_cost));
                samples.push(bulk(arm, "bulk-1", rep, bulk1, 0.5));
                let mut b4 = bulk(arm, "bulk-4", rep, bulk1 * 1.2, 0.6);
                if arm == "ebpf+splice" && rep == 2 {
                    // A failed iperf3 run: a result, not an abort; out of the medians, counted as a failure.
                    b4 = Sample {
                        arm: arm.into(),
                        workload: "bulk-4".into(),
                        rep,
                        ok: false,
                        note: "iperf3: unable to connect".into(),
                        ..Default::default()
                    };
                    b4.failures.transfer_errors = 1;
                }
                samples.push(b4);
                let mut integrity = bulk(arm, "integrity", rep, 1.0, 1.0);
                if arm == "iptables" && rep == 1 {
                    integrity.ok = false;
                    integrity.failures.transfer_errors = 1;
                }
                samples.push(integrity);
            }
        }
        let info = RunInfo {
            started: "2025-01-01 00:00:00 UTC".into(),
            command: "cargo xtask bench".into(),
            kernel: "6.1.0".into(),
            cpus: 2,
            cpu_model: "Test CPU".into(),
            iptables_backend: "iptables v1.8.9 (nf_tables)".into(),
            repetitions: 3,
            workload_seconds: SECONDS,
            quick: false,
        };
        Results { info, samples }
    }

    /// 3 repetitions of the three cross-node arms: keel CPU split 1:3 between the client's and the server's node.
    fn cross_node_samples() -> Vec<Sample> {
        let mut samples = Vec::new();
        for rep in 0..3 {
            for (arm, kc32, p50, cost, bulk1, rss) in [
                ("x-direct", 40_000.0, 0.5, 20.0, 30.0, None),
                ("x-keel-plain", 20_000.0, 1.0, 60.0, 10.0, Some([10_240, 12_288])),
                ("x-keel-hbone", 10_000.0, 2.0, 120.0, 5.0, Some([20_480, 22_528])),
            ] {
                let keel_split = |s: &mut Sample| {
                    if rss.is_some() {
                        s.cpu.keel_by_node_s = vec![s.cpu.keel_s * 0.25, s.cpu.keel_s * 0.75];
                    } else {
                        (s.cpu.keel_s, s.cpu.keel_user_s) = (0.0, 0.0);
                    }
                    s.keel_rss_by_node_kib = rss.map_or(Vec::new(), |r: [u64; 2]| r.to_vec());
                    s.keel_rss_kib = s.keel_rss_by_node_kib.iter().sum();
                    s.nodes = 2;
                };
                let mut h = http(arm, "keepalive-c32", rep, kc32, (p50, p50 * 2.0, p50 * 4.0), cost);
                keel_split(&mut h);
                let mut b = bulk(arm, "bulk-1", rep, bulk1, 0.5);
                keel_split(&mut b);
                let mut i = bulk(arm, "integrity", rep, 1.0, 1.0);
                keel_split(&mut i);
                i.keel_path = match arm {
                    "x-keel-hbone" => "hbone, mutual TLS".into(),
                    "x-keel-plain" => "direct, plaintext".into(),
                    _ => String::new(),
                };
                samples.extend([h, b, i]);
            }
        }
        samples
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(Spread::of([3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::of([]), None);

        let r = aggregate(&synthetic());
        let g = r.get("keepalive-c32", "iptables").unwrap();
        let rps = g.requests_per_s.unwrap();
        assert!(close(rps.median, 20_000.0) && close(rps.min, 18_000.0) && close(rps.max, 24_000.0), "{rps:?}");
        assert!(close(g.p99_ms.unwrap().median, 4.0) && close(g.p50_ms.unwrap().median, 1.0));
        assert_eq!((g.runs, g.ok, g.gbit_per_s), (3, 3, None));
        let cpu = g.cpu.unwrap();
        assert!(close(cpu.keel_kernel.median, 40.0) && close(cpu.keel.median, 20.0) && close(cpu.kernel.median, 20.0), "{cpu:?}");
        assert!(close(cpu.bpf.median, 2.0));
        assert!(close(g.keel_rss_kib.unwrap().median, 21504.0) && close(g.keel_rss_kib.unwrap().max, 22528.0));
        assert_eq!(r.get("keepalive-c32", "direct").unwrap().keel_rss_kib, None);

        let b = r.get("bulk-1", "ebpf").unwrap();
        assert!(close(b.gbit_per_s.unwrap().median, 14.0) && b.requests_per_s.is_none() && b.p99_ms.is_none());
        assert!(close(b.cpu.unwrap().keel_kernel.median, 0.5), "{:?}", b.cpu);

        // The failed run is counted, not averaged in: the median of the two others (0.9× and 1.2× of 19.2).
        let f = r.get("bulk-4", "ebpf+splice").unwrap();
        assert_eq!((f.runs, f.ok, f.failures.transfer_errors), (3, 2, 1));
        assert!(close(f.gbit_per_s.unwrap().median, 19.2 * 1.05));
        assert_eq!(failures_cell(f), "1 (transfer 1, failed runs 1/3)");

        assert!(r.get("responder-c32", "ebpf").is_none());
        assert_eq!(r.workloads, WORKLOADS);
    }

    #[test]
    fn ratios_come_from_medians() {
        let r = aggregate(&synthetic());
        let expected = [
            ("keepalive-c32", "ebpf", "iptables", Metric::Headline, 1.1),
            ("keepalive-c32", "ebpf", "direct", Metric::Headline, 0.44),
            ("keepalive-c32", "ebpf", "iptables", Metric::P99, 0.9),
            ("newconn-c32", "ebpf", "iptables", Metric::CpuPerUnit, 0.9),
            ("bulk-1", "ebpf", "direct", Metric::Headline, 0.7),
            ("bulk-1", "iptables", "iptables", Metric::Headline, 1.0),
        ];
        for (workload, arm, baseline, metric, ratio) in expected {
            let got = r.ratio(workload, arm, baseline, metric).unwrap();
            assert!(close(got, ratio), "{workload} {arm} vs {baseline}: {got} != {ratio}");
        }
        assert_eq!(r.ratio("responder-c32", "ebpf", "iptables", Metric::Headline), None);
        assert_eq!(r.ratio("bulk-1", "ebpf", "iptables", Metric::P99), None);
    }

    #[test]
    fn targets_pass_miss_and_not_measured() {
        let verdicts: Vec<Verdict> = check_targets(&aggregate(&synthetic())).iter().map(|c| c.verdict).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Pass, Pass, Pass, Miss, Miss, Pass, Pass, Miss, Miss, Pass]);
        let checks = check_targets(&aggregate(&synthetic()));
        assert_eq!(checks[0].measured, "1.30×");
        assert_eq!(checks[7].measured, "transfer errors 1, runs ok 2/3");

        // Remove inputs: a target without them is NOT MEASURED, never PASS.
        let mut results = synthetic();
        results.samples.retain(|s| !(s.arm == "iptables" && s.workload == "newconn-c32") && s.arm != "ebpf+splice" && s.arm != "direct");
        let checks = check_targets(&aggregate(&results));
        let verdicts: Vec<Verdict> = checks.iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [NotMeasured, Pass, Pass, NotMeasured, NotMeasured, NotMeasured, NotMeasured, NotMeasured, NotMeasured, NotMeasured]);
        assert_eq!(checks[0].measured, MISSING);

        // Empty results: nothing passes.
        assert!(check_targets(&aggregate(&Results::default())).iter().all(|c| c.verdict == NotMeasured));
    }

    #[test]
    fn absolute_targets_judge_one_keel_against_a_bound() {
        use Verdict::*;
        let label = |l: &str| FAST_TARGETS.iter().position(|t| t.label == l).unwrap();
        let idle = label("ebpf keel RSS idle ≤ 12 MiB");
        let peak = label("ebpf keel peak RSS through keepalive-c128 ≤ 20 MiB");
        // Synthetic: every ebpf keel idles at 11 MiB and peaks at 20–22 MiB.
        let mut results = synthetic();
        results.samples.retain(|s| s.workload != "keepalive-c128");
        let checks = check_fast_targets(&aggregate(&results));
        assert_eq!((checks[idle].verdict, checks[idle].measured.as_str()), (Pass, "11.0 MiB"));
        assert_eq!(checks[peak].verdict, NotMeasured, "no keepalive-c128 sample: nothing to judge");
        let mut c128 = synthetic();
        for s in c128.samples.iter_mut().filter(|s| s.arm == "ebpf") {
            s.workload = "keepalive-c128".into();
        }
        let checks = check_fast_targets(&aggregate(&c128));
        assert_eq!((checks[peak].verdict, checks[peak].measured.as_str()), (Miss, "21.0 MiB"));
        // Arms this run did not have (the bypass, HBONE) are never a pass.
        assert_eq!(checks[label("bypass vs direct: bulk-1 Gbit/s ≥ 0.9×")].verdict, NotMeasured);
    }

    #[test]
    fn markdown_has_header_tables_and_targets() {
        let md = markdown(&aggregate(&synthetic()));
        for text in [
            "- **Date**: 2025-01-01 00:00:00 UTC",
            "- **Command**: `cargo xtask bench`",
            "- **iptables backend**: iptables v1.8.9 (nf_tables)",
            "- **Mode**: full",
            "not for conclusions",
            "## HTTP",
            "| keepalive-c32 | iptables | 20000 [18000–24000] | 1.00 | 2.00 | 4.00 | 40.0 | 20.0 | 1.00× | 0.40× | 0 |",
            "| responder-c32 | ebpf | – |",
            "### Ratios",
            "## Bulk transfer",
            "| bulk-1 | ebpf | 14.0 [12.6–16.8] |",
            "## Integrity",
            "| integrity | iptables | 2/3 | 1 (transfer 1, failed runs 1/3) |",
            "| integrity | ebpf | 3/3 | 0 |",
            "## Resources",
            "| ebpf | 11.0 MiB | 21.0 MiB | 22.0 MiB | 4.50 |",
            "| direct | – | – | – | 2.50 |",
            "## Targets",
            "- [x] **PASS** ebpf vs iptables: newconn-c32 req/s ≥ 1.2× — measured 1.30×",
            "- [ ] **MISS** ebpf+splice vs iptables: keepalive-c32 req/s ≥ 1.6× — measured 1.50×",
            "6 of 10 targets met. **Missed (4):**",
            "## Method",
            "within its noise",
        ] {
            assert!(md.contains(text), "missing {text:?} in:\n{md}");
        }
        let mut quick = synthetic();
        quick.info.quick = true;
        let md = markdown(&aggregate(&quick));
        assert!(md.contains("**Quick run: a smoke test, not for conclusions.**") && md.contains("- **Mode**: quick"));
    }

    #[test]
    fn summary_is_a_compact_table_with_the_targets() {
        let s = summary(&aggregate(&synthetic()));
        let line = s.text.lines().find(|l| l.starts_with("keepalive-c32   ebpf ")).unwrap();
        assert!(line.contains("22000 req/s") && line.contains("3.60") && line.contains("40.0 µs/req") && line.contains("1.10×"), "{line}");
        let line = s.text.lines().find(|l| l.starts_with("bulk-1          ebpf ")).unwrap();
        assert!(line.contains("14.0 Gbit/s") && line.contains("0.500 s/GB"), "{line}");
        assert!(s.text.contains("3/3 ok"));
        let line = s.text.lines().find(|l| l.starts_with("keepalive-c128")).unwrap();
        assert!(line.contains("(all)") && line.ends_with("not measured"), "{line}");
        assert_eq!(s.text.lines().filter(|l| l.starts_with("keepalive-c128")).count(), 1);
        assert!(s.text.contains("MISS          ebpf vs iptables: newconn-c32 CPU/request (keel+kernel) ≤ 0.8× — measured 0.90×"), "{s}");
        assert!(s.text.contains("6 of 10 targets met. Missed (4):"));
        assert_eq!(s.targets.len(), TARGETS.len());
    }

    #[test]
    fn cross_node_arms_have_their_own_section_and_ratios() {
        let mut results = synthetic();
        let single_md = markdown(&aggregate(&results));
        let single_summary = summary(&aggregate(&results)).text;
        assert!(!single_md.contains("Cross-node") && !single_summary.contains("Cross-node"));
        results.samples.extend(cross_node_samples());
        let r = aggregate(&results);
        assert_eq!(r.arms, ARMS);
        assert_eq!(r.cross_arms, CROSS_NODE_ARMS);
        // The single-node report is as before: same arms, same targets, same rows.
        let md = markdown(&r);
        assert!(md.starts_with(single_md.split("## Targets").next().unwrap()), "single-node sections changed");
        assert!(summary(&r).text.starts_with(single_summary.split("\nTargets:").next().unwrap()));
        assert_eq!(check_targets(&r), check_targets(&aggregate(&synthetic())));

        let hbone = r.get("keepalive-c32", "x-keel-hbone").unwrap();
        assert!(close(hbone.cpu.unwrap().keel.median, 60.0), "{:?}", hbone.cpu);
        let by_node: Vec<f64> = hbone.keel_cpu_by_node.iter().map(|s| s.unwrap().median).collect();
        assert!(close(by_node[0], 15.0) && close(by_node[1], 45.0), "{by_node:?}");
        assert!(close(hbone.keel_rss_kib.unwrap().median, 43_008.0));
        assert_eq!(hbone.keel_rss_by_node_kib.len(), 2);
        assert_eq!(r.get("integrity", "x-keel-hbone").unwrap().keel_paths, ["hbone, mutual TLS"]);
        assert!(r.get("keepalive-c32", "x-direct").unwrap().keel_rss_kib.is_none());
        let ratio = |a, b, m| r.ratio("keepalive-c32", a, b, m).unwrap();
        assert!(close(ratio("x-keel-hbone", CROSS_PLAIN, Metric::Headline), 0.5));
        assert!(close(ratio("x-keel-hbone", CROSS_DIRECT, Metric::Headline), 0.25));
        assert!(close(ratio("x-keel-hbone", CROSS_PLAIN, Metric::P50), 2.0));
        assert!(close(ratio("x-keel-hbone", CROSS_PLAIN, Metric::KeelCpuPerUnit), 2.0));
        assert_eq!(r.ratio("keepalive-c32", "x-keel-hbone", CROSS_DIRECT, Metric::KeelCpuPerUnit), None);

        for text in [
            "## Cross-node (client pod on node 0, server pod on node 1",
            "| keepalive-c32 | x-keel-hbone | 10000 [9000–12000] | 2.00 | 8.00 | 60.0 | 15.0 / 45.0 | 120 | 0.50× | 0.25× | 0 |",
            "| keepalive-c32 | x-direct | 40000 [36000–48000] | 0.500 | 2.00 | 0 | – | 10.0 | 2.00× | 1.00× | 0 |",
            "| bulk-1 | x-keel-hbone | 5.00 [4.50–6.00] |",
            "| keepalive-c32 | x-keel-hbone | 0.50× | 0.25× | 2.00× | 4.00× | 2.00× | 4.00× | 2.00× | 2.00× | 12.00× |",
            "| integrity | x-keel-hbone | 3/3 | hbone, mutual TLS | 0 |",
            "| integrity | x-direct | 3/3 | – | 0 |",
            "| x-keel-hbone | 42.0 MiB | 42.0 MiB | 20.0 MiB / 22.0 MiB |",
            "| x-direct | – | – | – |",
        ] {
            assert!(md.contains(text), "missing {text:?} in:\n{md}");
        }
        // The cross-node arms stay out of the single-node tables and the chart.
        assert!(!md.split("## Cross-node").next().unwrap().contains("x-keel"));

        let s = summary(&r).text;
        let line = s.lines().find(|l| l.starts_with("keepalive-c32   x-keel-hbone")).unwrap();
        assert!(
            line.contains("10000 req/s")
                && line.contains("60.0 µs/req")
                && line.contains("120 µs/req")
                && line.contains("0.50×")
                && line.contains("0.25×"),
            "{line}"
        );
        assert!(s.lines().any(|l| l.starts_with("integrity       x-keel-hbone") && l.contains("3/3 ok  keel: hbone, mutual TLS")), "{s}");
        assert!(s.contains("keel RSS (both keels, median of peaks): x-keel-plain 22.0 MiB, x-keel-hbone 42.0 MiB"), "{s}");

        // Only cross-node arms: no single-node table of dashes in the summary; the markdown keeps its sections.
        let only = Results { info: results.info.clone(), samples: cross_node_samples() };
        let s = summary(&aggregate(&only)).text;
        assert!(s.starts_with("\nCross-node") && !s.contains("(all)"), "{s}");
        assert!(markdown(&aggregate(&only)).contains("## HTTP"));
        // An arm unknown to the report still lands on its side by its samples' node count.
        let mut extra = cross_node_samples();
        extra.iter_mut().for_each(|s| s.arm = s.arm.replace("x-keel-hbone", "x-new"));
        let r = aggregate(&Results { info: results.info.clone(), samples: extra });
        assert_eq!(r.cross_arms, ["x-direct", "x-keel-plain", "x-keel-hbone", "x-new"]);
        assert_eq!(r.arms, ARMS);
    }

    /// L7 samples: (arm, workload) with req/s, p50 (p99 = 4 × p50) and proxy CPU µs/request (keel+kernel twice that).
    fn l7_samples() -> Vec<Sample> {
        let mut samples = Vec::new();
        for rep in 0..3 {
            for (arm, c32_rps, c32_p50, r5k_p50, proxy_us, pss_mib) in [
                ("l7-direct", 60_000.0, 0.1, 0.1, 0.0, 0),
                ("l7-nginx", 40_000.0, 0.2, 0.2, 30.0, 50),
                ("l7-keel-l4", 45_000.0, 0.15, 0.15, 20.0, 31),
                ("l7-keel", 30_000.0, 0.18, 0.25, 27.0, 32),
            ] {
                for (workload, rps, p50) in [("l7-h1-c32", c32_rps, c32_p50), ("l7-h1-r5k", 5_000.0, r5k_p50)] {
                    let mut s = http(arm, workload, rep, rps, (p50, p50 * 2.0, p50 * 4.0), proxy_us * 2.0);
                    s.nodes = 1;
                    s.keel_rss_kib = 0;
                    s.proxy_pss_kib = pss_mib * 1024;
                    s.proxy_rss_kib = pss_mib * 1024 * 2;
                    if arm == "l7-direct" {
                        (s.cpu.proxy_s, s.cpu.proxy_user_s) = (0.0, 0.0);
                    } else {
                        s.proxy_requests = Some(if arm == "l7-keel-l4" { 0 } else { s.requests });
                    }
                    s.keel_path = if arm == "l7-keel" { "L7: 1000 virtual hosts".into() } else { String::new() };
                    samples.push(s);
                }
            }
        }
        samples
    }

    #[test]
    fn l7_arms_have_their_own_section_and_targets() {
        let info = synthetic().info;
        let only = Results { info: info.clone(), samples: l7_samples() };
        let r = aggregate(&only);
        assert_eq!((&r.arms, &r.workloads), (&ARMS.map(String::from).to_vec(), &WORKLOADS.map(String::from).to_vec()));
        assert_eq!((&r.l7_arms, &r.l7_workloads), (&L7_ARMS.map(String::from).to_vec(), &L7_WORKLOADS.map(String::from).to_vec()));
        assert!(r.cross_arms.iter().all(|a| a.starts_with("x-")));
        let ratio = |a, b, m| r.ratio("l7-h1-c32", a, b, m);
        assert!(close(ratio("l7-keel", L7_NGINX, Metric::ProxyCpuPerUnit).unwrap(), 0.9));
        assert!(close(ratio("l7-keel", L7_KEEL_L4, Metric::ProxyCpuPerUnit).unwrap(), 1.35));
        assert!(close(ratio("l7-keel", L7_NGINX, Metric::ProxyPss).unwrap(), 0.64));
        // No proxy: no proxy CPU (not 0), so no ratio to it.
        assert_eq!(ratio("l7-direct", L7_NGINX, Metric::ProxyCpuPerUnit), None);
        assert_eq!(r.get("l7-h1-c32", "l7-keel").unwrap().proxy_counted, Some((300_000 * 31 / 10, 300_000 * 31 / 10)));

        let md = markdown(&r);
        for text in [
            "## L7: keel's L7 engine vs keel L4 vs nginx",
            "| l7-h1-c32 | l7-keel | 30000 [27000–36000] | 0.180 | 0.720 | +80 | 27.0 | 54.0 | 32.0 MiB | 0 |",
            "| l7-h1-c32 | l7-direct | 60000 [54000–72000] | 0.100 | 0.400 | +0 | – | – | – | 0 |",
            "| l7-h1-c32 | l7-keel-meshed | – |",
            "| l7-h1-c32 | l7-keel | 0.75× | 0.67× | 0.50× | 0.90× | 1.80× | 0.90× | 1.80× | 0.90× | 1.35× | 0.90× | 1.35× | 0.64× |",
            "| l7-keel | 32.0 MiB | 64.0 MiB | 64.0 MiB |",
            "| l7-keel-l4 | 31.0 MiB | 62.0 MiB | 62.0 MiB | 0 / ",
            "- [x] **PASS** keel L7 vs nginx: l7-h1-c32 proxy CPU/request ≤ 1.0× — measured 0.90×",
            "- [ ] **MISS** keel L7: l7-h1-r5k (moderate load, 5,000 req/s) p50 added over no proxy ≤ 100 µs — measured +150 µs",
            "- [ ] **NOT MEASURED** keel L7 vs nginx: l7-h2-c4m8 proxy CPU/request ≤ 1.0× — measured –",
            "2 of 10 targets met.",
        ] {
            assert!(md.contains(text), "missing {text:?} in:\n{md}");
        }
        // An L7-only run has no capture tables or targets of dashes.
        assert!(md.starts_with("# keel benchmark: keel's L7 engine vs keel L4 vs nginx\n"));
        assert!(!md.contains("## HTTP (wrk") && !md.contains("## Targets (ratios") && !md.contains("## Cross-node"), "{md}");
        let s = summary(&r);
        assert!(!s.text.contains("(all)") && !s.text.contains("\nTargets:"), "{s}");
        let line = s.text.lines().find(|l| l.starts_with("l7-h1-c32    l7-keel ")).unwrap();
        assert!(line.contains("30000 req/s") && line.contains("+80") && line.contains("27.0 µs/req") && line.contains("0.90×"), "{line}");
        assert!(s.text.contains("L7 targets (issue 6):") && s.targets.len() == L7_TARGETS.len(), "{s}");

        // Beside the capture arms, the capture report is as before and the L7 section comes after it.
        let mut mixed = synthetic();
        let single_md = markdown(&aggregate(&mixed));
        mixed.samples.extend(l7_samples());
        let r = aggregate(&mixed);
        let md = markdown(&r);
        assert!(md.starts_with(single_md.split("## Targets").next().unwrap()), "capture sections changed");
        assert!(md.contains("## L7:") && md.contains("## Targets (ratios") && !md.split("## L7:").next().unwrap().contains("l7-"));
        assert_eq!(check_targets(&r), check_targets(&aggregate(&synthetic())));
        assert_eq!(summary(&r).targets.len(), TARGETS.len() + L7_TARGETS.len());
    }

    #[test]
    fn write_all_writes_the_three_files() {
        let dir = std::env::temp_dir().join(format!("keel-bench-report-{}-{:?}", std::process::id(), std::thread::current().id()));
        let results = synthetic();
        let summary = write_all(&dir, &results).unwrap();
        assert!(summary.text.contains("Targets:"));
        let json: Results = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        // Not compared field by field: serde_json's default float parsing may differ from the original in the last bit.
        let keys = |r: &Results| r.samples.iter().map(|s| (s.arm.clone(), s.workload.clone(), s.rep, s.requests, s.ok)).collect::<Vec<_>>();
        assert_eq!(keys(&json), keys(&results));
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("## Targets") && md.contains("- bulk-4 / ebpf+splice: iperf3: unable to connect"), "{md}");
        assert!(std::fs::read_to_string(dir.join("report.svg")).unwrap().starts_with("<svg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
