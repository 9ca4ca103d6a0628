//! CreateCertificate over real gRPC on loopback: a node proxy gets certificates for identities of workloads on
//! its own node, and is refused any other, as istiod refuses impersonation.
use std::{collections::BTreeMap, sync::Arc};

use keel_control::{
    ca_service::{CaService, NodeIdentities},
    client_auth::ClientAuth,
    tokens::Tokens,
};
use keel_mesh::{
    ca::Authority,
    objects::Object,
    source::{load_text, Loaded},
};
use keel_proto::ca::{
    istio_certificate_service_client::IstioCertificateServiceClient, istio_certificate_service_server::IstioCertificateServiceServer,
    IstioCertificateRequest,
};
use prost_types::{value::Kind, Struct, Value};
use tokio_stream::wrappers::TcpListenerStream;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: demo}
spec: {serviceAccountName: sleep, nodeName: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: demo}
spec: {serviceAccountName: echo, nodeName: node-b}
"#;

async fn start() -> String {
    let mut loaded = Loaded::default();
    load_text(std::path::Path::new("pods.yaml"), PODS, &mut loaded);
    let objects: Vec<Object> = loaded.objects.into_iter().map(|(_, o)| o).collect();
    let (_publish, identities) = tokio::sync::watch::channel(Arc::new(NodeIdentities::from_objects("cluster.local", &objects)));
    std::mem::forget(_publish); // the config never changes in this test
    let dir = std::env::temp_dir().join(format!("keel-ca-grpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let authority = Arc::new(Authority::load_or_generate(&dir, "cluster.local").unwrap());
    let tokens = Arc::new(ClientAuth::TokensFile(Tokens::parse("token-a node-a\ntoken-b node-b\n").unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(CaService::new(authority, tokens, identities, Default::default())))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask(addr: &str, token: &str, identity: &str) -> Result<Vec<String>, tonic::Status> {
    let mut client = IstioCertificateServiceClient::connect(addr.to_owned()).await.unwrap();
    let fields = BTreeMap::from([("ImpersonatedIdentity".to_owned(), Value { kind: Some(Kind::StringValue(identity.into())) })]);
    let mut request = tonic::Request::new(IstioCertificateRequest { csr: csr(), validity_duration: 3600, metadata: Some(Struct { fields }) });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    Ok(client.create_certificate(request).await?.into_inner().cert_chain)
}

#[tokio::test]
async fn a_node_gets_certificates_only_for_workloads_on_it() {
    let addr = start().await;
    let chain = ask(&addr, "token-a", "spiffe://cluster.local/ns/demo/sa/sleep").await.unwrap();
    assert_eq!(chain.len(), 2, "leaf, root");
    assert!(chain.iter().all(|c| c.starts_with("-----BEGIN CERTIFICATE-----")));

    let refused = ask(&addr, "token-a", "spiffe://cluster.local/ns/demo/sa/echo").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "echo runs on node-b, not node-a");
    let refused = ask(&addr, "token-b", "spiffe://cluster.local/ns/demo/sa/sleep").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = ask(&addr, "no-such-token", "spiffe://cluster.local/ns/demo/sa/sleep").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(ask(&addr, "token-b", "spiffe://cluster.local/ns/demo/sa/echo").await.is_ok());
}

/// Private keys are owner-only whatever the umask: `keel-control issue` under umask 000 (where a plain
/// `std::fs::write` makes a world-readable file) writes the CA root's key and the workload key 0600, in new 0700
/// directories.
#[test]
fn private_keys_are_written_owner_only_even_under_umask_000() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("keel-ca-umask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = std::process::Command::new("sh")
        .args(["-c", r#"umask 000 && exec "$0" "$@""#, env!("CARGO_BIN_EXE_keel-control"), "issue"])
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args(["--identity", "spiffe://cluster.local/ns/demo/sa/sleep", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mode = |path: &str| std::fs::metadata(dir.join(path)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("ca/ca-key.pem"), mode("out/key.pem")), (0o600, 0o600));
    assert_eq!((mode("ca"), mode("out")), (0o700, 0o700));
    assert_eq!(mode("out/cert-chain.pem"), 0o666, "certificates are public; the umask held");
    let _ = std::fs::remove_dir_all(&dir);
}
