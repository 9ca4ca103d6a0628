//! keel-demo: what `cargo xtask demo` shows. A node with three pods, a mesh config directory (Pods and a Service),
//! keel with eBPF capture reading it in-process (or following keel-control with `--control-plane`), traffic to the
//! Service VIP and between pods, a live config edit, and a table of what keel captured — then everything is
//! cleaned up (the lab's Drop).

use anyhow::{bail, Result};
use clap::Parser;
use keel_tests::lab::{counter, mesh_config, Backend, Binaries, Connection, Lab, ServeMode};
use keel_tests::scenarios::{send_ok, KIB, MIB};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "keel-demo",
    about = "Run a small keel lab and show what keel captured"
)]
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
    #[arg(long)]
    control_plane: bool,
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
    step("creating a node namespace with a bridge (10.244.0.1/24) and three pods");
    let lab = Lab::with_binaries(
        "demo",
        Binaries {
            keel: cli.keel,
            podapp: cli.podapp,
            keel_control: cli.keel_control,
        },
    )?;
    let result = demo(&lab, cli.control_plane);
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

fn demo(lab: &Lab, control_plane: bool) -> Result<()> {
    let client = lab.add_pod("client")?;
    let a = lab.add_pod("server-a")?;
    let b = lab.add_pod("server-b")?;
    for p in [&client, &a, &b] {
        println!("    pod {:<9} {:<12} netns {}", p.name, p.ip, p.netns);
    }
    let config_dir = lab.dir().join("mesh");
    step(&format!("writing the mesh config: Pods and Service echo ({VIP}:80 -> 8080, app=echo) in {}", config_dir.display()));
    let mut objects = vec![
        mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
        mesh_config::pod_object(&a, "echo", &[("app", "echo"), ("version", "v1")]),
        mesh_config::pod_object(&b, "echo", &[("app", "echo"), ("version", "v2")]),
        mesh_config::service_object("echo", VIP, &[("app", "echo")], 80, 8080),
    ];
    mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
    let (_control, keel) = if control_plane {
        step("starting keel-control (delta ADS + CA on 127.0.0.1:15012) and keel with eBPF capture following it");
        let control = lab.start_control(&config_dir)?;
        let args = control.keel_args();
        let keel = lab.start_keel(Backend::Ebpf, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        (Some(control), keel)
    } else {
        step("starting keel with eBPF capture, reading the config directory in-process (local mode)");
        let dir = config_dir.display().to_string();
        (None, lab.start_keel(Backend::Ebpf, &["--config-dir", &dir])?)
    };
    println!("    keel pid {}, API {}", keel.pid(), lab.api_socket().display());
    wait_ready(&keel)?;
    step("enrolling client, server-a and server-b");
    for p in [&client, &a, &b] {
        keel.enroll(p)?;
    }
    step("what keel knows (keel pc workloads / keel pc services)");
    print!("{}", indent(&keel_cli(lab, &["pc", "workloads"])?));
    print!("{}", indent(&keel_cli(lab, &["pc", "services"])?));
    step("starting echo servers on server-a:8080, server-b:8080 and server-b:9090");
    let _servers = [a.serve(8080, ServeMode::Echo, &[])?, b.serve(8080, ServeMode::Echo, &[])?, b.serve(9090, ServeMode::Echo, &[])?];

    let vip: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    step(&format!("8 connections client -> {vip} (the Service VIP): keel picks an endpoint for each"));
    print_vip_spread(&keel, &client, vip, 8)?;
    step("direct pod-to-pod traffic");
    for (what, from, to, bytes) in [
        ("1 KiB echo   client -> server-a", &client, a.addr(8080), KIB),
        ("1 MiB echo   client -> server-b", &client, b.addr(8080), MIB),
        ("1 KiB echo server-a -> server-b", &a, b.addr(9090), KIB),
    ] {
        let s = send_ok(from, to, bytes, ServeMode::Echo)?;
        let sha = s.json["sha256"].as_str().unwrap_or("");
        let ms = s.json["duration_ms"].as_f64().unwrap_or(0.0);
        println!("    {what}: ok in {ms:.1} ms, sha256 {}", sha.get(..16).unwrap_or(sha));
    }
    let r = client.connect_loop(b.addr(9090), 20, 16, Duration::from_secs(60))?;
    if r["failed"] != 0 {
        bail!("short connections failed: {r}");
    }
    println!("    20 short connections client -> server-b: max {:.1} ms", r["max_ms"].as_f64().unwrap_or(0.0));

    step("editing the config: Service echo now selects version=v2 only, target port 9090");
    objects.pop();
    objects.push(mesh_config::service_object("echo", VIP, &[("version", "v2")], 80, 9090));
    mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
    std::thread::sleep(Duration::from_millis(700));
    print_vip_spread(&keel, &client, vip, 4)?;

    // Entries appear as connections close: give keel a moment to record the last ones.
    std::thread::sleep(Duration::from_millis(300));
    let conns = keel.connections()?;
    let stats = keel.stats()?;
    step(&format!("what keel captured ({} connections)", conns.len()));
    print_connections(&conns);
    step("keel counters");
    print_stats(&stats);
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
        *upstreams.entry(c.upstream.unwrap_or_else(|| "?".into())).or_default() += 1;
    }
    for (upstream, n) in upstreams {
        println!("    {vip} -> {upstream}: {n} connection(s)");
    }
    Ok(())
}

fn keel_cli(lab: &Lab, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(&lab.binaries().keel).arg("--api-socket").arg(lab.api_socket()).args(args).output()?;
    if !out.status.success() {
        bail!("keel {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
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
        "    {:<9} {:<17} {:<22} {:<22} {:<22} {:>9} {:>9} {:>8} {:>5}",
        "direction", "pod", "source", "original dst", "upstream", "sent", "received", "max ms", "count"
    );
    for (c, n, ms) in rows {
        let source = if n > 1 {
            format!("{} …", c.source)
        } else {
            c.source.clone()
        };
        println!(
            "    {:<9} {:<17} {:<22} {:<22} {:<22} {:>9} {:>9} {:>8.2} {:>5}{}",
            c.direction,
            c.pod,
            source,
            c.original_destination,
            c.upstream.as_deref().unwrap_or("-"),
            c.bytes_sent,
            c.bytes_received,
            ms,
            format!("×{n}"),
            c.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
}

fn print_stats(stats: &Value) {
    println!(
        "    capture {}  fast path {}",
        stats["capture"].as_str().unwrap_or("?"),
        stats["fast_path"]
    );
    for dir in ["outbound", "inbound"] {
        let p = |k: &str| counter(stats, &format!("/connections/{dir}/{k}"));
        println!(
            "    {dir:<8} opened {:>5} closed {:>5} active {:>3} bytes sent {:>10} received {:>10} errors {}",
            p("opened"),
            p("closed"),
            p("active"),
            p("bytes_sent"),
            p("bytes_received"),
            p("errors")
        );
    }
    match stats["ebpf"].as_object() {
        Some(progs) => {
            for (prog, counters) in progs {
                let line: Vec<String> = counters
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
                    .unwrap_or_else(|| vec![counters.to_string()]);
                println!("    ebpf {prog:<10} {}", line.join("  "));
            }
        }
        None => println!("    ebpf: no counters"),
    }
}
