//! keel-demo: what `cargo xtask demo` shows. Two nodes and three pods, a mesh config directory (Pods and a
//! Service), a keel with eBPF capture on each node reading it in-process (or following keel-control with
//! `--control-plane`), Service VIP traffic, pod traffic across the nodes inside mTLS (with the wire watched for
//! plaintext), a policy deny, HTTP traffic management (a VirtualService dark launch and canary split), and what
//! each keel carried — then everything is cleaned up (the lab's Drop).

mod kubernetes;

use anyhow::{bail, Result};
use clap::Parser;
use keel_tests::lab::{counter, mesh_config, podapp_payload, Backend, Binaries, Connection, Lab, ServeMode};
use keel_tests::scenarios::{send_ok, KIB, MIB};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "keel-demo", about = "Run a small keel lab and show what keel captured")]
struct Cli {
    /// The keel binary.
    #[arg(long, env = "KEEL_BIN")]
    keel: PathBuf,
    /// The podapp binary (from this crate).
    #[arg(long, env = "KEEL_PODAPP")]
    podapp: PathBuf,
    /// The control-plane binary.
    #[arg(long, env = "KEEL_CONTROL_BIN")]
    keel_control: PathBuf,
    /// Run keel-control as a separate control plane (delta ADS over TLS) instead of keel's local mode.
    #[arg(long, conflicts_with = "kubernetes")]
    control_plane: bool,
    /// Drive everything through Kubernetes API objects: keel-control and the keels in `--kubernetes` mode against
    /// the API stand-in.
    #[arg(long)]
    kubernetes: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("keel-demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn run(cli: Cli) -> Result<()> {
    step("checking prerequisites (root, ip, iptables, cgroup v2, bpffs)");
    keel_tests::lab::require_root_and_prereqs();
    step("creating two nodes (10.244.0.0/24 and 10.244.1.0/24, linked by a wire 172.30.0.0/24) and three pods");
    let lab = Lab::with_nodes_and_binaries(
        "demo",
        2,
        Binaries { keel: cli.keel, podapp: cli.podapp, keel_control: cli.keel_control, ..Binaries::locate() },
    )?;
    let result = if cli.kubernetes { kubernetes::demo(&lab) } else { demo(&lab, cli.control_plane) };
    if result.is_err() {
        // Keep the lab's logs and print keel's log tail on the way out.
        lab.mark_failed();
    }
    step("cleaning up (stopping keel, deleting namespaces and cgroups)");
    drop(lab);
    if result.is_ok() {
        step("done");
    }
    result
}

const VIP: &str = "10.96.0.10";
const WEB_VIP: &str = "10.96.0.11";

/// An HTTP Service over the same pods: its port name makes it L7.
fn web_service() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {WEB_VIP}\n  selector: {{app: echo}}\n  ports:\n  - {{name: http-web, port: 80, targetPort: 8090}}\n"
    )
}

const WEB_TRAFFIC: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - name: dark-launch
    match: [{headers: {x-istio-cohort: {exact: internal}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: canary
    route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
";

fn demo(lab: &Lab, control_plane: bool) -> Result<()> {
    let client = lab.node(0).add_pod("client")?;
    let a = lab.node(0).add_pod("server-a")?;
    let b = lab.node(1).add_pod("server-b")?;
    for p in [&client, &a, &b] {
        println!("    pod {:<9} {:<12} on {}", p.name, p.ip, p.node_name);
    }
    let config_dir = lab.dir().join("mesh");
    let ca_dir = lab.dir().join("ca");
    step(&format!("writing the mesh config: Pods and Service echo ({VIP}:80 -> 8080, app=echo) in {}", config_dir.display()));
    let objects = vec![
        mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
        mesh_config::pod_object(&a, "echo", &[("app", "echo"), ("version", "v1")]),
        mesh_config::pod_object(&b, "echo", &[("app", "echo"), ("version", "v2")]),
        mesh_config::service_object("echo", VIP, &[("app", "echo")], 80, 8080),
        web_service(),
    ];
    mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
    let (_control, keels) = if control_plane {
        step("starting keel-control on node 0 (delta ADS + CA, 172.30.0.1:15012) and a keel on each node following it");
        let control = lab.start_control_on(0, &config_dir)?;
        let keels = lab.start_keels_following(&control, &[])?;
        (Some(control), keels)
    } else {
        step("starting a keel on each node, reading the config in-process (local mode) with one shared CA");
        let (dir, ca) = (config_dir.display().to_string(), ca_dir.display().to_string());
        let keels = (0..2).map(|k| lab.start_keel_on(k, Backend::Ebpf, &["--config-dir", &dir, "--ca-dir", &ca])).collect::<Result<Vec<_>>>()?;
        (None, keels)
    };
    for keel in &keels {
        wait_ready(keel)?;
    }
    step("enrolling client and server-a (node 0) and server-b (node 1)");
    keels[0].enroll(&client)?;
    keels[0].enroll(&a)?;
    keels[1].enroll(&b)?;
    step("what node 0's keel knows (keel pc workloads / keel pc services)");
    print!("{}", indent(&keels[0].cli(&["pc", "workloads"])?));
    print!("{}", indent(&keels[0].cli(&["pc", "services"])?));
    let _servers = [a.serve(8080, ServeMode::Echo, &[])?, b.serve(8080, ServeMode::Echo, &[])?];

    let vip: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    step(&format!("8 connections client -> {vip} (the Service VIP): keel picks an endpoint for each"));
    print_vip_spread(&keels[0], &client, vip, 8)?;

    step("1 MiB client -> server-b across the nodes, while tcpdump watches the wire");
    let capture = lab.capture_wire()?;
    let s = send_ok(&client, b.addr(8080), MIB, ServeMode::Echo)?;
    let wire = capture.stop()?;
    let plaintext = [0usize, 300_000, 700_000].iter().any(|&o| wire.contains(&podapp_payload(1, o, 48)));
    println!(
        "    ok in {:.1} ms; on the wire: {} bytes to port 15008 (HBONE), application plaintext seen: {}",
        s.json["duration_ms"].as_f64().unwrap_or(0.0),
        wire.tcp_bytes_to_port(15008),
        if plaintext { "YES" } else { "no" }
    );
    let inbound = keels[1].wait_connection(Duration::from_secs(5), |c| c.direction == "inbound" && c.bytes_sent == MIB)?;
    println!(
        "    node 1's keel: from {} (verified by mTLS) to {}",
        inbound.source_peer.identity.as_deref().unwrap_or("?"),
        inbound.destination_peer.identity.as_deref().unwrap_or("?")
    );
    step("workload certificates on node 0 (keel pc certs)");
    print!("{}", indent(&keels[0].cli(&["pc", "certs"])?));

    step("an AuthorizationPolicy: DENY sa/sleep -> app=echo");
    let mut with_policy = objects.clone();
    with_policy.push(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-sleep, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]}]\n"
            .into(),
    );
    mesh_config::write(&config_dir, "mesh.yaml", &with_policy)?;
    std::thread::sleep(Duration::from_millis(1000));
    let refused = client.send(b.addr(8080), KIB, ServeMode::Echo, Duration::from_secs(5))?;
    println!(
        "    client -> server-b: {}",
        if refused["ok"] == true { "allowed (unexpected)".to_owned() } else { format!("refused ({})", refused["error"]) }
    );
    let denied = keels[1].wait_connection(Duration::from_secs(5), |c| c.response_status == Some(401))?;
    println!("    node 1's keel answered 401: {}", denied.policy.as_deref().unwrap_or("?"));
    print!("{}", indent(&keels[1].cli(&["pc", "policies"])?));
    mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
    std::thread::sleep(Duration::from_millis(1000));
    send_ok(&client, b.addr(8080), KIB, ServeMode::Echo)?;
    println!("    policy removed: client -> server-b allowed again");

    http_traffic_management(&config_dir, &objects, &keels[0], &client, [&a, &b])?;

    // Entries appear as connections close: give keel a moment to record the last ones.
    std::thread::sleep(Duration::from_millis(300));
    for (k, keel) in keels.iter().enumerate() {
        let conns = keel.connections()?;
        step(&format!("what node {k}'s keel carried ({} connections)", conns.len()));
        print_connections(&conns);
    }
    step("node 1's Istio-standard TCP metrics (opened, by source principal and security policy)");
    let (_, metrics) = keels[1].admin_get("/metrics")?;
    for line in metrics.lines().filter(|l| l.starts_with("istio_tcp_connections_opened_total{")) {
        let pick = |key: &str| line.split(&format!("{key}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        println!(
            "    reporter={} source_principal={} connection_security_policy={} -> {}",
            pick("reporter"),
            pick("source_principal"),
            pick("connection_security_policy"),
            line.rsplit(' ').next().unwrap_or("")
        );
    }
    step("node 0's keel counters");
    print_stats(&keels[0].stats()?)?;
    Ok(())
}

/// HTTP to the `web` Service goes through node 0's L7 engine: first balanced, then routed by a VirtualService.
fn http_traffic_management(
    config_dir: &std::path::Path,
    objects: &[String],
    keel: &keel_tests::lab::Keel,
    client: &keel_tests::lab::Pod,
    servers: [&keel_tests::lab::Pod; 2],
) -> Result<()> {
    let _web = [servers[0].http_serve(8090, "v1", &[])?, servers[1].http_serve(8090, "v2", &[])?];
    let connect = format!("{WEB_VIP}:80");
    let load = |extra: &[&str]| -> Result<Value> {
        let mut args = vec!["--url", "http://web/", "--connect", &connect, "--requests", "200", "--concurrency", "4"];
        args.extend_from_slice(extra);
        client.http_load(&args)
    };
    let show = |what: &str, v: &Value| {
        println!("    {what}: statuses {} served by {}  (p50 {} ms)", v["statuses"], v["served_by"], v["latency_ms"]["p50"]);
    };
    step(&format!("HTTP: 200 requests client -> web ({WEB_VIP}:80, port http-web): keel's L7 engine balances each request (least request)"));
    show("no VirtualService", &load(&[])?);
    step("applying a DestinationRule (subsets v1/v2) and a VirtualService: dark launch by header, 90/10 canary for the rest");
    let mut with_routes = objects.to_vec();
    with_routes.push(WEB_TRAFFIC.into());
    mesh_config::write(config_dir, "mesh.yaml", &with_routes)?;
    std::thread::sleep(Duration::from_millis(1000));
    show("x-istio-cohort: internal", &load(&["--header", "x-istio-cohort: internal"])?);
    show("everyone else (h2c)     ", &load(&["--http2"])?);
    step("node 0's L7 config (keel pc routes / keel pc clusters)");
    print!("{}", indent(&keel.cli(&["pc", "routes"])?));
    print!("{}", indent(&keel.cli(&["pc", "clusters"])?));
    step("node 0's Istio-standard HTTP metrics (istio_requests_total by destination version)");
    let (_, metrics) = keel.admin_get("/metrics")?;
    for line in metrics.lines().filter(|l| l.starts_with("istio_requests_total{") && l.contains("destination_service_name=\"web\"")) {
        let pick = |key: &str| line.split(&format!("{key}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        println!(
            "    destination_workload={} response_code={} connection_security_policy={} -> {}",
            pick("destination_workload"),
            pick("response_code"),
            pick("connection_security_policy"),
            line.rsplit(' ').next().unwrap_or("")
        );
    }
    Ok(())
}

fn wait_ready(keel: &keel_tests::lab::Keel) -> Result<()> {
    for _ in 0..200 {
        if keel.admin_get("/healthz/ready")?.0 == 200 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("keel did not become ready within 10 s")
}

/// `count` connections to the VIP and where keel sent each.
fn print_vip_spread(keel: &keel_tests::lab::Keel, client: &keel_tests::lab::Pod, vip: std::net::SocketAddr, count: usize) -> Result<()> {
    let mut upstreams = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..count {
        let sent = send_ok(client, vip, KIB, ServeMode::Echo)?;
        let port = sent.local_port();
        let c = keel.wait_connection(Duration::from_secs(5), |c| c.original_destination == vip.to_string() && c.source_port() == port)?;
        let via = format!("{} ({})", c.upstream.as_deref().unwrap_or("?"), c.path.as_deref().unwrap_or("?"));
        *upstreams.entry(via).or_default() += 1;
    }
    for (via, n) in upstreams {
        println!("    {vip} -> {via}: {n} connection(s)");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// One row per distinct flow (direction, pod, destination, bytes): the 20 short connections become one "×20"
/// row instead of drowning the interesting ones.
fn print_connections(conns: &[Connection]) {
    let mut rows: Vec<(&Connection, usize, f64)> = Vec::new();
    for c in conns {
        let same = |r: &&mut (&Connection, usize, f64)| {
            let k = r.0;
            k.direction == c.direction
                && k.pod == c.pod
                && k.original_destination == c.original_destination
                && k.upstream == c.upstream
                && k.path == c.path
                && k.bytes_sent == c.bytes_sent
                && k.bytes_received == c.bytes_received
                && k.error == c.error
        };
        match rows.iter_mut().find(same) {
            Some(r) => {
                r.1 += 1;
                r.2 = r.2.max(c.duration_ms);
            }
            None => rows.push((c, 1, c.duration_ms)),
        }
    }
    println!(
        "    {:<9} {:<17} {:<22} {:<22} {:<22} {:<9} {:>9} {:>9} {:>8} {:>5}",
        "direction", "pod", "source", "original dst", "upstream", "path", "sent", "received", "max ms", "count"
    );
    for (c, n, ms) in rows {
        let source = if n > 1 { format!("{} …", c.source) } else { c.source.clone() };
        println!(
            "    {:<9} {:<17} {:<22} {:<22} {:<22} {:<9} {:>9} {:>9} {:>8.2} {:>5}{}",
            c.direction,
            c.pod,
            source,
            c.original_destination,
            c.upstream.as_deref().unwrap_or("-"),
            c.path.as_deref().unwrap_or("-"),
            c.bytes_sent,
            c.bytes_received,
            ms,
            format!("×{n}"),
            c.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
        );
    }
}

fn print_stats(stats: &Value) -> Result<()> {
    println!("    capture {}  fast path {}", stats["capture"].as_str().unwrap_or("?"), stats["fast_path"]);
    for dir in ["outbound", "inbound"] {
        let p = |k: &str| counter(stats, &format!("/connections/{dir}/{k}"));
        println!(
            "    {dir:<8} opened {:>5} closed {:>5} active {:>3} bytes sent {:>10} received {:>10} errors {}",
            p("opened")?,
            p("closed")?,
            p("active")?,
            p("bytes_sent")?,
            p("bytes_received")?,
            p("errors")?
        );
    }
    match stats["ebpf"].as_object() {
        Some(progs) => {
            for (prog, counters) in progs {
                let line: Vec<String> =
                    counters.as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_else(|| vec![counters.to_string()]);
                println!("    ebpf {prog:<10} {}", line.join("  "));
            }
        }
        None => println!("    ebpf: no counters"),
    }
    Ok(())
}
