//! `keel gateway` on Kubernetes: a gateway pod in istio-system (labels `istio: ingressgateway`, its own
//! ServiceAccount) authenticates to keel-control `--kubernetes` with its pod-bound token (TokenReview: a token
//! bound to a pod some Gateway selects is that pod's gateway), and serves what the API holds: a Gateway with an
//! HTTP and an HTTPS server (its certificate a `kubernetes.io/tls` Secret of the gateway's namespace, by
//! `credentialName`), a VirtualService bound to it routing to `web` in the ambient namespace `demo` on the other
//! node, reached over HBONE with the gateway's identity. A Secret changed in the API is served without a restart.
//!
//! The gateway runs as deploy/'s Deployment runs it: uid 1337, no capabilities at all, no privilege gain, ports
//! 80 and 443 bindable only through the pod's `net.ipv4.ip_unprivileged_port_start=0`.
use serde_json::json;

use super::gateway_tls::Ca;
use super::kubernetes_mesh::KubernetesMesh;
use super::node_agent::{expect_enrolled, kube_pod_on, namespace};
use super::*;
use crate::kube_api::ServiceAccountToken;

const HOST: &str = "web.example.com";
/// Istio's gateway uid, and deploy/'s.
const GATEWAY_UID: u32 = 1337;
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/keel-ingressgateway";

fn tls_secret(crt: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "web-credential", "namespace": "istio-system"},
           "stringData": {"tls.crt": crt, "tls.key": key}})
}

pub fn an_ingress_gateway_follows_the_api() {
    with_nodes("k8sgw", 2, |lab| {
        let mut mesh = KubernetesMesh::start(lab)?;
        mesh.api.apply(&namespace("demo", json!({"istio.io/dataplane-mode": "ambient"})))?;
        expect_enrolled(&mesh.keels[1], &[&mesh.server, &mesh.replica], "node 1 after demo joined the mesh")?;
        let _web = [mesh.server.pod.http_serve(9080, "a", &[])?, mesh.replica.pod.http_serve(9080, "b", &[])?];

        // The gateway's pod and its token, as the kubelet projects it (audience istio-ca, bound to the pod).
        let gateway = kube_pod_on(lab, 0, &mesh.api, "ingress-0", "istio-system", json!({"istio": "ingressgateway"}), "keel-ingressgateway")?;
        mesh.api.register_token(
            ServiceAccountToken::new("gateway-xds-token", "istio-system", "keel-ingressgateway")
                .bound_to_pod("ingress-0", Some(&gateway.uid), Some(lab.node_name(0)))
                .with_audiences(&["istio-ca"]),
        )?;
        let api = &mesh.api;
        let token = lab.dir().join("gateway-istio-token");
        std::fs::write(&token, "gateway-xds-token")?;
        let ca = Ca::new("web.example.com CA")?;
        let (crt, key) = ca.leaf(HOST, "first")?;
        api.apply(&tls_secret(&crt, &key))?;
        let xds = format!("https://{}:15012", lab.node(0).wire_ip().context("wire")?);
        // The root certificate as the pod gets it (a ConfigMap mount), not from the CA's private directory.
        let root = lab.dir().join("gateway-root-cert.pem");
        std::fs::copy(mesh.ca_dir.join("root-cert.pem"), &root)?;
        let (root, token, state) = (root.display().to_string(), token.display().to_string(), lab.dir().join("gateway-state").display().to_string());
        let keel = lab.binaries().keel.display().to_string();
        let ip = gateway.pod.ip.to_string();
        // The Deployment's pod: the sysctl, a state directory of its own, and the process stripped of everything.
        gateway.pod.run(&["sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=0"])?;
        std::fs::create_dir_all(&state)?;
        std::os::unix::fs::chown(&state, Some(GATEWAY_UID), Some(GATEWAY_UID))?;
        let uid = GATEWAY_UID.to_string();
        let mut process = gateway.pod.spawn(&[
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            keel.as_str(),
            "gateway",
            "--xds-address",
            &xds,
            "--xds-root",
            &root,
            "--xds-token-file",
            &token,
            "--pod-name",
            "ingress-0",
            "--pod-namespace",
            "istio-system",
            "--instance-ip",
            &ip,
            "--node-name",
            lab.node_name(0),
            "--state-dir",
            &state,
            "--log-format",
            "json",
        ])?;
        // The pod runs before any Gateway selects it (a Deployment applied before its Gateway): keel-control
        // refuses it as a gateway until one does, then serves it.
        std::thread::sleep(Duration::from_secs(1));
        api.apply(&json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "web-gateway", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [HOST]},
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [HOST], "tls": {"mode": "SIMPLE", "credentialName": "web-credential"}}]}}))?;
        api.apply(&json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web-from-gateway", "namespace": "demo"},
            "spec": {"hosts": [HOST], "gateways": ["istio-system/web-gateway"], "http": [{"route": [{"destination": {"host": "web", "port": {"number": 80}}}]}]}}))?;

        let bound = |l: &str| l.contains("gateway listener bound") && l.contains("\"port\":443");
        process.wait_for_line(Duration::from_secs(30), bound).context("the gateway binding its HTTPS listener from the API's Gateway")?;

        // From outside the mesh (the opted-out pod): HTTP and HTTPS through the gateway reach web on node 1.
        let client = &mesh.outsider.pod;
        let ca_file = lab.dir().join("web-ca.pem");
        std::fs::write(&ca_file, &ca.pem)?;
        let ca_arg = ca_file.display().to_string();
        let get = |url: &str, port: u16| -> Result<(String, String)> {
            let resolve = format!("{HOST}:{port}:{ip}");
            let out = client.run(&[
                "curl",
                "-sS",
                "-v",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "--cacert",
                &ca_arg,
                url,
            ])?;
            Ok((String::from_utf8_lossy(&out.stdout).to_ascii_lowercase(), String::from_utf8_lossy(&out.stderr).into_owned()))
        };
        let served = |headers: &str| headers.contains("x-served-by: a") || headers.contains("x-served-by: b");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (http, _) = get(&format!("http://{HOST}/"), 80)?;
            let (https, verbose) = get(&format!("https://{HOST}/"), 443)?;
            if served(&http) && served(&https) && verbose.contains("O=first") {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("through the gateway: want web's answer over HTTP and HTTPS (certificate O=first), got {http:?} / {https:?}\n{verbose}\n---- gateway log:\n{}", process.log());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        // Node 1's keel saw the gateway's identity, over mTLS.
        let (_, metrics) = mesh.keels[1].admin_get("/metrics")?;
        if !metrics.lines().any(|l| l.contains(&format!("source_principal=\"{GATEWAY_ID}\"")) && l.contains("mutual_tls")) {
            bail!("node 1's keel has no mTLS request from the gateway's identity {GATEWAY_ID}");
        }

        // The Secret rotated in the API: the same gateway process serves the new certificate.
        let (crt, key) = ca.leaf(HOST, "second")?;
        api.apply(&tls_secret(&crt, &key))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (https, verbose) = get(&format!("https://{HOST}/"), 443)?;
            if served(&https) && verbose.contains("O=second") {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("the rotated Secret was not served within 15 s: {https:?}\n{verbose}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = process.try_wait();
        Ok(())
    });
}
