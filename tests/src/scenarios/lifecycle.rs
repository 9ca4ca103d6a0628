//! keel's lifecycle: a crash and restart resumes capture quickly; SIGTERM leaves nothing behind.

use super::capture::{captured_echo, expect_no_keel_rules};
use super::*;
use crate::lab::{Backend, ServeMode};
use std::time::Instant;

const PORT: u16 = 8080;
/// The bound: captured traffic flows again within a second of keel being ready.
const RESUME_WITHIN: Duration = Duration::from_secs(1);

/// `kill -9` keel, start a new one on the same state dir, pins and API socket: it re-enrolls the pods from its
/// state dir, and captured traffic flows (and is recorded) within 1 s of the new keel's readiness.
pub fn restart_resumes_capture(backend: Backend) {
    with_lab_alone("restart", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let mut keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);
        captured_echo(&keel, &client, dst, 4 * KIB).context("before the crash")?;

        keel.kill9();
        let keel = lab
            .start_keel(backend, &[])
            .context("restarting keel after kill -9")?;
        let ready = Instant::now();
        // Poll: the first attempts may race keel's last steps; each try is short so we can see the 1 s bound.
        let mut attempts = Vec::new();
        let sent = loop {
            let v = client.send(dst, 4 * KIB, ServeMode::Echo, Duration::from_millis(500))?;
            if v["ok"] == true {
                break Sent {
                    bytes: 4 * KIB,
                    local: v["local"].as_str().unwrap_or_default().into(),
                    json: v,
                };
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
            if !pods
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["name"] == p.name.as_str()))
            {
                bail!(
                    "restarted keel did not re-enroll {} from its state dir: pods = {pods}",
                    p.name
                );
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

/// SIGTERM: exit status 0, keel's bpffs dir is gone, no keel iptables rule is left in any pod, and the pods still
/// talk to each other directly.
pub fn sigterm_cleans_up(backend: Backend) {
    with_lab("sigterm", |lab| {
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
            bail!(
                "keel exited with {status} after SIGTERM (expected 0); log tail:\n{}",
                keel.log_tail(40)
            );
        }
        if lab.bpffs_dir().exists() {
            let left: Vec<_> = std::fs::read_dir(lab.bpffs_dir())?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            bail!(
                "bpffs dir {} still exists after SIGTERM: {left:?}",
                lab.bpffs_dir().display()
            );
        }
        for pod in [&client, &server] {
            expect_no_keel_rules(lab, pod)?;
        }
        // No program of keel's is left on the pods' cgroup (connect4 and sock_ops were attached there).
        let attached = crate::lab::sys::run(std::process::Command::new("bpftool").args(["cgroup", "show"]).arg(lab.cgroup_root()))?;
        if attached.contains("keel") {
            bail!("programs still attached to {} after SIGTERM:\n{attached}", lab.cgroup_root().display());
        }
        send_ok(&client, server.addr(PORT), MIB, ServeMode::Echo)
            .context("direct traffic after keel stopped")?;
        Ok(())
    })
}
