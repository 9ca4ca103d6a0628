//! Egress control (issue 14): keel with `--outbound-traffic-policy registry-only` refuses an enrolled pod's
//! connections to addresses the mesh does not know, and counts them; a ServiceEntry host with `resolution: DNS`
//! is resolved by keel (here with a lab DNS responder) and followed when its address changes: connections to the
//! entry's VIP go where the name points now, and the addresses it resolves to are reachable directly.
//!
//! The "external" servers are lab pods that appear in no config: to the mesh they are the Internet.
use std::path::Path;

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
