//! The workloads and the recognised load generators that drive them (wrk for HTTP, h2load for HTTP/2, iperf3 for
//! bulk, podapp for the integrity check), each bounded in time, with their output parsed into a partial [`Sample`].
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::model::{Failures, Latency, Sample};
use crate::lab::{Pod, ServeMode};

pub const HTTP_PORT: u16 = 80;
/// The server pod's nginx also serves h2c (prior knowledge) here: the L7 comparison's no-proxy HTTP/2 baseline.
pub const H2C_PORT: u16 = 81;
/// What the L7 workloads ask for: `Host` (HTTP/1.1) or `:authority` (HTTP/2), routed by the proxies.
pub const L7_HOST: &str = "catalog";
pub const IPERF_PORT: u16 = 5201;
pub const ECHO_PORT: u16 = 9000;
/// Size of the echoed blob whose checksum is compared.
pub const INTEGRITY_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub enum Tool {
    /// wrk against nginx; `close` sends `Connection: close` (a new connection per request).
    Wrk {
        threads: u32,
        connections: u32,
        close: bool,
    },
    Iperf {
        streams: u32,
    },
    Integrity,
    /// The L7 comparison: `Host`/`:authority: catalog` to whatever the arm puts in front of the server. Closed loop
    /// (`rate` `None`, as fast as answers come): HTTP/1.1 with wrk (`connections` keep-alive connections, one
    /// request in flight on each), or HTTP/2 with h2load (h2c prior knowledge, `streams` concurrent streams on each
    /// of `connections` connections). At a fixed rate (`rate` requests/s on each connection, the same offered load
    /// for every arm): h2load for both protocols (`--h1` for HTTP/1.1), one request in flight per connection at most.
    L7 {
        http2: bool,
        threads: u32,
        connections: u32,
        streams: u32,
        rate: Option<u32>,
    },
}

impl Tool {
    /// Requests in flight at once.
    pub fn in_flight(&self) -> u32 {
        match *self {
            Tool::Wrk { connections, .. } => connections,
            Tool::L7 { connections, streams, .. } => connections * streams,
            Tool::Iperf { .. } | Tool::Integrity => 0,
        }
    }
}

pub struct Workload {
    pub name: &'static str,
    pub tool: Tool,
    /// Runs against a keel started with `--responder` (keel answers itself); not applicable without keel.
    pub responder: bool,
}

impl Workload {
    /// Runs on the L7 arms only (and they run nothing else).
    pub fn l7(&self) -> bool {
        matches!(self.tool, Tool::L7 { .. })
    }
}

const fn l7(http2: bool, threads: u32, connections: u32, streams: u32) -> Tool {
    Tool::L7 { http2, threads, connections, streams, rate: None }
}

/// 4 connections × 1,250 requests/s = 5,000 requests/s: a fifth or less of what any arm sustains here.
const fn l7_fixed_rate(http2: bool) -> Tool {
    Tool::L7 { http2, threads: 1, connections: 4, streams: 1, rate: Some(1250) }
}

pub const WORKLOADS: [Workload; 14] = [
    Workload { name: "keepalive-c1", tool: Tool::Wrk { threads: 1, connections: 1, close: false }, responder: false },
    Workload { name: "keepalive-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: false }, responder: false },
    Workload { name: "keepalive-c128", tool: Tool::Wrk { threads: 2, connections: 128, close: false }, responder: false },
    Workload { name: "newconn-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: true }, responder: false },
    Workload { name: "bulk-1", tool: Tool::Iperf { streams: 1 }, responder: false },
    Workload { name: "bulk-4", tool: Tool::Iperf { streams: 4 }, responder: false },
    Workload { name: "integrity", tool: Tool::Integrity, responder: false },
    Workload { name: "responder-c32", tool: Tool::Wrk { threads: 2, connections: 32, close: false }, responder: true },
    // The L7 comparison: closed loop with 32 and with 4 requests in flight, and a fixed 5,000 requests/s (moderate
    // load: the added-p50 target), over HTTP/1.1 and over HTTP/2.
    Workload { name: "l7-h1-c32", tool: l7(false, 2, 32, 1), responder: false },
    Workload { name: "l7-h1-c4", tool: l7(false, 1, 4, 1), responder: false },
    Workload { name: "l7-h1-r5k", tool: l7_fixed_rate(false), responder: false },
    Workload { name: "l7-h2-c4m8", tool: l7(true, 2, 4, 8), responder: false },
    Workload { name: "l7-h2-c4m1", tool: l7(true, 1, 4, 1), responder: false },
    Workload { name: "l7-h2-r5k", tool: l7_fixed_rate(true), responder: false },
];

/// Runs one workload from `client` against `server` for about `seconds`. (L7 workloads: [`run_l7`].)
pub fn run(workload: &Workload, client: &Pod, server: &Pod, seconds: u32) -> Result<Sample> {
    match workload.tool {
        Tool::Wrk { threads, connections, close } => {
            let headers: &[&str] = if close { &["Connection: close"] } else { &[] };
            wrk(client, server.addr(HTTP_PORT), threads, connections, headers, seconds)
        }
        Tool::Iperf { streams } => iperf(client, server.addr(IPERF_PORT), streams, seconds),
        Tool::Integrity => integrity(client, server.addr(ECHO_PORT)),
        Tool::L7 { .. } => bail!("{} is an L7 workload: it needs the arm's target", workload.name),
    }
}

/// Runs an L7 workload from `client` to `target` (the arm's front: the server pod, nginx, or catalog's VIP for
/// keel) with `Host`/`:authority: catalog`. h2load's per-request log, from which the latency percentiles are
/// computed (h2load prints none), goes to `scratch`.
pub fn run_l7(workload: &Workload, client: &Pod, target: SocketAddr, scratch: &Path, seconds: u32) -> Result<Sample> {
    match workload.tool {
        Tool::L7 { http2: false, threads, connections, rate: None, .. } => {
            wrk(client, target, threads, connections, &[&format!("Host: {L7_HOST}")], seconds)
        }
        Tool::L7 { http2, threads, connections, streams, rate } => {
            h2load(client, target, H2load { http2, threads, connections, streams, rate }, scratch, seconds)
        }
        _ => bail!("{} is not an L7 workload", workload.name),
    }
}

/// An h2load run: h2c prior knowledge, or HTTP/1.1 (`--h1`); `rate` requests/s per connection (`--rps`).
#[derive(Clone, Copy, Debug)]
struct H2load {
    http2: bool,
    threads: u32,
    connections: u32,
    streams: u32,
    rate: Option<u32>,
}

impl H2load {
    fn argv(&self, target: SocketAddr, log: &Path, seconds: u32) -> Vec<String> {
        let mut argv: Vec<String> = vec!["h2load".into()];
        if !self.http2 {
            argv.push("--h1".into());
        }
        for (flag, value) in [("-t", self.threads), ("-c", self.connections), ("-m", self.streams), ("-D", seconds)] {
            argv.extend([flag.to_owned(), value.to_string()]);
        }
        if let Some(rate) = self.rate {
            argv.push(format!("--rps={rate}"));
        }
        // `:authority` sets the Host header in HTTP/1.1 too (a `Host:` header would be sent beside h2load's own).
        argv.extend(["-H".into(), format!(":authority: {L7_HOST}"), format!("--log-file={}", log.display()), format!("http://{target}/")]);
        argv
    }
}

pub fn wrk(client: &Pod, target: SocketAddr, threads: u32, connections: u32, headers: &[&str], seconds: u32) -> Result<Sample> {
    let mut argv: Vec<String> =
        ["wrk", "--latency", "-t", &threads.to_string(), "-c", &connections.to_string()].iter().map(|s| s.to_string()).collect();
    argv.extend(["-d".into(), format!("{seconds}s"), "--timeout".into(), "5s".into()]);
    for header in headers {
        argv.extend(["-H".into(), header.to_string()]);
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
            sample.failures.socket_errors = rest.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
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

fn h2load(client: &Pod, target: SocketAddr, run: H2load, scratch: &Path, seconds: u32) -> Result<Sample> {
    // h2load appends to its log: a fresh one per run.
    let log = scratch.join(format!("h2load-{}.tsv", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let argv = run.argv(target, &log, seconds);
    let out = client.run_timeout(&argv, Duration::from_secs(seconds as u64 + 30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sample = parse_h2load(&text)
        .with_context(|| format!("unreadable h2load output (exit {}):\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr)))?;
    let per_request = std::fs::read_to_string(&log).with_context(|| format!("h2load wrote no {}", log.display()))?;
    let _ = std::fs::remove_file(&log);
    sample.latency = Some(latency_of_h2load_log(&per_request).context("h2load's log has no request")?);
    Ok(sample)
}

/// Parses h2load's summary: the run's length and rate, the request tally and the status classes. Latency comes
/// from its per-request log ([`latency_of_h2load_log`]); `latency` is left `None` here.
pub fn parse_h2load(text: &str) -> Option<Sample> {
    let mut sample = Sample { ok: true, ..Default::default() };
    let mut tallied = false;
    // "12 total, 13 started, 12 done, 10 succeeded, 2 failed, 1 errored, 0 timeout": the number before each word.
    let count = |rest: &str, word: &str| -> Option<u64> {
        rest.split(',').find_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?;
            (words.next()? == word).then(|| n.parse().ok()).flatten()
        })
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in") {
            // "finished in 4.00s, 12345.00 req/s, 1.23MB/s"
            let mut parts = rest.split(',');
            sample.duration_s = parse_duration_s(parts.next()?.trim())?;
            sample.requests_per_s = parts.next()?.trim().strip_suffix("req/s")?.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            sample.requests = count(rest, "done")?;
            sample.failures.socket_errors = count(rest, "errored")? + count(rest, "timeout")?;
            tallied = true;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // "10 2xx, 0 3xx, 1 4xx, 1 5xx": like wrk's "Non-2xx or 3xx responses".
            sample.failures.non_2xx = count(rest, "4xx")? + count(rest, "5xx")?;
        }
    }
    (sample.duration_s > 0.0 && tallied).then_some(sample)
}

/// p50/p90/p99 (nearest rank) of h2load's `--log-file`: one line per request, tab-separated start time (µs since
/// the epoch), status, and microseconds until the end of the response. `None` without a request.
pub fn latency_of_h2load_log(text: &str) -> Option<Latency> {
    let mut us: Vec<f64> = text.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok()).collect();
    if us.is_empty() {
        return None;
    }
    us.sort_by(f64::total_cmp);
    let rank = |p: f64| us[((p / 100.0 * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] / 1e3;
    Some(Latency { p50_ms: rank(50.0), p90_ms: rank(90.0), p99_ms: rank(99.0) })
}

pub fn iperf(client: &Pod, target: SocketAddr, streams: u32, seconds: u32) -> Result<Sample> {
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

    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 4s of main duration for measurements.
Application protocol: h2c
Process Request Failure:2

finished in 4.00s, 25210.50 req/s, 1.83MB/s
requests: 100850 total, 100882 started, 100850 done, 100842 succeeded, 8 failed, 3 errored, 1 timeout
status codes: 100842 2xx, 0 3xx, 3 4xx, 2 5xx
traffic: 7.31MB (7663844) total, 4.52MB (4739950) headers (space savings 50.51%), 984.79KB (1008420) data
                     min         max         mean         sd        +/- sd
time for request:       37us     12.42ms       312us       150us    88.01%
time for connect:       66us        99us        82us        23us   100.00%
time to 1st byte:      533us       578us       555us        32us   100.00%
req/s           :    6301.12     6304.80     6302.66        1.51    75.00%
";

    #[test]
    fn reads_h2load_reports() {
        let s = parse_h2load(H2LOAD).unwrap();
        assert!(s.ok && s.latency.is_none());
        assert_eq!((s.duration_s, s.requests_per_s, s.requests), (4.0, 25_210.5, 100_850));
        assert_eq!((s.failures.socket_errors, s.failures.non_2xx), (4, 5));
        // Short runs print their length in ms; a report cut before its tally is unreadable.
        let short = H2LOAD.replace("finished in 4.00s", "finished in 812.00ms");
        assert!((parse_h2load(&short).unwrap().duration_s - 0.812).abs() < 1e-9);
        assert!(parse_h2load(H2LOAD.split("requests:").next().unwrap()).is_none());
        assert!(parse_h2load("garbage").is_none());
    }

    #[test]
    fn h2load_log_gives_nearest_rank_percentiles() {
        // 100 requests of 1..=100 µs, shuffled; one line with an unreadable duration is skipped.
        let mut log: String = (1..=100u32).map(|i| format!("1796336276838{:03}\t200\t{}\n", i, (i * 37) % 101)).collect();
        log.push_str("garbage\n");
        let l = latency_of_h2load_log(&log).unwrap();
        assert_eq!((l.p50_ms, l.p90_ms, l.p99_ms), (0.050, 0.090, 0.099));
        let one = latency_of_h2load_log("1\t200\t250\n").unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (0.25, 0.25));
        assert!(latency_of_h2load_log("").is_none());
    }

    #[test]
    fn l7_workloads_say_their_load() {
        let by_name = |n: &str| WORKLOADS.iter().find(|w| w.name == n).unwrap();
        let names: Vec<&str> = WORKLOADS.iter().filter(|w| w.l7()).map(|w| w.name).collect();
        assert_eq!(names, crate::bench::model::L7_WORKLOADS);
        assert_eq!(by_name("l7-h1-c32").tool.in_flight(), 32);
        assert_eq!(by_name("l7-h2-c4m8").tool.in_flight(), 32);
        assert_eq!(by_name("l7-h1-c4").tool.in_flight(), 4);
        assert_eq!(by_name("l7-h2-c4m1").tool.in_flight(), 4);
        assert!(!by_name("keepalive-c32").l7() && !by_name("responder-c32").l7());
        let Tool::L7 { http2, threads, connections, streams, rate } = by_name("l7-h1-r5k").tool else { panic!() };
        let h1 = H2load { http2, threads, connections, streams, rate };
        let target: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert_eq!(
            h1.argv(target, Path::new("/tmp/log.tsv"), 4).join(" "),
            "h2load --h1 -t 1 -c 4 -m 1 -D 4 --rps=1250 -H :authority: catalog --log-file=/tmp/log.tsv http://10.96.0.10:80/"
        );
        let h2 = H2load { http2: true, threads: 2, connections: 4, streams: 8, rate: None };
        assert_eq!(
            h2.argv(target, Path::new("/l"), 2).join(" "),
            "h2load -t 2 -c 4 -m 8 -D 2 -H :authority: catalog --log-file=/l http://10.96.0.10:80/"
        );
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
