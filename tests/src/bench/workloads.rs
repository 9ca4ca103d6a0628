//! The workloads and the recognised load generators that drive them (wrk for HTTP, iperf3 for bulk, podapp for
//! the integrity check), each bounded in time, with their output parsed into a partial [`Sample`].
use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::model::{Failures, Latency, Sample};
use crate::lab::{Pod, ServeMode};

pub const HTTP_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;
pub const ECHO_PORT: u16 = 9000;
/// Size of the echoed blob whose checksum is compared.
pub const INTEGRITY_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub enum Tool {
    /// wrk against nginx; `close` sends `Connection: close` (a new connection per request).
    Wrk { threads: u32, connections: u32, close: bool },
    Iperf { streams: u32 },
    Integrity,
}

pub struct Workload {
    pub name: &'static str,
    pub tool: Tool,
    /// Runs against a keel started with `--responder` (keel answers itself); not applicable without keel.
    pub responder: bool,
}

pub const WORKLOADS: [Workload; 8] = [
    Workload { name: "keepalive-c1", tool: Tool::Wrk { threads: 1, connections: 1, close: false }, responder: false },
    Workload { name: "keepalive-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: false }, responder: false },
    Workload { name: "keepalive-c128", tool: Tool::Wrk { threads: 2, connections: 128, close: false }, responder: false },
    Workload { name: "newconn-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: true }, responder: false },
    Workload { name: "bulk-1", tool: Tool::Iperf { streams: 1 }, responder: false },
    Workload { name: "bulk-4", tool: Tool::Iperf { streams: 4 }, responder: false },
    Workload { name: "integrity", tool: Tool::Integrity, responder: false },
    Workload { name: "responder-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: false }, responder: true },
];

/// Runs one workload from `client` against `server` for about `seconds`.
pub fn run(workload: &Workload, client: &Pod, server: &Pod, seconds: u32) -> Result<Sample> {
    match workload.tool {
        Tool::Wrk { threads, connections, close } => wrk(client, server.addr(HTTP_PORT), threads, connections, close, seconds),
        Tool::Iperf { streams } => iperf(client, server.addr(IPERF_PORT), streams, seconds),
        Tool::Integrity => integrity(client, server.addr(ECHO_PORT)),
    }
}

fn wrk(client: &Pod, target: SocketAddr, threads: u32, connections: u32, close: bool, seconds: u32) -> Result<Sample> {
    let mut argv: Vec<String> = ["wrk", "--latency", "-t", &threads.to_string(), "-c", &connections.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(["-d".into(), format!("{seconds}s"), "--timeout".into(), "5s".into()]);
    if close {
        argv.extend(["-H".into(), "Connection: close".into()]);
    }
    argv.push(format!("http://{target}/"));
    let out = client.run_timeout(&argv, Duration::from_secs(seconds as u64 + 30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}"))
}

/// Parses wrk's text report (`--latency` adds the percentile lines).
pub fn parse_wrk(text: &str) -> Option<Sample> {
    let mut sample = Sample { ok: true, ..Default::default() };
    let mut latency = Latency::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            sample.requests_per_s = rest.trim().parse().ok()?;
        } else if line.contains("requests in") {
            // "123456 requests in 5.00s, 12.34MB read"
            let mut words = line.split_whitespace();
            sample.requests = words.next()?.parse().ok()?;
            let duration = line.split("requests in").nth(1)?.split(',').next()?.trim();
            sample.duration_s = parse_duration_s(duration)?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 3, write 0, timeout 1"
            sample.failures.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            sample.failures.non_2xx = rest.trim().parse().ok()?;
        } else if let Some((pct, value)) = line.split_once('%') {
            let ms = parse_duration_s(value.trim()).map(|s| s * 1e3);
            match (pct.trim(), ms) {
                ("50", Some(ms)) => latency.p50_ms = ms,
                ("90", Some(ms)) => latency.p90_ms = ms,
                ("99", Some(ms)) => latency.p99_ms = ms,
                _ => {}
            }
        }
    }
    if sample.duration_s == 0.0 {
        return None;
    }
    sample.latency = Some(latency);
    Some(sample)
}

/// wrk's durations: "812.00us", "1.23ms", "2.50s", "1.02m".
fn parse_duration_s(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().ok()?;
    Some(match unit.trim() {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    })
}

fn iperf(client: &Pod, target: SocketAddr, streams: u32, seconds: u32) -> Result<Sample> {
    let argv = [
        "iperf3".to_string(),
        "-c".into(),
        target.ip().to_string(),
        "-p".into(),
        target.port().to_string(),
        "-t".into(),
        seconds.to_string(),
        "-P".into(),
        streams.to_string(),
        "--json".into(),
    ];
    let out = client.run_timeout(&argv, Duration::from_secs(seconds as u64 + 30))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    Ok(parse_iperf(&report))
}

/// A failed run is a result: `transfer_errors` = 1 and the tool's error as the note.
pub fn parse_iperf(report: &serde_json::Value) -> Sample {
    if let Some(error) = report["error"].as_str() {
        return Sample {
            ok: false,
            note: format!("iperf3: {error}"),
            failures: Failures { transfer_errors: 1, ..Default::default() },
            ..Default::default()
        };
    }
    let received = &report["end"]["sum_received"];
    Sample {
        ok: true,
        duration_s: received["seconds"].as_f64().unwrap_or(0.0),
        bytes: received["bytes"].as_u64().unwrap_or(0),
        gbit_per_s: received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        ..Default::default()
    }
}

fn integrity(client: &Pod, target: SocketAddr) -> Result<Sample> {
    let started = std::time::Instant::now();
    let report = client.send(target, INTEGRITY_BYTES, ServeMode::Echo, Duration::from_secs(60))?;
    let ok = report["ok"] == serde_json::Value::Bool(true);
    let duration_s = started.elapsed().as_secs_f64();
    Ok(Sample {
        ok,
        duration_s,
        bytes: INTEGRITY_BYTES,
        gbit_per_s: INTEGRITY_BYTES as f64 * 8.0 / duration_s / 1e9,
        failures: Failures { transfer_errors: u64::from(!ok), ..Default::default() },
        note: if ok { String::new() } else { format!("echo mismatch: {report}") },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://10.244.0.12:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
    Req/Sec    14.00k     1.00k   16.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.50ms
     99%    3.25ms
  140000 requests in 5.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 4
Requests/sec:  28000.00
Transfer/sec:      4.00MB
";

    #[test]
    fn reads_wrk_reports() {
        let s = parse_wrk(WRK).unwrap();
        assert_eq!(s.requests, 140_000);
        assert_eq!(s.duration_s, 5.0);
        assert_eq!(s.requests_per_s, 28_000.0);
        let l = s.latency.unwrap();
        assert!((l.p50_ms - 0.812).abs() < 1e-9 && l.p90_ms == 1.5 && l.p99_ms == 3.25, "{l:?}");
        assert_eq!((s.failures.socket_errors, s.failures.non_2xx), (3, 4));
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn reads_iperf_reports_and_failures() {
        let ok = serde_json::json!({"end": {"sum_received": {"seconds": 5.0, "bytes": 5_000_000_000u64, "bits_per_second": 8e9}}});
        let s = parse_iperf(&ok);
        assert!(s.ok && s.gbit_per_s == 8.0 && s.bytes == 5_000_000_000);
        let failed = parse_iperf(&serde_json::json!({"error": "unable to connect"}));
        assert!(!failed.ok);
        assert_eq!(failed.failures.transfer_errors, 1);
    }
}
