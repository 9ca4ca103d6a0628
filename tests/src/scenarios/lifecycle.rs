//! keel's lifecycle: a crash or a stop fails closed and a restart resumes capture quickly; `keel uninstall`
//! leaves nothing behind.

use super::capture::{captured_echo, expect_no_keel_rules};
use super::*;
use crate::lab::{Backend, ServeMode};
use std::time::Instant;

const PORT: u16 = 8080;
/// The bound: captured traffic flows again within a second of keel being ready.
const RESUME_WITHIN: Duration = Duration::from_secs(1);

/// How the first keel of [`restart_resumes_capture`] ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `kill -9`: a crash, no cleanup at all.
    Crash,
    /// SIGTERM: an orderly stop (as before an upgrade), which must leave the pods captured.
    Sigterm,
}

/// Crash or stop keel, start a new one on the same state dir, pins and API socket: while none runs, a captured
/// connection to a listening server is refused (capture outlives keel, so nothing bypasses it); the new keel
/// re-enrolls the pods from its state dir, and captured traffic flows (and is recorded) within 1 s of its readiness.
pub fn restart_resumes_capture(backend: Backend, ending: Ending) {
    with_lab_alone(if ending == Ending::Crash { "restart" } else { "stopstart" }, |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let mut keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);
        captured_echo(&keel, &client, dst, 4 * KIB).context("before the crash")?;

        match ending {
            Ending::Crash => {
                keel.kill9();
            }
            Ending::Sigterm => {
                let status = keel.sigterm()?;
                if status.code() != Some(0) {
                    bail!("keel exited with {status} after SIGTERM (expected 0); log tail:\n{}", keel.log_tail(40));
                }
                if backend == Backend::Ebpf && !lab.bpffs_dir().join("links").exists() {
                    bail!("SIGTERM removed keel's pinned links ({}): the pods are no longer captured", lab.bpffs_dir().display());
                }
            }
        }
        send_fails(&client, dst, Broke::Refused, &format!("a captured connection while keel is down ({ending:?})"))?;
        let keel = lab.start_keel(backend, &[]).with_context(|| format!("restarting keel after {ending:?}"))?;
        let ready = Instant::now();
        // Poll: the first attempts may race keel's last steps; each try is short so we can see the 1 s bound.
        let mut attempts = Vec::new();
        let sent = loop {
            let v = client.send(dst, 4 * KIB, ServeMode::Echo, Duration::from_millis(500))?;
            if v["ok"] == true {
                break Sent { bytes: 4 * KIB, local: v["local"].as_str().unwrap_or_default().into(), json: v };
            }
            attempts.push(v);
            if ready.elapsed() > RESUME_WITHIN {
                bail!("no successful captured connection within {RESUME_WITHIN:?} of restart; attempts: {attempts:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let resumed_after = ready.elapsed();
        if resumed_after > RESUME_WITHIN {
            bail!("traffic resumed only {resumed_after:?} after keel was ready (limit {RESUME_WITHIN:?})");
        }
        expect_captured(
            &keel,
            &Expect {
                direction: "outbound",
                pod: &client,
                original_destination: dst,
                source_port: sent.local_port(),
                bytes_sent: sent.bytes,
                bytes_received: Some(sent.bytes),
            },
        )
        .context("first connection after the restart")?;
        let pods = keel.pods()?;
        for p in [&client, &server] {
            if !pods.as_array().is_some_and(|a| a.iter().any(|e| e["name"] == p.name.as_str())) {
                bail!("restarted keel did not re-enroll {} from its state dir: pods = {pods}", p.name);
            }
        }
        // The server side is captured again too (re-enrolled inbound).
        expect_captured(
            &keel,
            &Expect {
                direction: "inbound",
                pod: &server,
                original_destination: dst,
                source_port: None,
                bytes_sent: sent.bytes,
                bytes_received: Some(sent.bytes),
            },
        )
        .context("inbound capture after the restart")?;
        Ok(())
    })
}

/// `keel uninstall`: exit status 0, keel's bpffs dir is gone, no keel iptables rule is left in any pod, nothing
/// is persisted, and the pods talk to each other directly.
pub fn uninstall_cleans_up(backend: Backend) {
    with_lab("uninstall", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let mut keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        captured_echo(&keel, &client, server.addr(PORT), 64 * KIB)?;
        let (status, body) = keel.admin_get("/healthz/ready")?;
        if status != 200 {
            bail!("/healthz/ready answered {status}: {body}");
        }

        let status = keel.terminate()?;
        if status.code() != Some(0) {
            bail!("keel exited with {status} after uninstall (expected 0); log tail:\n{}", keel.log_tail(40));
        }
        if lab.bpffs_dir().exists() {
            let left: Vec<_> = std::fs::read_dir(lab.bpffs_dir())?.flatten().map(|e| e.file_name()).collect();
            bail!("bpffs dir {} still exists after uninstall: {left:?}", lab.bpffs_dir().display());
        }
        let persisted: Vec<_> = std::fs::read_dir(keel.state_dir())?.flatten().map(|e| e.file_name()).collect();
        if !persisted.is_empty() {
            bail!("uninstall left state in {}: {persisted:?}", keel.state_dir().display());
        }
        for pod in [&client, &server] {
            expect_no_keel_rules(lab, pod)?;
        }
        // No program of keel's is left on the pods' cgroup (connect4 and sock_ops were attached there).
        let attached = crate::lab::sys::run(std::process::Command::new("bpftool").args(["cgroup", "show"]).arg(lab.cgroup_root()))?;
        if attached.contains("keel") {
            bail!("programs still attached to {} after uninstall:\n{attached}", lab.cgroup_root().display());
        }
        send_ok(&client, server.addr(PORT), MIB, ServeMode::Echo).context("direct traffic after keel stopped")?;
        Ok(())
    })
}

/// A crashed keel fails closed. Two nodes in local mode, a client on node 0 talking to a server on node 1 over
/// HBONE while the wire between the nodes is captured. `kill -9` keel on node 0 in the middle of a transfer:
/// the client's new connections are refused (capture is pinned and steers them to keel's closed listener), not
/// sent in plaintext. `kill -9` keel on node 1 as well: a plaintext client outside the mesh is refused by
/// sk_lookup instead of reaching the server. No application byte crosses the wire in plaintext until both keels
/// are back, adopt the pinned capture and carry the traffic over HBONE again. Then, as the control that the wire
/// check can fail, the same crash with `--fail-open`: the client's bytes do cross in plaintext.
pub fn crashed_keel_fails_closed() {
    with_nodes("failclosed", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let outsider = lab.node(0).add_pod("outsider")?; // not enrolled: outside the mesh
        let server = lab.node(1).add_pod("server")?;
        let config_dir = lab.dir().join("mesh");
        crate::lab::mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                crate::lab::mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
                crate::lab::mesh_config::pod_object(&server, "echo", &[("app", "echo")]),
            ],
        )?;
        let (config, ca) = (config_dir.display().to_string(), lab.dir().join("ca").display().to_string());
        let start = |node: usize, extra: &[&str]| {
            let mut args = vec!["--config-dir", &config, "--ca-dir", &ca];
            args.extend_from_slice(extra);
            lab.start_keel_on(node, Backend::Ebpf, &args)
        };
        let mut keels = vec![start(0, &[])?, start(1, &[])?];
        keels[0].enroll(&client)?;
        keels[1].enroll(&server)?;
        let _echo = server.serve(PORT, ServeMode::Echo, &[])?;
        let _sink = server.serve(PORT + 1, ServeMode::Sink, &["--read-delay-ms", "5", "--read-chunk", "16384"])?;
        send_ok(&client, server.addr(PORT), 64 * KIB, ServeMode::Echo).context("before the crash")?;

        let capture = lab.capture_wire()?;
        let mut long = client.spawn(&[
            client.podapp_path().display().to_string(),
            "send".into(),
            "--to".into(),
            server.addr(PORT + 1).to_string(),
            "--bytes".into(),
            (64 * MIB).to_string(),
            "--mode".into(),
            "sink".into(),
        ])?;
        std::thread::sleep(Duration::from_millis(500));
        keels[0].kill9();
        if long.wait_timeout(Duration::from_secs(10)).is_none() {
            bail!("the transfer keel was relaying did not end when keel was killed");
        }
        // The server listens, so a connect refused at once can only be capture steering it to the dead keel's
        // closed listener (a plaintext bypass would succeed; a black hole would time out).
        for attempt in 0..5 {
            send_fails(&client, server.addr(PORT), Broke::Refused, &format!("attempt {attempt} while the client's keel is down"))?;
        }
        let sk_lookup_refused = crate::lab::counter(&keels[1].stats()?, "/ebpf/sk_lookup/refused")?;
        keels[1].kill9();
        // sk_lookup answers the SYN with SK_DROP: no socket, so the kernel refuses the connect.
        send_fails(&outsider, server.addr(PORT), Broke::Refused, "a plaintext client while the server's keel is down")?;

        keels = vec![start(0, &[])?, start(1, &[])?];
        keels.iter().try_for_each(wait_ready)?;
        // The counters live in the pinned maps, so the new keel reports what the programs did while none ran.
        let refused = crate::lab::counter(&keels[1].stats()?, "/ebpf/sk_lookup/refused")?;
        if refused <= sk_lookup_refused {
            bail!("node 1's sk_lookup counted no refused connection while keel was down ({sk_lookup_refused} before, {refused} after)");
        }
        send_ok(&client, server.addr(PORT), MIB, ServeMode::Echo).context("after both keels restarted")?;
        let wire = capture.stop()?;
        for offset in [0usize, 1000, 4096, 500_000] {
            if wire.contains(&crate::lab::podapp_payload(1, offset, 48)) {
                bail!("plaintext application bytes (offset {offset}) crossed the wire around the crash:\n{}", wire.summary());
            }
        }
        if wire.tcp_bytes_to_port(15008) < MIB {
            bail!("the traffic after the restart did not cross as HBONE:\n{}", wire.summary());
        }
        let outbound = keels[0].wait_connection(RECORD_TIMEOUT, |c| c.direction == "outbound" && c.bytes_sent == MIB)?;
        if outbound.path.as_deref() != Some("hbone") {
            bail!("after the restart the client's connection did not go over HBONE: {outbound:?}");
        }

        // The control: with --fail-open a crashed keel lets the client's bytes through in plaintext.
        drop(keels);
        let mut open = start(0, &["--fail-open"])?;
        open.enroll(&client)?;
        let server_keel = start(1, &["--fail-open"])?;
        server_keel.enroll(&server)?;
        wait_ready(&open)?;
        send_ok(&client, server.addr(PORT), 4 * KIB, ServeMode::Echo).context("with --fail-open, keel up")?;
        let capture = lab.capture_wire()?;
        open.kill9();
        let mut server_keel = server_keel;
        server_keel.kill9();
        send_ok(&client, server.addr(PORT), 64 * KIB, ServeMode::Echo).context("with --fail-open and keel down: direct")?;
        let wire = capture.stop()?;
        if !wire.contains(&crate::lab::podapp_payload(1, 4096, 48)) {
            bail!("with --fail-open the direct transfer's plaintext was not seen on the wire (the check above proves nothing):\n{}", wire.summary());
        }
        Ok(())
    })
}
