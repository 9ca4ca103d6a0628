//! Per-pod connection budgets: a pod's own `connections_per_second` and `max_connections` (what its
//! `keel.dev/connections-per-second` and `keel.dev/max-connections` annotations set, passed in its enrollment by
//! the node agent or the CNI path) hold that pod and no other. `noisy` opens connections as fast as it can under a
//! budget of 20 per second; `quiet`, with keel's defaults, does the same at the same time and loses none; the
//! refusals are counted under `noisy`'s name, in `keel pods` and in keel's metrics.
//!
//! A pod's bandwidth budget (`keel.dev/bytes-per-second`) paces every byte keel relays for it and no other pod's:
//! `noisy` under 1 MiB/s and `quiet` without a budget send 3 MiB each at the same time; `noisy`'s transfer cannot
//! take less than the budget allows (one second's burst, then the rate), every byte still arrives intact, and
//! the waiting is counted under `noisy`'s name only.
use super::*;
use serde_json::json;
use std::time::Instant;

const PORT: u16 = 7300;
const RATE: u64 = 20;

pub fn a_pods_connection_budget_holds_it_and_spares_its_neighbour(backend: crate::lab::Backend) {
    run_lab("budgets", |lab| {
        let noisy = lab.add_pod("noisy")?;
        let quiet = lab.add_pod("quiet")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        let mut request = Keel::enroll_request(&noisy);
        request["enroll"]["budgets"] = json!({"connections_per_second": RATE, "max_connections": 64});
        keel.api(request)?;
        keel.enroll(&quiet)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        // Both at once: 600 connections each, one after another, as fast as they go.
        let noisy_run = {
            let (noisy, to) = (noisy.clone(), server.addr(PORT));
            std::thread::spawn(move || noisy.connect_loop(to, 600, 16, Duration::from_secs(120)))
        };
        let calm = quiet.connect_loop(server.addr(PORT), 600, 16, Duration::from_secs(120))?;
        let loud = noisy_run.join().map_err(|_| anyhow::anyhow!("noisy's loop panicked"))??;
        if calm["failed"] != 0 {
            bail!("quiet (no budget of its own) lost connections to noisy's budget: {calm}");
        }
        let (ok, failed) = (loud["ok"].as_u64().unwrap_or(0), loud["failed"].as_u64().unwrap_or(0));
        let seconds = loud["total_ms"].as_f64().unwrap_or(0.0) / 1e3;
        // A second's burst, then the rate: what got through is bounded by it (with a margin for timing).
        let allowed = RATE as f64 * (1.0 + seconds) * 1.2;
        if failed == 0 || ok as f64 > allowed {
            bail!("noisy got {ok} connections through in {seconds:.2} s under a budget of {RATE}/s (at most ~{allowed:.0}): {loud}");
        }
        // Counted under noisy's name: `keel pods` and the metrics.
        let pods = keel.pods()?;
        let budgets =
            pods.as_array().and_then(|pods| pods.iter().find(|p| p["name"] == noisy.name.as_str())).map(|p| p["budgets"].clone()).unwrap_or_default();
        let rate = budgets.as_array().and_then(|b| b.iter().find(|b| b["kind"] == "connections_per_second")).cloned().unwrap_or_default();
        if rate["limit"] != RATE || rate["refused"].as_u64().unwrap_or(0) < failed {
            bail!("keel pods does not show noisy's rate budget and its {failed} refusals: {budgets}");
        }
        let (_, metrics) = keel.admin_get("/metrics")?;
        let series = format!("keel_pod_connections_refused_total{{pod=\"{}\",kind=\"connections_per_second\"}} ", noisy.qualified());
        let counted: u64 = metrics.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok()).unwrap_or(0);
        let limit = format!("keel_pod_connection_limit{{pod=\"{}\",kind=\"connections\"}} 64", noisy.qualified());
        if counted < failed || !metrics.lines().any(|l| l == limit) {
            bail!("the metrics do not show noisy's budgets ({counted} refusals, want ≥ {failed}; its 64-connection limit)");
        }
        // A budget out of range is refused naming the field.
        let mut bad = Keel::enroll_request(&server);
        bad["enroll"]["budgets"] = json!({"connections_per_second": 0});
        let err = keel.api(bad).expect_err("a zero rate must be refused");
        if !format!("{err:#}").contains("budgets.connections_per_second") {
            bail!("the refusal does not name the field: {err:#}");
        }
        Ok(())
    });
}

const BANDWIDTH: u64 = 1 << 20;
const TRANSFER: u64 = 3 << 20;

pub fn a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour(backend: crate::lab::Backend) {
    run_lab("bandwidth", |lab| {
        let noisy = lab.add_pod("noisy")?;
        let quiet = lab.add_pod("quiet")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        let mut request = Keel::enroll_request(&noisy);
        request["enroll"]["budgets"] = json!({"bytes_per_second": BANDWIDTH, "weight": 2});
        keel.api(request)?;
        keel.enroll(&quiet)?;
        keel.enroll(&server)?;
        let _sink = server.serve(PORT, ServeMode::Sink, &[])?;
        let started = Instant::now();
        let noisy_run = {
            let (noisy, to) = (noisy.clone(), server.addr(PORT));
            std::thread::spawn(move || send_ok(&noisy, to, TRANSFER, ServeMode::Sink))
        };
        send_ok(&quiet, server.addr(PORT), TRANSFER, ServeMode::Sink)?;
        noisy_run.join().map_err(|_| anyhow::anyhow!("noisy's transfer panicked"))??;
        // One second's worth bursts through; the rest at the budget's rate. (A lower bound: keel may never be faster.)
        let floor = Duration::from_secs_f64((TRANSFER - BANDWIDTH) as f64 / BANDWIDTH as f64 * 0.9);
        if started.elapsed() < floor {
            bail!("noisy moved {TRANSFER} bytes in {:?} under a budget of {BANDWIDTH} bytes/s (at least {floor:?})", started.elapsed());
        }
        let pods = keel.pods()?;
        let share_of = |pod: &Pod| {
            pods.as_array().and_then(|pods| pods.iter().find(|p| p["name"] == pod.name.as_str())).map(|p| p["share"].clone()).unwrap_or_default()
        };
        let (loud, calm) = (share_of(&noisy), share_of(&quiet));
        if loud["bytes_per_second"] != BANDWIDTH || loud["weight"] != 2 || loud["throttled_bytes"].as_u64().unwrap_or(0) == 0 {
            bail!("keel pods does not show noisy's budget, weight and throttled bytes: {loud}");
        }
        if calm["throttled_bytes"] != 0 || calm["weight"] != 1 || calm.get("bytes_per_second").is_some() {
            bail!("quiet, without a budget, was throttled or shows one: {calm}");
        }
        let (_, metrics) = keel.admin_get("/metrics")?;
        let value = |series: String| metrics.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok());
        let limit = value(format!("keel_pod_bandwidth_limit_bytes_per_second{{pod=\"{}\"}} ", noisy.qualified()));
        let throttled = value(format!("keel_pod_throttled_seconds_total{{pod=\"{}\"}} ", noisy.qualified())).unwrap_or(0.0);
        let quiet_throttled = value(format!("keel_pod_throttled_bytes_total{{pod=\"{}\"}} ", quiet.qualified()));
        if limit != Some(BANDWIDTH as f64) || throttled < 0.5 || quiet_throttled != Some(0.0) {
            bail!("the metrics do not show noisy's budget and its waiting alone (limit {limit:?}, noisy waited {throttled} s, quiet throttled {quiet_throttled:?} bytes)");
        }
        let mut bad = Keel::enroll_request(&server);
        bad["enroll"]["budgets"] = json!({"weight": 1000});
        let err = keel.api(bad).expect_err("a weight of 1000 must be refused");
        if !format!("{err:#}").contains("budgets.weight") {
            bail!("the refusal does not name the field: {err:#}");
        }
        Ok(())
    });
}
