//! RouteConfigurations: one per HTTP port, named by the port as Istio names its outbound route configs, with one
//! VirtualHost per service on that port. A service with a VirtualService gets the VirtualService's http routes,
//! in order (one Envoy route per `match` entry, as Istio does); a service without one gets a single default route
//! to its own cluster.
use std::collections::{BTreeMap, BTreeSet};

use keel_proto::matcher::RegexMatchAndSubstitute;
use keel_proto::route::{
    route,
    route_action::{ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy},
    weighted_cluster::ClusterWeight,
    Route, RouteAction, RouteConfiguration, VirtualHost, WeightedCluster,
};

use super::{actions, listeners::FAULT_FILTER, matches, policy, resolve_host, ClusterKey, Mesh7};
use crate::objects::{Destination, HttpAction, HttpRoute, HttpRouteDestination, RouteDestination, Service, VirtualService};

/// The virtual hosts of one port, and the domains they already claim: Envoy refuses a route configuration in
/// which two virtual hosts share a domain.
pub struct RouteTable {
    port: u16,
    virtual_hosts: Vec<VirtualHost>,
    claimed: BTreeSet<String>,
}

impl RouteTable {
    pub fn new(port: u16) -> Self {
        RouteTable { port, virtual_hosts: vec![], claimed: BTreeSet::new() }
    }

    /// Adds a virtual host, keeping only the domains no earlier host claimed. Hosts come in FQDN order, so a short
    /// name shared by services in two namespaces stays with the first namespace; the FQDN and `name.namespace`
    /// always reach each service.
    pub fn add(&mut self, mut virtual_host: VirtualHost) {
        virtual_host.domains.retain(|d| self.claimed.insert(d.clone()));
        self.virtual_hosts.push(virtual_host);
    }

    pub fn into_route_configuration(self) -> RouteConfiguration {
        RouteConfiguration { name: self.port.to_string(), virtual_hosts: self.virtual_hosts }
    }
}

/// Where a request for `host` on `port` may say it is going: short name, `name.namespace`, `name.namespace.svc`,
/// FQDN and each cluster IP, each bare and with `:port`.
fn domains(host: &str, service: &Service, port: u16) -> Vec<String> {
    let (name, namespace) = (&service.metadata.name, &service.metadata.namespace);
    let mut names = vec![host.to_owned(), name.clone(), format!("{name}.{namespace}"), format!("{name}.{namespace}.svc")];
    names.extend(service.vips().unwrap_or_default().iter().map(|ip| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }));
    names.iter().flat_map(|n| [n.clone(), format!("{n}:{port}")]).collect()
}

pub fn virtual_host(
    mesh: &Mesh7,
    host: &str,
    service: &Service,
    port: u16,
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> VirtualHost {
    let routes = match mesh.virtual_services.get(host) {
        Some(vs) => {
            let mut context = RouteContext { mesh, vs, port, cluster_keys, warnings };
            vs.spec.http.iter().enumerate().flat_map(|(i, http)| context.http_routes(i, http)).collect()
        }
        None => {
            let key = ClusterKey { host: host.to_owned(), port, subset: None };
            let action = RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(key.name())),
                timeout: Some(actions::timeout(None)),
                retry_policy: actions::retry_policy(None),
                hash_policy: hash_policy(mesh, &key).into_iter().collect(),
                ..Default::default()
            };
            cluster_keys.insert(key);
            vec![Route {
                name: "default".into(),
                r#match: Some(matches::any_path()),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }]
        }
    };
    VirtualHost { name: format!("{host}:{port}"), domains: domains(host, service, port), routes, ..Default::default() }
}

fn hash_policy(mesh: &Mesh7, key: &ClusterKey) -> Option<keel_proto::route::route_action::HashPolicy> {
    actions::hash_policy(policy::merged(mesh.rules.get(&key.host).copied(), key.subset.as_deref(), key.port).load_balancer)
}

/// The routes of `vs` on a gateway's listener on `port` (its `match.port`s name the gateway's port); the
/// clusters they name are added to `cluster_keys`.
pub fn gateway_routes(
    mesh: &Mesh7,
    vs: &VirtualService,
    port: u16,
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> Vec<Route> {
    let mut context = RouteContext { mesh, vs, port, cluster_keys, warnings };
    vs.spec.http.iter().enumerate().flat_map(|(i, http)| context.http_routes(i, http)).collect()
}

/// The clusters of a VirtualService `tcp` or `tls` route (`path` names it in warnings) on a gateway port, each
/// with its weight (a single destination takes all the traffic, as in Istio).
pub fn l4_clusters(
    mesh: &Mesh7,
    vs: &VirtualService,
    port: u16,
    path: &str,
    route: &[RouteDestination],
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> Vec<(String, u32)> {
    let mut context = RouteContext { mesh, vs, port, cluster_keys, warnings };
    route
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let key = context.destination(&format!("{path}.route[{k}].destination"), &d.destination);
            (key.name(), if route.len() == 1 { 100 } else { u32::try_from(d.weight).unwrap_or(0) })
        })
        .collect()
}

/// What translating one VirtualService's routes for one port needs.
struct RouteContext<'m, 'a> {
    mesh: &'m Mesh7<'a>,
    vs: &'a VirtualService,
    port: u16,
    cluster_keys: &'m mut BTreeSet<ClusterKey>,
    warnings: &'m mut Vec<String>,
}

impl RouteContext<'_, '_> {
    fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        let vs = &self.vs.metadata;
        self.warnings.push(format!("VirtualService {}/{}: {path}: {message}", vs.namespace, vs.name));
    }

    /// The Envoy routes of `spec.http[i]` on this port: one per match entry that applies to the port (or one
    /// matching every path when there are no match entries).
    fn http_routes(&mut self, i: usize, http: &HttpRoute) -> Vec<Route> {
        let path = format!("spec.http[{i}]");
        let mut route_matches = Vec::new();
        for (j, request) in http.matches.iter().enumerate() {
            if request.port.is_some_and(|p| p != u32::from(self.port)) {
                continue;
            }
            // A node proxy serves many source workloads at once, so a source condition cannot be a route match;
            // leaving the entry out keeps its traffic on the later routes instead of routing everyone.
            if !request.source_labels.is_empty() {
                self.warn(&format!("{path}.match[{j}].sourceLabels"), "not supported by keel's L7 engine; this match entry is left out");
                continue;
            }
            route_matches.push(matches::route_match(request));
        }
        if http.matches.is_empty() {
            route_matches.push(matches::any_path());
        }
        let Some(action) = self.action(&path, http) else { return vec![] };
        let headers = http.headers.as_ref();
        let mut template = Route {
            name: http.name.clone().unwrap_or_default(),
            action: Some(action),
            request_headers_to_add: actions::headers_to_add(headers.and_then(|h| h.request.as_ref())),
            request_headers_to_remove: actions::headers_to_remove(headers.and_then(|h| h.request.as_ref())),
            response_headers_to_add: actions::headers_to_add(headers.and_then(|h| h.response.as_ref())),
            response_headers_to_remove: actions::headers_to_remove(headers.and_then(|h| h.response.as_ref())),
            typed_per_filter_config: BTreeMap::new(),
            r#match: None,
        };
        if let Some(fault) = &http.fault {
            template.typed_per_filter_config.insert(FAULT_FILTER.into(), actions::http_fault(fault));
        }
        // With a single destination, its header operations are the route's (Istio merges them the same way).
        if let [only] = http.route.as_slice() {
            let ops = only.headers.as_ref();
            template.request_headers_to_add.extend(actions::headers_to_add(ops.and_then(|h| h.request.as_ref())));
            template.request_headers_to_remove.extend(actions::headers_to_remove(ops.and_then(|h| h.request.as_ref())));
            template.response_headers_to_add.extend(actions::headers_to_add(ops.and_then(|h| h.response.as_ref())));
            template.response_headers_to_remove.extend(actions::headers_to_remove(ops.and_then(|h| h.response.as_ref())));
        }
        route_matches.into_iter().map(|m| Route { r#match: Some(m), ..template.clone() }).collect()
    }

    fn action(&mut self, path: &str, http: &HttpRoute) -> Option<route::Action> {
        match http.action() {
            Ok(HttpAction::Route(destinations)) => Some(route::Action::Route(self.route_action(path, http, destinations))),
            Ok(HttpAction::Redirect(redirect)) => {
                let mut warnings = Vec::new();
                let action = actions::redirect(redirect, &mut |w| warnings.push(w));
                warnings.into_iter().for_each(|w| self.warn(path, w));
                Some(route::Action::Redirect(action))
            }
            Ok(HttpAction::DirectResponse(response)) => Some(route::Action::DirectResponse(actions::direct_response(response))),
            // Refused by the VirtualService check; nothing to translate.
            Ok(HttpAction::Delegate(_)) | Err(_) => None,
        }
    }

    fn route_action(&mut self, path: &str, http: &HttpRoute, destinations: &[HttpRouteDestination]) -> RouteAction {
        // Istio drops weight-0 destinations from a split; a lone destination takes everything whatever its weight.
        let weighted: Vec<(usize, &HttpRouteDestination)> =
            destinations.iter().enumerate().filter(|(_, d)| destinations.len() == 1 || d.weight > 0).collect();
        let keys: Vec<ClusterKey> =
            weighted.iter().map(|(k, d)| self.destination(&format!("{path}.route[{k}].destination"), &d.destination)).collect();
        let cluster_specifier = match keys.as_slice() {
            [only] => ClusterSpecifier::Cluster(only.name()),
            _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: weighted
                    .iter()
                    .zip(&keys)
                    .map(|((_, d), key)| {
                        let ops = d.headers.as_ref();
                        ClusterWeight {
                            name: key.name(),
                            weight: Some(d.weight as u32),
                            request_headers_to_add: actions::headers_to_add(ops.and_then(|h| h.request.as_ref())),
                            request_headers_to_remove: actions::headers_to_remove(ops.and_then(|h| h.request.as_ref())),
                            response_headers_to_add: actions::headers_to_add(ops.and_then(|h| h.response.as_ref())),
                            response_headers_to_remove: actions::headers_to_remove(ops.and_then(|h| h.response.as_ref())),
                        }
                    })
                    .collect(),
                total_weight: None,
            }),
        };
        // A route has one hash key; it is the destinations' key when they agree (the usual case: one
        // DestinationRule for the host), and none when they do not.
        let hash_policies: Vec<_> = keys.iter().map(|k| hash_policy(self.mesh, k)).collect();
        let hash_policy = match hash_policies.split_first() {
            Some((first, rest)) if rest.iter().all(|p| p == first) => first.clone(),
            _ => None,
        };
        let rewrite = http.rewrite.as_ref();
        let mut mirrors: Vec<RequestMirrorPolicy> = Vec::new();
        if let Some(mirror) = &http.mirror {
            let key = self.destination(&format!("{path}.mirror"), mirror);
            mirrors.push(RequestMirrorPolicy { cluster: key.name(), runtime_fraction: Some(actions::runtime_fraction(http.mirror_percentage)) });
        }
        for (m, mirror) in http.mirrors.iter().enumerate() {
            let key = self.destination(&format!("{path}.mirrors[{m}].destination"), &mirror.destination);
            mirrors.push(RequestMirrorPolicy { cluster: key.name(), runtime_fraction: Some(actions::runtime_fraction(mirror.percentage)) });
        }
        RouteAction {
            cluster_specifier: Some(cluster_specifier),
            prefix_rewrite: rewrite.and_then(|r| r.uri.clone()).unwrap_or_default(),
            regex_rewrite: rewrite
                .and_then(|r| r.uri_regex_rewrite.as_ref())
                .map(|r| RegexMatchAndSubstitute { pattern: Some(matches::regex(&r.pattern)), substitution: r.rewrite.clone() }),
            host_rewrite_specifier: rewrite.and_then(|r| r.authority.clone()).map(HostRewriteSpecifier::HostRewriteLiteral),
            timeout: Some(actions::timeout(http.timeout.map(|d| d.get()))),
            retry_policy: actions::retry_policy(http.retries.as_ref()),
            hash_policy: hash_policy.into_iter().collect(),
            request_mirror_policies: mirrors,
            max_stream_duration: None,
        }
    }

    /// The cluster a destination names, resolved as Istio does: a short host in the VirtualService's namespace,
    /// no port meaning the service's only port (or the port being routed). What names nothing is a warning and
    /// an empty cluster (see the l7 module comment).
    fn destination(&mut self, path: &str, destination: &Destination) -> ClusterKey {
        let host = resolve_host(self.mesh.mesh, &destination.host, &self.vs.metadata.namespace);
        let service = self.mesh.services.get(&host);
        let port = destination
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .or_else(|| {
                service.and_then(|s| match s.spec.ports.as_slice() {
                    [only] => Some(only.port),
                    _ => None,
                })
            })
            .unwrap_or(self.port);
        if service.is_none() {
            self.warn(&format!("{path}.host"), format!("{host} is no known Service; requests get 503 (no endpoints)"));
        }
        if let Some(subset) = &destination.subset {
            if !self.mesh.subset_defined(&host, subset) {
                self.warn(
                    &format!("{path}.subset"),
                    format!("no DestinationRule for {host} defines subset {subset:?}; requests get 503 (no endpoints)"),
                );
            }
        }
        let key = ClusterKey { host, port, subset: destination.subset.clone() };
        self.cluster_keys.insert(key.clone());
        key
    }
}
