//! What the fuzz targets share: how a target's input bytes are laid out (the seed generator in
//! `proxy/tests/fuzz_seeds.rs` writes the same layouts), and the checks every decoded resource goes through.
use std::{sync::Arc, time::Instant};

use keel::{
    l7_config::{
        cluster::Cluster,
        config::{LbEndpoint, LoadAssignment},
        outlier::Outcome,
        route_plan::RoutePlan,
        route_table::RouteTable,
    },
    xds::state::{self, Resource, WorkloadStore},
};

/// The xDS types `xds_decode` chooses from by its first byte (modulo their number).
pub const TYPE_URLS: [&str; 9] = [
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

/// `name\0value` lines (`\n`-separated): headers of an HTTP request.
pub fn header_lines(text: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|line| match line.iter().position(|&b| b == 0) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    })
}

/// Decodes one resource as the xDS client would, then does with it what keel does once it is accepted: publish
/// it in a snapshot, build the live cluster (balancer tables, outlier detector) and the per-request deadlines.
/// A panic or a hang anywhere here is a finding.
pub fn decode_and_use(type_url: &str, bytes: &[u8]) {
    let Ok(resource) = state::decode(type_url, "fuzz", bytes) else { return };
    match &resource {
        Resource::Cluster(config) => {
            let endpoints =
                (1..=3u8).map(|i| LbEndpoint { address: ([10, 0, 0, i], 8080).into(), hostname: String::new(), locality: None }).collect();
            let assignment = LoadAssignment { cluster: config.name.clone(), endpoints };
            exercise_cluster(&Cluster::new(config.clone(), Some(Arc::new(assignment))));
        }
        Resource::LoadAssignment(assignment) => {
            let Ok(Resource::Cluster(config)) = state::decode(keel_proto::CLUSTER_TYPE_URL, "fuzz", &[]) else {
                unreachable!("an empty Cluster is a valid STATIC round-robin cluster")
            };
            exercise_cluster(&Cluster::new(config, Some(assignment.clone())));
        }
        Resource::Routes(table) => exercise_plans(table),
        Resource::HttpPolicy(policy) => exercise_http_policy(policy),
        Resource::RequestAuthentication(rules) => exercise_request_authentication(rules),
        _ => {}
    }
    WorkloadStore::default().apply(vec![("fuzz".into(), resource)], &[]);
}

/// Decides a few requests with the policy's HTTP rules, as the destination's keel would (every matcher, path
/// templates and claim paths included).
fn exercise_http_policy(policy: &keel_proto::http_security::HttpAuthorization) {
    use keel::policy::{authorize_request, normalize_path, ConnectionAttributes, RequestAttributes};
    use keel_proto::{security::Authorization, workload::Workload};
    let name = format!("{}/{}", policy.namespace, policy.name);
    let l4 = Authorization { name: policy.name.clone(), namespace: policy.namespace.clone(), ..Default::default() };
    let workload = Workload { uid: "w".into(), namespace: policy.namespace.clone(), ..Default::default() };
    let snapshot = keel::xds::state::Snapshot {
        policies: [(name.clone(), Arc::new(l4))].into(),
        http_policies: [(name, Arc::new(policy.clone()))].into(),
        ..Default::default()
    };
    let connection = ConnectionAttributes {
        source_ip: [10, 0, 0, 1].into(),
        source_identity: None,
        destination_ip: [10, 0, 0, 2].into(),
        destination_port: 8080,
        destination_workload: &workload,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("blue, red"));
    let claims = serde_json::json!({"groups": ["dev", 1, true], "org": {"team": "db"}});
    for (method, host, path) in [("GET", "catalog", "/items/1?x=1"), ("POST", "catalog:80", "/v1/a/../b/./reviews"), ("DELETE", "", "")] {
        let path = normalize_path(path);
        for (principal, claims) in [(None, None), (Some("iss/sub"), Some(&claims))] {
            let request = RequestAttributes { method, host, path: &path, headers: &headers, principal, claims, server_name: None };
            let _ = authorize_request(&snapshot, &connection, &request);
        }
    }
}

/// Looks for and checks tokens in a few requests, as the destination's keel would (none verifies: no test key
/// signs them, but every location and refusal path runs).
fn exercise_request_authentication(rules: &keel::jwt::RequestAuthentication) {
    let tokens = ["a.b.c", "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0.c2ln", ""];
    for token in tokens {
        for (name, value) in
            [("authorization", format!("Bearer {token}")), ("x-jwt", format!("Bearer {token}")), ("cookie", format!("session={token}"))]
        {
            let request = http::Request::builder().uri(format!("/items?access_token={token}")).header(name, value).body(()).expect("a request");
            let (mut parts, ()) = request.into_parts();
            let _ = keel::jwt::authenticate(rules.providers.iter(), &mut parts);
        }
    }
}

fn exercise_cluster(cluster: &Cluster) {
    for hash in [None, Some(0), Some(u64::MAX), Some(0x9e37_79b9_7f4a_7c15)] {
        if let Some(endpoint) = cluster.pick(hash, None) {
            // Enough consecutive failures to eject it (and again, for the growing ejection time).
            for _ in 0..12 {
                cluster.report(&endpoint, Outcome::GatewayError);
            }
        }
    }
}

/// The deadline and backoff arithmetic a request does with each forwarding route's settings.
pub fn exercise_plans(table: &RouteTable) {
    let now = Instant::now();
    for host in table.virtual_hosts() {
        for route in &host.routes {
            if let RoutePlan::Forward(plan) = &route.plan {
                let _ = plan.deadline(now);
                if let Some(retries) = &plan.retries {
                    let _ = retries.per_try_deadline(now);
                    for retry in 1..=retries.num_retries.min(40) {
                        let _ = retries.backoff(retry);
                    }
                }
                if let Some(faults) = &plan.faults {
                    let _ = faults.decide();
                }
            }
        }
    }
}
