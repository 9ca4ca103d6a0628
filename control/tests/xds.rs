//! The delta ADS server over real gRPC on loopback: wildcard subscriptions, incremental pushes and removals,
//! `initial_resource_versions` on reconnect, and bearer-token authentication.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use keel_control::{client_auth::ClientAuth, tokens::Tokens, xds::server::AdsServer};
use keel_mesh::{
    objects::Object,
    snapshot::Snapshot,
    source::{load_text, Loaded},
    translate::{translate, Mesh},
};
use keel_proto::{
    discovery::{aggregated_discovery_service_server::AggregatedDiscoveryServiceServer, DeltaDiscoveryResponse},
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

mod common;
use common::{connect, names};

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    let mut loaded = Loaded::default();
    load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let objects: Vec<Object> = loaded.objects.into_iter().map(|(_, o)| o).collect();
    Arc::new(Snapshot::from_resources(&translate(&Mesh::default(), &objects).unwrap()))
}

const V1: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: echo}}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: other}}
status: {podIP: 10.244.0.12}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
"#;

/// V1 with pod b gone, the service's VIP changed and a policy added; pod a is unchanged (a change of the
/// service's ports would change pod a too: its Workload lists the ports of the services it backs).
const V2: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: echo}}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIP: 10.96.0.20, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b, namespace: demo}
spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.244.0.12]}}]}]}
"#;

async fn start(initial: Arc<Snapshot>) -> (String, watch::Sender<Arc<Snapshot>>) {
    let (publish, snapshots) = watch::channel(initial);
    let tokens = Arc::new(ClientAuth::TokensFile(Tokens::parse("good-token node-a\n").unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(AdsServer::new(snapshots, tokens, Default::default())))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, publish)
}

#[tokio::test]
async fn initial_sync_then_only_changes_are_pushed() {
    let (addr, publish) = start(snapshot(V1)).await;
    let mut client = connect(&addr, "good-token").await.unwrap();
    client.subscribe(ADDRESS_TYPE_URL, BTreeMap::new()).await;
    client.subscribe(AUTHORIZATION_TYPE_URL, BTreeMap::new()).await;
    let addresses = client.next().await;
    assert_eq!(addresses.type_url, ADDRESS_TYPE_URL);
    assert_eq!(names(&addresses), ["Kubernetes//Pod/demo/a", "Kubernetes//Pod/demo/b", "demo/echo.demo.svc.cluster.local"]);
    let policies = client.next().await;
    assert_eq!(policies.type_url, AUTHORIZATION_TYPE_URL);
    assert!(policies.resources.is_empty(), "an empty first response still comes: clients wait for one per type");

    publish.send(snapshot(V2)).unwrap();
    let mut pushed: HashMap<String, DeltaDiscoveryResponse> = HashMap::new();
    for _ in 0..2 {
        let r = client.next().await;
        pushed.insert(r.type_url.clone(), r);
    }
    let addresses = &pushed[ADDRESS_TYPE_URL];
    assert_eq!(names(addresses), ["demo/echo.demo.svc.cluster.local"], "pod a did not change and is not resent");
    assert_eq!(addresses.removed_resources, ["Kubernetes//Pod/demo/b"]);
    assert_eq!(names(&pushed[AUTHORIZATION_TYPE_URL]), ["demo/deny-b"]);
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_it_lacks() {
    let (addr, publish) = start(snapshot(V1)).await;
    let mut first = connect(&addr, "good-token").await.unwrap();
    first.subscribe(ADDRESS_TYPE_URL, BTreeMap::new()).await;
    let held: BTreeMap<String, String> = first.next().await.resources.into_iter().map(|r| (r.name, r.version)).collect();
    drop(first);
    publish.send(snapshot(V2)).unwrap();
    let mut again = connect(&addr, "good-token").await.unwrap();
    again.subscribe(ADDRESS_TYPE_URL, held).await;
    let r = again.next().await;
    assert_eq!(names(&r), ["demo/echo.demo.svc.cluster.local"]);
    assert_eq!(r.removed_resources, ["Kubernetes//Pod/demo/b"]);
}

#[tokio::test]
async fn an_unknown_token_gets_an_error_and_no_data() {
    let (addr, _publish) = start(snapshot(V1)).await;
    let status = match connect(&addr, "wrong").await {
        Err(status) => status,
        Ok(mut client) => {
            client.subscribe(ADDRESS_TYPE_URL, BTreeMap::new()).await;
            client.responses.message().await.expect_err("no data for an unauthenticated client")
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
