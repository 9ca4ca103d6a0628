//! What a captured connection is: one pure decision over explicit inputs (the workload snapshot, which pods are
//! on this node, whether keel has certificates, the mode), made before a byte is carried, as ztunnel's outbound
//! does. The L4 relay and the L7 engine execute [`Plan`]s; this module executes nothing and imports nothing of
//! theirs (only `xds` state).
pub mod destination;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use keel_ebpf_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use keel_proto::workload::{Service, TunnelProtocol, Workload};
use serde::Serialize;

use crate::{l7_config::upstream_tls::UpstreamTls, xds::state::Snapshot};
use destination::{Route, RouteError};

/// Which way a connection crosses the pod boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// How a connection left keel, as logs and `keel connections` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    Direct,
    SameNode,
    Hbone,
    /// Terminated by the L7 engine; each request went its own way (see the access log).
    Http,
    /// Carried by the kernel between two pods of this node under a same-node bypass verdict (see `crate::bypass`).
    Bypass,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::SameNode => "same-node",
            Path::Hbone => "hbone",
            Path::Http => "http",
            Path::Bypass => "bypass",
        }
    }
}

/// keel's own ports in a pod and on the node: 15001 (outbound capture), 15006 (inbound capture), 15008 (HBONE),
/// 15000 (admin), 15020 and 15021 (metrics and health, as Istio reserves them). No captured connection or
/// HBONE stream is ever delivered to one: keel tunnelling into itself would re-evaluate the inner connection
/// with the pod as its source and bypass the policy that applied to the outer one.
pub const KEEL_PORTS: [u16; 6] = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT, 15020, 15021];
const ADMIN_PORT: u16 = 15000;

pub fn is_keel_port(port: u16) -> bool {
    KEEL_PORTS.contains(&port)
}

/// The ports capture hands to keel: an outbound connection to one would loop back into keel.
fn is_loop_port(port: u16) -> bool {
    port == OUTBOUND_PORT || port == INBOUND_PORT || port == HBONE_PORT
}

/// Why keel refuses a captured connection before carrying a byte of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Addressed to keel's own port: it would come straight back to keel (a loop), or reach keel's own
    /// endpoints inside the pod by way of capture.
    #[error("refusing {0}: a keel port, not an application's")]
    KeelPort(SocketAddrV4),
    /// An enrolled pod keel has no Workload for has no identity to present: carrying its connection would send
    /// it into the mesh unauthenticated (or in plaintext to another node).
    #[error("refusing: keel has no Workload for source pod {0} (no identity to present)")]
    UnknownSourceWorkload(Ipv4Addr),
    /// `outboundTrafficPolicy: REGISTRY_ONLY`, and the address is no service, workload or ServiceEntry host
    /// keel knows (Envoy's BlackHoleCluster).
    #[error("refusing {0}: outbound traffic policy REGISTRY_ONLY, and no service, workload or ServiceEntry has this address")]
    NotInRegistry(SocketAddrV4),
}

/// Istio's `outboundTrafficPolicy.mode` (MeshConfig): what happens to a connection to an address the mesh does
/// not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboundTrafficPolicy {
    /// Relayed to the address as dialled (Istio's default).
    #[default]
    AllowAny,
    /// Refused and counted: only services, workloads and ServiceEntry hosts (their addresses, and what their
    /// DNS names resolve to) are reachable.
    RegistryOnly,
}

/// Outbound bytes relayed to `route.upstream`, the way `path` says; inside TLS keel originates when the service's
/// cluster says so (a ServiceEntry's DestinationRule `tls`).
#[derive(Debug)]
pub struct Relay {
    pub route: Route,
    pub path: Path,
    pub source: Option<Arc<Workload>>,
    pub tls: Option<Arc<UpstreamTls>>,
}

/// What to do with a captured connection.
#[derive(Debug)]
pub enum Plan {
    Refuse(Refused),
    /// Benchmark mode: keel answers the request itself.
    Respond,
    /// HTTP to a service VIP on a port the L7 config routes for that service: the L7 engine takes it.
    Http {
        service: Arc<Service>,
        source: Option<Arc<Workload>>,
    },
    /// Outbound bytes relayed (see [`Relay`]).
    Relay(Relay),
    /// Outbound to a destination that resolves to nothing (a VIP without the port or without a healthy endpoint).
    NoRoute {
        source: Option<Arc<Workload>>,
        error: RouteError,
    },
    /// Plaintext inbound: authorized on the destination side, then delivered to the application.
    Inbound,
}

/// What the plan is decided over, besides the connection itself.
pub struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    /// Whether an address is a pod enrolled on this node.
    pub on_node: &'a dyn Fn(IpAddr) -> bool,
    /// keel has a certificate source (a control plane or local CA).
    pub certificates: bool,
    /// keel follows a workload source; off only in `--capture-only` mode.
    pub mesh: bool,
    /// Benchmark mode: answer outbound HTTP requests in keel.
    pub responder: bool,
    pub outbound_policy: OutboundTrafficPolicy,
    /// What ServiceEntry hosts with `resolution: DNS` resolve to (keel's resolver).
    pub resolved: &'a dyn Resolved,
}

/// A resolver that knows no name (tests, and what nothing resolves means).
#[cfg(test)]
pub(crate) struct NoNames;

#[cfg(test)]
impl Resolved for NoNames {
    fn addresses(&self, _: &str) -> Vec<Ipv4Addr> {
        Vec::new()
    }

    fn is_known(&self, _: IpAddr) -> bool {
        false
    }
}

/// What keel's resolver knows of the hostname endpoints (ServiceEntry hosts with `resolution: DNS`).
pub trait Resolved {
    /// The addresses `host` resolves to now.
    fn addresses(&self, host: &str) -> Vec<Ipv4Addr>;
    /// Whether `ip` is (or very recently was) what such a host resolves to.
    fn is_known(&self, ip: IpAddr) -> bool;
}

/// Decides a captured connection from `pod_ip` (outbound) or to it (inbound), originally addressed to
/// `destination`.
pub fn plan(inputs: &Inputs<'_>, direction: Direction, pod_ip: Ipv4Addr, destination: SocketAddrV4) -> Plan {
    if inputs.responder && direction == Direction::Outbound {
        return Plan::Respond;
    }
    if is_loop_port(destination.port()) || (direction == Direction::Inbound && is_keel_port(destination.port())) {
        return Plan::Refuse(Refused::KeelPort(destination));
    }
    if direction == Direction::Inbound {
        return Plan::Inbound;
    }
    let snapshot = inputs.snapshot;
    let source = snapshot.workloads_by_ip.get(&IpAddr::V4(pod_ip)).cloned();
    if inputs.mesh && source.is_none() {
        return Plan::Refuse(Refused::UnknownSourceWorkload(pod_ip));
    }
    if let Some(service) = http_service(snapshot, destination) {
        return Plan::Http { service, source };
    }
    match destination::resolve(snapshot, destination, inputs.resolved) {
        Err(error) => Plan::NoRoute { source, error },
        Ok(route) if route.service.is_none() && route.workload.is_none() && inputs.outbound_policy == OutboundTrafficPolicy::RegistryOnly => {
            if inputs.resolved.is_known(IpAddr::V4(*destination.ip())) {
                Plan::Relay(Relay { route, path: Path::Direct, source, tls: None })
            } else {
                Plan::Refuse(Refused::NotInRegistry(destination))
            }
        }
        Ok(route) => {
            let path = choose_path(source.as_deref(), &route, (inputs.on_node)(IpAddr::V4(*route.upstream.ip())), inputs.certificates);
            let tls = route.service.as_ref().and_then(|service| upstream_tls(snapshot, &service.hostname, destination.port()));
            Plan::Relay(Relay { route, path, source, tls })
        }
    }
}

/// The TLS keel originates towards a service port: its cluster's (`outbound|<port>||<host>`, as keel-control
/// names it) transport socket, if it has one.
fn upstream_tls(snapshot: &Snapshot, hostname: &str, port: u16) -> Option<Arc<UpstreamTls>> {
    snapshot.l7.cluster_configs.get(&format!("outbound|{port}||{hostname}"))?.upstream_tls.clone()
}

/// A connection to a service VIP on a port the L7 config routes for that service is HTTP for the L7 engine;
/// everything else stays L4.
fn http_service(snapshot: &Snapshot, destination: SocketAddrV4) -> Option<Arc<Service>> {
    let service = snapshot.services_by_vip.get(&IpAddr::V4(*destination.ip()))?;
    let (_, table) = snapshot.l7.route_table(destination.port(), None)?;
    table.virtual_host(&service.hostname)?;
    Some(service.clone())
}

/// On the destination side: the service (its hostname and service port) whose HTTP port a connection to
/// `workload`'s `target_port` serves, if the L7 config routes that port for it. Such a port carries HTTP
/// whatever client sends through it, so keel may parse it there; any other port is relayed as bytes.
pub fn inbound_http_service<'s>(snapshot: &'s Snapshot, workload: &Workload, target_port: u16) -> Option<(&'s str, u16)> {
    workload.services.keys().find_map(|name| {
        let service = snapshot.services.get(name)?;
        service.ports.iter().find_map(|port| {
            let service_port = u16::try_from(port.service_port).ok()?;
            if destination::target_port(workload, name, service_port, port.target_port)? != target_port {
                return None;
            }
            let (_, table) = snapshot.l7.route_table(service_port, None)?;
            table.virtual_host(&service.hostname)?;
            Some((service.hostname.as_str(), service_port))
        })
    })
}

/// How to reach `route` from `source`: HBONE to a meshed workload on another node, plain TCP inside the node to
/// a meshed pod of this node, plain TCP directly otherwise (not meshed, no source identity, or no certificates).
pub fn choose_path(source: Option<&Workload>, route: &Route, upstream_on_node: bool, certificates: bool) -> Path {
    let meshed = route.workload.as_ref().is_some_and(|w| w.tunnel_protocol == TunnelProtocol::Hbone as i32);
    if !meshed || source.is_none() {
        return Path::Direct;
    }
    if upstream_on_node {
        return Path::SameNode;
    }
    if !certificates {
        // No certificate source (keel runs without a control plane or local CA): nothing to prove identity with.
        return Path::Direct;
    }
    Path::Hbone
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keel_proto::workload::{NetworkAddress, Port, PortList};

    use super::*;
    use crate::{
        l7_config::{config::ListenerConfig, route_table::RouteTable},
        xds::state::{Resource, WorkloadStore},
    };

    fn workload(uid: &str, ip: [u8; 4], meshed: bool) -> (String, Resource) {
        let w = Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: if meshed { TunnelProtocol::Hbone } else { TunnelProtocol::None } as i32,
            services: BTreeMap::from([(
                "demo/echo.demo.svc.cluster.local".to_owned(),
                PortList { ports: vec![Port { service_port: 80, target_port: 8080 }] },
            )]),
            ..Default::default()
        };
        (uid.into(), Resource::Workload(Box::new(w)))
    }

    /// HTTP routes for the service on port 80, as a control plane's Listener and RouteConfiguration give them.
    fn l7_routes() -> Vec<(String, Resource)> {
        use keel_proto::route::{
            route, route_action::ClusterSpecifier, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
        };
        let routes = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "echo".into(),
                domains: vec!["echo.demo.svc.cluster.local".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let listener = ListenerConfig {
            name: "0.0.0.0_80".into(),
            port: 80,
            chains: vec![crate::l7_config::filter_chain::FilterChainConfig {
                name: "0.0.0.0_80".into(),
                tls_client_hello: false,
                server_names: vec![],
                tls: None,
                filter: crate::l7_config::filter_chain::ChainFilter::Http { route_config: "80".into(), faults: false },
            }],
        };
        vec![
            ("0.0.0.0_80".into(), Resource::Listener(Arc::new(listener))),
            ("80".into(), Resource::Routes(Arc::new(RouteTable::compile(&routes).unwrap()))),
        ]
    }

    fn store() -> WorkloadStore {
        let service = Service {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![10, 96, 0, 10] }],
            ports: vec![Port { service_port: 80, target_port: 8080 }],
            ..Default::default()
        };
        let store = WorkloadStore::default();
        store.apply(
            vec![
                workload("client", [10, 0, 0, 1], true),
                workload("same-node", [10, 0, 0, 2], true),
                workload("other-node", [10, 0, 1, 3], true),
                workload("plain", [10, 0, 1, 4], false),
                ("demo/echo.demo.svc.cluster.local".into(), Resource::Service(service)),
            ],
            &[],
        );
        store
    }

    /// The plan's shape, for the table.
    fn shape(plan: &Plan) -> String {
        match plan {
            Plan::Refuse(r) => format!("refuse: {r}"),
            Plan::Respond => "respond".into(),
            Plan::Http { service, .. } => format!("http {}", service.hostname),
            Plan::Relay(Relay { route, path, tls, .. }) => {
                format!("{} {}{}", path.as_str(), route.upstream, if tls.is_some() { " inside TLS" } else { "" })
            }
            Plan::NoRoute { error, .. } => format!("no route: {error}"),
            Plan::Inbound => "inbound".into(),
        }
    }

    #[test]
    fn a_table_of_captured_connections() {
        let store = store();
        let snapshot = store.snapshot();
        let on_node = |ip: IpAddr| ip == IpAddr::from([10, 0, 0, 1]) || ip == IpAddr::from([10, 0, 0, 2]);
        let client: Ipv4Addr = [10, 0, 0, 1].into();
        let stranger: Ipv4Addr = [10, 0, 0, 9].into();
        let mesh = Inputs {
            snapshot: &snapshot,
            on_node: &on_node,
            certificates: true,
            mesh: true,
            responder: false,
            outbound_policy: OutboundTrafficPolicy::AllowAny,
            resolved: &NoNames,
        };
        let no_certificates = Inputs { certificates: false, ..mesh };
        let capture_only = Inputs { mesh: false, certificates: false, ..mesh };
        let responder = Inputs { responder: true, ..mesh };
        let (out, inb) = (Direction::Outbound, Direction::Inbound);
        let cases: Vec<(&str, &Inputs, Direction, Ipv4Addr, &str, String)> = vec![
            (
                "unknown source workload under a mesh",
                &mesh,
                out,
                stranger,
                "10.0.1.3:80",
                "refuse: refusing: keel has no Workload for source pod 10.0.0.9 (no identity to present)".into(),
            ),
            ("unknown source in capture-only mode", &capture_only, out, stranger, "10.0.1.3:80", "direct 10.0.1.3:80".into()),
            (
                "outbound to the outbound capture port (a loop)",
                &mesh,
                out,
                client,
                "10.0.1.3:15001",
                "refuse: refusing 10.0.1.3:15001: a keel port, not an application's".into(),
            ),
            (
                "outbound to HBONE's port (a loop)",
                &mesh,
                out,
                client,
                "10.0.1.3:15008",
                "refuse: refusing 10.0.1.3:15008: a keel port, not an application's".into(),
            ),
            ("outbound to another node's admin port is no loop", &mesh, out, client, "10.0.1.3:15000", "hbone 10.0.1.3:15000".into()),
            (
                "inbound to keel's admin port",
                &mesh,
                inb,
                client,
                "10.0.0.1:15000",
                "refuse: refusing 10.0.0.1:15000: a keel port, not an application's".into(),
            ),
            ("inbound to an application port", &mesh, inb, client, "10.0.0.1:8080", "inbound".into()),
            ("same-node meshed pod", &mesh, out, client, "10.0.0.2:8080", "same-node 10.0.0.2:8080".into()),
            ("other node, with certificates", &mesh, out, client, "10.0.1.3:8080", "hbone 10.0.1.3:8080".into()),
            ("other node, without certificates", &no_certificates, out, client, "10.0.1.3:8080", "direct 10.0.1.3:8080".into()),
            ("non-mesh destination", &mesh, out, client, "10.0.1.4:8080", "direct 10.0.1.4:8080".into()),
            ("unknown destination", &mesh, out, client, "192.0.2.1:443", "direct 192.0.2.1:443".into()),
            ("service VIP without L7 routes is relayed to an endpoint", &mesh, out, client, "10.96.0.10:80", "VIP".into()),
            (
                "service VIP on a port it does not have",
                &mesh,
                out,
                client,
                "10.96.0.10:81",
                "no route: service demo/echo.demo.svc.cluster.local has no port 81".into(),
            ),
            ("responder mode answers outbound", &responder, out, client, "10.0.1.3:8080", "respond".into()),
            ("responder mode leaves inbound alone", &responder, inb, client, "10.0.0.1:8080", "inbound".into()),
        ];
        for (what, inputs, direction, pod, destination, expected) in cases {
            let got = shape(&plan(inputs, direction, pod, destination.parse().unwrap()));
            if expected == "VIP" {
                assert!(
                    ["same-node 10.0.0.2:8080", "hbone 10.0.1.3:8080", "direct 10.0.1.4:8080"].contains(&got.as_str())
                        || got.starts_with("same-node 10.0.0.1"),
                    "{what}: {got}"
                );
            } else {
                assert_eq!(got, expected, "{what}");
            }
        }
    }

    /// A resolver that knows one name: api.example.com at 192.0.2.10 (and 192.0.2.9 a moment ago).
    struct OneName;

    impl Resolved for OneName {
        fn addresses(&self, host: &str) -> Vec<Ipv4Addr> {
            if host == "api.example.com" {
                vec![[192, 0, 2, 10].into()]
            } else {
                Vec::new()
            }
        }

        fn is_known(&self, ip: IpAddr) -> bool {
            ip == IpAddr::from([192, 0, 2, 10]) || ip == IpAddr::from([192, 0, 2, 9])
        }
    }

    #[test]
    fn registry_only_refuses_unknown_addresses_and_admits_what_service_entry_hosts_resolve_to() {
        let store = store();
        // A ServiceEntry with resolution DNS: VIP 240.240.0.1:443, its endpoint the hostname api.example.com.
        let entry = Service {
            name: "api".into(),
            namespace: "demo".into(),
            hostname: "api.example.com".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![240, 240, 0, 1] }],
            ports: vec![Port { service_port: 443, target_port: 443 }],
            ..Default::default()
        };
        let endpoint = Workload {
            uid: "se-api".into(),
            name: "api".into(),
            namespace: "demo".into(),
            hostname: "api.example.com".into(),
            services: BTreeMap::from([("demo/api.example.com".to_owned(), PortList { ports: vec![Port { service_port: 443, target_port: 443 }] })]),
            ..Default::default()
        };
        store.apply(vec![("demo/api.example.com".into(), Resource::Service(entry)), ("se-api".into(), Resource::Workload(Box::new(endpoint)))], &[]);
        let snapshot = store.snapshot();
        let on_node = |_: IpAddr| false;
        let inputs = Inputs {
            snapshot: &snapshot,
            on_node: &on_node,
            certificates: true,
            mesh: true,
            responder: false,
            outbound_policy: OutboundTrafficPolicy::RegistryOnly,
            resolved: &OneName,
        };
        let client: Ipv4Addr = [10, 0, 0, 1].into();
        let to = |d: &str| shape(&plan(&inputs, Direction::Outbound, client, d.parse().unwrap()));
        // The ServiceEntry's VIP goes to what its host resolves to; the resolved address itself (and the one it
        // had a moment ago) is reachable directly; mesh services and workloads as always; anything else refused.
        assert_eq!(to("240.240.0.1:443"), "direct 192.0.2.10:443");
        assert_eq!(to("192.0.2.10:443"), "direct 192.0.2.10:443");
        assert_eq!(to("192.0.2.9:443"), "direct 192.0.2.9:443");
        assert!(to("10.96.0.10:80").ends_with(":8080"), "a mesh service is balanced over its endpoints: {}", to("10.96.0.10:80"));
        assert_eq!(to("10.0.1.4:9000"), "direct 10.0.1.4:9000", "a known workload out of the mesh");
        assert_eq!(
            to("198.51.100.7:443"),
            "refuse: refusing 198.51.100.7:443: outbound traffic policy REGISTRY_ONLY, and no service, workload or ServiceEntry has this address"
        );
        // ALLOW_ANY: the same unknown address is relayed; a name that resolves to nothing has no endpoint.
        let allow_any = Inputs { outbound_policy: OutboundTrafficPolicy::AllowAny, resolved: &NoNames, ..inputs };
        assert_eq!(shape(&plan(&allow_any, Direction::Outbound, client, "198.51.100.7:443".parse().unwrap())), "direct 198.51.100.7:443");
        assert!(
            shape(&plan(&allow_any, Direction::Outbound, client, "240.240.0.1:443".parse().unwrap())).starts_with("no route: no healthy endpoint")
        );
    }

    /// A ServiceEntry port whose cluster has a transport socket (DestinationRule `tls` SIMPLE) is relayed inside
    /// TLS keel originates; its other port, and every other destination, is not.
    #[test]
    fn a_service_entry_port_whose_cluster_originates_tls_is_relayed_inside_it() {
        use keel_proto::{
            cluster::Cluster,
            core::{transport_socket::ConfigType, TransportSocket},
            tls::UpstreamTlsContext,
        };
        use prost::Message as _;
        let store = store();
        let ports = vec![Port { service_port: 80, target_port: 443 }, Port { service_port: 8080, target_port: 8080 }];
        let entry = Service {
            name: "api".into(),
            namespace: "demo".into(),
            hostname: "api.example.com".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![240, 240, 0, 1] }],
            ports: ports.clone(),
            ..Default::default()
        };
        let endpoint = Workload {
            uid: "se-api".into(),
            name: "api".into(),
            namespace: "demo".into(),
            addresses: vec![vec![192, 0, 2, 10]],
            services: BTreeMap::from([("demo/api.example.com".to_owned(), PortList { ports })]),
            ..Default::default()
        };
        let context = UpstreamTlsContext { sni: "api.example.com".into(), ..Default::default() };
        let cluster = Cluster {
            name: "outbound|80||api.example.com".into(),
            transport_socket: Some(TransportSocket {
                name: keel_proto::TLS_TRANSPORT_SOCKET.into(),
                config_type: Some(ConfigType::TypedConfig(prost_types::Any {
                    type_url: keel_proto::UPSTREAM_TLS_CONTEXT_TYPE_URL.into(),
                    value: context.encode_to_vec(),
                })),
            }),
            ..Default::default()
        };
        let cluster = crate::l7_config::cluster_config::ClusterConfig::from_cluster(&cluster).unwrap();
        store.apply(
            vec![
                ("demo/api.example.com".into(), Resource::Service(entry)),
                ("se-api".into(), Resource::Workload(Box::new(endpoint))),
                ("outbound|80||api.example.com".into(), Resource::Cluster(Arc::new(cluster))),
            ],
            &[],
        );
        let snapshot = store.snapshot();
        let on_node = |_: IpAddr| false;
        let inputs = Inputs {
            snapshot: &snapshot,
            on_node: &on_node,
            certificates: true,
            mesh: true,
            responder: false,
            outbound_policy: OutboundTrafficPolicy::AllowAny,
            resolved: &NoNames,
        };
        let to = |d: &str| shape(&plan(&inputs, Direction::Outbound, [10, 0, 0, 1].into(), d.parse().unwrap()));
        assert_eq!(to("240.240.0.1:80"), "direct 192.0.2.10:443 inside TLS");
        assert_eq!(to("240.240.0.1:8080"), "direct 192.0.2.10:8080");
        assert_eq!(to("192.0.2.10:443"), "direct 192.0.2.10:443", "the entry's address itself is not its service port");
    }

    #[test]
    fn a_service_port_with_l7_routes_is_http_for_the_engine() {
        let store = store();
        store.apply(l7_routes(), &[]);
        let snapshot = store.snapshot();
        let on_node = |_: IpAddr| false;
        let mesh = Inputs {
            snapshot: &snapshot,
            on_node: &on_node,
            certificates: true,
            mesh: true,
            responder: false,
            outbound_policy: OutboundTrafficPolicy::AllowAny,
            resolved: &NoNames,
        };
        let client: Ipv4Addr = [10, 0, 0, 1].into();
        let got = shape(&plan(&mesh, Direction::Outbound, client, "10.96.0.10:80".parse().unwrap()));
        assert_eq!(got, "http echo.demo.svc.cluster.local");
        // Another port of the VIP has no routes: L4 (here, a port the service lacks).
        let got = shape(&plan(&mesh, Direction::Outbound, client, "10.96.0.10:81".parse().unwrap()));
        assert!(got.starts_with("no route"), "{got}");
        // A workload's own address on the routed port is not the service: L4.
        let got = shape(&plan(&mesh, Direction::Outbound, client, "10.0.1.3:80".parse().unwrap()));
        assert_eq!(got, "hbone 10.0.1.3:80");
    }
}
