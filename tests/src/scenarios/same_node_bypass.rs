//! Same-node bypass (issue 13): keel's policy engine admits the first connection of a (source pod, destination pod,
//! port) on one node; the kernel carries the later ones pod to pod, past keel, which still accounts for them, closes
//! the ones a new policy denies and, when it dies, stops granting (its pods' connections are refused again).

use super::*;
use crate::lab::{mesh_config, Backend, Keel, ServeMode};
use std::time::Instant;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ECHO: u16 = 8080;
const SINK: u16 = 8081;

fn bypassed(keel: &Keel, program: &str) -> Result<u64> {
    crate::lab::counter(&keel.stats()?, &format!("/ebpf/{program}/bypassed"))
}

/// Both kernel programs let exactly `n` more connections past keel than `before` (connect4's, sk_lookup's).
fn expect_bypassed(keel: &Keel, before: (u64, u64), n: u64, what: &str) -> Result<()> {
    let now = (bypassed(keel, "connect4")?, bypassed(keel, "sk_lookup")?);
    if now != (before.0 + n, before.1 + n) {
        bail!("{what}: connect4/sk_lookup bypassed {now:?}, expected {n} more than {before:?}");
    }
    Ok(())
}

fn counts(keel: &Keel) -> Result<(u64, u64)> {
    Ok((bypassed(keel, "connect4")?, bypassed(keel, "sk_lookup")?))
}

/// The background transfer must be cut (not completed) within 10 s, by `what`.
fn expect_ended(mut long: crate::lab::process::ChildGuard, what: &str) -> Result<()> {
    match long.wait_timeout(Duration::from_secs(10)) {
        None => bail!("the open bypassed connection was not closed by {what}"),
        Some(status) if status.success() => bail!("the bypassed 64 MiB transfer completed: {what} did not close it"),
        Some(_) => Ok(()),
    }
}

pub fn same_node_bypass() {
    with_nodes("bypass", 1, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let server = lab.node(0).add_pod("server")?;
        let config_dir = lab.dir().join("mesh");
        let sink = server.addr(SINK).to_string();
        let base = vec![mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]), mesh_config::pod_object(&server, "echo", &[("app", "echo")])];
        mesh_config::write(&config_dir, "mesh.yaml", &base)?;
        let (config, ca) = (config_dir.display().to_string(), lab.dir().join("ca").display().to_string());
        let args = ["--config-dir", config.as_str(), "--ca-dir", ca.as_str(), "--same-node-bypass", "on"];
        let mut keel = lab.start_keel_on(0, Backend::Ebpf, &args)?;
        wait_ready(&keel)?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _echo = server.serve(ECHO, ServeMode::Echo, &[])?;
        let _sink = server.serve(SINK, ServeMode::Sink, &["--read-delay-ms", "5", "--read-chunk", "16384"])?;

        // 1. The first connection of the pair goes through keel (same-node path, the client's identity) and grants it.
        let start = counts(&keel)?;
        let since = Since::now(&keel)?;
        send_ok(&client, server.addr(ECHO), 64 * KIB, ServeMode::Echo).context("the first connection")?;
        since.wait_connection("the first connection, relayed", |c| {
            c.direction == "inbound" && c.path.as_deref() == Some("same-node") && c.source_peer.identity.as_deref() == Some(CLIENT_ID)
        })?;
        expect_bypassed(&keel, start, 0, "the first connection")?;

        // 2. The next ones go pod to pod: the bytes arrive, both programs count them, keel records them (path
        //    "bypass", the client's identity, the bytes each way as the kernel counted them) and counts them.
        let since = Since::now(&keel)?;
        let closed_before = crate::lab::counter(&keel.stats()?, "/connections/inbound/closed")?;
        for n in 0..3u64 {
            send_ok(&client, server.addr(ECHO), 128 * KIB + n, ServeMode::Echo).with_context(|| format!("bypassed connection {n}"))?;
        }
        expect_bypassed(&keel, start, 3, "three more connections of the granted pair")?;
        for n in 0..3u64 {
            let bytes = 128 * KIB + n;
            let record = since.wait_connection("a bypassed connection's record", |c| c.path.as_deref() == Some("bypass") && c.bytes_sent == bytes)?;
            if record.bytes_received != bytes || record.source_peer.identity.as_deref() != Some(CLIENT_ID) || record.direction != "inbound" {
                bail!("keel's record of a bypassed {bytes}-byte echo is wrong: {record:?}");
            }
        }
        if since.new_connections()?.iter().any(|c| c.path.as_deref() != Some("bypass")) {
            bail!("a bypassed connection also went through keel: {:?}", since.new_connections()?);
        }
        let closed = crate::lab::counter(&keel.stats()?, "/connections/inbound/closed")? - closed_before;
        if closed != 3 {
            bail!("keel counted {closed} closed inbound connections for the three bypassed ones");
        }

        // 3. A policy that denies the pair closes its open bypassed connection and every new one goes to keel, which
        //    refuses it for that policy.
        // The sink port is a triple of its own: granted by a first small transfer through keel.
        send_ok(&client, server.addr(SINK), KIB, ServeMode::Sink).context("granting the sink port")?;
        let open_bypassed = counts(&keel)?;
        let long = long_transfer(&client, server.addr(SINK))?;
        std::thread::sleep(Duration::from_millis(300));
        expect_bypassed(&keel, open_bypassed, 1, "the long transfer to the sink")?;
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-sleep, namespace: default}\n\
                    spec:\n  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]}]\n";
        let mut with_deny = base.clone();
        with_deny.push(deny.to_owned());
        let since_deny = Since::now(&keel)?;
        let pushed = Instant::now();
        mesh_config::write(&config_dir, "mesh.yaml", &with_deny)?;
        expect_ended(long, "the DENY policy")?;
        eprintln!("open bypassed connection closed {:?} after the policy write", pushed.elapsed());
        let cut = since_deny.wait_connection("the cut bypassed connection", |c| {
            c.path.as_deref() == Some("bypass") && c.original_destination == sink && c.error.is_some()
        })?;
        if cut.error.as_deref() != Some("closed by a policy change: denied by DENY policy default/deny-sleep") || cut.bytes_sent >= 64 * MIB {
            bail!("the bypassed connection was not recorded as closed by the DENY policy: {cut:?}");
        }
        let denied = |c: &Connection| c.direction == "inbound" && c.policy.as_deref() == Some("denied by DENY policy default/deny-sleep");
        let why = Refusal { counted: "policy", record: "the pair's next connection, denied by keel", recorded: &denied };
        send_refused(&client, server.addr(ECHO), Broke::Reset, &keel, &why, "after the DENY")?;
        expect_bypassed(&keel, open_bypassed, 1, "after the DENY (only the transfer started before it)")?;
        if !keel.log_tail(200).contains("closed a bypassed connection") {
            bail!("keel did not log closing the bypassed connection:\n{}", keel.log_tail(40));
        }

        // 4. Allowed again: granted again on the next connection. `keel fast-path off` takes the verdicts back (the
        //    next connection goes through keel), `on` lets keel grant again.
        mesh_config::write(&config_dir, "mesh.yaml", &base)?;
        std::thread::sleep(Duration::from_millis(1000));
        let granted_again = |what: &str| -> Result<()> {
            send_ok(&client, server.addr(ECHO), 4 * KIB, ServeMode::Echo).with_context(|| format!("{what}, through keel"))?;
            let granted = counts(&keel)?;
            send_ok(&client, server.addr(ECHO), 4 * KIB, ServeMode::Echo).with_context(|| format!("{what}, bypassed"))?;
            expect_bypassed(&keel, granted, 1, what)
        };
        granted_again("allowed again")?;
        keel.set_fast_path(false)?;
        let off = counts(&keel)?;
        for n in 0..2 {
            send_ok(&client, server.addr(ECHO), 4 * KIB, ServeMode::Echo).with_context(|| format!("fast path off, connection {n}"))?;
        }
        expect_bypassed(&keel, off, 0, "with the fast path switched off")?;
        keel.set_fast_path(true)?;
        granted_again("fast path back on")?;

        // 5. The destination pod leaves the mesh: its open bypassed connection is closed with it.
        send_ok(&client, server.addr(SINK), KIB, ServeMode::Sink).context("granting the sink port again")?;
        let long = long_transfer(&client, server.addr(SINK))?;
        std::thread::sleep(Duration::from_millis(300));
        let since_unenroll = Since::now(&keel)?;
        keel.unenroll(&server)?;
        expect_ended(long, "unenrolling the server")?;
        let cut = since_unenroll.wait_connection("the bypassed connection cut by the unenrollment", |c| {
            c.path.as_deref() == Some("bypass") && c.original_destination == sink && c.error.is_some()
        })?;
        if cut.error.as_deref() != Some("its pod left the mesh") {
            bail!("the bypassed connection was not recorded as ended by the unenrollment: {cut:?}");
        }

        // 6. keel dies: within the heartbeat's lifetime the kernel stops honouring verdicts, and the client's
        //    connections are refused (captured to no keel), not carried past it.
        keel.enroll(&server)?;
        granted_again("re-enrolled")?;
        keel.kill9();
        std::thread::sleep(Duration::from_millis(3500));
        for attempt in 0..3 {
            send_fails(&client, server.addr(ECHO), Broke::Refused, &format!("attempt {attempt} with keel dead past the heartbeat"))?;
        }
        Ok(())
    })
}
