//! keel driven by configuration: a Service VIP load-balanced over the pods it selects, a config change taking
//! effect within a second, bad config keeping the last good state, and (with a separate control plane) traffic
//! still flowing after the control plane is killed. The same scenario runs with keel-control over delta ADS and
//! with keel's local mode reading the directory in-process.

use super::*;
use crate::lab::{mesh_config, Backend, ControlPlane, Keel, Pod, ServeMode};
use std::collections::BTreeSet;
use std::time::Instant;

const VIP: &str = "10.96.0.10";
const SERVICE_HOST: &str = "echo.default.svc.cluster.local";
const CLIENT_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/sleep";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `keel run --config-dir`: no control plane.
    LocalDir,
    /// keel-control serving the directory; keel follows it over delta ADS.
    ControlPlane,
}

struct Topology {
    client: Pod,
    v1: Pod,
    v2: Pod,
}

fn pods(t: &Topology) -> Vec<String> {
    vec![
        mesh_config::pod_object(&t.client, "sleep", &[("app", "sleep")]),
        mesh_config::pod_object(&t.v1, "echo", &[("app", "echo"), ("version", "v1")]),
        mesh_config::pod_object(&t.v2, "echo", &[("app", "echo"), ("version", "v2")]),
    ]
}

/// One connection to the VIP (echo, checksummed) and keel's record of it.
fn vip_connection(keel: &Keel, client: &Pod) -> Result<Connection> {
    let dst: SocketAddr = format!("{VIP}:80").parse()?;
    let sent = send_ok(client, dst, KIB, ServeMode::Echo)?;
    expect_captured(
        keel,
        &Expect {
            direction: "outbound",
            pod: client,
            original_destination: dst,
            source_port: sent.local_port(),
            bytes_sent: KIB,
            bytes_received: Some(KIB),
        },
    )
}

pub fn vip_traffic_follows_config(source: Source) {
    with_lab_alone("config", |lab| {
        let t = Topology { client: lab.add_pod("client")?, v1: lab.add_pod("echo-v1")?, v2: lab.add_pod("echo-v2")? };
        let config_dir = lab.dir().join("mesh");
        let mut objects = pods(&t);
        objects.push(mesh_config::service_object("echo", VIP, &[("app", "echo")], 80, 8080));
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;

        let mut control: Option<ControlPlane> = None;
        let args: Vec<String> = match source {
            Source::LocalDir => vec!["--config-dir".into(), config_dir.display().to_string()],
            Source::ControlPlane => {
                let c = lab.start_control(&config_dir)?;
                let args = c.keel_args();
                control = Some(c);
                args
            }
        };
        let keel_args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut keel = lab.start_keel(Backend::Ebpf, &keel_args)?;
        wait_ready(&keel)?;
        // Every pod the config puts in the mesh is enrolled, as the CNI would do on a real node.
        for pod in [&t.client, &t.v1, &t.v2] {
            keel.enroll(pod)?;
        }
        let _servers = [t.v1.serve(8080, ServeMode::Echo, &[])?, t.v2.serve(8080, ServeMode::Echo, &[])?, t.v2.serve(9090, ServeMode::Echo, &[])?];

        // Enrollment is tied to the pod's Workload: identity from the config, not from the enroll request.
        let pods = keel.pods()?;
        let entry = pods.as_array().context("pods is a list")?.iter().find(|p| p["name"] == "client").context("client is listed")?;
        if entry["workload"] != "Kubernetes//Pod/default/client" || entry["identity"] != CLIENT_IDENTITY {
            bail!("the enrolled pod is not tied to its Workload: {entry}");
        }

        // The VIP is load-balanced over both endpoints, on the service's target port.
        let endpoints = [t.v1.addr(8080).to_string(), t.v2.addr(8080).to_string()];
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let c = vip_connection(&keel, &t.client)?;
            let upstream = c.upstream.clone().unwrap_or_default();
            if !endpoints.contains(&upstream) {
                bail!("a VIP connection went to {upstream}, not to an endpoint of the service: {c:?}");
            }
            if c.destination_service.as_deref() != Some(SERVICE_HOST)
                || c.source_peer.identity.as_deref() != Some(CLIENT_IDENTITY)
                || !c.destination_peer.workload.as_deref().is_some_and(|w| w.starts_with("default/echo-v"))
            {
                bail!("the record does not name the service and both workloads: {c:?}");
            }
            if c.path.as_deref() != Some("same-node") {
                bail!("two enrolled pods of one node must talk over the same-node path: {c:?}");
            }
            seen.insert(upstream);
        }
        // The destination side learned the client's identity from keel itself (no TLS inside the node).
        let inbound = keel.wait_connection(RECORD_TIMEOUT, |c| c.direction == "inbound" && c.source.starts_with(&format!("{}:", t.client.ip)))?;
        if inbound.source_peer.identity.as_deref() != Some(CLIENT_IDENTITY) || inbound.policy.is_none() {
            bail!("the inbound side did not see the client's identity or decide policy: {inbound:?}");
        }
        if seen.len() != 2 {
            bail!("24 VIP connections all went to {seen:?}: not load-balanced");
        }
        let tables = keel.cli(&["pc", "services"])? + &keel.cli(&["pc", "workloads"])?;
        if !tables.contains(&format!("default/{SERVICE_HOST}  {VIP}  80→8080  2/2")) || !tables.contains("sleep  HBONE") {
            bail!("keel pc tables do not show the service and workloads:\n{tables}");
        }

        // One atomic edit: the service selects v2 only, on target port 9090. Every connection after the first one
        // to land there must land there too, and the switch must come within a second of the write.
        objects.pop();
        objects.push(mesh_config::service_object("echo", VIP, &[("version", "v2")], 80, 9090));
        let written = Instant::now();
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        let target = t.v2.addr(9090).to_string();
        let switched = loop {
            let c = vip_connection(&keel, &t.client)?;
            if c.upstream.as_deref() == Some(target.as_str()) {
                break written.elapsed();
            }
            if written.elapsed() > Duration::from_secs(5) {
                bail!("5 s after the edit, VIP connections still go to {:?}", c.upstream);
            }
        };
        if switched > Duration::from_secs(1) {
            bail!("the config change took {switched:?} to reach the data path (bound: 1 s)");
        }
        for _ in 0..5 {
            let c = vip_connection(&keel, &t.client)?;
            if c.upstream.as_deref() != Some(target.as_str()) {
                bail!("after the switch a connection went to {:?}", c.upstream);
            }
        }
        eprintln!("config change reached the data path {switched:?} after the write");

        // A broken edit is refused naming the field; the last good service stays in force.
        let broken =
            "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: eighty}]}\n";
        objects.pop();
        objects.push(broken.into());
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        std::thread::sleep(Duration::from_millis(800));
        let c = vip_connection(&keel, &t.client)?;
        if c.upstream.as_deref() != Some(target.as_str()) {
            bail!("a broken edit changed routing: {c:?}");
        }
        let log = match &control {
            Some(c) => c.log(),
            None => keel.log(),
        };
        if !log.contains("spec.ports[0].port") {
            bail!("the refusal does not name the field spec.ports[0].port");
        }

        if let Some(control) = control.as_mut() {
            // The control plane dies: keel keeps serving its last good state.
            control.kill();
            std::thread::sleep(Duration::from_millis(500));
            for _ in 0..5 {
                let c = vip_connection(&keel, &t.client)?;
                if c.upstream.as_deref() != Some(target.as_str()) {
                    bail!("without the control plane a connection went to {:?}", c.upstream);
                }
            }
            let status = keel.cli(&["pc", "status"])?;
            if !status.lines().any(|l| l.starts_with("connected") && l.ends_with("false")) {
                bail!("keel pc status does not show the lost control plane:\n{status}");
            }
            // keel crashes and restarts while the control plane is still down: it serves the last good state it
            // saved in its state dir (without it, every pod would be unknown and refused).
            keel.kill9();
            let keel = lab.start_keel(Backend::Ebpf, &keel_args).context("restarting keel without a control plane")?;
            for _ in 0..5 {
                let c = vip_connection(&keel, &t.client)?;
                if c.upstream.as_deref() != Some(target.as_str()) || c.source_peer.identity.as_deref() != Some(CLIENT_IDENTITY) {
                    bail!("a keel restarted without its control plane did not serve the saved state: {c:?}");
                }
            }
            if !keel.log().contains("serving the last good xDS state") {
                bail!("the restarted keel did not say it serves its saved state:\n{}", keel.log_tail(20));
            }
        }
        Ok(())
    })
}
