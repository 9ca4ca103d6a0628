//! Egress control (issue 14): keel with `--outbound-traffic-policy registry-only` refuses an enrolled pod's
//! connections to addresses the mesh does not know, and counts them; a ServiceEntry host with `resolution: DNS`
//! is resolved by keel (here with a lab DNS responder) and followed when its address changes: connections to the
//! entry's VIP go where the name points now, and the addresses it resolves to are reachable directly.
//!
//! TLS origination: a pod speaks plain HTTP to a ServiceEntry's port 80, and keel carries it inside TLS it
//! originates to the entry's HTTPS endpoint (Istio's egress TLS origination), verifying the server's certificate
//! against the DestinationRule's CA file; with the wrong CA, nothing goes through.
//!
//! The "external" servers are lab pods that appear in no config: to the mesh they are the Internet.
use std::path::Path;

use super::gateway_tls::{write_pem, Ca};
use super::traffic_management::{grep, metric_value};
use super::*;
use crate::lab::{mesh_config, Pod};

const HOST: &str = "api.external.test";
const VIP: &str = "240.240.0.1";

fn service_entry() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: external-api, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{VIP}]\n  ports: [{{number: 8080, name: tcp-api, protocol: TCP}}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n"
    )
}

fn point(answers: &Path, to: &Pod) -> Result<()> {
    // A 1 s TTL: keel re-resolves after its 5 s floor.
    std::fs::write(answers, format!("{HOST} {} 1\n", to.ip)).with_context(|| format!("writing {}", answers.display()))
}

pub fn registry_only_refuses_unknown_addresses_and_service_entry_dns_is_followed() {
    with_nodes("egress", 1, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let dns = lab.node(0).add_pod("dns")?;
        let (ext1, ext2) = (lab.node(0).add_pod("ext1")?, lab.node(0).add_pod("ext2")?);
        let answers = lab.dir().join("dns-answers");
        point(&answers, &ext1)?;
        let _dns = dns.dns_serve(53, &answers)?;
        let _servers = [ext1.http_serve(8080, "ext1", &[])?, ext2.http_serve(8080, "ext2", &[])?];
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(&config_dir, "mesh.yaml", &[mesh_config::pod_object(&client, "client", &[("app", "client")]), service_entry()])?;
        let control = lab.start_control_with(0, &config_dir, &[], &[])?;
        let dns_server = format!("{}:53", dns.ip);
        let keels = lab.start_keels_following(&control, &["--outbound-traffic-policy", "registry-only", "--dns-server", &dns_server])?;
        wait_ready(&keels[0])?;
        keels[0].enroll(&client)?;
        let load = |connect: &str| client.http_load(&["--url", &format!("http://{HOST}:8080/"), "--connect", connect, "--requests", "5"]);
        let served_by = |v: &Value, name: &str| v.pointer(&format!("/served_by/{name}")).and_then(Value::as_u64).unwrap_or(0);
        let vip = format!("{VIP}:8080");
        // 1. The entry's VIP reaches what its host resolves to; that address is reachable directly too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = load(&vip)?;
            if served_by(&v, "ext1") == 5 {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("the ServiceEntry's VIP did not reach ext1 (its DNS answer) within 10 s: {v}\n{}", keels[0].log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let v = load(&ext1.addr(8080).to_string())?;
        if served_by(&v, "ext1") != 5 {
            bail!("an address a ServiceEntry host resolves to must be reachable: {v}");
        }
        // 2. An address nothing in the registry has: refused, and counted for that reason.
        let v = load(&ext2.addr(8080).to_string())?;
        if served_by(&v, "ext2") != 0 {
            bail!("REGISTRY_ONLY let a connection through to an unknown address: {v}");
        }
        let (_, metrics) = keels[0].admin_get("/metrics")?;
        if metric_value(&metrics, "keel_connections_refused_total", &[("reason", "registry_only")]) < 5.0 {
            bail!("want 5 connections refused for registry_only:\n{}", grep(&metrics, "keel_connections_refused_total"));
        }
        // 3. The name moves to ext2: keel follows it (the VIP now reaches ext2, which is now reachable directly).
        point(&answers, &ext2)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = load(&vip)?;
            if served_by(&v, "ext2") == 5 {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("keel did not follow the DNS change within 20 s: {v}\n{}", keels[0].log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let v = load(&ext2.addr(8080).to_string())?;
        if served_by(&v, "ext2") != 5 {
            bail!("the host's new address must be reachable directly: {v}");
        }
        Ok(())
    });
}

const SECURE_HOST: &str = "secure.external.test";
const SECURE_VIP: &str = "240.240.0.2";

/// Istio's egress TLS origination config: port 80 of the entry goes to the endpoint's 8443 with TLS keel originates.
fn tls_origination_config(endpoint: &Pod, ca_file: &Path) -> [String; 2] {
    [
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure-api, namespace: default}}\nspec:\n  hosts: [{SECURE_HOST}]\n  addresses: [{SECURE_VIP}]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  endpoints: [{{address: {}}}]\n",
            endpoint.ip
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure-api, namespace: default}}\nspec:\n  host: {SECURE_HOST}\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 80}}\n      tls: {{mode: SIMPLE, caCertificates: {}}}\n",
            ca_file.display()
        ),
    ]
}

pub fn tls_origination_reaches_an_https_server_outside_the_mesh() {
    with_nodes("egress-tls", 1, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let external = lab.node(0).add_pod("external")?;
        let (ca, other_ca) = (Ca::new("external API CA")?, Ca::new("some other CA")?);
        let (crt, key) = ca.leaf(SECURE_HOST, "external")?;
        let (crt_path, key_path) = (write_pem(lab.dir(), "external.crt", &crt)?, write_pem(lab.dir(), "external.key", &key)?);
        let (crt_arg, key_arg) = (crt_path.display().to_string(), key_path.display().to_string());
        // openssl's server answers an HTTP GET with a page describing the TLS session it was asked over.
        let mut tls_server = external.spawn(&["openssl", "s_server", "-accept", "8443", "-cert", &crt_arg, "-key", &key_arg, "-www"])?;
        tls_server.wait_for_line(Duration::from_secs(10), |l| l.contains("ACCEPT"))?;
        let (ca_file, other_ca_file) = (write_pem(lab.dir(), "ca.pem", &ca.pem)?, write_pem(lab.dir(), "other-ca.pem", &other_ca.pem)?);
        let config_dir = lab.dir().join("mesh");
        let objects = |ca_file: &Path| -> Vec<String> {
            let mut objects = vec![mesh_config::pod_object(&client, "client", &[("app", "client")])];
            objects.extend(tls_origination_config(&external, ca_file));
            objects
        };
        mesh_config::write(&config_dir, "mesh.yaml", &objects(&ca_file))?;
        let control = lab.start_control_with(0, &config_dir, &[], &[])?;
        let keels = lab.start_keels_following(&control, &[])?;
        wait_ready(&keels[0])?;
        keels[0].enroll(&client)?;
        let connect_to = format!("{SECURE_HOST}:80:{SECURE_VIP}:80");
        let get = || -> Result<(String, String)> {
            let out = client.run(&["curl", "-sS", "--max-time", "10", "--connect-to", &connect_to, &format!("http://{SECURE_HOST}/")])?;
            Ok((String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
        };
        // 1. Plain HTTP from the pod arrives at the HTTPS server inside TLS keel verified.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (page, errors) = get()?;
            if page.contains("Ciphers common between both SSL end points") {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "plain HTTP to the entry did not reach the HTTPS server through keel's TLS within 10 s: {page:?} {errors}\n{}",
                    keels[0].log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let clusters = keels[0].cli(&["pc", "clusters"])?;
        if !clusters.contains(&format!("sni={SECURE_HOST} verify={}", ca_file.display())) {
            bail!("keel pc clusters does not show the TLS origination:\n{clusters}");
        }
        // 2. The rule now trusts another CA: keel refuses the server's certificate and nothing goes through.
        mesh_config::write(&config_dir, "mesh.yaml", &objects(&other_ca_file))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (page, _) = get()?;
            if page.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("keel kept originating TLS to a server the rule's CA did not sign: {page:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        // The connection's record says why (access-log lines are written in batches).
        let reason = format!("TLS origination to {}:8443: TLS handshake: invalid peer certificate: UnknownIssuer", external.ip);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !keels[0].log_tail(200).contains(&reason) {
            if std::time::Instant::now() > deadline {
                bail!("keel's log does not say why the connection failed ({reason}):\n{}", keels[0].log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = tls_server.try_wait();
        Ok(())
    });
}
