//! keel-demo: what `cargo xtask demo` shows. A node with three pods, keel with eBPF capture, a few requests, and a
//! table of what keel captured — then everything is cleaned up (the lab's Drop).

use anyhow::{bail, Result};
use clap::Parser;
use keel_tests::lab::{counter, Backend, Binaries, Connection, Lab, ServeMode};
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
        },
    )?;
    let result = demo(&lab);
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

fn demo(lab: &Lab) -> Result<()> {
    let client = lab.add_pod("client")?;
    let a = lab.add_pod("server-a")?;
    let b = lab.add_pod("server-b")?;
    for p in [&client, &a, &b] {
        println!("    pod {:<9} {:<12} netns {}", p.name, p.ip, p.netns);
    }
    step("starting keel with eBPF capture");
    let keel = lab.start_keel(Backend::Ebpf, &[])?;
    println!(
        "    keel pid {}, API {}",
        keel.pid(),
        lab.api_socket().display()
    );
    step("enrolling client, server-a and server-b");
    for p in [&client, &a, &b] {
        keel.enroll(p)?;
    }
    step("starting echo servers on server-a:8080 and server-b:9090");
    let _sa = a.serve(8080, ServeMode::Echo, &[])?;
    let _sb = b.serve(9090, ServeMode::Echo, &[])?;

    let requests: [(&str, &keel_tests::lab::Pod, std::net::SocketAddr, u64); 4] = [
        (
            "1 KiB echo   client -> server-a",
            &client,
            a.addr(8080),
            KIB,
        ),
        (
            "1 KiB echo   client -> server-b",
            &client,
            b.addr(9090),
            KIB,
        ),
        (
            "1 MiB echo   client -> server-a",
            &client,
            a.addr(8080),
            MIB,
        ),
        ("1 KiB echo server-a -> server-b", &a, b.addr(9090), KIB),
    ];
    for (what, from, to, bytes) in requests {
        let s = send_ok(from, to, bytes, ServeMode::Echo)?;
        let sha = s.json["sha256"].as_str().unwrap_or("");
        let ms = s.json["duration_ms"].as_f64().unwrap_or(0.0);
        println!(
            "    {what}: ok in {ms:.1} ms, sha256 {}",
            sha.get(..16).unwrap_or(sha)
        );
    }
    let r = client.connect_loop(b.addr(9090), 20, 16, Duration::from_secs(60))?;
    if r["failed"] != 0 {
        bail!("short connections failed: {r}");
    }
    println!(
        "    20 short connections client -> server-b: max {:.1} ms",
        r["max_ms"].as_f64().unwrap_or(0.0)
    );

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
        "    {:<9} {:<17} {:<22} {:<22} {:>9} {:>9} {:>8} {:>5}",
        "direction", "pod", "source", "original dst", "sent", "received", "max ms", "count"
    );
    for (c, n, ms) in rows {
        let source = if n > 1 {
            format!("{} …", c.source)
        } else {
            c.source.clone()
        };
        println!(
            "    {:<9} {:<17} {:<22} {:<22} {:>9} {:>9} {:>8.2} {:>5}{}",
            c.direction,
            c.pod,
            source,
            c.original_destination,
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
