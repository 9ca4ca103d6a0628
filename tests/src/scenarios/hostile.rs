//! Hostile peers: keel faces every peer that can reach a pod, meshed or not, and the control plane it follows.
//! Each stage attacks one bound while a legitimate client on the other node keeps talking to the same pod over
//! HBONE (asserted throughout), and checks that keel refused for the stated reason, counted it, and that its
//! file descriptors stayed bounded:
//! 1. a flood of idle TCP connections to a pod's 15008 from a pod outside the mesh (per-source handshake limit
//!    at accept, the rest closed by the handshake timeout);
//! 2. TLS handshakes that never finish (the handshake timeout);
//! 3. CONNECT to keel's own ports (400, `keel_port`);
//! 4. a certificate that expired, and one that expires while its connection is open (refused; ended);
//! 5. malformed HTTP/2 frames after a valid handshake (GOAWAY, connection closed, keel up);
//! 6. slowloris HTTP to the L7 engine (the header read timeout), and an HTTP/2 client that stays without
//!    starting requests (the idle timeout: GOAWAY);
//! 7. one pod opening more connections than its per-pod cap (the excess reset, counted; other pods unaffected);
//! 8. unenrolling the pod under an open HBONE connection (GOAWAY: the stream in flight finishes, new ones are
//!    refused);
//! 9. a control plane that goes silent without closing (SIGSTOP): keel notices through its keepalives, says so
//!    in `keel pc status`, keeps serving its last good state, and reconnects when the control plane is back.

use super::hbone_wire::{expect_status, issue, require_python_h2, Probe, PYTHON};
use super::*;
use crate::lab::{mesh_config, workspace_root, ControlPlane, Keel, Pod, ServeMode};
use std::time::Instant;

const PORT: u16 = 8080;
const PROBE_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/probe";
const HANDSHAKE_TIMEOUT_MS: &str = "2000";
const HANDSHAKES_PER_SOURCE: u64 = 20;
const HEADER_READ_TIMEOUT_MS: &str = "2000";
const CONNECTIONS_PER_POD: u64 = 40;
const WEB_VIP: &str = "10.96.0.30";
/// The server's HTTP port, behind the `web` service.
const WEB_PORT: u16 = 8090;
const HTTP_IDLE_TIMEOUT_SECS: &str = "2";

fn open_fds(keel: &Keel) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{}/fd", keel.pid()))?.count())
}

fn refused(keel: &Keel, reason: &str) -> Result<u64> {
    Ok(keel.stats()?["refused"][reason].as_u64().unwrap_or(0))
}

/// Runs a hostile script in `pod` on a thread (so legitimate traffic can be checked meanwhile).
fn spawn_script(pod: &Pod, script: &str, args: Vec<String>, timeout: Duration) -> std::thread::JoinHandle<Result<Value>> {
    let pod = pod.clone();
    let mut argv = vec![PYTHON.to_owned(), workspace_root().join("tests/hostile").join(script).display().to_string()];
    argv.extend(args);
    std::thread::spawn(move || {
        let out = pod.run_timeout(&argv, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("{argv:?} printed no JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
    })
}

/// Legitimate HBONE traffic until `until` returns true; every transfer must succeed.
fn keep_talking(client: &Pod, server: &Pod, mut until: impl FnMut() -> bool) -> Result<usize> {
    let mut transfers = 0;
    while !until() {
        send_ok(client, server.addr(PORT), 16 * KIB, ServeMode::Echo).with_context(|| format!("legitimate transfer {transfers} under attack"))?;
        transfers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(transfers)
}

fn join(handle: std::thread::JoinHandle<Result<Value>>) -> Result<Value> {
    handle.join().map_err(|_| anyhow::anyhow!("hostile script thread panicked"))?
}

/// Sends SIGCONT to a stopped control plane when dropped, so a failing stage never leaves it frozen.
struct Stopped<'a>(&'a ControlPlane);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.pid().to_string()]).status();
    }
}

fn pc_status_connected(keel: &Keel) -> Result<Option<bool>> {
    let status = keel.cli(&["pc", "status"])?;
    Ok(status.lines().find(|l| l.starts_with("connected")).map(|l| l.ends_with("true")))
}

pub fn hostile_peers_are_bounded() {
    with_nodes("hostile", 2, |lab| {
        require_python_h2()?;
        let client = lab.node(0).add_pod("client")?;
        let attacker = lab.node(0).add_pod("attacker")?; // outside the mesh, never enrolled
        let server = lab.node(1).add_pod("server")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
                mesh_config::pod_object(&server, "echo", &[("app", "echo")]),
                mesh_config::service_object("echo", "10.96.0.20", &[("app", "echo")], 80, PORT),
                // An HTTP port: what the client sends there goes through the L7 engine.
                mesh_config::service_object("web", WEB_VIP, &[("app", "echo")], 80, WEB_PORT).replace("tcp-echo", "http"),
            ],
        )?;
        let control = lab.start_control_on(0, &config_dir)?;
        let (per_source, per_pod) = (HANDSHAKES_PER_SOURCE.to_string(), CONNECTIONS_PER_POD.to_string());
        let keels = lab.start_keels_following(
            &control,
            &[
                "--hbone-handshake-timeout-ms",
                HANDSHAKE_TIMEOUT_MS,
                "--max-hbone-handshakes-per-source",
                &per_source,
                "--http-header-read-timeout-ms",
                HEADER_READ_TIMEOUT_MS,
                "--http-idle-timeout-secs",
                HTTP_IDLE_TIMEOUT_SECS,
                "--max-connections-per-pod",
                &per_pod,
            ],
        )?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&server)?;
        let _echo = server.serve(PORT, ServeMode::Echo, &[])?;
        send_ok(&client, server.addr(PORT), 64 * KIB, ServeMode::Echo).context("before any attack")?;
        let target = format!("{}:15008", server.ip);
        let fds_before = open_fds(&keels[1])?;

        // 1. 400 idle connections to the pod's 15008 from one address outside the mesh.
        let flood = spawn_script(
            &attacker,
            "flood.py",
            vec!["--to".into(), target.clone(), "--count".into(), "400".into(), "--hold".into(), "6".into()],
            Duration::from_secs(60),
        );
        let transfers = keep_talking(&client, &server, || flood.is_finished())?;
        let flood = join(flood)?;
        let count = |field: &str| flood[field].as_u64().unwrap_or(0);
        let held = count("later");
        // Beyond the limit a connection is reset at accept: the client sees it fail at connect() or at once after.
        if count("connected") + count("refused") != 400
            || flood["still_open"] != 0
            || held > HANDSHAKES_PER_SOURCE
            || count("early") + count("refused") < 400 - HANDSHAKES_PER_SOURCE
        {
            bail!("idle flood: keel did not refuse beyond {HANDSHAKES_PER_SOURCE} handshakes per source and close the rest: {flood}");
        }
        if flood["latest_close_s"].as_f64().unwrap_or(99.0) > 3.5 {
            bail!("idle flood: held connections were not closed by the {HANDSHAKE_TIMEOUT_MS} ms handshake timeout: {flood}");
        }
        let (at_accept, timed_out) = (refused(&keels[1], "source_handshake_limit")?, refused(&keels[1], "hbone_handshake_timeout")?);
        if at_accept < 400 - HANDSHAKES_PER_SOURCE || timed_out < held {
            bail!(
                "idle flood: refusals not counted by reason (source_handshake_limit {at_accept}, hbone_handshake_timeout {timed_out}): {}",
                keels[1].stats()?
            );
        }
        eprintln!("idle flood: {flood}; {transfers} legitimate transfers meanwhile");

        // 2. Handshakes that start and never finish.
        let partial = spawn_script(
            &attacker,
            "flood.py",
            vec!["--to".into(), target.clone(), "--count".into(), "15".into(), "--hold".into(), "5".into(), "--partial-tls".into()],
            Duration::from_secs(60),
        );
        keep_talking(&client, &server, || partial.is_finished())?;
        let partial = join(partial)?;
        if partial["still_open"] != 0 || partial["latest_close_s"].as_f64().unwrap_or(99.0) > 3.5 {
            bail!("half-done TLS handshakes were not closed by the handshake timeout: {partial}");
        }

        // 3. CONNECT to keel's own ports, with a valid mesh certificate: 400 each, counted as keel_port.
        let probe_creds = issue(lab, &control.ca_dir, "cluster.local", PROBE_IDENTITY, "probe-creds")?;
        let probe = Probe { pod: &attacker, script: workspace_root().join("tests/hbone/hbone_probe.py"), ca: control.ca_dir.join("root-cert.pem") };
        let before = refused(&keels[1], "keel_port")?;
        for port in [15000u16, 15001, 15006, 15008, 15020, 15021] {
            let answer = probe.run(&target, &format!("{}:{port}", server.ip), "CONNECT", Some(&probe_creds))?;
            expect_status(&answer, 400, &format!("CONNECT to keel's port {port}"))?;
        }
        let record = keels[1]
            .wait_connection(RECORD_TIMEOUT, |c| c.response_status == Some(400) && c.error.as_deref().is_some_and(|e| e.contains("keel's own")))?;
        if refused(&keels[1], "keel_port")? < before + 6 {
            bail!("CONNECTs to keel's ports were not counted as keel_port refusals: {} (record {record:?})", keels[1].stats()?);
        }
        // A forged `forwarded` header never becomes the recorded source: the record names the real peer.
        if !record.source.starts_with(&format!("{}:", attacker.ip)) {
            bail!("the HBONE record's source is not the TCP peer: {record:?}");
        }

        // 4. An expired client certificate is refused at the handshake; one that expires on an open connection
        //    ends it.
        let expired = issue_with_validity(lab, &control.ca_dir, "expired-creds", 1)?;
        let expiring = issue_with_validity(lab, &control.ca_dir, "expiring-creds", 4)?;
        std::thread::sleep(Duration::from_secs(2));
        let failed_before = refused(&keels[1], "hbone_handshake_failed")?;
        let answer = probe.run(&target, &server.addr(PORT).to_string(), "CONNECT", Some(&expired))?;
        if answer["status"] != Value::Null || answer["error"].is_null() {
            bail!("keel accepted an expired client certificate: {answer}");
        }
        std::thread::sleep(Duration::from_millis(300));
        if refused(&keels[1], "hbone_handshake_failed")? <= failed_before {
            bail!("the expired certificate's handshake failure was not counted: {}", keels[1].stats()?);
        }
        let held = probe.run_with(&target, &server.addr(PORT).to_string(), "CONNECT", Some(&expiring), &["--hold", "10"])?;
        let closed_after = held["closed_after_s"].as_f64();
        if held["status"] != 200 || !closed_after.is_some_and(|s| s < 5.0) {
            bail!("a connection whose client certificate expired (after ~2 s) was not ended: {held}");
        }
        if !keels[1].log().contains("the client's certificate expired") {
            bail!("keel did not log why it ended the connection:\n{}", keels[1].log_tail(20));
        }

        // 5. Malformed HTTP/2 after a valid handshake: keel answers with a GOAWAY and closes, and stays up.
        let garbage = probe.pod.run_timeout(
            &[
                PYTHON.to_owned(),
                workspace_root().join("tests/hostile/h2_garbage.py").display().to_string(),
                "--connect".into(),
                target.clone(),
                "--ca".into(),
                control.ca_dir.join("root-cert.pem").display().to_string(),
                "--cert".into(),
                probe_creds.join("cert-chain.pem").display().to_string(),
                "--key".into(),
                probe_creds.join("key.pem").display().to_string(),
            ],
            Duration::from_secs(20),
        )?;
        let garbage: Value = serde_json::from_str(String::from_utf8_lossy(&garbage.stdout).lines().last().unwrap_or_default())
            .with_context(|| format!("h2_garbage printed no JSON: {}", String::from_utf8_lossy(&garbage.stderr)))?;
        // PROTOCOL_ERROR (1) or FRAME_SIZE_ERROR (6), per RFC 9113 for these frames.
        if garbage["closed"] != true || garbage["goaway"] != true || !matches!(garbage["goaway_error"].as_u64(), Some(1 | 6)) {
            bail!("malformed HTTP/2 was not answered with a GOAWAY (protocol error) and a close: {garbage}");
        }
        send_ok(&client, server.addr(PORT), 64 * KIB, ServeMode::Echo).context("after the malformed frames")?;

        let fds_after = open_fds(&keels[1])?;
        if fds_after > fds_before + 40 {
            bail!("keel's descriptors grew from {fds_before} to {fds_after} across the attacks: something is held");
        }

        // 6. Slowloris: request heads trickled to the L7 engine one byte every half second.
        let slow = spawn_script(
            &client,
            "flood.py",
            vec!["--to".into(), format!("{WEB_VIP}:80"), "--count".into(), "10".into(), "--hold".into(), "8".into(), "--slow-http".into()],
            Duration::from_secs(60),
        );
        keep_talking(&client, &server, || slow.is_finished())?;
        let slow = join(slow)?;
        if slow["connected"] != 10 || slow["still_open"] != 0 || slow["latest_close_s"].as_f64().unwrap_or(99.0) > 4.0 {
            bail!("slowloris connections were not closed by the {HEADER_READ_TIMEOUT_MS} ms header read timeout: {slow}");
        }

        // 6b. An HTTP/2 client that answers keel's PINGs but starts no request after its first: closed with a
        //     GOAWAY once the idle timeout passes (not at once: the first request is answered).
        let _web = server.http_serve(WEB_PORT, "web", &[])?;
        let idle = spawn_script(
            &client,
            "h2c_idle.py",
            vec!["--to".into(), format!("{WEB_VIP}:80"), "--authority".into(), "web.default.svc.cluster.local".into(), "--wait".into(), "6".into()],
            Duration::from_secs(30),
        );
        keep_talking(&client, &server, || idle.is_finished())?;
        let idle = join(idle)?;
        let after = idle["goaway_after_s"].as_f64().unwrap_or(99.0);
        if idle["status"] != 200 || idle["goaway"] != true || !(1.0..=4.0).contains(&after) {
            bail!("an idle HTTP/2 connection to the L7 engine was not closed by the {HTTP_IDLE_TIMEOUT_SECS} s idle timeout: {idle}");
        }

        // 7. One pod holds more connections than its cap: the excess is reset at accept and counted; another pod
        //    of the node (the attacker, outside the mesh, talking plaintext) is not held up by it.
        let hog = spawn_script(
            &client,
            "flood.py",
            vec!["--to".into(), server.addr(PORT + 1).to_string(), "--count".into(), "100".into(), "--hold".into(), "3".into()],
            Duration::from_secs(60),
        );
        let _idle = server.serve(PORT + 1, ServeMode::Echo, &[])?;
        let hog = join(hog)?;
        let capped = refused(&keels[0], "pod_connection_limit")?;
        if hog["connected"].as_u64().unwrap_or(0) + hog["refused"].as_u64().unwrap_or(0) != 100 || capped < 100 - CONNECTIONS_PER_POD {
            bail!("a pod opening 100 connections was not held to {CONNECTIONS_PER_POD}: {hog}; pod_connection_limit = {capped}");
        }
        // The throttling is reported per pod, with the pod's name, in keel's metrics.
        let (_, metrics) = keels[0].admin_get("/metrics")?;
        let series = format!("keel_pod_connections_refused_total{{pod=\"{}\",kind=\"connections\"}} ", client.qualified());
        let per_pod: u64 = metrics.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok()).unwrap_or(0);
        if per_pod < 100 - CONNECTIONS_PER_POD {
            bail!(
                "keel_pod_connections_refused_total does not count the pod's throttled connections ({per_pod}):\n{}",
                metrics.lines().filter(|l| l.starts_with("keel_pod_")).collect::<Vec<_>>().join("\n")
            );
        }
        send_ok(&client, server.addr(PORT), 16 * KIB, ServeMode::Echo).context("after the pod's own connections closed")?;

        // 8. Unenrolling the pod sends a GOAWAY on its open HBONE connections: the stream in flight stays, no
        //    new one comes.
        let held = {
            let probe_pod = attacker.clone();
            let (script, ca, creds, target, app) =
                (probe.script.clone(), probe.ca.clone(), probe_creds.clone(), target.clone(), server.addr(PORT).to_string());
            std::thread::spawn(move || Probe { pod: &probe_pod, script, ca }.run_with(&target, &app, "CONNECT", Some(&creds), &["--hold", "6"]))
        };
        std::thread::sleep(Duration::from_millis(1500));
        keels[1].unenroll(&server)?;
        let held = held.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
        if held["status"] != 200 || !held["error"].as_str().is_some_and(|e| e.starts_with("GOAWAY: 0")) {
            bail!("unenrolling the pod did not send a graceful GOAWAY on its open HBONE connection: {held}");
        }
        keels[1].enroll(&server)?;
        // (Re-enrolled, the pod's certificate is fetched again: before the control plane, its CA, freezes.)
        send_ok(&client, server.addr(PORT), 16 * KIB, ServeMode::Echo).context("after the pod was enrolled again")?;

        // 9. The control plane goes silent without closing its connections.
        let stopped_at = Instant::now();
        std::process::Command::new("kill").args(["-STOP", &control.pid().to_string()]).status()?;
        let stopped = Stopped(&control);
        let deadline = Instant::now() + Duration::from_secs(50);
        while pc_status_connected(&keels[0])? != Some(false) || pc_status_connected(&keels[1])? != Some(false) {
            if Instant::now() > deadline {
                bail!("50 s after the control plane froze, keel still says it is connected:\n{}", keels[0].cli(&["pc", "status"])?);
            }
            send_ok(&client, server.addr(PORT), 16 * KIB, ServeMode::Echo).context("while the control plane is silent")?;
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("a silent control plane noticed after {:?}", stopped_at.elapsed());
        drop(stopped);
        let deadline = Instant::now() + Duration::from_secs(40);
        while pc_status_connected(&keels[0])? != Some(true) || pc_status_connected(&keels[1])? != Some(true) {
            if Instant::now() > deadline {
                bail!("40 s after the control plane resumed, keel has not reconnected:\n{}", keels[0].cli(&["pc", "status"])?);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        send_ok(&client, server.addr(PORT), 64 * KIB, ServeMode::Echo).context("after the control plane came back")?;
        Ok(())
    })
}

fn issue_with_validity(lab: &crate::lab::Lab, ca_dir: &std::path::Path, out: &str, seconds: u64) -> Result<std::path::PathBuf> {
    let dir = lab.dir().join(out);
    let result = std::process::Command::new(&lab.binaries().keel_control)
        .args(["issue", "--trust-domain", "cluster.local", "--identity", PROBE_IDENTITY, "--validity-secs", &seconds.to_string()])
        .arg("--ca-dir")
        .arg(ca_dir)
        .arg("--out")
        .arg(&dir)
        .output()?;
    if !result.status.success() {
        bail!("keel-control issue failed: {}", String::from_utf8_lossy(&result.stderr));
    }
    Ok(dir)
}
