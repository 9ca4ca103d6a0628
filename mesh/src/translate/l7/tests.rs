//! The Istio-in-Action scenarios (tests/fixtures/traffic) on top of their topology, translated to the L7 subset.
use std::path::Path;

use keel_proto::{
    cluster::{cluster::LbConfig, cluster::LbPolicy, Cluster},
    core::{address, socket_address::PortSpecifier, HealthStatus},
    endpoint::{lb_endpoint::HostIdentifier, ClusterLoadAssignment},
    fault::{fault_abort::ErrorType, HttpFault},
    fault_common::fault_delay::FaultDelaySecifier,
    hcm::{http_connection_manager::RouteSpecifier, HttpConnectionManager},
    listener::filter::ConfigType,
    matcher::string_matcher::MatchPattern,
    route::{
        header_matcher::HeaderMatchSpecifier,
        route,
        route_action::{hash_policy::PolicySpecifier, ClusterSpecifier},
        route_match::PathSpecifier,
        Route, RouteAction, VirtualHost,
    },
    types::fractional_percent::DenominatorType,
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL,
};
use prost::Message;

use crate::{
    objects::Object,
    snapshot::Snapshot,
    source::{load_text, Loaded},
    translate::{translate, Mesh, Resources},
};

const CATALOG: &str = "catalog.istioinaction.svc.cluster.local";

fn objects(scenario: Option<&str>, extra: &str) -> Vec<Object> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traffic");
    let mut loaded = Loaded::default();
    let mut files = vec![dir.join("topology.yaml")];
    files.extend(scenario.map(|s| dir.join("scenarios").join(format!("{s}.yaml"))));
    for file in files {
        load_text(&file, &std::fs::read_to_string(&file).unwrap(), &mut loaded);
    }
    load_text(Path::new("extra.yaml"), extra, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    loaded.objects.into_iter().map(|(_, o)| o).collect()
}

fn resources_with(scenario: Option<&str>, extra: &str) -> Resources {
    translate(&Mesh::default(), &objects(scenario, extra)).unwrap()
}

fn resources(scenario: &str) -> Resources {
    let r = resources_with(Some(scenario), "");
    assert!(r.warnings.is_empty(), "{scenario}: {:?}", r.warnings);
    r
}

fn catalog_host(r: &Resources) -> &VirtualHost {
    let config = &r.route_configurations["80"];
    config.virtual_hosts.iter().find(|v| v.name == format!("{CATALOG}:80")).expect("catalog's virtual host")
}

fn action(route: &Route) -> &RouteAction {
    let Some(route::Action::Route(action)) = &route.action else { panic!("not a forwarding route: {route:?}") };
    action
}

fn single_cluster(route: &Route) -> &str {
    let Some(ClusterSpecifier::Cluster(name)) = &action(route).cluster_specifier else { panic!("{route:?}") };
    name
}

fn cluster<'r>(r: &'r Resources, subset: &str) -> &'r Cluster {
    &r.clusters[&format!("outbound|80|{subset}|{CATALOG}")]
}

fn endpoints(cla: &ClusterLoadAssignment) -> Vec<String> {
    let mut out = Vec::new();
    for group in &cla.endpoints {
        for lb in &group.lb_endpoints {
            assert_eq!(lb.health_status, HealthStatus::Healthy as i32);
            let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else { panic!() };
            let Some(address::Address::SocketAddress(s)) = &e.address.as_ref().unwrap().address else { panic!() };
            let Some(PortSpecifier::PortValue(port)) = s.port_specifier else { panic!() };
            out.push(format!("{}:{port}", s.address));
        }
    }
    out.sort();
    out
}

#[test]
fn dark_launch_matches_the_cohort_header_to_v2_then_sends_everyone_else_to_v1() {
    let r = resources("dark-launch");
    let host = catalog_host(&r);
    assert_eq!(host.routes.len(), 2);
    let cohort = &host.routes[0];
    assert_eq!(cohort.name, "internal-cohort");
    let header = &cohort.r#match.as_ref().unwrap().headers[0];
    assert_eq!(header.name, "x-istio-cohort");
    assert!(!header.invert_match);
    let Some(HeaderMatchSpecifier::StringMatch(m)) = &header.header_match_specifier else { panic!("{header:?}") };
    assert_eq!(m.match_pattern, Some(MatchPattern::Exact("internal".into())));
    assert_eq!(single_cluster(cohort), format!("outbound|80|version-v2|{CATALOG}"));
    let rest = &host.routes[1];
    assert_eq!(rest.r#match.as_ref().unwrap().path_specifier, Some(PathSpecifier::Prefix("/".into())));
    assert!(rest.r#match.as_ref().unwrap().headers.is_empty());
    assert_eq!(single_cluster(rest), format!("outbound|80|version-v1|{CATALOG}"));
    for domain in ["catalog", "catalog:80", "catalog.istioinaction", "catalog.istioinaction:80", CATALOG, "10.96.0.20", "10.96.0.20:80"] {
        assert!(host.domains.iter().any(|d| d == domain), "{domain} missing from {:?}", host.domains);
    }
}

#[test]
fn a_service_without_virtual_service_gets_a_default_route_to_its_cluster() {
    let r = resources("dark-launch");
    let webapp = r.route_configurations["80"].virtual_hosts.iter().find(|v| v.name.starts_with("webapp.")).unwrap();
    assert_eq!(webapp.routes.len(), 1);
    assert_eq!(single_cluster(&webapp.routes[0]), "outbound|80||webapp.istioinaction.svc.cluster.local");
    // Istio's defaults: no route timeout, two retries of connection-level failures on another host.
    let a = action(&webapp.routes[0]);
    assert_eq!(a.timeout, Some(prost_types::Duration::default()));
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries, Some(2));
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts");
}

#[test]
fn canary_splits_80_20_between_subset_clusters() {
    let r = resources("canary-80-20");
    let Some(ClusterSpecifier::WeightedClusters(split)) = &action(&catalog_host(&r).routes[0]).cluster_specifier else { panic!() };
    let weights: Vec<(&str, Option<u32>)> = split.clusters.iter().map(|c| (c.name.as_str(), c.weight)).collect();
    assert_eq!(
        weights,
        [(format!("outbound|80|version-v1|{CATALOG}").as_str(), Some(80)), (format!("outbound|80|version-v2|{CATALOG}").as_str(), Some(20))]
    );
}

#[test]
fn retries_timeout_fault_and_mirror_are_set_on_the_route() {
    let retry = resources("retries");
    let policy = action(&catalog_host(&retry).routes[0]).retry_policy.clone().unwrap();
    assert_eq!(policy.num_retries, Some(3));
    assert_eq!(policy.retry_on, "5xx");
    assert_eq!(policy.per_try_timeout, Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }));

    let delayed = resources("fault-delay-timeout");
    let route = &catalog_host(&delayed).routes[0];
    assert_eq!(action(route).timeout, Some(prost_types::Duration { seconds: 1, nanos: 0 }));
    let fault = HttpFault::decode(route.typed_per_filter_config["envoy.filters.http.fault"].value.as_slice()).unwrap();
    let delay = fault.delay.unwrap();
    assert_eq!(delay.fault_delay_secifier, Some(FaultDelaySecifier::FixedDelay(prost_types::Duration { seconds: 2, nanos: 0 })));
    assert_eq!(delay.percentage.unwrap().numerator, 1_000_000);

    let aborted = resources("fault-abort");
    let any = &catalog_host(&aborted).routes[0].typed_per_filter_config["envoy.filters.http.fault"];
    assert_eq!(any.type_url, keel_proto::HTTP_FAULT_TYPE_URL);
    let abort = HttpFault::decode(any.value.as_slice()).unwrap().abort.unwrap();
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(503)));
    let percentage = abort.percentage.unwrap();
    assert_eq!((percentage.numerator, percentage.denominator), (500_000, DenominatorType::Million as i32));

    let mirrored = resources("mirror");
    let a = action(&catalog_host(&mirrored).routes[0]);
    assert_eq!(a.cluster_specifier, Some(ClusterSpecifier::Cluster(format!("outbound|80|version-v1|{CATALOG}"))));
    assert_eq!(a.request_mirror_policies.len(), 1);
    assert_eq!(a.request_mirror_policies[0].cluster, format!("outbound|80|version-v2|{CATALOG}"));
    let fraction = a.request_mirror_policies[0].runtime_fraction.as_ref().unwrap().default_value.unwrap();
    assert_eq!(fraction.numerator, 1_000_000);
}

#[test]
fn load_balancer_least_request_and_ring_hash_with_a_header_hash_policy() {
    let least = resources("least-request");
    assert_eq!(cluster(&least, "").lb_policy, LbPolicy::LeastRequest as i32);

    let hashed = resources("consistent-hash");
    let c = cluster(&hashed, "");
    assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
    let Some(LbConfig::RingHashLbConfig(ring)) = &c.lb_config else { panic!("{:?}", c.lb_config) };
    assert_eq!(ring.minimum_ring_size, Some(1024));
    let hash = &action(&catalog_host(&hashed).routes[0]).hash_policy;
    assert_eq!(hash.len(), 1);
    let Some(PolicySpecifier::Header(header)) = &hash[0].policy_specifier else { panic!("{hash:?}") };
    assert_eq!(header.header_name, "x-user");
    // Istio's default for clusters without a rule.
    let webapp = &hashed.clusters["outbound|80||webapp.istioinaction.svc.cluster.local"];
    assert_eq!(webapp.lb_policy, LbPolicy::LeastRequest as i32);
}

#[test]
fn circuit_breaker_thresholds_and_outlier_detection_with_port_level_override() {
    let r = resources("circuit-breaker");
    let c = cluster(&r, "");
    let thresholds = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    // Port 80's connectionPool replaces the top-level one whole (Istio's merge): only maxConnections is set.
    assert_eq!(thresholds.max_connections, Some(10));
    assert_eq!(thresholds.max_pending_requests, Some(u32::MAX));
    assert_eq!(c.max_requests_per_connection, None);
    assert_eq!(c.connect_timeout, Some(prost_types::Duration { seconds: 10, nanos: 0 }));
    let outlier = c.outlier_detection.as_ref().unwrap();
    assert_eq!(outlier.consecutive_5xx, Some(1));
    assert_eq!(outlier.enforcing_consecutive_5xx, Some(100));
    assert_eq!(outlier.consecutive_gateway_failure, Some(1));
    assert_eq!(outlier.interval, Some(prost_types::Duration { seconds: 5, nanos: 0 }));
    assert_eq!(outlier.base_ejection_time, Some(prost_types::Duration { seconds: 5, nanos: 0 }));
    assert_eq!(outlier.max_ejection_percent, Some(100));
    assert_eq!(outlier.enforcing_success_rate, Some(0));
    assert_eq!(c.common_lb_config.as_ref().unwrap().healthy_panic_threshold.unwrap().value, 0.0);
}

#[test]
fn top_level_connection_pool_applies_on_ports_without_port_level_settings() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: webapp, namespace: istioinaction}\n\
spec:\n  host: webapp\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 500ms}\n      \
http: {http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRequestsPerConnection: 4, maxRetries: 5}\n";
    let r = resources_with(None, extra);
    let c = &r.clusters["outbound|80||webapp.istioinaction.svc.cluster.local"];
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!((t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries), (Some(1), Some(2), Some(3), Some(5)));
    assert_eq!(c.max_requests_per_connection, Some(4));
    assert_eq!(c.connect_timeout, Some(prost_types::Duration { seconds: 0, nanos: 500_000_000 }));
}

#[test]
fn load_assignments_hold_the_pods_of_each_subset_at_the_target_port() {
    let r = resources("canary-80-20");
    let cla = |subset: &str| &r.cluster_load_assignments[&format!("outbound|80|{subset}|{CATALOG}")];
    assert_eq!(endpoints(cla("version-v1")), ["10.244.0.21:3000"]);
    assert_eq!(endpoints(cla("version-v2")), ["10.244.1.22:3000"]);
    assert_eq!(endpoints(cla("")), ["10.244.0.21:3000", "10.244.1.22:3000"]);
    assert_eq!(cla("").cluster_name, format!("outbound|80||{CATALOG}"));
    let eds = cluster(&r, "version-v1").eds_cluster_config.as_ref().unwrap();
    assert_eq!(eds.service_name, format!("outbound|80|version-v1|{CATALOG}"));
}

#[test]
fn a_plain_tcp_port_gets_no_l7_resources() {
    let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: istioinaction}\n\
spec: {selector: {app: db}, clusterIP: 10.96.0.40, ports: [{name: tcp-postgres, port: 5432}]}\n";
    let r = resources_with(None, extra);
    assert!(r.clusters.keys().all(|name| !name.contains("db.istioinaction")), "{:?}", r.clusters.keys());
    assert!(!r.listeners.contains_key("0.0.0.0_5432"));
    assert!(!r.route_configurations.contains_key("5432"));
    // appProtocol makes a port HTTP whatever its name.
    let grpc = extra.replace("name: tcp-postgres, port: 5432", "name: tcp-postgres, port: 5432, appProtocol: grpc");
    let r = resources_with(None, &grpc);
    let c = &r.clusters["outbound|5432||db.istioinaction.svc.cluster.local"];
    assert!(c.http2_protocol_options.is_some());
    assert!(r.listeners.contains_key("0.0.0.0_5432"));
}

#[test]
fn the_listener_takes_its_routes_over_rds_by_port() {
    let r = resources("retries");
    let listener = &r.listeners["0.0.0.0_80"];
    let filter = &listener.filter_chains[0].filters[0];
    assert_eq!(filter.name, "envoy.filters.network.http_connection_manager");
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else { panic!() };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { panic!() };
    assert_eq!(rds.route_config_name, "80");
    let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(filters, ["envoy.filters.http.fault", "envoy.filters.http.router"]);
}

#[test]
fn an_undefined_subset_or_unknown_host_is_a_warning_and_a_cluster_without_endpoints() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: webapp, namespace: istioinaction}\n\
spec:\n  hosts: [webapp]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: webapp, subset: v9}}]\n  \
- route: [{destination: {host: nowhere}}]\n";
    let r = resources_with(None, extra);
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r.warnings[0].starts_with("VirtualService istioinaction/webapp: spec.http[0].route[0].destination.subset:"), "{}", r.warnings[0]);
    assert!(r.warnings[1].starts_with("VirtualService istioinaction/webapp: spec.http[1].route[0].destination.host:"), "{}", r.warnings[1]);
    for name in ["outbound|80|v9|webapp.istioinaction.svc.cluster.local", "outbound|80||nowhere.istioinaction.svc.cluster.local"] {
        assert!(r.clusters.contains_key(name), "{name}");
        assert!(r.cluster_load_assignments[name].endpoints.is_empty(), "{name}");
    }
}

#[test]
fn the_snapshot_carries_the_four_l7_types_with_stable_versions() {
    let objects = objects(Some("dark-launch"), "");
    let first = Snapshot::from_resources(&translate(&Mesh::default(), &objects).unwrap());
    let again = Snapshot::from_resources(&translate(&Mesh::default(), &objects).unwrap());
    for type_url in [LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, CLUSTER_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL] {
        let entries = first.of_type(type_url).unwrap_or_else(|| panic!("{type_url}"));
        assert!(!entries.is_empty(), "{type_url}");
        assert!(entries.values().all(|e| e.resource.type_url == type_url));
    }
    assert!(first.of_type(ROUTE_CONFIGURATION_TYPE_URL).unwrap().contains_key("80"));
    assert!(first.of_type(CLUSTER_TYPE_URL).unwrap().contains_key(&format!("outbound|80|version-v2|{CATALOG}")));
    assert_eq!(first, again, "recomputing the same config gives the same versions");
}

#[test]
fn a_virtual_service_makes_its_port_http_and_every_match_form_translates() {
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo}
spec: {selector: {app: reviews}, clusterIP: 10.96.1.1, ports: [{name: web, port: 9080, targetPort: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews]
  http:
  - name: api
    match:
    - uri: {regex: "/api/.*"}
      method: {exact: GET}
      authority: {prefix: reviews}
      withoutHeaders: {x-debug: {}}
      queryParams: {v: {exact: ""}, lang: {regex: "en|de"}}
      ignoreUriCase: true
    rewrite: {uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}, authority: reviews-v2}
    headers: {request: {set: {x-route: v2}, add: {x-trace: "1"}, remove: [x-internal]}}
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: reviews, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "I'm a teapot"}}
  - route: [{destination: {host: reviews, subset: v1}}]
"#;
    let r = resources_with(None, extra);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.listeners.contains_key("0.0.0.0_9080"), "{:?}", r.listeners.keys());
    let routes = &r.route_configurations["9080"].virtual_hosts[0].routes;
    assert_eq!(routes.len(), 4);
    let m = routes[0].r#match.as_ref().unwrap();
    let Some(PathSpecifier::SafeRegex(regex)) = &m.path_specifier else { panic!("{m:?}") };
    assert_eq!(regex.regex, "/api/.*");
    assert_eq!(m.case_sensitive, Some(false));
    let names: Vec<(&str, bool)> = m.headers.iter().map(|h| (h.name.as_str(), h.invert_match)).collect();
    assert_eq!(names, [("x-debug", true), (":method", false), (":authority", false)]);
    assert_eq!(m.headers[0].header_match_specifier, Some(HeaderMatchSpecifier::PresentMatch(true)));
    assert_eq!(m.query_parameters.len(), 2);
    let a = action(&routes[0]);
    assert_eq!(a.regex_rewrite.as_ref().unwrap().substitution, "/\\1");
    assert!(a.host_rewrite_specifier.is_some());
    assert_eq!(routes[0].request_headers_to_add.len(), 2);
    assert_eq!(routes[0].request_headers_to_remove, ["x-internal"]);
    let Some(route::Action::Redirect(redirect)) = &routes[1].action else { panic!() };
    assert_eq!((redirect.host_redirect.as_str(), redirect.response_code), ("reviews", 4));
    let Some(route::Action::DirectResponse(teapot)) = &routes[2].action else { panic!() };
    assert_eq!(teapot.status, 418);
    assert_eq!(single_cluster(&routes[3]), "outbound|9080|v1|reviews.demo.svc.cluster.local");
}

#[test]
fn a_short_name_shared_across_namespaces_stays_with_the_first_and_pods_carry_their_locality() {
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: other}
spec: {selector: {app: catalog}, clusterIP: 10.96.9.9, ports: [{name: http-web, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: catalog-z
  namespace: other
  labels: {app: catalog, topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1a}
spec: {nodeName: node-c}
status: {podIP: 10.244.2.9}
"#;
    let r = resources_with(None, extra);
    let hosts = &r.route_configurations["80"].virtual_hosts;
    let all: Vec<&String> = hosts.iter().flat_map(|h| &h.domains).collect();
    let unique: std::collections::BTreeSet<&&String> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "Envoy refuses a domain on two virtual hosts: {all:?}");
    let other = hosts.iter().find(|h| h.name == "catalog.other.svc.cluster.local:80").unwrap();
    assert!(!other.domains.iter().any(|d| d == "catalog"), "{:?}", other.domains);
    assert!(other.domains.iter().any(|d| d == "catalog.other:80"));
    let cla = &r.cluster_load_assignments["outbound|80||catalog.other.svc.cluster.local"];
    let locality = cla.endpoints[0].locality.as_ref().unwrap();
    assert_eq!((locality.region.as_str(), locality.zone.as_str()), ("eu", "eu-1a"));
    assert_eq!(endpoints(cla), ["10.244.2.9:80"]);
}

/// Istio's egress TLS origination shape: the entry's port 80 (targetPort 443) gets a cluster whose transport
/// socket originates TLS with the host as SNI; port 443 (no tls for it) gets none. A rule asking the same of a
/// mesh Service is warned about and changes nothing.
#[test]
fn a_service_entry_port_with_simple_tls_gets_a_cluster_that_originates_tls() {
    use keel_proto::tls::{common_tls_context::ValidationContextType, UpstreamTlsContext};
    let extra = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: istioinaction}\n\
spec:\n  hosts: [api.example.com]\n  ports:\n  - {number: 80, name: http, protocol: HTTP, targetPort: 443}\n  - {number: 443, name: https, protocol: HTTPS}\n  \
resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: istioinaction}\n\
spec:\n  host: api.example.com\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      \
tls: {mode: SIMPLE, caCertificates: /etc/keel/api-ca.pem, subjectAltNames: [api.example.com]}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: webapp, namespace: istioinaction}\n\
spec:\n  host: webapp\n  trafficPolicy: {tls: {mode: SIMPLE}}\n";
    let r = resources_with(None, extra);
    let socket = r.clusters["outbound|80||api.example.com"].transport_socket.as_ref().expect("port 80 originates TLS");
    assert_eq!(socket.name, keel_proto::TLS_TRANSPORT_SOCKET);
    let Some(keel_proto::core::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!("{socket:?}") };
    assert_eq!(any.type_url, keel_proto::UPSTREAM_TLS_CONTEXT_TYPE_URL);
    let context = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(context.sni, "api.example.com");
    let common = context.common_tls_context.unwrap();
    let Some(ValidationContextType::ValidationContext(validation)) = common.validation_context_type else { panic!("{common:?}") };
    assert_eq!(
        validation.trusted_ca.and_then(|d| d.specifier),
        Some(keel_proto::core::data_source::Specifier::Filename("/etc/keel/api-ca.pem".into()))
    );
    assert_eq!(validation.match_subject_alt_names.len(), 1);
    assert!(common.tls_certificates.is_empty(), "SIMPLE: no client certificate");
    assert!(!r.clusters.contains_key("outbound|443||api.example.com"), "port 443 has no TLS settings: no cluster");
    assert!(r.clusters["outbound|80||webapp.istioinaction.svc.cluster.local"].transport_socket.is_none());
    assert!(
        r.warnings.iter().any(|w| w.starts_with("DestinationRule istioinaction/webapp: tls: TLS origination applies to ServiceEntry hosts")),
        "{:#?}",
        r.warnings
    );
}
