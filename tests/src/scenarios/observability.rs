//! keel observed as Istio users observe a mesh: a real Prometheus (Debian's) scrapes both nodes' keels on their
//! metrics port and keel-control on its monitoring port, with the job layout keel documents. After a known load
//! (HTTP through the L7 engine and raw TCP, both over HBONE between the nodes), the queries of Istio's standard
//! dashboards and Kiali's graph must return the expected series, with the expected label sets and values that
//! match what the clients counted (rate × window within 5 %); keel's own health metrics and every expression of
//! the dashboards keel ships (`deploy/dashboards/`) must return data.
use super::*;
use crate::lab::{
    mesh_config,
    prometheus::{DiscoveredPod, Prometheus, Sample},
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Instant, SystemTime},
};

const HTTP_VIP: &str = "10.96.0.50";
const TCP_VIP: &str = "10.96.0.51";
const SERVICE: &str = "web.default.svc.cluster.local";
const TCP_SERVICE: &str = "echo.default.svc.cluster.local";
/// keel's metrics port (Istio's 15020) and keel-control's monitoring port (istiod's 15014).
const METRICS_PORT: u16 = 15020;
const MONITORING_PORT: u16 = 15014;
const SCRAPE_INTERVAL: Duration = Duration::from_millis(500);
/// The range of the rate() queries: long against the scrape interval, so that Prometheus' extrapolation to the
/// window's edges (at most an interval at each end) stays well inside the 5 % the checks allow.
const WINDOW: Duration = Duration::from_secs(30);
const REQUESTS: u32 = 1000;
/// Every request waits this long at the server: the latency quantiles then have a known floor.
const SERVER_DELAY_MS: u32 = 30;
const TCP_CONNECTIONS: u32 = 20;
const TCP_BYTES: u64 = 64 * KIB;

pub fn a_real_prometheus_reads_istio_dashboards_and_keel_health() {
    with_nodes("prom", 2, |lab| {
        let client = lab.node(0).add_pod("sleep")?;
        let web = lab.node(1).add_pod("web")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
                mesh_config::pod_object(&web, "web", &[("app", "web"), ("version", "v1")]),
                mesh_config::http_service_object("web", HTTP_VIP, &[("app", "web")], 80, 8080),
                mesh_config::service_object("echo", TCP_VIP, &[("app", "web")], 9000, 9000),
            ],
        )?;
        let node_ip = |n: usize| lab.node(n).wire_ip().context("a two-node lab has wire addresses");
        let monitoring = SocketAddr::new(IpAddr::V4(node_ip(0)?), MONITORING_PORT).to_string();
        let control = lab.start_control_with(0, &config_dir, &["--readiness-addr", &monitoring], &[])?;
        let metrics_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), METRICS_PORT).to_string();
        let keels = lab.start_keels_following(&control, &["--metrics-addr", &metrics_addr])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&web)?;
        let delay = SERVER_DELAY_MS.to_string();
        let _http = web.http_serve(8080, "web", &["--delay-ms", &delay, "--fail-percent", "10", "--fail-status", "500"])?;
        let _tcp = web.serve(9000, ServeMode::Echo, &[])?;

        // The pods as Kubernetes discovery would list them, each with the annotations deploy/ gives it (keel's
        // readiness port is declared too, and must not be scraped), and an application pod the job must skip.
        let metrics = Some((METRICS_PORT, "/metrics"));
        let (ip0, ip1) = (node_ip(0)?, node_ip(1)?);
        let keel_pod = |name, node, ip, container_port| DiscoveredPod {
            name,
            namespace: "istio-system",
            node,
            app: "keel",
            ip,
            container_port,
            scrape: metrics,
        };
        let pods = [
            keel_pod("keel-a", lab.node_name(0), ip0, METRICS_PORT),
            keel_pod("keel-a", lab.node_name(0), ip0, 15021),
            keel_pod("keel-b", lab.node_name(1), ip1, METRICS_PORT),
            DiscoveredPod {
                app: "keel-control",
                scrape: Some((MONITORING_PORT, "/metrics")),
                ..keel_pod("keel-control-0", lab.node_name(0), ip0, MONITORING_PORT)
            },
            DiscoveredPod { app: "web", namespace: "default", scrape: None, ..keel_pod("web", lab.node_name(1), web.ip, 8080) },
        ];
        let node0 = lab.node(0);
        let scrape_config = crate::lab::workspace_root().join("deploy/prometheus/scrape-config.yaml");
        let prometheus = Prometheus::start(lab.dir(), (&node0.netns_path(), &node0.keel_cgroup()), &scrape_config, &pods, SCRAPE_INTERVAL, 3)?;
        // Kubernetes lists a pod once per declared port: both of keel-a's become one target on its metrics port.
        let targets = prometheus.query("count by (app) (up)")?;
        if one(&targets, &[("app", "keel")])? != 2.0 || one(&targets, &[("app", "keel-control")])? != 1.0 || targets.len() != 2 {
            bail!("the scrape config should make one target per keel pod and one for keel-control, nothing else: {targets:?}");
        }
        run(&prometheus, &client).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel (node 0) log tail:\n{}", keels[0].log_tail(20)))
    });
}

/// What the clients counted.
struct Sent {
    ok: f64,
    failed: f64,
    tcp_bytes: f64,
}

fn run(prometheus: &Prometheus, client: &Pod) -> Result<()> {
    // A few requests and connections first, so every series exists before the window opens: rate() over a counter
    // that appears in the middle of its window cannot be compared with what was sent.
    load(client, 20, 1)?;
    // Prometheus must have scraped them, and the window must not reach back to them.
    std::thread::sleep(SCRAPE_INTERVAL * 4);
    let window_start = SystemTime::now();
    // The window's first samples come before the load: rate() extrapolates from them to the window's start at the
    // window's average slope, which is right only if nothing happened in between.
    std::thread::sleep(SCRAPE_INTERVAL * 3);
    let started = Instant::now();
    let sent = load(client, REQUESTS, TCP_CONNECTIONS)?;
    if started.elapsed() + Duration::from_secs(5) + SCRAPE_INTERVAL * 3 > WINDOW {
        bail!("the load took {:?}: too long for the {WINDOW:?} window", started.elapsed());
    }
    // The window closes; every sample in it must have been scraped before the queries run.
    let window_end = window_start + WINDOW;
    std::thread::sleep(window_end.duration_since(SystemTime::now()).unwrap_or_default() + SCRAPE_INTERVAL * 3);
    let at = |q: &str| prometheus.query_at(q, window_end).with_context(|| format!("query {q}"));
    let w = format!("{}s", WINDOW.as_secs());
    let seconds = WINDOW.as_secs_f64();

    // Istio Service/Workload dashboards: incoming requests by source and response code (reporter=source).
    let by_code = at(&format!(
        "sum(rate(istio_requests_total{{reporter=\"source\",destination_service=~\"{SERVICE}\"}}[{w}])) by (source_workload, source_workload_namespace, response_code)"
    ))?;
    for (code, want) in [("200", sent.ok), ("500", sent.failed)] {
        let got = one(&by_code, &[("source_workload", "sleep"), ("source_workload_namespace", "default"), ("response_code", code)])? * seconds;
        within(&format!("requests answered {code} (rate × window)"), got, want, 0.05)?;
    }
    // Istio Mesh dashboard: success rate (non-5xx responses).
    let success = at(&format!(
        "sum(rate(istio_requests_total{{reporter=\"source\",destination_service=~\"{SERVICE}\",response_code!~\"5.*\"}}[{w}])) / sum(rate(istio_requests_total{{reporter=\"source\",destination_service=~\"{SERVICE}\"}}[{w}]))"
    ))?;
    within("success rate", one(&success, &[])?, sent.ok / (sent.ok + sent.failed), 0.01)?;
    // Istio Service dashboard: request duration P50/P90/P99 from the histogram. Every request waited
    // SERVER_DELAY_MS at the server, so no quantile can fall below the bucket bound under it (25 ms).
    let mut previous = 0.0;
    for q in ["0.50", "0.90", "0.99"] {
        let quantile = at(&format!(
            "histogram_quantile({q}, sum(rate(istio_request_duration_milliseconds_bucket{{reporter=\"source\",destination_service=~\"{SERVICE}\"}}[{w}])) by (le))"
        ))?;
        let v = one(&quantile, &[])?;
        if !(25.0..=2500.0).contains(&v) || v < previous {
            bail!(
                "P{} request duration {v} ms: want ≥ 25 ms (the server waits {SERVER_DELAY_MS} ms), ≤ 2.5 s and ≥ the lower quantile {previous}",
                &q[2..]
            );
        }
        previous = v;
    }
    // Istio Workload dashboard: TCP bytes by connection security policy, from both reporters; connections opened.
    for reporter in ["source", "destination"] {
        for metric in ["istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"] {
            let bytes = at(&format!(
                "sum(rate({metric}{{reporter=\"{reporter}\",destination_service=~\"{TCP_SERVICE}\"}}[{w}])) by (connection_security_policy, source_workload, destination_workload)"
            ))?;
            let got = one(&bytes, &[("connection_security_policy", "mutual_tls"), ("source_workload", "sleep"), ("destination_workload", "web")])
                .with_context(|| format!("all of {metric}: {:#?}", prometheus.query(metric)))?
                * seconds;
            within(&format!("{metric} reported by the {reporter}"), got, sent.tcp_bytes, 0.05)?;
        }
    }
    let opened = at(&format!(
        "sum(rate(istio_tcp_connections_opened_total{{reporter=\"source\",destination_service=~\"{TCP_SERVICE}\"}}[{w}])) by (connection_security_policy)"
    ))?;
    within("TCP connections opened", one(&opened, &[("connection_security_policy", "mutual_tls")])? * seconds, f64::from(TCP_CONNECTIONS), 0.05)?;
    // Kiali's graph: request rates grouped by every label it draws nodes and edges from.
    let kiali = at(&format!(
        "sum(rate(istio_requests_total{{reporter=\"source\",source_workload_namespace=\"default\"}}[{w}])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0"
    ))?;
    let edge = [
        ("source_cluster", "Kubernetes"),
        ("source_workload", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("destination_cluster", "Kubernetes"),
        ("destination_service", SERVICE),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "default"),
        ("destination_workload", "web"),
        ("destination_canonical_service", "web"),
        ("destination_canonical_revision", "v1"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    one(&kiali, &edge)?;

    check_control_plane(prometheus)?;
    check_keel_health(prometheus)?;
    check_dashboards(prometheus)
}

/// `requests` HTTP requests to `web` and `connections` TCP echo exchanges with `echo`, from the client pod.
fn load(client: &Pod, requests: u32, connections: u32) -> Result<Sent> {
    let (requests, concurrency) = (requests.to_string(), "8");
    let connect = format!("{HTTP_VIP}:80");
    let v = client.http_load(&["--url", "http://web/items", "--connect", &connect, "--requests", &requests, "--concurrency", concurrency])?;
    let count = |code: &str| v["statuses"][code].as_u64().unwrap_or(0) as f64;
    let (ok, failed) = (count("200"), count("500"));
    if ok + failed != v["requests"].as_u64().unwrap_or(0) as f64 || failed == 0.0 {
        bail!("the load should be answered 200 or 500 (10 % of them), every one: {v}");
    }
    let to: SocketAddr = format!("{TCP_VIP}:9000").parse()?;
    for _ in 0..connections {
        let r = client.send(to, TCP_BYTES, ServeMode::Echo, IO_TIMEOUT)?;
        if r["ok"] != true {
            bail!("TCP echo through keel failed: {r}");
        }
    }
    Ok(Sent { ok, failed, tcp_bytes: (u64::from(connections) * TCP_BYTES) as f64 })
}

fn check_control_plane(prometheus: &Prometheus) -> Result<()> {
    // Istio's control-plane dashboard: connected proxies, pushes, certificates issued.
    let clients = prometheus.query("sum(pilot_xds{app=\"keel-control\"})")?;
    within("pilot_xds (connected keels)", one(&clients, &[])?, 2.0, 0.0)?;
    let pushes = prometheus.query("sum(pilot_xds_pushes{app=\"keel-control\"}) by (type)")?;
    for kind in ["wds", "wads", "lds", "cds"] {
        if one(&pushes, &[("type", kind)])? < 2.0 {
            bail!("pilot_xds_pushes{{type={kind}}}: want at least one push per keel: {pushes:?}");
        }
    }
    let issued = prometheus.query("sum(citadel_server_success_cert_issuance_count{app=\"keel-control\"})")?;
    if one(&issued, &[])? < 2.0 {
        bail!("citadel_server_success_cert_issuance_count: want the certificates of sleep and web: {issued:?}");
    }
    Ok(())
}

fn check_keel_health(prometheus: &Prometheus) -> Result<()> {
    let per_keel = |q: &str| -> Result<BTreeMap<String, f64>> {
        let samples = prometheus.query(q)?;
        Ok(samples.into_iter().map(|s| (s.labels.get("instance").cloned().unwrap_or_default(), s.value)).collect())
    };
    let connected = per_keel("keel_xds_connected{app=\"keel\"}")?;
    if connected.len() != 2 || connected.values().any(|v| *v != 1.0) {
        bail!("keel_xds_connected: want 1 on both keels, got {connected:?}");
    }
    let acked = per_keel("sum by (instance) (keel_xds_responses_total{app=\"keel\",result=\"ack\"})")?;
    if acked.len() != 2 || acked.values().any(|v| *v < 2.0) {
        bail!("keel_xds_responses_total{{result=ack}}: want responses ACKed on both keels, got {acked:?}");
    }
    let enrolled = per_keel("keel_pods_enrolled{app=\"keel\"}")?;
    if enrolled.values().copied().collect::<Vec<_>>() != [1.0, 1.0] {
        bail!("keel_pods_enrolled: want one pod on each keel, got {enrolled:?}");
    }
    // The certificates keel holds (sleep's on node 0, web's on node 1) are valid for hours still.
    let expiry = prometheus.query("keel_certificate_expiry_timestamp_seconds{app=\"keel\"} - time()")?;
    for identity in ["spiffe://cluster.local/ns/default/sa/sleep", "spiffe://cluster.local/ns/default/sa/web"] {
        let left = one(&expiry, &[("identity", identity)])?;
        if left < 3600.0 {
            bail!("keel_certificate_expiry_timestamp_seconds for {identity}: {left} s left");
        }
    }
    let captured = prometheus.query("sum(keel_ebpf_program_decisions_total{app=\"keel\",program=\"connect4\",decision=\"captured\"})")?;
    if one(&captured, &[])? < f64::from(TCP_CONNECTIONS) {
        bail!("keel_ebpf_program_decisions_total{{program=connect4,decision=captured}}: want ≥ {TCP_CONNECTIONS}: {captured:?}");
    }
    let fds = per_keel("process_open_fds{app=\"keel\"} / process_max_fds{app=\"keel\"}")?;
    if fds.len() != 2 || fds.values().any(|v| *v <= 0.0 || *v >= 1.0) {
        bail!("process_open_fds / process_max_fds: want a fraction on both keels, got {fds:?}");
    }
    Ok(())
}

/// Every PromQL expression of the Grafana dashboards keel ships parses and returns data in this lab.
fn check_dashboards(prometheus: &Prometheus) -> Result<()> {
    let dir = crate::lab::workspace_root().join("deploy/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is not JSON", path.display()))?;
        for expr in dashboard_expressions(&dashboard) {
            let samples = prometheus.query(&expr).with_context(|| format!("{}: expression {expr}", path.display()))?;
            if samples.is_empty() {
                bail!("{}: expression {expr} returned no data", path.display());
            }
            checked += 1;
        }
    }
    if checked == 0 {
        bail!("no dashboard expression found in {}", dir.display());
    }
    Ok(())
}

/// The `expr` of every target of every panel (rows' panels included), with Grafana's `$__rate_interval` as the
/// one-minute range a default Grafana would use with this scrape interval.
pub fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn panels(v: &Value, out: &mut Vec<String>) {
        for panel in v["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.replace("$__rate_interval", "1m"));
                }
            }
            panels(panel, out);
        }
    }
    let mut out = Vec::new();
    panels(dashboard, &mut out);
    out
}

/// The value of the only sample carrying `labels` (others may carry more labels).
fn one(samples: &[Sample], labels: &[(&str, &str)]) -> Result<f64> {
    let matching: Vec<&Sample> = samples.iter().filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))).collect();
    match matching.as_slice() {
        [s] => Ok(s.value),
        _ => bail!("want exactly one series with {labels:?}, got {} of: {samples:#?}", matching.len()),
    }
}

fn within(what: &str, got: f64, want: f64, tolerance: f64) -> Result<()> {
    let off = if want == 0.0 { got.abs() } else { (got - want).abs() / want };
    if off > tolerance || got.is_nan() {
        bail!("{what}: Prometheus says {got:.3}, the clients counted {want:.3} (off by {:.1} %, {:.1} % allowed)", off * 100.0, tolerance * 100.0);
    }
    Ok(())
}
