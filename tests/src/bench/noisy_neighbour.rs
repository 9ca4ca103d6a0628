//! The noisy-neighbour comparison (`cargo xtask bench -- --noisy-neighbour`, issue 16): does one pod's bulk
//! transfer or connection storm through the node's shared proxy raise another pod's latency? Three pods on one
//! node: `quiet` (B) does HTTP request/response at 8 connections (wrk, keep-alive) to nginx in `server`, while
//! `noisy` (A) runs nothing (`alone`), then 4 bulk iperf3 streams to the same server (`bulk`), then a
//! new-connection storm (wrk, `Connection: close`, 16 connections: `storm`). A starts a second before B's
//! measurement and ends a second after it. Arms:
//!
//! * `no-proxy`: no keel (what the node itself costs: both pods' traffic shares its two cores and loopback);
//! * `keel-iptables`: keel capturing with iptables, fair share on;
//! * `keel-fair-off`: keel (eBPF capture) with `--fair-share off` (relays run as Tokio schedules them);
//! * `keel-fair-on`: keel (eBPF capture) with its defaults (fair share on, equal weights).
//!
//! Every pod is enrolled in the keel arms, so each connection crosses keel twice (the client's outbound and the
//! server's inbound). Per phase: B's requests/s and p50/p99, A's Gbit/s (bulk) or connections/s (storm), keel's
//! CPU (user+sys, its cgroup) and peak RSS. Repetitions alternate the arms' order; the report gives medians and
//! checks the targets: B's p99 with A ≤ 1.5× alone, and A's bulk bandwidth with fair share on ≥ 80 % of
//! what it gets with fair share off.
use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    median,
    workloads::{self, HTTP_PORT, IPERF_PORT},
};
use crate::lab::{Backend, Binaries, Lab, Pod};

pub const ARMS: [&str; 4] = ["no-proxy", "keel-iptables", "keel-fair-off", "keel-fair-on"];
const PHASES: [&str; 3] = ["alone", "bulk", "storm"];
/// B's connections (the c=8), A's bulk streams, A's storm connections.
const B_CONNECTIONS: u32 = 8;
const A_STREAMS: u32 = 4;
const A_STORM_CONNECTIONS: u32 = 16;
/// How long A runs before and after B's measurement.
const LEAD: Duration = Duration::from_secs(1);
/// The targets.
const P99_TARGET: f64 = 1.5;
const BANDWIDTH_TARGET: f64 = 0.8;

#[derive(Clone, Debug, Default, Serialize)]
pub struct NoisySample {
    pub arm: String,
    pub phase: String,
    pub rep: u32,
    pub b_requests_per_s: f64,
    pub b_p50_ms: f64,
    pub b_p99_ms: f64,
    pub b_failures: u64,
    /// A's bulk streams' received rate (bulk phase).
    pub a_gbit_per_s: f64,
    /// A's new connections per second (storm phase: one request per connection).
    pub a_connections_per_s: f64,
    pub a_failures: u64,
    /// keel's user+sys CPU over the phase, seconds (0 without keel).
    pub keel_cpu_s: f64,
    pub keel_peak_rss_kib: u64,
}

pub fn run(binaries: &Binaries, out: &Path, reps: u32, seconds: u32) -> Result<Vec<NoisySample>> {
    crate::lab::require_root_and_prereqs();
    for tool in ["wrk", "iperf3", "nginx"] {
        if !crate::lab::sys::on_path(tool) {
            bail!("{tool} is missing: `cargo xtask setup` installs it");
        }
    }
    std::fs::create_dir_all(out)?;
    let mut samples = Vec::new();
    for rep in 0..reps {
        let mut order = ARMS.to_vec();
        order.rotate_left(rep as usize % ARMS.len());
        for arm in order {
            println!("[bench] noisy-neighbour repetition {}/{reps} · arm {arm}", rep + 1);
            let arm_samples = run_arm(binaries, arm, rep, seconds).with_context(|| format!("noisy-neighbour arm {arm}, repetition {rep}"))?;
            for s in &arm_samples {
                println!(
                    "          {:<6} B {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms · A {:.2} Gbit/s {:.0} conn/s · keel CPU {:.2} s",
                    s.phase, s.b_requests_per_s, s.b_p50_ms, s.b_p99_ms, s.a_gbit_per_s, s.a_connections_per_s, s.keel_cpu_s
                );
            }
            samples.extend(arm_samples);
            std::fs::write(out.join("noisy-neighbour.json"), serde_json::to_string_pretty(&samples)?)?;
        }
    }
    Ok(samples)
}

fn run_arm(binaries: &Binaries, arm: &str, rep: u32, seconds: u32) -> Result<Vec<NoisySample>> {
    let lab = Lab::with_nodes_and_binaries(&format!("n{rep}{}", ARMS.iter().position(|a| *a == arm).unwrap_or(0)), 1, binaries.clone())?;
    let quiet = lab.node(0).add_pod("quiet")?;
    let noisy = lab.node(0).add_pod("noisy")?;
    let server = lab.node(0).add_pod("server")?;
    let _servers = super::start_servers(&lab, &server)?;
    let keel = match arm {
        "no-proxy" => None,
        _ => {
            let (backend, fair_share) = match arm {
                "keel-iptables" => (Backend::Iptables, "on"),
                "keel-fair-off" => (Backend::Ebpf, "off"),
                _ => (Backend::Ebpf, "on"),
            };
            let keel = lab.start_keel_on(0, backend, &["--fast-path", "off", "--fair-share", fair_share])?;
            for pod in [&quiet, &noisy, &server] {
                keel.enroll(pod)?;
            }
            Some(keel)
        }
    };
    let keel_cgroup = keel.as_ref().map(|_| lab.node(0).keel_cgroup());
    let keel_cpu = || -> Result<f64> { keel_cgroup.as_deref().map_or(Ok(0.0), super::measure::cgroup_cpu_s) };
    let mut samples = Vec::new();
    for phase in PHASES {
        let before = keel_cpu()?;
        let mut sample = measure_phase(&quiet, &noisy, &server, phase, seconds).with_context(|| format!("phase {phase}"))?;
        sample.keel_cpu_s = keel_cpu()? - before;
        sample.keel_peak_rss_kib = keel.as_ref().map_or(0, |k| super::measure::peak_rss_kib(k.pid()));
        sample.arm = arm.to_owned();
        sample.rep = rep;
        samples.push(sample);
    }
    Ok(samples)
}

/// B measured for `seconds` while A does what `phase` says (from a second before to a second after).
fn measure_phase(quiet: &Pod, noisy: &Pod, server: &Pod, phase: &str, seconds: u32) -> Result<NoisySample> {
    let a_seconds = seconds + 2 * LEAD.as_secs() as u32;
    std::thread::scope(|scope| {
        let noise = match phase {
            "bulk" => Some(scope.spawn(|| workloads::iperf(noisy, server.addr(IPERF_PORT), A_STREAMS, a_seconds))),
            "storm" => Some(scope.spawn(|| workloads::wrk(noisy, server.addr(HTTP_PORT), 1, A_STORM_CONNECTIONS, &["Connection: close"], a_seconds))),
            _ => None,
        };
        if noise.is_some() {
            std::thread::sleep(LEAD);
        }
        let started = Instant::now();
        let b = workloads::wrk(quiet, server.addr(HTTP_PORT), 1, B_CONNECTIONS, &[], seconds);
        let a = noise.map(|n| n.join().map_err(|_| anyhow::anyhow!("A's load panicked"))?).transpose();
        let (b, a) = (b.context("B's requests")?, a.context("A's load")?);
        let latency = b.latency.clone().unwrap_or_default();
        let mut sample = NoisySample {
            phase: phase.to_owned(),
            b_requests_per_s: b.requests_per_s,
            b_p50_ms: latency.p50_ms,
            b_p99_ms: latency.p99_ms,
            b_failures: b.failures.total(),
            ..Default::default()
        };
        if let Some(a) = a {
            sample.a_failures = a.failures.total();
            if !a.ok {
                bail!("A's {phase} failed after {:?}: {}", started.elapsed(), a.note);
            }
            match phase {
                "bulk" => sample.a_gbit_per_s = a.gbit_per_s,
                _ => sample.a_connections_per_s = a.requests_per_s,
            }
        }
        Ok(sample)
    })
}

/// The medians of `field` over the samples of `arm` in `phase`.
fn of(samples: &[NoisySample], arm: &str, phase: &str, field: fn(&NoisySample) -> f64) -> f64 {
    median(samples.iter().filter(|s| s.arm == arm && s.phase == phase).map(field).collect())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The report: B's latency alone and with A per arm, A's throughput, keel's CPU, and the targets checked.
pub fn markdown(samples: &[NoisySample], command: &str, seconds: u32) -> String {
    let reps = samples.iter().map(|s| s.rep).max().map_or(0, |r| r + 1);
    let mut out = format!(
        "## Noisy neighbour: one pod's bulk transfer and connection storm against another pod's latency\n\n`{command}` — {reps} \
         repetitions of {seconds} s per phase, arms rotating; medians. One node, 2 keel workers. B: wrk, {B_CONNECTIONS} keep-alive \
         connections to nginx. A: iperf3 with {A_STREAMS} streams (bulk), wrk with `Connection: close` over {A_STORM_CONNECTIONS} \
         connections (storm), to the same server pod. keel CPU is user+sys of its cgroup over the phase.\n\n\
         | arm | B p50 alone | B p99 alone | B p50 bulk | B p99 bulk | ×alone | B p50 storm | B p99 storm | ×alone | A Gbit/s (bulk) | A conn/s (storm) | keel CPU s (alone/bulk/storm) | keel peak RSS MiB | failures |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n"
    );
    for arm in ARMS {
        let m = |phase: &str, field: fn(&NoisySample) -> f64| of(samples, arm, phase, field);
        let p99_alone = m("alone", |s| s.b_p99_ms);
        let failures: u64 = samples.iter().filter(|s| s.arm == arm).map(|s| s.b_failures + s.a_failures).sum();
        let rss = samples.iter().filter(|s| s.arm == arm).map(|s| s.keel_peak_rss_kib).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {arm} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {:.1}/{:.1}/{:.1} | {:.1} | {failures} |",
            m("alone", |s| s.b_p50_ms),
            p99_alone,
            m("bulk", |s| s.b_p50_ms),
            m("bulk", |s| s.b_p99_ms),
            ratio(m("bulk", |s| s.b_p99_ms), p99_alone),
            m("storm", |s| s.b_p50_ms),
            m("storm", |s| s.b_p99_ms),
            ratio(m("storm", |s| s.b_p99_ms), p99_alone),
            m("bulk", |s| s.a_gbit_per_s),
            m("storm", |s| s.a_connections_per_s),
            m("alone", |s| s.keel_cpu_s),
            m("bulk", |s| s.keel_cpu_s),
            m("storm", |s| s.keel_cpu_s),
            rss as f64 / 1024.0,
        );
    }
    let fair = |phase: &str| ratio(of(samples, "keel-fair-on", phase, |s| s.b_p99_ms), of(samples, "keel-fair-on", "alone", |s| s.b_p99_ms));
    let bandwidth = ratio(of(samples, "keel-fair-on", "bulk", |s| s.a_gbit_per_s), of(samples, "keel-fair-off", "bulk", |s| s.a_gbit_per_s));
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let _ = write!(
        out,
        "\nTargets (keel, fair share on): B's p99 with A's bulk streams {:.2}× alone, with A's storm {:.2}× alone (target ≤ {P99_TARGET}: {} / {}); \
         A's bulk bandwidth {:.2}× what it gets with fair share off (target ≥ {BANDWIDTH_TARGET}: {}).\n",
        fair("bulk"),
        fair("storm"),
        verdict(fair("bulk") <= P99_TARGET),
        verdict(fair("storm") <= P99_TARGET),
        bandwidth,
        verdict(bandwidth >= BANDWIDTH_TARGET),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(arm: &str, phase: &str, p99: f64, gbit: f64) -> NoisySample {
        NoisySample { arm: arm.into(), phase: phase.into(), b_p99_ms: p99, a_gbit_per_s: gbit, ..Default::default() }
    }

    #[test]
    fn the_report_checks_both_targets() {
        let samples = vec![
            sample("keel-fair-on", "alone", 1.0, 0.0),
            sample("keel-fair-on", "bulk", 1.4, 8.5),
            sample("keel-fair-on", "storm", 2.0, 0.0),
            sample("keel-fair-off", "bulk", 3.0, 10.0),
        ];
        let report = markdown(&samples, "cargo xtask bench -- --noisy-neighbour", 5);
        assert!(report.contains("with A's bulk streams 1.40× alone, with A's storm 2.00× alone (target ≤ 1.5: met / missed)"), "{report}");
        assert!(report.contains("0.85× what it gets with fair share off (target ≥ 0.8: met)"), "{report}");
    }
}
