//! keel's HBONE server against an independent client (tests/hbone/hbone_probe.py: Python's ssl + h2, written
//! from the wire reference, not from keel's code): the handshake (TLS 1.3, ALPN h2, no SNI, mutual certificates
//! with SPIFFE URI SANs), CONNECT carrying bytes both ways, and the status codes of every refusal (400, 401, 503),
//! plus the handshakes keel must refuse (no client certificate, a foreign trust domain).

use super::*;
use crate::lab::{mesh_config, workspace_root, Backend, Lab, Pod, ServeMode};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) const PYTHON: &str = "/usr/bin/python3";
const SERVER_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/echo";
const PROBE_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/probe";

/// Workload credentials for the probe, from `keel-control issue`.
pub(super) fn issue(lab: &Lab, ca_dir: &Path, trust_domain: &str, identity: &str, out: &str) -> Result<PathBuf> {
    let out = lab.dir().join(out);
    let result = Command::new(&lab.binaries().keel_control)
        .args(["issue", "--trust-domain", trust_domain, "--identity", identity])
        .arg("--ca-dir")
        .arg(ca_dir)
        .arg("--out")
        .arg(&out)
        .output()?;
    if !result.status.success() {
        bail!("keel-control issue failed: {}", String::from_utf8_lossy(&result.stderr));
    }
    Ok(out)
}

pub(super) fn require_python_h2() -> Result<()> {
    let ok = Command::new(PYTHON).args(["-c", "import h2"]).status().is_ok_and(|s| s.success());
    if !ok {
        // A missing prerequisite fails (never skips): `cargo xtask setup` installs python3-h2.
        bail!("{PYTHON} cannot import h2: run `cargo xtask setup` (Debian package python3-h2)");
    }
    Ok(())
}

pub(super) struct Probe<'a> {
    pub pod: &'a Pod,
    pub script: PathBuf,
    pub ca: PathBuf,
}

impl Probe<'_> {
    pub fn run(&self, connect: &str, authority: &str, method: &str, credentials: Option<&Path>) -> Result<Value> {
        self.run_with(connect, authority, method, credentials, &[])
    }

    /// `run` with extra probe arguments (e.g. `--hold 6`).
    pub fn run_with(&self, connect: &str, authority: &str, method: &str, credentials: Option<&Path>, extra: &[&str]) -> Result<Value> {
        let mut argv: Vec<String> = vec![
            PYTHON.into(),
            self.script.display().to_string(),
            "--connect".into(),
            connect.into(),
            "--authority".into(),
            authority.into(),
            "--method".into(),
            method.into(),
            "--ca".into(),
            self.ca.display().to_string(),
        ];
        if let Some(dir) = credentials {
            argv.extend(["--cert".into(), dir.join("cert-chain.pem").display().to_string()]);
            argv.extend(["--key".into(), dir.join("key.pem").display().to_string()]);
        }
        argv.extend(extra.iter().map(|a| a.to_string()));
        let out = self.pod.run_timeout(&argv, Duration::from_secs(20))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("hbone_probe printed no JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

pub(super) fn expect_status(result: &Value, status: u64, what: &str) -> Result<()> {
    if result["status"] != status {
        bail!("{what}: expected HTTP {status}, the probe got {result}");
    }
    Ok(())
}

pub fn independent_client_speaks_hbone_to_keel() {
    with_lab("hbone-wire", |lab| {
        require_python_h2()?;
        let server = lab.add_pod("echo")?;
        let probe_pod = lab.add_pod("probe")?;
        let ca_dir = lab.dir().join("ca");
        let good = issue(lab, &ca_dir, "cluster.local", PROBE_IDENTITY, "probe-creds")?;
        let foreign = issue(lab, &ca_dir, "other.local", "spiffe://other.local/ns/default/sa/probe", "foreign-creds")?;
        let config_dir = lab.dir().join("mesh");
        let mut objects =
            vec![mesh_config::pod_object(&server, "echo", &[("app", "echo")]), mesh_config::pod_object(&probe_pod, "probe", &[("app", "probe")])];
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        let (config, ca) = (config_dir.display().to_string(), ca_dir.display().to_string());
        let keel = lab.start_keel(Backend::Ebpf, &["--config-dir", &config, "--ca-dir", &ca])?;
        keel.enroll(&server)?; // the probe pod is not enrolled: it speaks HBONE itself
        let _echo = server.serve(8080, ServeMode::Echo, &[])?;
        let probe = Probe { pod: &probe_pod, script: workspace_root().join("tests/hbone/hbone_probe.py"), ca: ca_dir.join("root-cert.pem") };
        let hbone = format!("{}:15008", server.ip);
        let app = format!("{}:8080", server.ip);

        // 200: bytes both ways, END_STREAM as the half-close, and the handshake as the reference describes it.
        let ok = probe.run(&hbone, &app, "CONNECT", Some(&good))?;
        expect_status(&ok, 200, "CONNECT to the pod's application port")?;
        if ok["echo_ok"] != true || ok["alpn"] != "h2" || ok["tls_version"] != "TLSv1.3" || ok["server_identity"] != SERVER_IDENTITY {
            bail!("the tunnel or the handshake is not as the reference says: {ok}");
        }
        let record = keel
            .wait_connection(RECORD_TIMEOUT, |c| c.direction == "inbound" && c.path.as_deref() == Some("hbone") && c.response_status == Some(200))?;
        if record.source_peer.identity.as_deref() != Some(PROBE_IDENTITY) || !record.mutual_tls || record.bytes_sent == 0 {
            bail!("keel's record does not carry the client's verified identity: {record:?}");
        }

        // 400: not CONNECT; an :authority that is not this pod's address. 503: nothing listens on the target port.
        // Each status for its reason: keel's record of the stream says why, and no refusal is counted for any.
        let closed_port = format!("{}:9", server.ip);
        let cases = [
            ("GET instead of CONNECT", app.as_str(), "GET", 400, "method GET is not CONNECT".to_string()),
            ("another pod's address", "10.244.0.250:8080", "CONNECT", 400, format!("is not this pod's address {}", server.ip)),
            ("a closed port", closed_port.as_str(), "CONNECT", 503, format!("connecting to {closed_port}: Connection refused")),
        ];
        for (what, authority, method, status, why) in cases {
            let since = Since::now(&keel)?;
            expect_status(&probe.run(&hbone, authority, method, Some(&good))?, status.into(), what)?;
            let record = since.wait_connection(&format!("{status} answer"), |c| c.response_status == Some(status))?;
            if !record.error.as_deref().is_some_and(|e| e.contains(&why)) {
                bail!("{what}: keel answered {status} but its record does not say {why:?}: {record:?}");
            }
            since.expect_refused("policy", 0).with_context(|| what.to_string())?;
        }

        // A client that resets the connection after its answer (as a killed one does) ended it; keel refused nothing.
        let since = Since::now(&keel)?;
        expect_status(&probe.run_with(&hbone, &app, "CONNECT", Some(&good), &["--reset"])?, 200, "CONNECT, then RST")?;
        since.wait_connection("the reset client's stream", |c| c.response_status == Some(200))?;
        std::thread::sleep(Duration::from_millis(300));
        since.expect_refused("policy", 0).context("a client that reset the connection after its answer")?;

        // Handshakes keel refuses, each counted as a failed HBONE handshake (and as nothing else): no client
        // certificate, and a certificate of another trust domain (it chains to the same root, so only keel's trust
        // domain check refuses it). In TLS 1.3 the client's side of the handshake is done before the server has
        // judged its certificate, so the probe verified keel's identity and then saw keel close the connection,
        // without an HTTP/2 answer; keel's count is what says the handshake was refused.
        for (what, creds) in [("no client certificate", None), ("a foreign trust domain", Some(foreign.as_path()))] {
            let since = Since::now(&keel)?;
            let refused = probe.run(&hbone, &app, "CONNECT", creds)?;
            let error = refused["error"].as_str().unwrap_or_default().to_lowercase();
            if refused["status"] != Value::Null || error.is_empty() {
                bail!("keel accepted a client with {what}: {refused}");
            }
            if refused["server_identity"] != SERVER_IDENTITY || error.contains("timed out") {
                bail!("a client with {what} failed before keel could judge it, or was left hanging: {refused}");
            }
            since.expect_refused("hbone_handshake_failed", 1).with_context(|| format!("a client with {what}: {refused}"))?;
            if let Some(c) = since.new_connections()?.first() {
                bail!("keel recorded a connection for a client with {what}, whose handshake it refused: {c:?}");
            }
        }

        // 401: a DENY policy for the probe's principal on the app port.
        objects.push(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-probe, namespace: default}\n\
             spec:\n  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/default/sa/probe\"]}}]\n    to: [{operation: {ports: [\"8080\"]}}]\n"
                .into(),
        );
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        std::thread::sleep(Duration::from_millis(800));
        let since = Since::now(&keel)?;
        expect_status(&probe.run(&hbone, &app, "CONNECT", Some(&good))?, 401, "a DENY policy for the probe")?;
        let denied = since.wait_connection("401 answer to the probe", |c| c.response_status == Some(401))?;
        let decision = "denied by DENY policy default/deny-probe";
        if denied.policy.as_deref() != Some(decision)
            || denied.error.as_deref() != Some(decision)
            || denied.source_peer.identity.as_deref() != Some(PROBE_IDENTITY)
        {
            bail!("the denial does not name the policy ({decision}) and the probe's identity: {denied:?}");
        }
        since.expect_refused("policy", 1)?;
        Ok(())
    })
}
