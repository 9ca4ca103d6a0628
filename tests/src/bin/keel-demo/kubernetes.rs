//! `cargo xtask demo --kubernetes`: the same two nodes, driven by nothing but Kubernetes API objects. keel-control
//! and both keels run in `--kubernetes` mode against the API stand-in (tests/src/kube_api); the namespace is
//! labelled ambient (with the real kubectl when `cargo xtask setup` installed it), its pods are captured on both
//! nodes and annotated, their traffic crosses as HBONE with verified identities, and an object keel refuses is
//! reported while its last good version stays in force.

use anyhow::{Context, Result};
use keel_tests::lab::{Lab, ServeMode};
use keel_tests::scenarios::kubernetes_mesh::{KubernetesMesh, VIP_ADDR};
use keel_tests::scenarios::node_agent::{enrolled_uids, expect_enrolled};
use keel_tests::scenarios::{send_ok, KIB};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{indent, step};

/// kubectl as `cargo xtask setup` installs it (target/tools/bin), if it is there.
fn kubectl() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/kubectl");
    path.is_file().then_some(path)
}

pub fn demo(lab: &Lab) -> Result<()> {
    step("starting the Kubernetes API stand-in with namespace demo (not in the mesh yet), four pods, Service echo and keel's tokens");
    step("starting keel-control --kubernetes on node 0 and keel --kubernetes on each node (TokenReview-authenticated)");
    let mesh = KubernetesMesh::start(lab)?;
    for (k, keel) in mesh.keels.iter().enumerate() {
        println!("    node {k}: {} pods captured", enrolled_uids(keel)?.len());
    }

    step("kubectl label namespace demo istio.io/dataplane-mode=ambient");
    let labelled = Instant::now();
    match kubectl() {
        Some(kubectl) => {
            let out = Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(mesh.api.kubeconfig())
                .args(["label", "namespace", "demo", "istio.io/dataplane-mode=ambient"])
                .output()?;
            print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
            anyhow::ensure!(out.status.success(), "kubectl label: {}", String::from_utf8_lossy(&out.stderr));
        }
        None => {
            println!("    (kubectl not installed: labelling through the API directly)");
            mesh.api.apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
            )?;
        }
    }
    expect_enrolled(&mesh.keels[0], &[&mesh.client], "node 0")?;
    expect_enrolled(&mesh.keels[1], &[&mesh.server, &mesh.replica], "node 1")?;
    println!("    captured on both nodes {} ms after the label (the opted-out pod stays out)", labelled.elapsed().as_millis());
    for (k, keel) in mesh.keels.iter().enumerate() {
        for pod in keel.pods()?.as_array().context("keel pods")? {
            let text = |field: &str| pod[field].as_str().unwrap_or("-").to_owned();
            println!(
                "    node {k} captured {}/{} uid {} (cgroup and netns found from the uid), identity {}",
                text("namespace"),
                text("name"),
                text("uid"),
                text("identity")
            );
        }
    }
    // keel marks a pod once it is captured, as istio-cni does: a moment after.
    std::thread::sleep(Duration::from_millis(500));
    for pod in [&mesh.client, &mesh.outsider, &mesh.server, &mesh.replica] {
        let object = mesh.api.get("v1", "Pod", Some("demo"), &pod.pod.name)?.context("pod")?;
        let mark = object["metadata"]["annotations"]["ambient.istio.io/redirection"].as_str().unwrap_or("-");
        println!("    {:<10} ambient.istio.io/redirection={mark}", pod.pod.name);
    }

    step("client (node 0) -> server (node 1): HBONE inside mTLS, both identities from keel-control's CA");
    let start = Instant::now();
    let sent = loop {
        match send_ok(&mesh.client.pod, mesh.server.pod.addr(8080), 64 * KIB, ServeMode::Echo) {
            Ok(sent) => break sent,
            // Workloads and certificates follow the label too: a moment.
            Err(_) if start.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e),
        }
    };
    let record = mesh.keels[0].wait_connection(Duration::from_secs(5), |c| c.direction == "outbound" && c.source_port() == sent.local_port())?;
    println!(
        "    {} -> {}: path={} mtls={} {} -> {}",
        record.source,
        record.original_destination,
        record.path.as_deref().unwrap_or("-"),
        record.mutual_tls,
        record.source_peer.identity.as_deref().unwrap_or("-"),
        record.destination_peer.identity.as_deref().unwrap_or("-")
    );
    step(&format!("client -> Service echo {VIP_ADDR} (from the API's Service object), 10 connections"));
    for _ in 0..10 {
        send_ok(&mesh.client.pod, VIP_ADDR.parse()?, KIB, ServeMode::Echo)?;
    }
    println!("    10 of 10 answered");

    step("an AuthorizationPolicy keel cannot accept (action MAYBE): refused by name and field, nothing else changes");
    mesh.api
        .apply(&json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "typo", "namespace": "demo"},
                           "spec": {"action": "MAYBE", "rules": [{}]}}))?;
    std::thread::sleep(Duration::from_secs(1));
    for line in mesh.control.log().lines().filter(|l| l.contains("object refused")) {
        println!("    keel-control: {}", line.trim());
    }
    send_ok(&mesh.client.pod, mesh.server.pod.addr(8080), KIB, ServeMode::Echo).context("traffic after the refused object")?;
    println!("    traffic unaffected; the leader also wrote a Warning Event (reason Rejected) on demo/typo");
    Ok(())
}
