//! Translation of Services, Pods, VirtualServices and DestinationRules into the Envoy L7 subset keel's engine reads
//! (proto/ENVOY-SUBSET.md): per HTTP service port a Listener and a RouteConfiguration, and per service port and
//! DestinationRule subset a Cluster with its ClusterLoadAssignment. Names follow Istio's outbound config, so
//! `keel pc` output reads like `istioctl proxy-config`: clusters `outbound|<port>|<subset>|<host>`, route configs
//! named by port, listeners `0.0.0.0_<port>`.
//!
//! Only objects that passed their own checks are used. What can only be checked across objects (a subset no
//! DestinationRule defines, a destination host that is no Service) is a warning; the route still points at the
//! cluster it names, which then exists with no endpoints, so requests get 503 "no healthy upstream" (UH) — the
//! answer an Istio user sees for a subset whose pods are gone — instead of the whole config being refused.
mod actions;
mod clusters;
mod endpoints;
pub mod gateway;
pub mod gateway_tls;
mod listeners;
mod matches;
mod policy;
mod routes;
mod upstream_tls;

pub(super) use actions::GRPC_STATUS_NAMES;

#[cfg(test)]
mod tests;

use std::collections::{btree_map::Entry, BTreeMap, BTreeSet, HashMap};

use keel_proto::{cluster::Cluster, endpoint::ClusterLoadAssignment, listener::Listener, route::RouteConfiguration};

use super::{destination_rule, hostname, service_entry, virtual_service, Mesh};
use crate::objects::{DestinationRule, EndpointSlice, Object, Pod, Service, ServiceEntry, ServicePort, VirtualService};

/// The L7 resources, each keyed by its resource name.
#[derive(Debug, Default)]
pub struct L7 {
    pub listeners: BTreeMap<String, Listener>,
    pub route_configurations: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    pub cluster_load_assignments: BTreeMap<String, ClusterLoadAssignment>,
    /// What each gateway pod serves, by `<namespace>/<pod>` (see gateway.rs).
    pub gateway_views: BTreeMap<String, gateway::GatewayView>,
    pub warnings: Vec<String>,
}

/// One upstream cluster: a service port, optionally narrowed to a DestinationRule subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
}

impl ClusterKey {
    /// Istio's outbound cluster name.
    pub fn name(&self) -> String {
        format!("outbound|{}|{}|{}", self.port, self.subset.as_deref().unwrap_or(""), self.host)
    }
}

/// The valid mesh config, indexed by fully qualified host name.
struct Mesh7<'a> {
    mesh: &'a Mesh,
    services: BTreeMap<String, &'a Service>,
    /// Workload pods by namespace: a Service's endpoints are in its own namespace, and scanning only that one keeps a
    /// snapshot's translation from growing with services × pods of the whole cluster.
    pods_by_namespace: HashMap<&'a str, Vec<&'a Pod>>,
    /// The EndpointSlices, for Services without a selector.
    slices: Vec<&'a EndpointSlice>,
    rules: BTreeMap<String, &'a DestinationRule>,
    virtual_services: BTreeMap<String, &'a VirtualService>,
    /// Valid ServiceEntries by host (the first for a host), for TLS origination.
    service_entries: BTreeMap<String, &'a ServiceEntry>,
}

/// Istio's rule for hosts in VirtualServices and DestinationRules: a name without a dot is a short name in the
/// object's own namespace; anything with a dot is taken as written.
fn resolve_host(mesh: &Mesh, host: &str, namespace: &str) -> String {
    if host.contains('.') {
        host.to_owned()
    } else {
        hostname(mesh, host, namespace)
    }
}

impl<'a> Mesh7<'a> {
    fn of(mesh: &'a Mesh, objects: &'a [Object], warnings: &mut Vec<String>) -> Self {
        let mut m = Mesh7 {
            mesh,
            services: BTreeMap::new(),
            pods_by_namespace: HashMap::new(),
            slices: vec![],
            rules: BTreeMap::new(),
            virtual_services: BTreeMap::new(),
            service_entries: BTreeMap::new(),
        };
        for object in objects {
            match object {
                Object::Service(s) => {
                    m.services.entry(hostname(mesh, &s.metadata.name, &s.metadata.namespace)).or_insert(s);
                }
                Object::Pod(p) if p.is_workload() => m.pods_by_namespace.entry(p.metadata.namespace.as_str()).or_default().push(p),
                Object::EndpointSlice(slice) => m.slices.push(slice),
                Object::ServiceEntry(entry) if service_entry::check(entry).is_ok() => {
                    for host in &entry.spec.hosts {
                        m.service_entries.entry(host.to_ascii_lowercase()).or_insert(entry);
                    }
                }
                Object::DestinationRule(rule) if destination_rule::check(rule).is_ok() => {
                    let host = resolve_host(mesh, &rule.spec.host, &rule.metadata.namespace);
                    // Istio merges DestinationRules per host only in special cases; one rule per host is the
                    // rule users rely on, so the first (in snapshot order) wins and the others are named.
                    match m.rules.entry(host) {
                        Entry::Occupied(taken) => {
                            warnings.push(format!("{}: host {} already has a DestinationRule: ignored for L7", object.reference(), taken.key()))
                        }
                        Entry::Vacant(free) => {
                            free.insert(rule);
                        }
                    }
                }
                Object::VirtualService(vs) if vs.spec.applies_to_mesh() && virtual_service::check(vs).is_ok() => {
                    for host in &vs.spec.hosts {
                        if host.contains('*') {
                            warnings.push(format!("{}: wildcard host {host} is not translated to L7 routes", object.reference()));
                            continue;
                        }
                        let host = resolve_host(mesh, host, &vs.metadata.namespace);
                        // The same host listed twice (short name and FQDN) is one host, not a conflict.
                        if m.virtual_services.get(&host).is_some_and(|first| !std::ptr::eq(*first, vs)) {
                            warnings.push(format!("{}: host {host} already has a VirtualService: ignored for L7", object.reference()));
                        } else {
                            m.virtual_services.entry(host).or_insert(vs);
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// The ports of `service` that carry HTTP: declared by name or appProtocol, or claimed by a VirtualService.
    fn http_ports(&self, host: &str, service: &Service) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = service.spec.ports.iter().filter(|p| declares_http(p)).map(|p| p.port).collect();
        let declared: BTreeSet<u16> = service.spec.ports.iter().map(|p| p.port).collect();
        // A VirtualService http route names a port through `match.port`; without one, it applies to the
        // service's only port (with several ports, which one is meant is not said, so none is made L7).
        if let Some(vs) = self.virtual_services.get(host) {
            for route in &vs.spec.http {
                ports.extend(route.matches.iter().filter_map(|m| m.port).filter_map(|p| u16::try_from(p).ok()).filter(|p| declared.contains(p)));
            }
            if !vs.spec.http.is_empty() && service.spec.ports.len() == 1 {
                ports.insert(service.spec.ports[0].port);
            }
        }
        // A http route's destination port is spoken to in HTTP, whatever the destination declares.
        for vs in self.virtual_services.values() {
            for destination in vs.spec.http.iter().flat_map(|r| r.route.iter().map(|d| &d.destination)) {
                if resolve_host(self.mesh, &destination.host, &vs.metadata.namespace) == host {
                    ports.extend(destination.port.as_ref().and_then(|p| u16::try_from(p.number).ok()).filter(|p| declared.contains(p)));
                }
            }
        }
        ports
    }

    fn subset_defined(&self, host: &str, subset: &str) -> bool {
        self.rules.get(host).is_some_and(|r| r.spec.subsets.iter().any(|s| s.name == subset))
    }
}

/// Istio's protocol selection for Kubernetes ports: `appProtocol`, else the port name `<protocol>[-<suffix>]`.
fn declares_http(port: &ServicePort) -> bool {
    port_protocol(port).is_some()
}

/// Whether upstream connections speak HTTP/2 (h2c): declared http2 or grpc.
fn declares_http2(port: &ServicePort) -> bool {
    matches!(port_protocol(port).as_deref(), Some("http2" | "grpc"))
}

fn port_protocol(port: &ServicePort) -> Option<String> {
    let http = |p: &str| matches!(p, "http" | "http2" | "grpc").then(|| p.to_owned());
    if let Some(app) = &port.app_protocol {
        return http(&app.to_ascii_lowercase());
    }
    let name = port.name.as_deref()?.to_ascii_lowercase();
    http(name.split_once('-').map_or(name.as_str(), |(protocol, _)| protocol))
}

pub fn translate(mesh: &Mesh, objects: &[Object]) -> L7 {
    let mut out = L7::default();
    let inputs = Mesh7::of(mesh, objects, &mut out.warnings);
    let mut cluster_keys = BTreeSet::new();
    let mut route_configurations: BTreeMap<u16, routes::RouteTable> = BTreeMap::new();
    for (host, service) in &inputs.services {
        for port in inputs.http_ports(host, service) {
            // Every subset of every HTTP port gets its cluster, routed to or not, as Istio does: a
            // VirtualService added later then finds its clusters ready.
            cluster_keys.insert(ClusterKey { host: host.clone(), port, subset: None });
            for subset in inputs.rules.get(host).into_iter().flat_map(|r| r.spec.subsets.iter()) {
                cluster_keys.insert(ClusterKey { host: host.clone(), port, subset: Some(subset.name.clone()) });
            }
            let table = route_configurations.entry(port).or_insert_with(|| routes::RouteTable::new(port));
            let virtual_host = routes::virtual_host(&inputs, host, service, port, &mut cluster_keys, &mut out.warnings);
            table.add(virtual_host);
        }
    }
    out.gateway_views = gateway::translate(&inputs, objects, &mut cluster_keys, &mut out.warnings);
    tls_origination(&inputs, &mut cluster_keys, &mut out.warnings);
    for key in &cluster_keys {
        let name = key.name();
        out.clusters.insert(name.clone(), clusters::cluster(&inputs, key, &mut out.warnings));
        out.cluster_load_assignments.insert(name, endpoints::load_assignment(&inputs, key));
    }
    for (port, table) in route_configurations {
        out.listeners.insert(listeners::name(port), listeners::listener(port));
        out.route_configurations.insert(port.to_string(), table.into_route_configuration());
    }
    out
}

/// A cluster for each ServiceEntry port whose DestinationRule originates TLS: what keel's L4 relay reads the TLS
/// settings of for connections to the entry. A rule that asks it of a host that is no ServiceEntry is warned about:
/// between mesh workloads, keel's mTLS already carries the bytes.
fn tls_origination(inputs: &Mesh7<'_>, cluster_keys: &mut BTreeSet<ClusterKey>, warnings: &mut Vec<String>) {
    for (host, rule) in &inputs.rules {
        let policies = rule.spec.traffic_policy.iter().map(|p| &**p).chain(rule.spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
        let originates = policies.into_iter().any(|p| {
            p.tls.as_ref().is_some_and(|t| t.originates()) || p.port_level_settings.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.originates()))
        });
        if !originates {
            continue;
        }
        let Some(entry) = inputs.service_entries.get(host) else {
            warnings.push(format!(
                "DestinationRule {}/{}: tls: TLS origination applies to ServiceEntry hosts, and {host} is none: ignored (mesh traffic is keel's mTLS)",
                rule.metadata.namespace, rule.metadata.name
            ));
            continue;
        };
        for port in &entry.spec.ports {
            let key = ClusterKey { host: host.clone(), port: port.number, subset: None };
            if policy::merged(Some(rule), None, port.number).tls.is_some_and(|t| t.originates()) {
                cluster_keys.insert(key);
            }
        }
    }
}
