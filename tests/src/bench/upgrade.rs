//! The upgrade figure (`cargo xtask bench -- --upgrade`, issue 16): what a `keel run --takeover` costs the traffic
//! it happens under. Two nodes in local mode (one config dir and CA, both pods in the mesh): `client` on node 0,
//! nginx in `server` on node 1, so every request crosses node 0's keel (outbound) and HBONE. For `seconds`, the
//! client runs two loads at once: keep-alive requests (wrk, 8 connections) and a new connection per request
//! (wrk, `Connection: close`, 8 connections). Arms:
//!
//! * `steady`: nothing else happens (the baseline of the same run);
//! * `takeover`: halfway through, a new keel takes node 0 over (`keel run --takeover`); the old one drains.
//!
//! Per sample: each load's requests/s, p50/p99 and failures (socket errors and non-2xx answers), and for the
//! takeover how long the successor took from start to serving. Repetitions alternate the arms; the report gives
//! medians, the p99 ratio takeover/steady (the latency blip) and the failed requests per upgrade (target 0).
use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    median,
    workloads::{self, HTTP_PORT},
};
use crate::lab::{mesh_config, Backend, Binaries, Lab};

pub const ARMS: [&str; 2] = ["steady", "takeover"];
/// The loads, run at the same time: (name, wrk's extra header).
const LOADS: [(&str, Option<&str>); 2] = [("keep-alive", None), ("new-connection", Some("Connection: close"))];
const CONNECTIONS: u32 = 8;

#[derive(Clone, Debug, Default, Serialize)]
pub struct UpgradeSample {
    pub arm: String,
    pub load: String,
    pub rep: u32,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failures: u64,
    /// From starting the successor to its "keel ready" (takeover arm).
    pub handover_ms: f64,
}

pub fn run(binaries: &Binaries, out: &Path, reps: u32, seconds: u32) -> Result<Vec<UpgradeSample>> {
    crate::lab::require_root_and_prereqs();
    for tool in ["wrk", "nginx", "iperf3"] {
        if !crate::lab::sys::on_path(tool) {
            bail!("{tool} is missing: `cargo xtask setup` installs it");
        }
    }
    std::fs::create_dir_all(out)?;
    let mut samples = Vec::new();
    for rep in 0..reps {
        let order: Vec<&str> = if rep % 2 == 0 { ARMS.to_vec() } else { ARMS.iter().rev().copied().collect() };
        for arm in order {
            println!("[bench] upgrade repetition {}/{reps} · arm {arm}", rep + 1);
            let arm_samples = run_arm(binaries, arm, rep, seconds).with_context(|| format!("upgrade arm {arm}, repetition {rep}"))?;
            for s in &arm_samples {
                println!(
                    "          {:<15} {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms failures {}{}",
                    s.load,
                    s.requests_per_s,
                    s.p50_ms,
                    s.p99_ms,
                    s.failures,
                    if s.handover_ms > 0.0 { format!(" · handover {:.0} ms", s.handover_ms) } else { String::new() }
                );
            }
            samples.extend(arm_samples);
            std::fs::write(out.join("upgrade.json"), serde_json::to_string_pretty(&samples)?)?;
        }
    }
    Ok(samples)
}

fn run_arm(binaries: &Binaries, arm: &str, rep: u32, seconds: u32) -> Result<Vec<UpgradeSample>> {
    let lab = Lab::with_nodes_and_binaries(&format!("u{rep}{}", &arm[..1]), 2, binaries.clone())?;
    let client = lab.node(0).add_pod("client")?;
    let server = lab.node(1).add_pod("server")?;
    let _servers = super::start_servers(&lab, &server)?;
    let (config_dir, ca_dir) = (lab.dir().join("mesh"), lab.dir().join("ca"));
    mesh_config::write(
        &config_dir,
        "mesh.yaml",
        &[mesh_config::pod_object(&client, "client", &[("app", "client")]), mesh_config::pod_object(&server, "server", &[("app", "server")])],
    )?;
    std::fs::create_dir_all(&ca_dir)?;
    let args = ["--config-dir", config_dir.to_str().context("non-UTF-8 lab dir")?, "--ca-dir", ca_dir.to_str().context("non-UTF-8 lab dir")?];
    let mut keels = Vec::new();
    for (node, pod) in [(0, &client), (1, &server)] {
        let keel = lab.start_keel_on(node, Backend::Ebpf, &args)?;
        super::wait_ready(&keel)?;
        keel.enroll(pod)?;
        keels.push(keel);
    }
    let target = server.addr(HTTP_PORT);
    // The first connection sets up the HBONE pool; it is no part of either arm.
    workloads::wrk(&client, target, 1, 1, &[], 1).context("warm-up")?;
    let mut handover_ms = 0.0;
    let loads = std::thread::scope(|scope| -> Result<Vec<super::model::Sample>> {
        let running: Vec<_> = LOADS
            .iter()
            .map(|(_, header)| {
                let headers: Vec<&str> = header.iter().copied().collect();
                let client = &client;
                scope.spawn(move || workloads::wrk(client, target, 1, CONNECTIONS, &headers, seconds))
            })
            .collect();
        if arm == "takeover" {
            std::thread::sleep(Duration::from_secs_f64(f64::from(seconds) / 2.0));
            let started = Instant::now();
            let next = keels[0].start_successor(&[]).context("the successor")?;
            handover_ms = started.elapsed().as_secs_f64() * 1e3;
            let old = std::mem::replace(&mut keels[0], next);
            drain(old, seconds)?;
        }
        running.into_iter().map(|load| load.join().map_err(|_| anyhow::anyhow!("a load panicked"))?).collect()
    })?;
    Ok(LOADS
        .iter()
        .zip(loads)
        .map(|((load, _), sample)| {
            let latency = sample.latency.clone().unwrap_or_default();
            UpgradeSample {
                arm: arm.to_owned(),
                load: (*load).to_owned(),
                rep,
                requests_per_s: sample.requests_per_s,
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
                failures: sample.failures.total(),
                handover_ms,
            }
        })
        .collect())
}

/// The old keel serves its open connections (the keep-alive load's) until they end with the load, then exits
/// by itself.
fn drain(mut old: crate::lab::Keel, seconds: u32) -> Result<()> {
    let status = old.wait_exit_within(Duration::from_secs(u64::from(seconds) + 30)).context("the old keel after the takeover")?;
    if !status.success() {
        bail!("the old keel exited with {status}; log tail:\n{}", old.log_tail(20));
    }
    Ok(())
}

/// The report: per load, each arm's medians; the p99 blip and the failures per upgrade.
pub fn markdown(samples: &[UpgradeSample], command: &str, seconds: u32) -> String {
    let reps = samples.iter().map(|s| s.rep).max().map_or(0, |r| r + 1);
    let upgrades = samples.iter().filter(|s| s.arm == "takeover" && s.load == LOADS[0].0).count().max(1);
    let mut out = format!(
        "## Upgrade under load: `keel run --takeover` halfway through\n\n`{command}` — {reps} repetitions of {seconds} s, arms \
         alternating; medians. Client on node 0, nginx on node 1 (HBONE); both loads at once, {CONNECTIONS} connections each; \
         node 0's keel is taken over at {:.1} s in the `takeover` arm.\n\n\
         | load | steady req/s | takeover req/s | steady p50 ms | takeover p50 ms | steady p99 ms | takeover p99 ms | p99 ×steady | failed requests per upgrade |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        f64::from(seconds) / 2.0
    );
    for (load, _) in LOADS {
        let of = |arm: &str, field: fn(&UpgradeSample) -> f64| median(samples.iter().filter(|s| s.arm == arm && s.load == load).map(field).collect());
        let failed: u64 = samples.iter().filter(|s| s.arm == "takeover" && s.load == load).map(|s| s.failures).sum();
        let steady_p99 = of("steady", |s| s.p99_ms);
        let _ = writeln!(
            out,
            "| {load} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} |",
            of("steady", |s| s.requests_per_s),
            of("takeover", |s| s.requests_per_s),
            of("steady", |s| s.p50_ms),
            of("takeover", |s| s.p50_ms),
            steady_p99,
            of("takeover", |s| s.p99_ms),
            if steady_p99 > 0.0 { of("takeover", |s| s.p99_ms) / steady_p99 } else { 0.0 },
            failed as f64 / upgrades as f64,
        );
    }
    let handover = median(samples.iter().filter(|s| s.arm == "takeover" && s.load == LOADS[0].0).map(|s| s.handover_ms).collect());
    let steady_failures: u64 = samples.iter().filter(|s| s.arm == "steady").map(|s| s.failures).sum();
    let _ = write!(
        out,
        "\nHandover (successor started → serving): median {handover:.0} ms over {upgrades} upgrades. Failed requests in the steady \
         arm (for comparison): {steady_failures}.\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_gives_the_blip_and_the_failures_per_upgrade() {
        let sample = |arm: &str, load: &str, p99: f64, failures: u64| UpgradeSample {
            arm: arm.into(),
            load: load.into(),
            p99_ms: p99,
            failures,
            handover_ms: 300.0,
            ..Default::default()
        };
        let samples = [
            sample("steady", "keep-alive", 1.0, 0),
            sample("takeover", "keep-alive", 1.5, 0),
            sample("steady", "new-connection", 2.0, 0),
            sample("takeover", "new-connection", 3.0, 2),
        ];
        let report = markdown(&samples, "cargo xtask bench -- --upgrade", 10);
        assert!(report.contains("| keep-alive | 0 | 0 | 0.000 | 0.000 | 1.000 | 1.500 | 1.50 | 0.0 |"), "{report}");
        assert!(report.contains("| new-connection | 0 | 0 | 0.000 | 0.000 | 2.000 | 3.000 | 1.50 | 2.0 |"), "{report}");
        assert!(report.contains("median 300 ms over 1 upgrades"), "{report}");
    }
}
