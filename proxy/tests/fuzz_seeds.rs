//! Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from real resources: the traffic
//! scenarios keel-control's tests translate (mesh/tests/fixtures/traffic), encoded as keel receives them over
//! xDS, plus a few HBONE CONNECT header blocks. Ignored by default; regenerate with
//! `cargo test -p keel --test fuzz_seeds -- --ignored`. The input layouts are fuzz/src/lib.rs's.
//! The non-ignored test checks that every committed seed of a resource still decodes, so the seeds keep
//! reaching past the decoder as the code changes.
use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use keel_mesh::{
    source::{load_text, Loaded},
    translate::{translate, Mesh},
};
use prost::Message;

const TYPE_URLS: [&str; 9] = [
    keel_proto::ADDRESS_TYPE_URL,
    keel_proto::AUTHORIZATION_TYPE_URL,
    keel_proto::LISTENER_TYPE_URL,
    keel_proto::ROUTE_CONFIGURATION_TYPE_URL,
    keel_proto::CLUSTER_TYPE_URL,
    keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
    // Appended: a seed's first byte keeps naming the type it was written for.
    keel_proto::HTTP_AUTHORIZATION_TYPE_URL,
    keel_proto::REQUEST_AUTHENTICATION_TYPE_URL,
    keel_proto::SECRET_TYPE_URL,
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_owned()
}

fn traffic() -> PathBuf {
    root().join("mesh/tests/fixtures/traffic")
}

/// Policies for the authorization seeds (the traffic scenarios have none), shaped as control's own tests write them.
const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-webapp, namespace: istioinaction}
spec:
  selector: {matchLabels: {app: catalog}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/istioinaction/sa/webapp"], notNamespaces: ["kube-*"]}}, {source: {ipBlocks: [10.1.0.0/16]}}]
    to: [{operation: {ports: ["3000"]}}]
  - to: [{operation: {methods: [GET], paths: ["/items*", "/v1/{*}/reviews"], hosts: [catalog]}}]
    when: [{key: "request.headers[x-tenant]", values: [blue]}, {key: "request.auth.claims[groups]", notValues: [guest]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istioinaction}
spec:
  selector: {matchLabels: {app: catalog}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
"#;

/// `(scenario name, topology + scenario YAML)`, and the policies on their own topology.
fn scenarios() -> Vec<(String, String)> {
    let topology = fs::read_to_string(traffic().join("topology.yaml")).unwrap();
    let mut files: Vec<PathBuf> = fs::read_dir(traffic().join("scenarios")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            (name, format!("{topology}\n---\n{}", fs::read_to_string(&f).unwrap()))
        })
        .chain(std::iter::once(("policies".to_owned(), format!("{topology}\n---\n{POLICIES}"))))
        .collect()
}

/// Writes `bytes` once per content (named by `label` and a content hash, so reruns are idempotent).
fn write(target: &str, label: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    fs::write(dir.join(format!("{label}-{:08x}", h.finish() as u32)), bytes).unwrap();
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand when the resources change"]
fn write_fuzz_seeds() {
    for (scenario, yaml) in scenarios() {
        write("control_yaml", &scenario, yaml.as_bytes());
        let mut loaded = Loaded::default();
        load_text(Path::new("seed.yaml"), &yaml, &mut loaded);
        assert!(loaded.errors.is_empty(), "{scenario}: {:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let r = translate(&Mesh::default(), &objects).unwrap();
        let encoded: [Vec<Vec<u8>>; 8] = [
            r.addresses.values().map(Message::encode_to_vec).collect(),
            r.authorizations.values().map(Message::encode_to_vec).collect(),
            r.listeners.values().map(Message::encode_to_vec).collect(),
            r.route_configurations.values().map(Message::encode_to_vec).collect(),
            r.clusters.values().map(Message::encode_to_vec).collect(),
            r.cluster_load_assignments.values().map(Message::encode_to_vec).collect(),
            r.http_authorizations.values().map(Message::encode_to_vec).collect(),
            r.request_authentications.values().map(Message::encode_to_vec).collect(),
        ];
        for (kind, resources) in encoded.iter().enumerate() {
            // The topology's workloads and services repeat in every scenario: the hash names dedupe them.
            for bytes in resources {
                write("xds_decode", &format!("type{kind}"), &[&[kind as u8][..], bytes].concat());
            }
        }
        for config in r.route_configurations.values() {
            let bytes = config.encode_to_vec();
            let length = u16::try_from(bytes.len()).expect("a route configuration under 64 KiB");
            let host = config.virtual_hosts.iter().flat_map(|h| h.domains.first()).next().cloned().unwrap_or_default();
            let request = format!("GET\n{host}\n/items?id=1\nx-istio-cohort\0internal\ncookie\0session=s1\n");
            write("route_table", &scenario, &[&length.to_le_bytes()[..], &bytes, request.as_bytes()].concat());
        }
    }
    gateway_seeds();
    for (label, block) in [
        ("connect", ":method\0CONNECT\n:authority\x0010.244.2.2:8080\nforwarded\0for=\"10.244.1.2:56938\";host=echo.lab-b.svc.cluster.local\n"),
        ("connect-v6", ":method\0CONNECT\n:authority\0[fd00::1]:80\nforwarded\0for=\"[fd00::2]:4000\"\n"),
        ("get", ":method\0GET\n:scheme\0http\n:path\0/\n:authority\0example\n"),
        ("baggage", ":method\0CONNECT\n:authority\x0010.0.0.1:80\nbaggage\0k8s.namespace.name=a\ntraceparent\x0000-01-01-00\n"),
    ] {
        write("hbone_request", label, block.as_bytes());
    }
}

/// A gateway with an HTTPS server on a real certificate: its TLS listener (type 2) and its Secret (type 8).
fn gateway_seeds() {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["webapp.example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
    let block = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ingress, namespace: gw, labels: {{istio: ingressgateway}}}}\nstatus: {{podIP: 10.0.0.5}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: public, namespace: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [webapp.example.com]\n    tls: {{mode: MUTUAL, credentialName: web, subjectAltNames: [client]}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: web, namespace: gw}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        block(&certificate.pem()),
        block(&key.serialize_pem()),
        block(&certificate.pem()),
    );
    write("control_yaml", "gateway", yaml.as_bytes());
    let mut loaded = Loaded::default();
    load_text(Path::new("seed.yaml"), &yaml, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
    let r = translate(&Mesh::default(), &objects).unwrap();
    let view = &r.gateway_views["gw/ingress"];
    assert_eq!(view.secrets.len(), 2, "{:?}", r.warnings);
    for listener in view.listeners.values() {
        write("xds_decode", "type2-gateway", &[&[2u8][..], &listener.encode_to_vec()].concat());
    }
    for secret in view.secrets.values() {
        write("xds_decode", "type8", &[&[8u8][..], &secret.encode_to_vec()].concat());
    }
}

#[test]
fn committed_resource_seeds_decode() {
    let dir = root().join("fuzz/corpus/xds_decode");
    let Ok(entries) = fs::read_dir(&dir) else { return };
    let mut checked = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let (kind, resource) = bytes.split_first().unwrap();
        let type_url = TYPE_URLS[usize::from(*kind) % TYPE_URLS.len()];
        if let Err(e) = keel::xds::state::decode(type_url, "seed", resource) {
            panic!("{}: {e}", path.display());
        }
        checked += 1;
    }
    assert!(checked > 0, "no seeds in {}", dir.display());
}
