//! `keel-control serve --kubernetes` end to end: the real binary fed by the Kubernetes API stand-in (the protocol a
//! kube-apiserver speaks, driven through kube-rs; see tests/src/kube_api), with node proxies connecting over TLS.
//! Only ambient pods become workloads; every change to the cluster is pushed; a refused object keeps its last good
//! version; watches relist after a compaction; callers are authenticated by TokenReview, by istiod's rules; and
//! nothing is served before the cluster has been read.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keel_proto::{
    ca::{istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest},
    discovery::DeltaDiscoveryResponse,
    workload::{address, Address, TunnelProtocol},
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use keel_tests::kube_api::{KubeApi, ServiceAccountToken};
use prost::Message as _;
use prost_types::{value::Kind, Struct, Value as ProtoValue};
use serde_json::{json, Value};

mod common;
use common::{connect_tls, names, Client};

const NODE_TOKEN: &str = "keel-node-a-token";
/// A node proxy token from an API server older than 1.32: bound to the pod, without the node's name.
const NODE_TOKEN_WITHOUT_NODE: &str = "keel-node-b-token";
const WORKLOAD_TOKEN: &str = "sleep-token";
const SLEEP: &str = "spiffe://cluster.local/ns/demo/sa/sleep";
const ECHO: &str = "spiffe://cluster.local/ns/demo/sa/echo";

fn pod(namespace: &str, name: &str, node: &str, account: &str, ip: &str, labels: Value, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": labels},
           "spec": {"nodeName": node, "serviceAccountName": account, "containers": [{"name": "app", "image": "app:1"}]},
           "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn policy(action: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "allow-sleep", "namespace": "demo"},
           "spec": {"selector": {"matchLabels": {"app": "echo"}}, "action": action,
                    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/sleep"]}}]}]}})
}

/// The cluster before keel-control starts: an ambient namespace with two serving pods, one opted out and one
/// finished; a namespace not (yet) in the mesh; keel's own pods; a Service and an AuthorizationPolicy.
fn populate(api: &mut KubeApi) {
    let ambient = json!({"istio.io/dataplane-mode": "ambient"});
    let objects = [
        namespace("demo", ambient.clone()),
        namespace("plain", json!({})),
        namespace("istio-system", json!({})),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}}),
        pod("demo", "sleep", "node-a", "sleep", "10.244.0.5", json!({"app": "sleep"}), "Running"),
        pod("demo", "echo", "node-b", "echo", "10.244.1.6", json!({"app": "echo"}), "Running"),
        pod("demo", "opted-out", "node-a", "sleep", "10.244.0.7", json!({"istio.io/dataplane-mode": "none"}), "Running"),
        pod("demo", "finished", "node-a", "sleep", "10.244.0.8", json!({}), "Succeeded"),
        pod("plain", "web", "node-a", "web", "10.244.0.9", json!({}), "Running"),
        pod("istio-system", "keel-a", "node-a", "keel", "10.244.0.2", json!({"app": "keel"}), "Running"),
        pod("istio-system", "keel-b", "node-b", "keel", "10.244.1.2", json!({"app": "keel"}), "Running"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        policy("ALLOW"),
        // A Service without a selector: its endpoints are whatever its EndpointSlices list (here the sleep pod).
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy", "namespace": "demo"},
               "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "legacy-x1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "legacy"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.5"], "targetRef": {"kind": "Pod", "name": "sleep", "namespace": "demo"}}],
               "ports": [{"port": 8080}]}),
    ];
    for object in &objects {
        api.apply(object).unwrap_or_else(|e| panic!("applying {object}: {e:#}"));
    }
    api.register_token(ServiceAccountToken::new("control-token", "istio-system", "keel-control")).unwrap();
    let node_token = |token: &str, pod: &str, node: Option<&str>| {
        ServiceAccountToken::new(token, "istio-system", "keel").bound_to_pod(pod, None, node).with_audiences(&["istio-ca"])
    };
    api.register_token(node_token(NODE_TOKEN, "keel-a", Some("node-a"))).unwrap();
    api.register_token(node_token(NODE_TOKEN_WITHOUT_NODE, "keel-b", None)).unwrap();
    let workload =
        ServiceAccountToken::new(WORKLOAD_TOKEN, "demo", "sleep").bound_to_pod("sleep", None, Some("node-a")).with_audiences(&["istio-ca"]);
    api.register_token(workload).unwrap();
}

/// A running `keel-control serve --kubernetes`, killed (by PID) when dropped.
struct Control {
    child: Child,
    log: PathBuf,
    xds: SocketAddr,
    readiness: SocketAddr,
    root: PathBuf,
}

impl Control {
    fn start(dir: &Path, kubeconfig: &Path) -> Control {
        Control::start_replica(dir, kubeconfig, "keel-control-0")
    }

    /// One replica of several: its own ports and log, the CA directory shared (as the `cacerts` Secret is).
    fn start_replica(dir: &Path, kubeconfig: &Path, name: &str) -> Control {
        let xds = free_port();
        let readiness = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel-control"))
            .args(["serve", "--kubernetes", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--pod-name", name, "--pod-namespace", "istio-system"])
            .args(["--listen", &xds.to_string(), "--readiness-addr", &readiness.to_string(), "--ca-dir"])
            .arg(dir.join("ca"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Control { child, log, xds, readiness, root: dir.join("ca/root-cert.pem") }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status code of `GET /ready`, or `None` while nothing listens.
    fn ready(&self) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.readiness, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET /ready HTTP/1.1\r\nHost: keel-control\r\nConnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        while self.ready() != Some(200) {
            assert!(start.elapsed() < within, "keel-control not ready within {within:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn subscribe(&self, type_url: &str, token: &str) -> Result<Client, tonic::Status> {
        let root = std::fs::read_to_string(&self.root).unwrap();
        let client = connect_tls(&format!("https://{}", self.xds), token, &root, "keel-control").await?;
        client.subscribe(type_url, BTreeMap::new()).await;
        Ok(client)
    }

    async fn certificate(&self, token: &str, identity: &str) -> Result<Vec<String>, tonic::Status> {
        self.ask_certificate(token, Some(identity)).await
    }

    /// A certificate request without `ImpersonatedIdentity`, as a workload (or a dedicated-mode ztunnel) sends it.
    async fn certificate_for_self(&self, token: &str) -> Result<Vec<String>, tonic::Status> {
        self.ask_certificate(token, None).await
    }

    async fn ask_certificate(&self, token: &str, identity: Option<&str>) -> Result<Vec<String>, tonic::Status> {
        let root = std::fs::read_to_string(&self.root).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(root)).domain_name("keel-control");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://{}", self.xds)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        let fields: BTreeMap<String, ProtoValue> = identity
            .map(|identity| ("ImpersonatedIdentity".to_owned(), ProtoValue { kind: Some(Kind::StringValue(identity.into())) }))
            .into_iter()
            .collect();
        let metadata = (!fields.is_empty()).then_some(Struct { fields });
        let mut request = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(IstioCertificateServiceClient::new(channel).create_certificate(request).await?.into_inner().cert_chain)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the PEM certificate's URI SAN is `identity`.
fn leaf_names(pem: &str, identity: &str) -> bool {
    use x509_parser::prelude::*;
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let (_, cert) = X509Certificate::from_der(&der.contents).expect("an X.509 certificate");
    let sans = cert.subject_alternative_name().ok().flatten();
    sans.is_some_and(|san| san.value.general_names.iter().any(|name| matches!(name, GeneralName::URI(uri) if *uri == identity)))
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn start_api(dir: &Path) -> (KubeApi, PathBuf) {
    let mut api = KubeApi::start(&dir.join("api")).expect("the Kubernetes API stand-in starts (cargo build -p keel-tests --bins)");
    populate(&mut api);
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig("control-token", &kubeconfig).unwrap();
    (api, kubeconfig)
}

/// No push within `within` (the client's stream stays quiet).
async fn quiet(client: &mut Client, within: Duration) {
    if let Ok(message) = tokio::time::timeout(within, client.responses.message()).await {
        panic!("expected no push, got {message:?}");
    }
}

/// The Services the pushed Workload `name` backs.
fn services_of(push: &DeltaDiscoveryResponse, name: &str) -> Vec<String> {
    let resource = push.resources.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name} not pushed"));
    let address = Address::decode(resource.resource.as_ref().unwrap().value.as_slice()).unwrap();
    let Some(address::Type::Workload(workload)) = address.r#type else { panic!("{name} is not a Workload") };
    let mut services: Vec<String> = workload.services.keys().cloned().collect();
    services.sort();
    services
}

/// The pushed Workloads by name, with whether they are reached over HBONE (in the mesh) or directly.
fn tunnels(push: &DeltaDiscoveryResponse) -> BTreeMap<String, TunnelProtocol> {
    let workloads = push.resources.iter().filter_map(|r| {
        let address = Address::decode(r.resource.as_ref()?.value.as_slice()).expect("an istio.workload.Address");
        let Some(address::Type::Workload(workload)) = address.r#type else { return None };
        Some((r.name.clone(), workload.tunnel_protocol()))
    });
    workloads.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_served_like_a_config_directory_and_every_change_is_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = start_api(dir.path());
    let control = Control::start(dir.path(), &kubeconfig);
    control.wait_ready(Duration::from_secs(20));

    let mut addresses = control.subscribe(ADDRESS_TYPE_URL, NODE_TOKEN).await.unwrap();
    let first = addresses.next().await;
    assert!(names(&first).contains(&"demo/echo.demo.svc.cluster.local"));
    assert_eq!(
        services_of(&first, "Kubernetes//Pod/demo/sleep"),
        ["demo/legacy.demo.svc.cluster.local"],
        "the selector-less Service is backed by what its EndpointSlice lists"
    );
    // Every pod with an address is a Workload (so node proxies know how to reach it), but only the ambient ones
    // are reached over HBONE; a finished pod is none.
    let (hbone, direct) = (TunnelProtocol::Hbone, TunnelProtocol::None);
    let expected = [
        ("demo/echo", hbone),
        ("demo/opted-out", direct),
        ("demo/sleep", hbone),
        ("istio-system/keel-a", direct),
        ("istio-system/keel-b", direct),
        ("plain/web", direct),
    ];
    let expected: BTreeMap<String, TunnelProtocol> = expected.iter().map(|(pod, tunnel)| (format!("Kubernetes//Pod/{pod}"), *tunnel)).collect();
    assert_eq!(tunnels(&first), expected);
    let mut policies = control.subscribe(AUTHORIZATION_TYPE_URL, NODE_TOKEN).await.unwrap();
    let first_policies = policies.next().await;
    assert!(names(&first_policies).iter().any(|n| n.contains("allow-sleep")), "{:?}", names(&first_policies));

    // A namespace joining the mesh brings its pods.
    api.apply(&namespace("plain", json!({"istio.io/dataplane-mode": "ambient"}))).unwrap();
    let joined = addresses.next().await;
    assert_eq!(tunnels(&joined), BTreeMap::from([("Kubernetes//Pod/plain/web".to_owned(), TunnelProtocol::Hbone)]));

    // A refused version (an action Istio does not have) keeps the last good one: nothing is pushed, and the log
    // names the object and the field.
    api.apply(&policy("MAYBE")).unwrap();
    quiet(&mut policies, Duration::from_secs(1)).await;
    let log = control.log();
    assert!(log.contains("AuthorizationPolicy demo/allow-sleep") && log.contains("action"), "the refusal is logged with its reason:\n{log}");
    api.apply(&policy("DENY")).unwrap();
    assert!(names(&policies.next().await).iter().any(|n| n.contains("allow-sleep")), "a good version replaces it");

    // A deleted pod goes, and so does a pod deleted right after the watches were cut (410 Gone: relisted).
    assert!(api.delete("v1", "Pod", Some("demo"), "echo").unwrap());
    assert_eq!(addresses.next().await.removed_resources, ["Kubernetes//Pod/demo/echo"]);
    api.compact().unwrap();
    assert!(api.delete("v1", "Pod", Some("plain"), "web").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let push = tokio::time::timeout(Duration::from_secs(10), addresses.responses.message()).await.expect("a push").unwrap().unwrap();
        if push.removed_resources.iter().any(|r| r == "Kubernetes//Pod/plain/web") {
            break;
        }
        assert!(Instant::now() < deadline, "plain/web never removed after the relist");
    }
    assert_eq!(control.ready(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_proxies_are_authenticated_by_token_review_with_istiods_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, kubeconfig) = start_api(dir.path());
    let control = Control::start(dir.path(), &kubeconfig);
    control.wait_ready(Duration::from_secs(20));

    let chain = control.certificate(NODE_TOKEN, SLEEP).await.expect("node-a's keel gets sleep's certificate (sleep runs on node-a)");
    assert_eq!(chain.len(), 2, "leaf and root");
    let refused = control.certificate(NODE_TOKEN, ECHO).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "echo runs on node-b: {refused:?}");
    // A token without the node's name: the node is that of the pod it is bound to (keel-b, on node-b).
    control.certificate(NODE_TOKEN_WITHOUT_NODE, ECHO).await.expect("node-b's keel gets echo's certificate");
    assert_eq!(control.certificate(NODE_TOKEN_WITHOUT_NODE, SLEEP).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // A workload's token: a certificate for its own identity (asked for or not), never another's.
    let own = control.certificate_for_self(WORKLOAD_TOKEN).await.expect("a workload gets its own identity without ImpersonatedIdentity");
    assert!(leaf_names(&own[0], SLEEP), "the leaf is for {SLEEP}");
    control.certificate(WORKLOAD_TOKEN, SLEEP).await.expect("asking for its own identity by name is the same");
    let workload = control.certificate(WORKLOAD_TOKEN, ECHO).await.unwrap_err();
    assert_eq!(workload.code(), tonic::Code::PermissionDenied);
    assert!(workload.message().contains("demo/sleep is not a node proxy account"), "{workload:?}");
    let unknown = control.certificate("no-such-token", SLEEP).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");
    // The API server's own audience is not istio-ca: keel-control's own token is no node proxy token either.
    assert_eq!(control.certificate("control-token", SLEEP).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    let refused = control.subscribe(ADDRESS_TYPE_URL, WORKLOAD_TOKEN).await.err().expect("no xDS stream for a workload's token");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_before_the_cluster_has_been_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut api, kubeconfig) = start_api(dir.path());
    api.stop().unwrap();
    let control = Control::start(dir.path(), &kubeconfig);
    // The readiness endpoint answers at once, and says no; the xDS port is not even bound.
    let start = Instant::now();
    while control.ready().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "no readiness endpoint; log:\n{}", control.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..10 {
        assert_eq!(control.ready(), Some(503));
        // keel-control logs this line the moment its xDS listener is bound. (Probing the port itself is not proof:
        // another test may have taken the free port meanwhile.)
        assert!(!control.log().contains("serving delta ADS"), "xDS must not listen before the cluster is read:\n{}", control.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    api.resume().unwrap();
    control.wait_ready(Duration::from_secs(30));
    let mut addresses = control.subscribe(ADDRESS_TYPE_URL, NODE_TOKEN).await.unwrap();
    assert!(names(&addresses.next().await).contains(&"Kubernetes//Pod/demo/sleep"));
}

/// The holder of keel-control's leader Lease.
fn lease_holder(api: &KubeApi) -> Option<String> {
    let lease = api.get("coordination.k8s.io/v1", "Lease", Some("istio-system"), "keel-control").unwrap()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_together_and_the_lease_holder_alone_reports_refused_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = start_api(dir.path());
    let mut first = Control::start_replica(dir.path(), &kubeconfig, "keel-control-0");
    first.wait_ready(Duration::from_secs(20));
    wait_for("keel-control-0 holds the Lease", Duration::from_secs(10), || lease_holder(&api).as_deref() == Some("keel-control-0")).await;
    let second = Control::start_replica(dir.path(), &kubeconfig, "keel-control-1");
    second.wait_ready(Duration::from_secs(20));
    // Both serve: a node proxy may be sent to either.
    for control in [&first, &second] {
        let mut addresses = control.subscribe(ADDRESS_TYPE_URL, NODE_TOKEN).await.unwrap();
        assert!(names(&addresses.next().await).contains(&"Kubernetes//Pod/demo/sleep"));
    }

    // A refused object gets one Event, from the leader, naming the field.
    api.apply(&policy("MAYBE")).unwrap();
    let client = api.client().await.unwrap();
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(client, "demo");
    let start = Instant::now();
    let rejected = loop {
        let listed = events.list(&Default::default()).await.unwrap().items;
        let rejected: Vec<_> = listed.into_iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("allow-sleep")).collect();
        if !rejected.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await; // a second replica's Event would be here by now
            break events.list(&Default::default()).await.unwrap().items;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no Event for the refused AuthorizationPolicy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rejected.len(), 1, "one Event, from the leader only: {rejected:?}");
    let event = &rejected[0];
    assert_eq!((event.type_.as_deref(), event.reason.as_deref()), (Some("Warning"), Some("Rejected")));
    assert_eq!(event.reporting_instance.as_deref(), Some("keel-control-0"));
    assert!(event.note.as_deref().unwrap_or_default().contains("field spec.action"), "{event:?}");
    assert_eq!(event.regarding.as_ref().and_then(|r| r.kind.as_deref()), Some("AuthorizationPolicy"));

    // The leader gone, the other replica takes the Lease once it expires (15 s).
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_for("keel-control-1 takes over the Lease", Duration::from_secs(25), || lease_holder(&api).as_deref() == Some("keel-control-1")).await;
}
