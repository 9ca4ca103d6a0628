//! Hitless upgrade: `keel run --takeover` on a node where keel runs takes its listening sockets, pods and admin port
//! while the pods keep opening connections; the byte relays it carries move to the new keel, and the old keel
//! serves the HBONE streams it carries to their end.
//!
//! Both capture backends (iptables keeps the previous keel's REDIRECT rules as they are). Two nodes following one
//! control plane; on node 0, `client` and `near`, on node 1, `far`. While client opens
//! short connections one after another to near (same node) and to far (HBONE), and two long streams (2 MiB each:
//! to far over HBONE in 8 s, to near on the same node in 20 s) run through node 0's keel, a successor takes over
//! from it, three times in a row. Then: every short connection succeeded (none refused, none lost in an accept
//! queue), each old keel moved its relays (the same-node stream's two among them) and exited by itself once its
//! last HBONE stream ended — while the same-node stream still ran, now through the new keel — both long streams
//! arrived whole (checksums), and the last keel serves the pods (its API, its admin port, its records). A gRPC
//! call streaming both ways through the L7 engine (a message every 250 ms for 10 s, client to `echo`, a Service
//! of far's) spans each takeover too: the old keel serves it to its end, every reply arrives, status OK. A successor that speaks another handover version gets the old way
//! instead, said in both logs; one killed mid-handover changes nothing.
use super::*;
use crate::lab::{mesh_config, Backend, ChildGuard};

const PORT: u16 = 9000;
const STREAM_BYTES: u64 = 2 * MIB;
/// The HBONE stream's length (it stays with the old keel), and the same-node stream's, which outlives the old
/// keel only if its relays moved.
const STREAM_SPREAD: Duration = Duration::from_secs(8);
const MOVED_STREAM_SPREAD: Duration = Duration::from_secs(20);
/// The gRPC Service of far's the client calls through the L7 engine, and its call's messages.
const ECHO_VIP: &str = "10.96.0.50";
const GRPC_PORT: u16 = 9090;
const GRPC_MESSAGES: u32 = 40;
const GRPC_INTERVAL: Duration = Duration::from_millis(250);

pub fn keel_takes_over_without_refusing_a_connection(backend: Backend) {
    with_nodes("takeover", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let near = lab.node(0).add_pod("near")?;
        let far = lab.node(1).add_pod("far")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(&client, "client", &[("app", "client")]),
                mesh_config::pod_object(&near, "near", &[("app", "near")]),
                mesh_config::pod_object(&far, "far", &[("app", "far")]),
                mesh_config::grpc_service_object("echo", ECHO_VIP, &[("app", "far")], GRPC_PORT, GRPC_PORT),
            ],
        )?;
        let control = lab.start_control_on(0, &config_dir)?;
        let mut keels = (0..2)
            .map(|node| {
                let args = control.keel_args_for(node);
                lab.start_keel_on(node, backend, &args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[0].enroll(&near)?;
        keels[1].enroll(&far)?;
        let _servers = [near.serve(PORT, ServeMode::Echo, &[])?, far.serve(PORT, ServeMode::Echo, &[])?, far.http_serve(GRPC_PORT, "far", &[])?];
        send_ok(&client, far.addr(PORT), 16 * KIB, ServeMode::Echo).context("before any takeover")?;

        let mut current = keels.remove(0);
        for round in 1..=3 {
            current = take_over_under_load(&client, &near, &far, current, round)?;
        }
        successor_killed_mid_handover(&client, &far, &mut current)?;
        let current = old_killed_mid_handover(&client, &far, current)?;
        // The last keel is the node's keel now: its API, its admin port and its records.
        send_ok(&client, far.addr(PORT), 16 * KIB, ServeMode::Echo).context("after the takeovers")?;
        let to = far.addr(PORT).to_string();
        current.wait_connection(Duration::from_secs(5), |c| c.original_destination == to && c.error.is_none())?;
        let (status, _) = current.admin_get("/healthz/ready")?;
        if status != 200 {
            bail!("the last keel's admin port does not answer ready: {status}");
        }
        mismatched_version_falls_back(&client, &far, current)
    });
}

/// One takeover of `old` while short connections and two long streams run; the successor.
fn take_over_under_load(client: &Pod, near: &Pod, far: &Pod, mut old: Keel, round: u32) -> Result<Keel> {
    let mut streams = [spawn_stream(client, near.addr(PORT), MOVED_STREAM_SPREAD)?, spawn_stream(client, far.addr(PORT), STREAM_SPREAD)?];
    let mut grpc = spawn_grpc_stream(client)?;
    let loops_started = std::time::Instant::now();
    let loops = [spawn_loop(client, near.addr(PORT))?, spawn_loop(client, far.addr(PORT))?];
    std::thread::sleep(Duration::from_millis(1500));
    let old_pid = old.pid();
    let next = old.start_successor(&[]).with_context(|| format!("round {round}: starting the successor"))?;
    // The successor logs "keel ready" only after the old keel stopped accepting: from here on only it accepts.
    let handed_over_at = loops_started.elapsed();
    // The old keel carried the HBONE stream to its end, then left by itself — while the same-node stream, moved
    // to the new keel, still runs.
    let result = finished(&mut streams[1], STREAM_SPREAD + Duration::from_secs(30))?;
    if result["ok"] != true || result["received"] != STREAM_BYTES {
        bail!("round {round}: the long stream to far (HBONE) did not survive the takeover: {result}");
    }
    let result = finished(&mut grpc, GRPC_INTERVAL * GRPC_MESSAGES + Duration::from_secs(30))?;
    if result["grpc_status"] != "0" || result["replies"].as_array().map(Vec::len) != Some(GRPC_MESSAGES as usize) {
        bail!("round {round}: the gRPC stream through the L7 engine did not survive the takeover: {result}");
    }
    let status = old.wait_exit_within(Duration::from_secs(20)).with_context(|| format!("round {round}: the old keel (pid {old_pid})"))?;
    let log = old.log();
    if !status.success() || !log.contains("handed over to the new keel") || !log.contains("keel stopped after handing over") {
        bail!("round {round}: the old keel did not hand over and stop cleanly ({status}); log tail:\n{}", old.log_tail(30));
    }
    let moved = moved_relays(&log);
    if moved < 2 {
        bail!("round {round}: the old keel moved {moved} relays, want at least the same-node stream's two; log tail:\n{}", old.log_tail(30));
    }
    if streams[0].try_wait().is_some() {
        bail!("round {round}: the same-node stream ended before the old keel did: nothing shows its relays moved");
    }
    for (what, mut child) in ["near", "far"].into_iter().zip(loops) {
        let result = finished(&mut child, Duration::from_secs(120))?;
        if result["failed"] != 0 || result["ok"].as_u64().unwrap_or(0) == 0 {
            bail!("round {round}: short connections to {what} failed across the takeover: {result}");
        }
        // The loop must have spanned the handover, or it proved nothing.
        let ran_for = Duration::from_secs_f64(result["total_ms"].as_f64().unwrap_or(0.0) / 1e3);
        eprintln!("round {round}: {} connections to {what} over {ran_for:?}, handover done after {handed_over_at:?}", result["ok"]);
        if ran_for < handed_over_at + Duration::from_millis(500) {
            bail!("round {round}: the connections to {what} ended {ran_for:?} after they began, before the handover ({handed_over_at:?}) was done");
        }
    }
    let result = finished(&mut streams[0], MOVED_STREAM_SPREAD + Duration::from_secs(30))?;
    if result["ok"] != true || result["received"] != STREAM_BYTES {
        bail!("round {round}: the same-node stream did not survive its move to the new keel: {result}");
    }
    if !next.log().contains("took over from the previous keel") || !next.log().contains("resumed the previous keel's relays") {
        bail!("round {round}: the successor does not say it took over and resumed the relays; log tail:\n{}", next.log_tail(30));
    }
    Ok(next)
}

/// A successor killed (SIGKILL) after it received the sockets and before it served them: the running keel never
/// stopped accepting, so no connection fails, and it goes on as the node's keel.
fn successor_killed_mid_handover(client: &Pod, far: &Pod, current: &mut Keel) -> Result<()> {
    let mut doomed = current.spawn_successor(&["--handover-pause-ms", "5000"])?;
    let connections = spawn_loop(client, far.addr(PORT))?;
    doomed.wait_for_log(Duration::from_secs(30), |l| l.contains("received the running keel's sockets"))?;
    doomed.kill9();
    let result = finished(&mut { connections }, Duration::from_secs(120))?;
    if result["failed"] != 0 {
        bail!("connections failed while a successor died mid-handover: {result}");
    }
    // The running keel noticed, and still serves: its API, and a new connection recorded by it.
    let noticed = (0..50).any(|_| {
        current.log().contains("handover abandoned") || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    if !noticed || !current.running() {
        bail!("the running keel should go on after its successor died mid-handover; log tail:\n{}", current.log_tail(20));
    }
    send_ok(client, far.addr(PORT), 16 * KIB, ServeMode::Echo).context("after a successor died mid-handover")?;
    Ok(())
}

/// The running keel killed (SIGKILL) after it handed its sockets to a successor and before the successor served
/// them: the successor serves alone. The connection the killed keel was carrying dies with it (the loop runs one
/// at a time: at most one); connections made meanwhile wait in the accept queues of the sockets the successor
/// holds (the capture in the kernel still leads to them: nothing goes around keel) and are served.
fn old_killed_mid_handover(client: &Pod, far: &Pod, mut old: Keel) -> Result<Keel> {
    let mut next = old.spawn_successor(&["--handover-pause-ms", "2000"])?;
    next.wait_for_log(Duration::from_secs(30), |l| l.contains("received the running keel's sockets"))?;
    let connections = spawn_loop(client, far.addr(PORT))?;
    std::thread::sleep(Duration::from_millis(300));
    old.kill9();
    next.wait_for_log(Duration::from_secs(30), |l| l.contains("\"keel ready\""))
        .with_context(|| format!("the successor after the old keel was killed; log tail:\n{}", next.log_tail(30)))?;
    let result = finished(&mut { connections }, Duration::from_secs(120))?;
    if result["failed"].as_u64().unwrap_or(u64::MAX) > 1 || result["ok"].as_u64().unwrap_or(0) + 1 < 6000 {
        bail!("more than the one connection in flight on the killed keel failed: {result}");
    }
    if !next.log().contains("the previous keel went away during the handover") {
        bail!("the successor does not say it serves alone; log tail:\n{}", next.log_tail(20));
    }
    // Carried by the successor over HBONE (mTLS), not around it.
    let to = far.addr(PORT).to_string();
    next.wait_connection(Duration::from_secs(5), |c| c.original_destination == to && c.mutual_tls && c.error.is_none())?;
    Ok(next)
}

/// A successor that speaks another handover version: the running keel refuses, is asked to stop as for a
/// restart, and the successor restores the pods itself (connections are refused in between: the old way).
fn mismatched_version_falls_back(client: &Pod, far: &Pod, mut old: Keel) -> Result<()> {
    let next = old.start_successor(&["--handover-version", "999"])?;
    old.wait_exit_within(Duration::from_secs(20)).context("the old keel asked to stop for a restart")?;
    if !old.log().contains("handover refused") || !next.log().contains("cannot hand over") {
        bail!("the version mismatch is not said in both logs:\nold:\n{}\nnew:\n{}", old.log_tail(20), next.log_tail(20));
    }
    send_ok(client, far.addr(PORT), 16 * KIB, ServeMode::Echo).context("after the fallback restart")?;
    Ok(())
}

/// The `relays` count of the old keel's "handed over" line.
fn moved_relays(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("handed over to the new keel"))
        .find_map(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["fields"]["relays"].as_u64().or_else(|| v["relays"].as_u64())))
        .unwrap_or(0)
}

fn spawn_stream(client: &Pod, to: std::net::SocketAddr, spread: Duration) -> Result<ChildGuard> {
    let (to, bytes, spread) = (to.to_string(), STREAM_BYTES.to_string(), spread.as_millis().to_string());
    client.spawn(&[
        client.podapp_path().display().to_string(),
        "send".into(),
        "--to".into(),
        to,
        "--bytes".into(),
        bytes,
        "--duration-ms".into(),
        spread,
    ])
}

/// A gRPC call to `echo` that streams both ways for 10 s.
fn spawn_grpc_stream(client: &Pod) -> Result<ChildGuard> {
    let timeout = (GRPC_INTERVAL * GRPC_MESSAGES + Duration::from_secs(20)).as_millis().to_string();
    let args = [
        "grpc-call".to_owned(),
        "--url".into(),
        format!("http://echo:{GRPC_PORT}/echo.Echo/Stream"),
        "--connect".into(),
        format!("{ECHO_VIP}:{GRPC_PORT}"),
        "--messages".into(),
        GRPC_MESSAGES.to_string(),
        "--interval-ms".into(),
        GRPC_INTERVAL.as_millis().to_string(),
        "--timeout-ms".into(),
        timeout,
    ];
    client.spawn(&std::iter::once(client.podapp_path().display().to_string()).chain(args).collect::<Vec<_>>())
}

fn spawn_loop(client: &Pod, to: std::net::SocketAddr) -> Result<ChildGuard> {
    let args = ["connect-loop", "--to", &to.to_string(), "--count", "6000", "--bytes", "64"].map(str::to_owned);
    client.spawn(&std::iter::once(client.podapp_path().display().to_string()).chain(args).collect::<Vec<_>>())
}

/// The child's JSON result line once it exits (within `timeout`).
fn finished(child: &mut ChildGuard, timeout: Duration) -> Result<Value> {
    child.wait_timeout(timeout).with_context(|| format!("{} did not finish within {timeout:?}", child.name()))?;
    let log = child.log();
    log.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| format!("{} printed no result:\n{}", child.name(), crate::lab::process::tail(&log, 10)))
}

/// The long stream: this many bytes over ten minutes, through three takeovers (at 2.5, 5 and 7.5 minutes).
const LONG_STREAM_BYTES: u64 = 64 * MIB;
const LONG_STREAM_SPREAD: Duration = Duration::from_secs(600);

/// A ten-minute stream between two pods of one node (echoed back, checksummed both ways) while keel is replaced
/// three times: each old keel moves the stream's relays and, carrying nothing else, exits within seconds; the
/// stream ends whole, through the last keel.
pub fn a_ten_minute_stream_outlives_three_keels(backend: Backend) {
    with_lab("longstream", |lab| {
        let client = lab.add_pod("client")?;
        let near = lab.add_pod("near")?;
        let (config_dir, ca_dir) = (lab.dir().join("mesh"), lab.dir().join("ca"));
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[mesh_config::pod_object(&client, "client", &[("app", "client")]), mesh_config::pod_object(&near, "near", &[("app", "near")])],
        )?;
        std::fs::create_dir_all(&ca_dir)?;
        let (config, ca) = (config_dir.display().to_string(), ca_dir.display().to_string());
        let mut current = lab.start_keel(backend, &["--config-dir", &config, "--ca-dir", &ca])?;
        wait_ready(&current)?;
        current.enroll(&client)?;
        current.enroll(&near)?;
        let _server = near.serve(PORT, ServeMode::Echo, &[])?;
        let started = std::time::Instant::now();
        let mut stream = spawn_long_stream(&client, near.addr(PORT))?;
        for round in 1..=3u32 {
            let at = LONG_STREAM_SPREAD * round / 4;
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            let mut old = current;
            current = old.start_successor(&[]).with_context(|| format!("takeover {round}"))?;
            old.wait_exit_within(Duration::from_secs(30))
                .with_context(|| format!("takeover {round}: the old keel, which carries only moved relays"))?;
            let moved = moved_relays(&old.log());
            if moved < 2 {
                bail!("takeover {round}: the old keel moved {moved} relays, want the stream's two; log tail:\n{}", old.log_tail(20));
            }
            if stream.try_wait().is_some() {
                bail!("takeover {round}: the stream ended early: {}", stream.log());
            }
            eprintln!("takeover {round} at {:?}: {moved} relays moved, the old keel gone", started.elapsed());
        }
        let result = finished(&mut stream, LONG_STREAM_SPREAD + Duration::from_secs(120))?;
        if result["ok"] != true || result["received"] != LONG_STREAM_BYTES {
            bail!("the ten-minute stream did not survive three takeovers: {result}");
        }
        Ok(())
    });
}

fn spawn_long_stream(client: &Pod, to: std::net::SocketAddr) -> Result<ChildGuard> {
    let args = [
        "send".to_owned(),
        "--to".into(),
        to.to_string(),
        "--bytes".into(),
        LONG_STREAM_BYTES.to_string(),
        "--duration-ms".into(),
        LONG_STREAM_SPREAD.as_millis().to_string(),
        "--timeout-ms".into(),
        "60000".into(),
    ];
    client.spawn(&std::iter::once(client.podapp_path().display().to_string()).chain(args).collect::<Vec<_>>())
}
