//! `keel-control serve` end to end on loopback: a file written into the config directory reaches a connected
//! client within a second; a broken edit keeps the object's last good version in force.
use std::{collections::BTreeMap, time::Duration};

use keel_control::serve::{serve, ConfigSource, ServeOptions};
use keel_proto::ADDRESS_TYPE_URL;

mod common;
use common::{connect_tls, names};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: demo}\nstatus: {podIP: 10.244.0.11}\n";
const BROKEN_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: demo}\nstatus: {podIP: not-an-ip}\n";

#[tokio::test]
async fn directory_changes_are_pushed_within_a_second_and_bad_edits_keep_the_last_good_version() {
    let dir = std::env::temp_dir().join(format!("keel-control-serve-{}", std::process::id()));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(dir.join("tokens"), "t node-a\n").unwrap();
    std::fs::write(config.join("service.yaml"), SERVICE).unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let options = ServeOptions {
        source: ConfigSource::Directory { config_dir: config.clone(), tokens: dir.join("tokens") },
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        mesh: Default::default(),
        ca_dir: dir.join("ca"),
        trust_domain: "cluster.local".into(),
        server_names: vec!["keel-control".into()],
        readiness_addr: None,
        jwks_refresh: keel_control::jwks::DEFAULT_REFRESH,
    };
    tokio::spawn(serve(options));
    let addr = format!("https://127.0.0.1:{port}");
    let root = loop {
        // The CA's root appears on disk at startup; clients trust it for the server's TLS certificate.
        match std::fs::read_to_string(dir.join("ca/root-cert.pem")) {
            Ok(root) if !root.is_empty() => break root,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = loop {
        match tokio::time::timeout(Duration::from_secs(5), connect_tls(&addr, "t", &root, "keel-control")).await {
            Ok(Ok(client)) => break client,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // A client that does not trust the mesh root gets no connection at all.
    let untrusted = connect_tls(&addr, "t", &untrusted_root(), "keel-control").await;
    assert!(untrusted.is_err(), "TLS must fail against an unknown root");
    // Nor does a plaintext (h2c) client: keel-control has no plaintext mode.
    let plaintext = tokio::time::timeout(Duration::from_secs(5), common::connect(&format!("http://127.0.0.1:{port}"), "t")).await;
    assert!(!matches!(plaintext, Ok(Ok(_))), "plaintext must get no stream");
    client.subscribe(ADDRESS_TYPE_URL, BTreeMap::new()).await;
    assert_eq!(names(&client.next().await), ["demo/echo.demo.svc.cluster.local"]);

    std::fs::write(config.join("pod.yaml"), POD).unwrap();
    assert_eq!(names(&client.next().await), ["Kubernetes//Pod/demo/a"], "the new pod arrives within 1 s");

    std::fs::write(config.join("pod.yaml"), BROKEN_POD).unwrap();
    std::fs::remove_file(config.join("service.yaml")).unwrap();
    let push = client.next().await;
    assert_eq!(push.removed_resources, ["demo/echo.demo.svc.cluster.local"], "the deleted service is removed");
    assert!(push.resources.is_empty(), "the broken pod keeps its last good version: nothing is sent for it");
    let _ = std::fs::remove_dir_all(&dir);
}

fn untrusted_root() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
