//! explain against a snapshot built here: capture's rules, names resolved as a pod's resolver would, the path
//! and the destination side's decision with the policy that made it, and HTTP routes.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use keel_proto::{
    route::{route, route_match::PathSpecifier, DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost},
    security::{string_match::MatchType, Action, Authorization, Clause, Match, Rule, Scope, StringMatch},
    workload::{NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload},
};

use super::*;
use crate::{
    l7_config::{
        config::ListenerConfig,
        filter_chain::{ChainFilter, FilterChainConfig},
        route_table::RouteTable,
    },
    plan::{NoNames, OutboundTrafficPolicy},
    xds::state::{Resource, WorkloadStore},
};

const ECHO: &str = "demo/echo.demo.svc.cluster.local";

fn workload(name: &str, ip: [u8; 4], node: &str, account: &str, policies: &[&str]) -> (String, Resource) {
    let w = Workload {
        uid: format!("demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        service_account: account.into(),
        trust_domain: "cluster.local".into(),
        node: node.into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
        services: if name.starts_with("echo") {
            BTreeMap::from([(ECHO.to_owned(), PortList { ports: vec![Port { service_port: 80, target_port: 8080 }] })])
        } else {
            BTreeMap::new()
        },
        ..Default::default()
    };
    (w.uid.clone(), Resource::Workload(Box::new(w)))
}

fn policy(name: &str, action: Action, principal: &str) -> (String, Resource) {
    let principals = vec![StringMatch { match_type: Some(MatchType::Exact(principal.into())) }];
    let rules = vec![Rule { clauses: vec![Clause { matches: vec![Match { principals, ..Default::default() }] }] }];
    let p = Authorization {
        name: name.into(),
        namespace: "demo".into(),
        scope: Scope::WorkloadSelector as i32,
        action: action as i32,
        rules,
        dry_run: false,
    };
    (format!("demo/{name}"), Resource::Policy(p))
}

/// client on node-0 (this node), echo-1 on node-1 behind service echo (VIP 10.96.0.10:80 → 8080), selected
/// by `policies`; `http` adds a route for port 81 answering 418 itself.
fn store(policies: Vec<(String, Resource)>, selected: &[&str]) -> WorkloadStore {
    let service = Service {
        name: "echo".into(),
        namespace: "demo".into(),
        hostname: "echo.demo.svc.cluster.local".into(),
        addresses: vec![NetworkAddress { network: String::new(), address: vec![10, 96, 0, 10] }],
        ports: vec![Port { service_port: 80, target_port: 8080 }, Port { service_port: 81, target_port: 8081 }],
        ..Default::default()
    };
    let mut resources = vec![
        workload("client", [10, 0, 0, 5], "node-0", "client", &[]),
        workload("echo-1", [10, 0, 1, 5], "node-1", "echo", selected),
        (ECHO.into(), Resource::Service(service)),
    ];
    resources.extend(policies);
    resources.extend(teapot_route());
    let store = WorkloadStore::default();
    store.apply(resources, &[]);
    store
}

/// Port 81: `GET /tea` answered 418 by keel; nothing else routed.
fn teapot_route() -> Vec<(String, Resource)> {
    let routes = RouteConfiguration {
        name: "81".into(),
        virtual_hosts: vec![VirtualHost {
            name: "echo.demo.svc.cluster.local:81".into(),
            domains: ["echo.demo.svc.cluster.local", "echo.demo.svc.cluster.local:81", "echo", "echo:81"].map(String::from).to_vec(),
            routes: vec![Route {
                name: "tea".into(),
                r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/tea".into())), ..Default::default() }),
                action: Some(route::Action::DirectResponse(DirectResponseAction { status: 418, body: None })),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let chain = FilterChainConfig {
        name: "0.0.0.0_81".into(),
        tls_client_hello: false,
        server_names: vec![],
        tls: None,
        filter: ChainFilter::Http { route_config: "81".into(), faults: false },
    };
    let listener = ListenerConfig { name: "0.0.0.0_81".into(), port: 81, chains: vec![chain] };
    vec![
        ("0.0.0.0_81".into(), Resource::Listener(Arc::new(listener))),
        ("81".into(), Resource::Routes(Arc::new(RouteTable::compile(&routes).unwrap()))),
    ]
}

fn client_pod() -> PodSpec {
    PodSpec {
        namespace: "demo".into(),
        name: "client".into(),
        service_account: "client".into(),
        netns: PathBuf::from("/var/run/netns/client"),
        cgroup: PathBuf::from("/sys/fs/cgroup/client"),
        uid: None,
        netns_discovered: false,
        ips: vec!["10.0.0.5".parse().unwrap()],
        budgets: Default::default(),
    }
}

fn ask(store: &WorkloadStore, exclusions: &Exclusions, query: ExplainQuery) -> Result<Explanation, ExplainError> {
    let snapshot = store.snapshot();
    let on_node = |ip: IpAddr| ip == IpAddr::from([10, 0, 0, 5]);
    let pods = [client_pod()];
    let inputs = Inputs {
        plan: plan::Inputs {
            snapshot: &snapshot,
            on_node: &on_node,
            certificates: true,
            mesh: true,
            responder: false,
            outbound_policy: OutboundTrafficPolicy::AllowAny,
            resolved: &NoNames,
        },
        pods: &pods,
        capture: CaptureMode::Ebpf,
        exclusions,
        certificates: &[],
    };
    explain(&inputs, &query)
}

fn query(from: &str, to: &str) -> ExplainQuery {
    ExplainQuery { from: from.into(), to: to.into(), http: None }
}

#[test]
fn an_allowed_connection_names_the_path_the_peer_and_the_policy() {
    let store = store(vec![policy("allow-client", Action::Allow, "cluster.local/ns/demo/sa/client")], &["demo/allow-client"]);
    let e = ask(&store, &Exclusions::default(), query("demo/client", "echo:80")).unwrap();
    assert_eq!(e.destination, "10.96.0.10:80: service demo/echo.demo.svc.cluster.local port 80");
    assert!(e.capture.starts_with("yes: demo/client enrolled on this node (eBPF capture)"), "{}", e.capture);
    assert_eq!(e.plan, "relayed as bytes (L4)");
    assert_eq!(e.upstreams.len(), 1);
    let upstream = &e.upstreams[0];
    assert_eq!((upstream.address.as_str(), upstream.path.as_str()), ("10.0.1.5:8080", "hbone"));
    assert_eq!(upstream.peer_identity.as_deref(), Some("spiffe://cluster.local/ns/demo/sa/echo"));
    assert_eq!(upstream.policy.as_deref(), Some("demo/allow-client"));
    assert_eq!((e.verdict.outcome, e.verdict.reason.as_str()), (Outcome::Allowed, "connection: allowed by ALLOW policy demo/allow-client"));
    assert!(e.certificates.contains(&"peer must present spiffe://cluster.local/ns/demo/sa/echo".to_owned()), "{:?}", e.certificates);
    let text = render::text(&e);
    assert!(text.contains("ENDPOINT     10.0.1.5:8080 demo/echo-1 (node-1) via hbone"), "{text}");
    assert!(text.ends_with("VERDICT      allowed: connection: allowed by ALLOW policy demo/allow-client\n"), "{text}");
}

#[test]
fn a_denied_connection_names_the_policy_that_denied_it() {
    let store = store(vec![policy("deny-client", Action::Deny, "cluster.local/ns/demo/sa/client")], &["demo/deny-client"]);
    // The full hostname and the pod's address work as well as the short name.
    let e = ask(&store, &Exclusions::default(), query("10.0.0.5", "echo.demo.svc.cluster.local:80")).unwrap();
    assert_eq!((e.verdict.outcome, e.verdict.reason.as_str()), (Outcome::Denied, "connection: denied by DENY policy demo/deny-client"));
    let store = crate::explain::tests::store(vec![policy("allow-other", Action::Allow, "cluster.local/ns/demo/sa/other")], &["demo/allow-other"]);
    let e = ask(&store, &Exclusions::default(), query("demo/client", "echo.demo:80")).unwrap();
    assert_eq!(e.verdict.reason, "connection: no ALLOW policy matched (1 candidates)");
}

#[test]
fn what_capture_leaves_alone_is_said_so_with_the_flag_that_did_it() {
    let store = store(vec![], &[]);
    let exclusions = Exclusions { outbound_ports: vec![80], outbound_cidrs: vec!["192.0.2.0/24".parse().unwrap()], inbound_ports: vec![] };
    let e = ask(&store, &exclusions, query("demo/client", "echo:80")).unwrap();
    assert_eq!((e.verdict.outcome, e.verdict.reason.as_str()), (Outcome::NotCaptured, "not captured: port 80 is excluded (--exclude-outbound-port)"));
    let e = ask(&store, &exclusions, query("demo/client", "192.0.2.7:443")).unwrap();
    assert_eq!(e.verdict.reason, "not captured: 192.0.2.7 is in excluded CIDR 192.0.2.0/24 (--exclude-outbound-cidr)");
    // echo-1 is known but not enrolled here.
    let e = ask(&store, &Exclusions::default(), query("demo/echo-1", "10.0.0.5:8080")).unwrap();
    assert_eq!(e.verdict.reason, "not captured: the pod is not enrolled on this node's keel");
}

#[test]
fn refusals_and_bad_queries_name_what_they_could_not_find() {
    let store = store(vec![], &[]);
    let e = ask(&store, &Exclusions::default(), query("demo/client", "echo:15008")).unwrap();
    assert_eq!(e.verdict.outcome, Outcome::Denied);
    assert_eq!(e.verdict.reason, "refusing 10.96.0.10:15008: a keel port, not an application's");
    let e = ask(&store, &Exclusions::default(), query("demo/client", "echo:9999")).unwrap();
    assert_eq!(e.verdict.reason, format!("service {ECHO} has no port 9999"));
    let err = ask(&store, &Exclusions::default(), query("demo/nobody", "echo:80")).unwrap_err();
    assert_eq!(err, ExplainError::UnknownSource("demo/nobody".into()));
    let err = ask(&store, &Exclusions::default(), query("demo/client", "nothing.here:80")).unwrap_err();
    assert_eq!(err.to_string(), "--to nothing.here: no service or ServiceEntry host of that name");
    assert_eq!(ask(&store, &Exclusions::default(), query("demo/client", "echo")).unwrap_err(), ExplainError::BadDestination("echo".into()));
}

#[test]
fn http_is_routed_by_the_l7_engine_route_table() {
    let store = store(vec![], &[]);
    let http = |path: &str| ExplainQuery {
        http: Some(HttpQuery { method: "GET".into(), path: path.into(), headers: vec![] }),
        ..query("demo/client", "echo:81")
    };
    let e = ask(&store, &Exclusions::default(), http("/tea")).unwrap();
    assert_eq!(e.plan, "HTTP: the L7 engine serves it (service echo.demo.svc.cluster.local port 81)");
    let route = e.route.as_ref().unwrap();
    assert_eq!(route.request, "GET /tea (Host echo:81)");
    assert_eq!(route.route.as_deref(), Some("tea: prefix /tea"));
    assert_eq!((e.verdict.outcome, e.verdict.reason.as_str()), (Outcome::Allowed, "answered by keel: direct response 418"));
    // With the full name as Host the same route; another path matches none.
    let e = ask(&store, &Exclusions::default(), ExplainQuery { to: "echo.demo.svc.cluster.local:81".into(), ..http("/coffee") }).unwrap();
    assert_eq!(e.verdict.reason, "404 (NR): no route of virtual host echo.demo.svc.cluster.local:81 matches GET /coffee");
    let bad = ExplainQuery { http: Some(HttpQuery { method: "GET".into(), path: "tea".into(), headers: vec![] }), ..query("demo/client", "echo:81") };
    assert_eq!(ask(&store, &Exclusions::default(), bad).unwrap_err(), ExplainError::BadRequestLine("GET tea".into()));
}
