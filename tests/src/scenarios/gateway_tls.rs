//! `keel gateway` terminating TLS as an Istio ingress gateway does (the Istio-in-Action "securing ingress"
//! steps): HTTPS servers whose certificates are Kubernetes Secrets named by `credentialName`, two hosts with two
//! certificates on 443 picked by SNI, a MUTUAL server on 8443 that verifies client certificates (CA and SAN),
//! and a Secret rotated in place. The client is curl (OpenSSL), not keel's TLS stack; what is checked is what it
//! sees: the status and who answered, the certificate the gateway presented, the negotiated TLS and HTTP
//! versions, refused handshakes; and what the gateway shows (`keel pc --admin ... secrets`, its refusal counter).
use std::path::{Path, PathBuf};

use super::gateway::{start_gateway_on, tail, GATEWAY_POD, WEBAPP_SERVICE};
use super::traffic_management::grep;
use super::*;
use crate::lab::{mesh_config, Pod, ServeMode};

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: coolstore-gateway, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https-webapp, protocol: HTTPS}\n    hosts: [webapp.istioinaction.io]\n    tls: {mode: SIMPLE, credentialName: webapp-credential}\n  - port: {number: 443, name: https-catalog, protocol: HTTPS}\n    hosts: [catalog.istioinaction.io]\n    tls: {mode: SIMPLE, credentialName: catalog-credential}\n  - port: {number: 8443, name: https-mtls, protocol: HTTPS}\n    hosts: [mtls.istioinaction.io]\n    tls: {mode: MUTUAL, credentialName: mtls-credential, subjectAltNames: [client.istioinaction.io]}\n";

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: webapp-vs-from-gw, namespace: default}\nspec:\n  hosts: [webapp.istioinaction.io, catalog.istioinaction.io, mtls.istioinaction.io]\n  gateways: [coolstore-gateway]\n  http:\n  - route: [{destination: {host: webapp, port: {number: 80}}}]\n";

/// A CA that signs the lab's certificates.
pub(super) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(super) pem: String,
}

impl Ca {
    pub(super) fn new(name: &str) -> Result<Ca> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca { issuer: rcgen::Issuer::new(params, key), pem })
    }

    /// A leaf for `san` (also its CN), with `organization` in its subject so a client can tell two apart.
    pub(super) fn leaf(&self, san: &str, organization: &str) -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![san.to_owned()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, san);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, organization);
        Ok((params.signed_by(&key, &self.issuer)?.pem(), key.serialize_pem()))
    }
}

fn secret(name: &str, entries: &[(&str, &str)]) -> String {
    let data: String =
        entries.iter().map(|(key, pem)| format!("  {key}: |\n{}", pem.lines().map(|l| format!("    {l}\n")).collect::<String>())).collect();
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n{data}")
}

pub(super) fn write_pem(dir: &Path, name: &str, pem: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn an_ingress_gateway_terminates_tls_by_sni_with_certificates_from_rotating_secrets() {
    with_nodes("gateway-tls", 2, |lab| {
        let ingress = lab.node(0).add_pod("ingress")?;
        let curl = lab.node(0).add_pod("curl")?;
        let webapp = lab.node(1).add_pod("webapp")?;
        let (server_ca, client_ca) = (Ca::new("istioinaction server CA")?, Ca::new("istioinaction client CA")?);
        let certificate = |host: &str, organization: &str| server_ca.leaf(host, organization);
        let (webapp_crt, webapp_key) = certificate("webapp.istioinaction.io", "first")?;
        let (catalog_crt, catalog_key) = certificate("catalog.istioinaction.io", "first")?;
        let (mtls_crt, mtls_key) = certificate("mtls.istioinaction.io", "first")?;
        let objects = |webapp_cert: (&str, &str)| {
            vec![
                mesh_config::pod_object(&ingress, "ingress", &[("istio", "ingressgateway")]),
                mesh_config::pod_object(&webapp, "webapp", &[("app", "webapp")]),
                WEBAPP_SERVICE.to_owned(),
                GATEWAY.to_owned(),
                VIRTUAL_SERVICE.to_owned(),
                secret("webapp-credential", &[("tls.crt", webapp_cert.0), ("tls.key", webapp_cert.1)]),
                secret("catalog-credential", &[("tls.crt", &catalog_crt), ("tls.key", &catalog_key)]),
                secret("mtls-credential", &[("tls.crt", &mtls_crt), ("tls.key", &mtls_key)]),
                secret("mtls-credential-cacert", &[("ca.crt", &client_ca.pem)]),
            ]
        };
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(&config_dir, "mesh.yaml", &objects((&webapp_crt, &webapp_key)))?;
        let control = lab.start_control_with(0, &config_dir, &[], &[GATEWAY_POD])?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[1].enroll(&webapp)?;
        let _server = webapp.http_serve(8080, "webapp", &[])?;
        let mut gateway = start_gateway_on(lab, &control, &ingress, 8443)?;
        let files = Files::write(lab.dir(), &server_ca, &client_ca)?;
        let client = Client { curl: &curl, gateway_ip: ingress.ip.to_string(), files: &files };
        let result = check(&client, &ingress, lab).and_then(|()| {
            // Rotation: the Secret rewritten with a new certificate; keel-control pushes it, the same gateway
            // process serves it from the next handshake.
            let (rotated_crt, rotated_key) = certificate("webapp.istioinaction.io", "rotated")?;
            mesh_config::write(&config_dir, "mesh.yaml", &objects((&rotated_crt, &rotated_key)))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let seen = client.get("webapp.istioinaction.io", 443, &[])?;
                if seen.status == "200" && seen.subject.contains("rotated") {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("the rotated certificate was not served within 15 s; the gateway still presents {:?}", seen.subject);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        let result = result.and_then(|()| match gateway.try_wait() {
            None => Ok(()),
            Some(status) => bail!("the gateway did not keep running through the rotation: it exited with {status}"),
        });
        result.map_err(|e| anyhow::anyhow!("{e:#}\n---- keel gateway log:\n{}", tail(&gateway.log(), 30)))
    });
}

/// The PEM files curl reads: the server CA, a good client certificate, one from the right CA for another name,
/// and one from the wrong CA.
struct Files {
    server_ca: PathBuf,
    client: (PathBuf, PathBuf),
    wrong_san: (PathBuf, PathBuf),
    wrong_ca: (PathBuf, PathBuf),
}

impl Files {
    fn write(dir: &Path, server_ca: &Ca, client_ca: &Ca) -> Result<Files> {
        let pair = |name: &str, (crt, key): (String, String)| -> Result<(PathBuf, PathBuf)> {
            Ok((write_pem(dir, &format!("{name}.crt"), &crt)?, write_pem(dir, &format!("{name}.key"), &key)?))
        };
        Ok(Files {
            server_ca: write_pem(dir, "server-ca.crt", &server_ca.pem)?,
            client: pair("client", client_ca.leaf("client.istioinaction.io", "client")?)?,
            wrong_san: pair("wrong-san", client_ca.leaf("intruder.istioinaction.io", "client")?)?,
            wrong_ca: pair("wrong-ca", server_ca.leaf("client.istioinaction.io", "client")?)?,
        })
    }
}

struct Client<'a> {
    curl: &'a Pod,
    gateway_ip: String,
    files: &'a Files,
}

/// What curl saw: the HTTP status (`000` when no response), who answered, the HTTP version, and the server
/// certificate's subject (from curl's verbose output).
#[derive(Debug)]
struct Seen {
    status: String,
    served_by: String,
    http_version: String,
    subject: String,
    stderr: String,
}

impl Client<'_> {
    fn get(&self, host: &str, port: u16, extra: &[&str]) -> Result<Seen> {
        let resolve = format!("{host}:{port}:{}", self.gateway_ip);
        let url = format!("https://{host}:{port}/api/catalog");
        let ca = self.files.server_ca.display().to_string();
        let mut argv = vec!["curl", "-sS", "-v", "-o", "/dev/null", "--max-time", "10", "--resolve", &resolve, "--cacert", &ca];
        argv.extend(extra);
        let write_out = "%{http_code} %{http_version} %header{x-served-by}";
        argv.extend(["-w", write_out, &url]);
        let out = self.curl.run(&argv)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut fields = stdout.split_whitespace();
        let subject = stderr.lines().find_map(|l| l.split_once("subject:").map(|(_, s)| s.trim().to_owned())).unwrap_or_default();
        Ok(Seen {
            status: fields.next().unwrap_or("000").to_owned(),
            http_version: fields.next().unwrap_or_default().to_owned(),
            served_by: fields.next().unwrap_or_default().to_owned(),
            subject,
            stderr,
        })
    }

    fn with_certificate(&self, (crt, key): &(PathBuf, PathBuf)) -> [String; 4] {
        ["--cert".into(), crt.display().to_string(), "--key".into(), key.display().to_string()]
    }
}

fn check(client: &Client, ingress: &Pod, lab: &Lab) -> Result<()> {
    // 1. Each host on 443 gets its own certificate (curl verifies it against the host name), and webapp answers
    //    through the gateway and HBONE, over HTTP/2 or HTTP/1.1 as ALPN settles, on TLS 1.3 and 1.2.
    for host in ["webapp.istioinaction.io", "catalog.istioinaction.io"] {
        for (extra, version) in [(&["--http2"][..], "2"), (&["--http1.1"][..], "1.1"), (&["--http1.1", "--tlsv1.2", "--tls-max", "1.2"][..], "1.1")] {
            let seen = client.get(host, 443, extra)?;
            if seen.status != "200" || seen.served_by != "webapp" || seen.http_version != version || !seen.subject.contains(&format!("CN={host}")) {
                bail!("https://{host} with {extra:?}: want 200 from webapp over HTTP/{version} with {host}'s certificate, got {seen:?}");
            }
        }
    }
    let tls12 = client.get("webapp.istioinaction.io", 443, &["--tlsv1.2", "--tls-max", "1.2"])?;
    let tls13 = client.get("webapp.istioinaction.io", 443, &["--tlsv1.3"])?;
    if !tls12.stderr.contains("TLSv1.2 /") || !tls13.stderr.contains("TLSv1.3 /") {
        bail!(
            "TLS versions: want 1.2 and 1.3 negotiated; curl said:\n{}\n---\n{}",
            grep(&tls12.stderr, "SSL connection"),
            grep(&tls13.stderr, "SSL connection")
        );
    }
    // 2. A name no server has: no handshake, counted by the gateway.
    let unknown = client.get("unknown.istioinaction.io", 443, &[])?;
    if unknown.status != "000" {
        bail!("a name no server serves must get no TLS handshake: {unknown:?}");
    }
    // 3. MUTUAL: no client certificate, one of the wrong CA, or of the right CA for another name: refused at the
    //    handshake; the right one: served.
    let refused: [(&str, Vec<String>); 3] = [
        ("no client certificate", vec![]),
        ("a certificate of another CA", client.with_certificate(&client.files.wrong_ca).to_vec()),
        ("a certificate for another name", client.with_certificate(&client.files.wrong_san).to_vec()),
    ];
    for (what, extra) in &refused {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let seen = client.get("mtls.istioinaction.io", 8443, &extra)?;
        if seen.status != "000" {
            bail!("MUTUAL with {what}: want the handshake refused, got {seen:?}");
        }
    }
    let good = client.with_certificate(&client.files.client);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let seen = client.get("mtls.istioinaction.io", 8443, &good)?;
    if seen.status != "200" || seen.served_by != "webapp" {
        bail!("MUTUAL with the client certificate: want 200 from webapp, got {seen:?}");
    }
    // 4. The gateway counted the refused handshakes (1 unknown name + 3 MUTUAL), and shows its secrets, without
    //    their keys, as `istioctl proxy-config secret` does.
    let metrics = ingress.run(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/metrics"])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let refusals = grep(&metrics, "reason=\"gateway_tls_handshake\"");
    let counted: f64 = refusals.lines().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    if counted < 4.0 {
        bail!("want at least 4 refused gateway TLS handshakes counted, got:\n{refusals}");
    }
    let keel = lab.binaries().keel.display().to_string();
    let secrets = ingress.run(&[keel.as_str(), "pc", "--admin", "127.0.0.1:15000", "secrets"])?;
    let secrets = String::from_utf8_lossy(&secrets.stdout).into_owned();
    for name in
        ["kubernetes://webapp-credential", "kubernetes://catalog-credential", "kubernetes://mtls-credential", "kubernetes://mtls-credential-cacert"]
    {
        if !secrets.contains(name) {
            bail!("keel pc secrets on the gateway lacks {name}:\n{secrets}");
        }
    }
    if secrets.contains("PRIVATE") || !secrets.contains("DNS:webapp.istioinaction.io") {
        bail!("keel pc secrets: want SANs and never a key:\n{secrets}");
    }
    let listeners = ingress.run(&[keel.as_str(), "pc", "--admin", "127.0.0.1:15000", "listeners"])?;
    let listeners = String::from_utf8_lossy(&listeners.stdout).into_owned();
    if !listeners.contains("MUTUAL cert=kubernetes://mtls-credential ca=kubernetes://mtls-credential-cacert")
        || !listeners.contains("catalog.istioinaction.io")
    {
        bail!("keel pc listeners on the gateway: want the SNI chains and their TLS:\n{listeners}");
    }
    Ok(())
}

const PASSTHROUGH_GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge-gateway, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: tls-passthrough, protocol: TLS}\n    hosts: [pass.istioinaction.io]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 31400, name: tcp-echo, protocol: TCP}\n    hosts: ['*']\n";

/// An HTTPS server whose certificate is files in the gateway pod (`serverCertificate`/`privateKey`), routed to an
/// HTTP service; `{cert}` and `{key}` are replaced by the paths.
const FILES_SERVER: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: files-gateway, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9443, name: https-files, protocol: HTTPS}\n    hosts: [files.istioinaction.io]\n    tls: {mode: SIMPLE, serverCertificate: '{cert}', privateKey: '{key}'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.62\n  selector: {app: tls-backend}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: files-routes, namespace: default}\nspec:\n  hosts: [files.istioinaction.io]\n  gateways: [files-gateway]\n  http:\n  - route: [{destination: {host: web, port: {number: 80}}}]\n";

const BACKENDS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: tls-backend, namespace: default}\nspec:\n  clusterIP: 10.96.0.60\n  selector: {app: tls-backend}\n  ports:\n  - {name: tls, port: 443, targetPort: 8443}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec:\n  clusterIP: 10.96.0.61\n  selector: {app: tls-backend}\n  ports:\n  - {name: tcp-echo, port: 9000}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge-routes, namespace: default}\nspec:\n  hosts: [pass.istioinaction.io, echo.default.svc.cluster.local]\n  gateways: [edge-gateway]\n  tls:\n  - match: [{port: 443, sniHosts: [pass.istioinaction.io]}]\n    route: [{destination: {host: tls-backend, port: {number: 443}}}]\n  tcp:\n  - match: [{port: 31400}]\n    route: [{destination: {host: echo, port: {number: 9000}}}]\n";

/// PASSTHROUGH: the gateway routes a TLS connection by its SNI to a TLS server in the mesh without terminating
/// it (the client sees the backend's own certificate, issued by a CA the gateway has no key of); a name no route
/// has gets no connection; a TCP server relays bytes to a VirtualService `tcp` route's service. Both cross to
/// node 1 over HBONE with the gateway's identity. And an HTTPS server whose certificate is files in the gateway's
/// pod (local mode): the gateway reads them itself.
pub fn an_ingress_gateway_passes_tls_through_by_sni_and_relays_tcp_routes() {
    with_nodes("gateway-passthrough", 2, |lab| {
        let ingress = lab.node(0).add_pod("ingress")?;
        let curl = lab.node(0).add_pod("curl")?;
        let backend = lab.node(1).add_pod("tls-backend")?;
        let backend_ca = Ca::new("tls-backend's own CA")?;
        let (crt, key) = backend_ca.leaf("pass.istioinaction.io", "backend")?;
        let files_ca = Ca::new("gateway files CA")?;
        let (files_crt, files_key) = files_ca.leaf("files.istioinaction.io", "files")?;
        let (files_crt, files_key) = (write_pem(lab.dir(), "files.crt", &files_crt)?, write_pem(lab.dir(), "files.key", &files_key)?);
        let files_server = FILES_SERVER.replace("{cert}", &files_crt.display().to_string()).replace("{key}", &files_key.display().to_string());
        let objects = vec![
            mesh_config::pod_object(&ingress, "ingress", &[("istio", "ingressgateway")]),
            mesh_config::pod_object(&backend, "tls-backend", &[("app", "tls-backend")]),
            PASSTHROUGH_GATEWAY.to_owned(),
            BACKENDS.to_owned(),
            files_server,
        ];
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        let control = lab.start_control_with(0, &config_dir, &[], &[GATEWAY_POD])?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[1].enroll(&backend)?;
        // The TLS server: openssl's, with the backend's certificate; the gateway never holds its key.
        let (crt_path, key_path) = (write_pem(lab.dir(), "backend.crt", &crt)?, write_pem(lab.dir(), "backend.key", &key)?);
        let (crt_arg, key_arg) = (crt_path.display().to_string(), key_path.display().to_string());
        let mut tls_server = backend.spawn(&["openssl", "s_server", "-accept", "8443", "-cert", &crt_arg, "-key", &key_arg, "-www"])?;
        tls_server.wait_for_line(Duration::from_secs(10), |l| l.contains("ACCEPT"))?;
        let _echo = backend.serve(9000, ServeMode::Echo, &[])?;
        let _web = backend.http_serve(8080, "web", &[])?;
        let gateway = start_gateway_on(lab, &control, &ingress, 31400)?;
        let ca_path = write_pem(lab.dir(), "backend-ca.crt", &backend_ca.pem)?;
        let run = || -> Result<()> {
            let resolve = format!("pass.istioinaction.io:443:{}", ingress.ip);
            let ca = ca_path.display().to_string();
            let out = curl.run(&[
                "curl",
                "-sS",
                "-v",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                "-w",
                "%{http_code}",
                "https://pass.istioinaction.io/",
            ])?;
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if stdout.trim() != "200" || !stderr.contains("issuer: CN=tls-backend's own CA") || !stderr.contains("O=backend") {
                bail!("passthrough: want 200 from openssl's server with its own certificate, got {stdout:?}:\n{stderr}");
            }
            // A name no tls route has: the gateway closes without a handshake.
            let resolve = format!("other.istioinaction.io:443:{}", ingress.ip);
            let out = curl.run(&[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "-k",
                "-w",
                "%{http_code}",
                "https://other.istioinaction.io/",
            ])?;
            if String::from_utf8_lossy(&out.stdout).trim() != "000" {
                bail!("an SNI no route has must get no connection: {}", String::from_utf8_lossy(&out.stdout));
            }
            // The TCP route: bytes echoed through the gateway.
            let v = curl.send(SocketAddr::new(ingress.ip.into(), 31400), 64 * 1024, ServeMode::Echo, Duration::from_secs(10))?;
            if v["ok"] != true || v["received"] != 64 * 1024 {
                bail!("TCP route: want 64 KiB echoed through the gateway, got {v}");
            }
            // The HTTPS server with certificate files: curl verifies the files' certificate, and gets the service.
            let resolve = format!("files.istioinaction.io:9443:{}", ingress.ip);
            let files_ca_path = write_pem(lab.dir(), "files-ca.crt", &files_ca.pem)?.display().to_string();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let out = curl.run(&[
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-D",
                    "-",
                    "--max-time",
                    "10",
                    "--resolve",
                    &resolve,
                    "--cacert",
                    &files_ca_path,
                    "https://files.istioinaction.io:9443/",
                ])?;
                let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
                if headers.starts_with("http/2 200") && headers.contains("x-served-by: web") {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("HTTPS with the gateway's certificate files: want 200 from web, got {headers:?} {}", String::from_utf8_lossy(&out.stderr));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            // Both reached node 1 over mTLS with the gateway's identity.
            let (_, metrics) = keels[1].admin_get("/metrics")?;
            let from_gateway = grep(&metrics, "source_principal=\"spiffe://cluster.local/ns/default/sa/ingress\"");
            if !from_gateway.contains("destination_workload=\"tls-backend\"") || !from_gateway.contains("mutual_tls") {
                bail!("node 1's keel saw no mTLS connection from the gateway's identity:\n{from_gateway}");
            }
            Ok(())
        };
        let result = run();
        let _ = tls_server.try_wait();
        result.map_err(|e| anyhow::anyhow!("{e:#}\n---- keel gateway log:\n{}", tail(&gateway.log(), 30)))
    });
}
