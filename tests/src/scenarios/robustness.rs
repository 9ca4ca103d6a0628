//! Bad input and failures at the edges: invalid enrollment requests are refused with the field named and leave
//! keel serving; a refused upstream reaches the client as a reset; eBPF capture refuses to start without its
//! kernel prerequisites and says what the fallback is.

use super::*;
use crate::lab::{Backend, ServeMode};
use serde_json::json;

const PORT: u16 = 8080;
const CLOSED_PORT: u16 = 7777;

/// Each invalid request gets an error naming what is wrong; afterwards the same two pods are enrolled and a
/// connection opened before the bad requests is still served.
pub fn bad_requests_are_refused(backend: Backend) {
    with_lab("badreq", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _sink = server.serve(PORT, ServeMode::Sink, &["--read-delay-ms", "2", "--read-chunk", "16384"])?;
        // A transfer in flight while the bad requests arrive (about 1 s at this reader's pace).
        let in_flight = {
            let client = client.clone();
            let to = server.addr(PORT);
            std::thread::spawn(move || send_ok(&client, to, 8 * MIB, ServeMode::Sink))
        };

        let with = |field: &str, value: Value| {
            let mut request = Keel::enroll_request(&client);
            request["enroll"]["name"] = json!("other");
            request["enroll"][field] = value;
            request
        };
        let cases: Vec<(Value, &str)> = vec![
            (with("ips", json!([])), "`ips`"),
            (with("ips", json!(["127.0.0.1"])), "`ips`"),
            (with("ips", json!([client.ip.to_string()])), "already belongs to enrolled pod"),
            (with("netns", json!("/var/run/netns/does-not-exist")), "`netns`"),
            (with("cgroup", json!("/tmp")), "`cgroup`"),
            (with("namespace", json!("Not_A_Namespace")), "`namespace`"),
            (with("ips", json!(["not-an-ip"])), "invalid request"),
            (json!({"enroll": {"namespace": "default", "name": "x"}}), "missing field `ips`"),
            (json!({"enroll": {"namespace": "default", "name": "x", "ips": ["10.244.0.99"]}}), "give the pod's `cgroup` or its Kubernetes `uid`"),
            (
                json!({"enroll": {"namespace": "default", "name": "x", "ips": ["10.244.0.99"], "cgroup": "/sys/fs/cgroup"}}),
                "`netns`: required unless",
            ),
            (json!({"unenroll": {"namespace": "default", "name": "nobody"}}), "not enrolled"),
            (json!("no-such-request"), "invalid request"),
        ];
        for (request, expected) in cases {
            match keel.api(request.clone()) {
                Ok(answer) => bail!("{request} was accepted ({answer}); expected an error mentioning {expected}"),
                Err(e) if format!("{e:#}").contains(expected) => {}
                Err(e) => bail!("{request}: error {e:#} does not mention {expected}"),
            }
        }
        let pods = keel.pods()?;
        let names: Vec<&str> = pods.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        if names.len() != 2 || !names.contains(&"client") || !names.contains(&"server") {
            bail!("enrolled pods changed after bad requests: {pods}");
        }
        in_flight.join().map_err(|_| anyhow::anyhow!("in-flight transfer panicked"))??;
        let _echo = server.serve(PORT + 2, ServeMode::Echo, &[])?;
        super::capture::captured_echo(&keel, &client, server.addr(PORT + 2), 64 * KIB)?;
        Ok(())
    })
}

/// Captured connection to a port nobody listens on: keel's connect is refused, the client sees its connection
/// end with a reset (not a hang, not a clean EOF after a successful connect), and keel records the error.
pub fn refused_upstream_resets_client(backend: Backend) {
    with_lab("refused", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        let since = Since::now(&keel)?;
        // The client's connect is accepted (by keel), then reset: not refused at connect, not left hanging.
        let report = send_fails(&client, server.addr(CLOSED_PORT), Broke::Reset, "a captured connection to a closed port")?;
        let port = local_port(&report);
        let closed = server.addr(CLOSED_PORT).to_string();
        let seen = since.wait_connection("outbound record of the connection to the closed port", |c| {
            c.direction == "outbound" && c.original_destination == closed && c.source_port() == port
        })?;
        let refused = format!("connecting to {closed}: Connection refused");
        if !seen.error.as_deref().is_some_and(|e| e.contains(&refused)) || seen.bytes_received != 0 {
            bail!("keel recorded {seen:?}; expected the error {refused:?}");
        }
        // The upstream refused it, not keel: no refusal of keel's own is counted.
        since.expect_refused("policy", 0)?;
        Ok(())
    })
}

/// `keel run --capture ebpf` pointed at a directory that is not cgroup v2 exits non-zero at once, and its message
/// names the problem and the iptables fallback.
pub fn ebpf_startup_fails_clearly_without_prerequisites() {
    with_lab("noprereq", |lab| {
        let not_cgroup = lab.dir().join("not-a-cgroup");
        std::fs::create_dir_all(&not_cgroup)?;
        let output = crate::lab::process::run_with_timeout(
            "keel run (no cgroup v2)",
            std::process::Command::new(&lab.binaries().keel)
                .arg("--api-socket")
                .arg(lab.dir().join("unused.sock"))
                .args(["run", "--capture-only", "--capture", "ebpf", "--admin-addr", "127.0.0.1:0", "--cgroup"])
                .arg(&not_cgroup)
                .arg("--bpffs")
                .arg(lab.bpffs_dir())
                .arg("--state-dir")
                .arg(lab.dir().join("unused-state")),
            Duration::from_secs(20),
        )?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            bail!("keel started on a non-cgroup2 directory: {stderr}");
        }
        for needed in ["cgroup v2", "--capture iptables"] {
            if !stderr.contains(needed) {
                bail!("startup error does not mention {needed:?}: {stderr}");
            }
        }
        Ok(())
    })
}

/// 300 captured connections (some refused) later, keel holds as many file descriptors as before and reports no
/// active connection: nothing leaks per connection, neither sockets nor the tasks that own them.
pub fn no_leaked_sockets(backend: Backend) {
    with_lab("noleak", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _echo = server.serve(PORT, ServeMode::Echo, &[])?;
        let fds = || -> Result<usize> { Ok(std::fs::read_dir(format!("/proc/{}/fd", keel.pid()))?.count()) };
        // One warm-up connection: lazily created runtime resources are not leaks.
        send_ok(&client, server.addr(PORT), KIB, ServeMode::Echo)?;
        std::thread::sleep(SETTLE);
        let before = fds()?;
        let report = client.connect_loop(server.addr(PORT), 250, 64, IO_TIMEOUT)?;
        if report["failed"] != json!(0) {
            bail!("short connections failed: {report}");
        }
        for _ in 0..50 {
            let _ = client.send(server.addr(CLOSED_PORT), 16, ServeMode::Echo, IO_TIMEOUT)?;
        }
        let deadline = std::time::Instant::now() + RECORD_TIMEOUT;
        loop {
            let stats = keel.stats()?;
            let active = crate::lab::counter(&stats, "/connections/outbound/active")? + crate::lab::counter(&stats, "/connections/inbound/active")?;
            let now = fds()?;
            // A couple of descriptors of slack for the API connection this very check holds; a per-connection
            // leak would show as hundreds.
            if active == 0 && now <= before + 2 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("after 300 connections keel holds {now} fds (was {before}) and reports {active} active");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}
