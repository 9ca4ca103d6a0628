//! The mesh across two nodes: keel-control on node 0 serves workloads, policies and certificates; a keel on each
//! node follows it. Cross-node pod traffic goes over HBONE (mTLS, SPIFFE identities) and the wire between the
//! nodes never carries it in plaintext; PeerAuthentication and AuthorizationPolicy decide who gets in, including
//! for connections already open; certificates rotate under traffic; a pod whose Workload is gone is refused.

use super::*;
use crate::lab::{mesh_config, podapp_payload, Keel, Pod, ServeMode};
use std::time::Instant;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";
/// Short certificates, so the test sees them rotate (keel renews at half-life).
const CERT_VALIDITY_SECS: &str = "6";

struct Mesh {
    config_dir: std::path::PathBuf,
    base: Vec<String>,
}

impl Mesh {
    /// Replaces the policy part of the config and waits long enough for it to reach both keels.
    fn apply(&self, policies: &[&str]) -> Result<()> {
        let mut objects = self.base.clone();
        objects.extend(policies.iter().map(|p| p.to_string()));
        mesh_config::write(&self.config_dir, "mesh.yaml", &objects)?;
        std::thread::sleep(Duration::from_millis(1000));
        Ok(())
    }
}

/// The policy keel-control makes of a mesh-wide STRICT PeerAuthentication (a DENY of peers without a principal).
const STRICT_POLICY: &str = "istio-system/istio_converted_static_strict";

/// A connection from `client` over HBONE that the server's keel must refuse with 401 for `policy` (its decision
/// text, e.g. "denied by DENY policy default/deny-sleep"): the client's keel resets the client, names the 401 in
/// its own record of that very connection, and the server's keel counts a policy refusal and records the decision.
fn hbone_denied(keels: &[Keel], client: &Pod, to: SocketAddr, policy: &str, what: &str) -> Result<()> {
    let client_side = Since::now(&keels[0])?;
    let client_ip = client.ip.to_string();
    let recorded = |c: &Connection| {
        c.direction == "inbound"
            && c.path.as_deref() == Some("hbone")
            && c.response_status == Some(401)
            && c.source_peer.identity.as_deref() == Some(CLIENT_ID)
            && c.original_destination == to.to_string()
            && c.policy.as_deref() == Some(policy)
    };
    let why = Refusal { counted: "policy", record: &format!("inbound HBONE stream answered 401, decided \"{policy}\""), recorded: &recorded };
    let (report, _) = send_refused(client, to, Broke::Reset, &keels[1], &why, what)?;
    let port = local_port(&report);
    let outbound = client_side
        .wait_connection("outbound record of the refused connection", |c| {
            c.direction == "outbound" && c.source.starts_with(&format!("{client_ip}:")) && c.source_port() == port
        })
        .with_context(|| what.to_string())?;
    if !outbound.error.as_deref().is_some_and(|e| e.contains("answered CONNECT with 401")) || outbound.path.as_deref() != Some("hbone") {
        bail!("{what}: the client's keel does not say the server answered 401: {outbound:?}");
    }
    client_side.expect_refused("policy", 0).context("the client's keel refused nothing itself")
}

/// Waits until keel is relaying at least one inbound connection (the long transfer is open).
fn wait_active_inbound(keel: &Keel) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::lab::counter(&keel.stats()?, "/connections/inbound/active")? == 0 {
        if Instant::now() > deadline {
            bail!("no inbound connection became active within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The background transfer to `to` must be cut within 10 s, and the keel `since` watches must record its inbound
/// side as ended with `error`, before all of it arrived.
fn expect_cut(mut long: crate::lab::process::ChildGuard, since: &Since<'_>, to: SocketAddr, error: &str) -> Result<()> {
    match long.wait_timeout(Duration::from_secs(10)) {
        None => bail!("the open connection to {to} was not closed (\"{error}\")"),
        // podapp exits 0 only for a transfer that arrived whole: this one must have been cut.
        Some(status) if status.success() => bail!("the 64 MiB transfer to {to} completed, it must have been cut (\"{error}\"): {}", long.log()),
        Some(_) => {}
    }
    let to = to.to_string();
    let closed = since.wait_connection("the cut connection", |c| c.direction == "inbound" && c.original_destination == to && c.error.is_some())?;
    if closed.error.as_deref() != Some(error) || closed.bytes_sent >= 64 * MIB {
        bail!("the open connection was not closed with \"{error}\": {closed:?}");
    }
    Ok(())
}

fn serial_of(certs: &str, identity: &str) -> Option<String> {
    certs.lines().find(|l| l.starts_with(identity)).and_then(|l| l.split_whitespace().nth(2)).map(str::to_owned)
}

pub fn cross_node_mtls_and_policies() {
    with_nodes("mtls", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let outsider = lab.node(0).add_pod("outsider")?; // not in the mesh: plaintext
        let server = lab.node(1).add_pod("server")?;
        let config_dir = lab.dir().join("mesh");
        let server_object = mesh_config::pod_object(&server, "echo", &[("app", "echo")]);
        let base = vec![
            mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
            mesh_config::pod_object(&outsider, "outsider", &[("app", "outsider"), ("istio.io/dataplane-mode", "none")]),
            server_object.clone(),
            mesh_config::service_object("echo", "10.96.0.20", &[("app", "echo")], 80, 8080),
        ];
        let mesh = Mesh { config_dir: config_dir.clone(), base };
        mesh.apply(&[])?;
        let control = lab.start_control_on(0, &config_dir)?;
        let keels = lab.start_keels_following(&control, &["--certificate-validity-secs", CERT_VALIDITY_SECS])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&server)?;
        let _echo = server.serve(8080, ServeMode::Echo, &[])?;
        let _sink = server.serve(8081, ServeMode::Sink, &["--read-delay-ms", "5", "--read-chunk", "16384"])?;

        // 1. Cross-node traffic is HBONE: intact, both identities known, nothing in plaintext on the wire.
        let capture = lab.capture_wire()?;
        let sent = send_ok(&client, server.addr(8080), MIB, ServeMode::Echo)?;
        send_ok(&client, "10.96.0.20:80".parse()?, 64 * KIB, ServeMode::Echo)?;
        let wire = capture.stop()?;
        for offset in [0usize, 4096, 500_000, 1_000_000] {
            if wire.contains(&podapp_payload(1, offset, 48)) {
                bail!("plaintext application bytes (offset {offset}) crossed the wire:\n{}", wire.summary());
            }
        }
        if !wire.saw_tcp_port(15008) || wire.tcp_bytes_to_port(15008) < MIB {
            bail!("the transfer did not cross the wire as HBONE on 15008:\n{}", wire.summary());
        }
        let outbound = keels[0].wait_connection(RECORD_TIMEOUT, |c| c.direction == "outbound" && c.source_port() == sent.local_port())?;
        if outbound.path.as_deref() != Some("hbone") || !outbound.mutual_tls || outbound.bytes_sent != MIB {
            bail!("node 0's keel did not carry the connection over HBONE: {outbound:?}");
        }
        let inbound =
            keels[1].wait_connection(RECORD_TIMEOUT, |c| c.direction == "inbound" && c.path.as_deref() == Some("hbone") && c.bytes_sent == MIB)?;
        if inbound.source_peer.identity.as_deref() != Some(CLIENT_ID) || inbound.destination_peer.identity.as_deref() != Some(SERVER_ID) {
            bail!("node 1's keel did not see the client's SPIFFE identity: {inbound:?}");
        }
        // Streams share pooled mTLS connections: ten more connections, no new handshake.
        let dialled = |keel: &Keel| crate::lab::counter(&keel.stats()?, "/hbone/connections_dialled");
        let before = dialled(&keels[0])?;
        for _ in 0..10 {
            send_ok(&client, server.addr(8080), KIB, ServeMode::Echo)?;
        }
        if before == 0 || dialled(&keels[0])? != before {
            bail!("HBONE connections were not pooled: {before} dialled before, {} after ten more streams", dialled(&keels[0])?);
        }
        let (_, metrics) = keels[1].admin_get("/metrics")?;
        let series = metrics.lines().find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{CLIENT_ID}\""))
                && l.contains("connection_security_policy=\"mutual_tls\"")
        });
        if series.is_none() {
            bail!("no Istio TCP metric for the mTLS connection on node 1:\n{metrics}");
        }

        // 2. PERMISSIVE (no PeerAuthentication): a plaintext client outside the mesh gets in, as unauthenticated.
        send_ok(&outsider, server.addr(8080), KIB, ServeMode::Echo)?;
        let plain = keels[1].wait_connection(RECORD_TIMEOUT, |c| c.direction == "inbound" && c.source.starts_with(&format!("{}:", outsider.ip)))?;
        if plain.mutual_tls || plain.source_peer.identity.is_some() {
            bail!("a plaintext client was recorded as authenticated: {plain:?}");
        }

        // 3. STRICT mesh-wide: plaintext refused, mTLS still admitted.
        let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
        mesh.apply(&[strict])?;
        let outsider_at = format!("{}:", outsider.ip);
        let strict_denied = format!("denied by DENY policy {STRICT_POLICY}");
        let plaintext_denied = |c: &Connection| {
            c.direction == "inbound"
                && c.source.starts_with(&outsider_at)
                && !c.mutual_tls
                && c.source_peer.identity.is_none()
                && c.policy.as_deref() == Some(strict_denied.as_str())
        };
        let why = Refusal { counted: "policy", record: "inbound plaintext connection denied by the STRICT policy", recorded: &plaintext_denied };
        let (report, record) = send_refused(&outsider, server.addr(8080), Broke::Reset, &keels[1], &why, "plaintext under STRICT")?;
        if record.source_port() != local_port(&report) || record.bytes_sent != 0 || record.bytes_received != 0 {
            bail!("keel's STRICT refusal is not of the outsider's connection {report}, or let bytes back: {record:?}");
        }
        send_ok(&client, server.addr(8080), KIB, ServeMode::Echo).context("mTLS client under STRICT")?;

        // 4. A DENY pushed while a connection is open closes it; new ones are refused with 401.
        let since = Since::now(&keels[1])?;
        let long = long_transfer(&client, server.addr(8081))?;
        wait_active_inbound(&keels[1])?;
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-sleep, namespace: default}\n\
                    spec:\n  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]}]\n";
        let pushed = Instant::now();
        mesh.apply(&[strict, deny])?;
        expect_cut(long, &since, server.addr(8081), "closed by a policy change: denied by DENY policy default/deny-sleep")?;
        eprintln!("open connection closed {:?} after the policy write", pushed.elapsed());
        hbone_denied(&keels, &client, server.addr(8080), "denied by DENY policy default/deny-sleep", "a client the DENY policy names")?;

        // 5. ALLOW with CIDR and not_* forms: admitted from the client's subnet unless the principal is excluded.
        let allow = |block: &str, not_principal: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-subnet, namespace: default}}\n\
                 spec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{ipBlocks: [\"{block}\"], notPrincipals: [\"{not_principal}\"]}}}}]}}]\n"
            )
        };
        mesh.apply(&[strict, &allow("10.244.0.0/24", "cluster.local/ns/default/sa/other")])?;
        send_ok(&client, server.addr(8080), KIB, ServeMode::Echo).context("ALLOW from the client's subnet")?;
        mesh.apply(&[strict, &allow("10.244.7.0/24", "cluster.local/ns/default/sa/other")])?;
        let no_allow = "no ALLOW policy matched (1 candidates)";
        hbone_denied(&keels, &client, server.addr(8080), no_allow, "ALLOW for another subnet only")?;
        mesh.apply(&[strict, &allow("10.244.0.0/24", "cluster.local/ns/default/sa/sleep")])?;
        hbone_denied(&keels, &client, server.addr(8080), no_allow, "ALLOW that excludes the client's principal")?;
        mesh.apply(&[strict])?;

        // 6. Certificates rotate under traffic (validity 6 s, renewed at half-life).
        let certs = keels[0].cli(&["pc", "certs"])?;
        let first = serial_of(&certs, CLIENT_ID).with_context(|| format!("no certificate for the client:\n{certs}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let rotated = loop {
            send_ok(&client, server.addr(8080), KIB, ServeMode::Echo).context("traffic during rotation")?;
            let now = serial_of(&keels[0].cli(&["pc", "certs"])?, CLIENT_ID);
            if now.as_deref().is_some_and(|s| s != first) {
                break now;
            }
            if Instant::now() > deadline {
                bail!("the client's certificate was not renewed within 15 s:\n{}", keels[0].cli(&["pc", "certs"])?);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        // Past the first certificate's expiry, new connections still work (the pool redials with the new one).
        std::thread::sleep(Duration::from_secs(7));
        send_ok(&client, server.addr(8080), KIB, ServeMode::Echo).context("after the first certificate expired")?;
        eprintln!("client certificate rotated: {first} -> {rotated:?}");

        // 7. The server's Workload disappears (pod deleted from the config, still enrolled): its open connection
        //    closes like a newly denied one, and keel refuses what it cannot evaluate policy for, as ztunnel does:
        //    plaintext from outside the mesh and the HBONE port alike, even with no policy in force at all.
        let since = Since::now(&keels[1])?;
        let long = long_transfer(&client, server.addr(8081))?;
        wait_active_inbound(&keels[1])?;
        let without_server: Vec<String> = mesh.base.iter().filter(|o| **o != server_object).cloned().collect();
        mesh_config::write(&config_dir, "mesh.yaml", &without_server)?;
        expect_cut(long, &since, server.addr(8081), "closed by a policy change: denied: the destination workload no longer exists")?;
        let unknown = format!("refused: keel has no Workload for destination pod {}", server.ip);
        let to_unknown = server.addr(8080).to_string();
        let refused_plaintext = |c: &Connection| {
            c.direction == "inbound"
                && c.source.starts_with(&outsider_at)
                && c.original_destination == to_unknown
                && c.policy.as_deref() == Some(unknown.as_str())
        };
        let why = Refusal {
            counted: "unknown_destination_workload",
            record: "inbound plaintext to a pod without a Workload",
            recorded: &refused_plaintext,
        };
        let (report, record) = send_refused(&outsider, server.addr(8080), Broke::Reset, &keels[1], &why, "plaintext to a pod without a Workload")?;
        if record.source_port() != local_port(&report) || record.bytes_sent != 0 || record.bytes_received != 0 {
            bail!("keel's refusal is not of the outsider's connection {report}, or let bytes through: {record:?}");
        }
        let since_hbone = Since::now(&keels[1])?;
        send_fails(&outsider, server.addr(15008), Broke::Reset, "HBONE port of a pod without a Workload")?;
        since_hbone.expect_refused("unknown_destination_workload", 1).context("HBONE to a pod without a Workload")?;
        Ok(())
    })
}
