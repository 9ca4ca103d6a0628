//! keel's xDS client against keel-control over real TLS gRPC on loopback: initial sync and readiness, a change of
//! the config directory reaching keel's state within a second, and the last good state kept while the control
//! plane is gone.
use std::{net::IpAddr, sync::Arc, time::Duration};

use keel::xds::{
    client::{XdsClient, XdsConfig},
    state::WorkloadStore,
};
use keel_control::serve::{serve, ConfigSource, ServeOptions};

const CONFIG: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccountName: sleep, nodeName: node-a}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
"#;

const NEW_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: echo-1, namespace: demo, labels: {app: echo}}\nspec: {nodeName: node-a}\nstatus: {podIP: 10.244.0.12}\n";

async fn eventually(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_follows_the_control_plane_and_keeps_its_state_without_it() {
    let dir = std::env::temp_dir().join(format!("keel-xds-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("topology.yaml"), CONFIG).unwrap();
    std::fs::write(dir.join("tokens"), "node-a-token node-a\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let control = tokio::spawn(serve(ServeOptions {
        source: ConfigSource::Directory { config_dir: config.clone(), tokens: dir.join("tokens") },
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        mesh: Default::default(),
        ca_dir: dir.join("ca"),
        trust_domain: "cluster.local".into(),
        server_names: vec!["keel-control".into()],
        readiness_addr: None,
        jwks_refresh: keel_control::jwks::DEFAULT_REFRESH,
    }));
    let root_path = dir.join("ca/root-cert.pem");
    eventually("the CA root on disk", Duration::from_secs(5), || std::fs::metadata(&root_path).is_ok_and(|m| m.len() > 0)).await;

    let store = Arc::new(WorkloadStore::default());
    let (client, mut ready, status) = XdsClient::new(
        XdsConfig {
            address: format!("https://127.0.0.1:{port}"),
            root_pem: std::fs::read_to_string(&root_path).unwrap(),
            server_name: "keel-control".into(),
            token: "node-a-token".into(),
            cluster_id: "Kubernetes".into(),
            node: Default::default(),
            insecure: false,
        },
        store.clone(),
    );
    tokio::spawn(client.run());
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await.expect("ready after one response of each type").unwrap();
    let snap = store.snapshot();
    assert!(snap.workloads_by_ip.contains_key(&"10.244.0.11".parse::<IpAddr>().unwrap()));
    assert!(snap.services_by_vip.contains_key(&"10.96.0.10".parse::<IpAddr>().unwrap()));

    std::fs::write(config.join("echo.yaml"), NEW_POD).unwrap();
    let new_ip: IpAddr = "10.244.0.12".parse().unwrap();
    eventually("the new pod in keel's state", Duration::from_secs(1), || store.snapshot().workloads_by_ip.contains_key(&new_ip)).await;
    let echo = store.snapshot().workloads_by_ip[&new_ip].clone();
    assert!(echo.services.contains_key("demo/echo.demo.svc.cluster.local"), "the pod backs the echo service");

    control.abort();
    let _ = control.await;
    eventually("the client noticing the control plane is gone", Duration::from_secs(5), || !status.borrow().connected).await;
    assert!(store.snapshot().workloads_by_ip.contains_key(&new_ip), "the last good state keeps serving");
    let _ = std::fs::remove_dir_all(&dir);
}
