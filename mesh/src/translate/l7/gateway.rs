//! Gateways: for each gateway pod (a pod some Gateway's `selector` matches), the listeners and route
//! configurations `keel gateway` serves there, as istiod builds them for a gateway Envoy: the Gateways selecting
//! the pod merged, one listener `0.0.0.0_<port>` per server port, its routes in `http.<port>`, one virtual host
//! `<host>:<port>` per VirtualService host bound to one of those Gateways (`spec.gateways`) and exposed by a
//! server on that port (its `hosts`), and a `blackhole:<port>` host matching everything else with no route (404,
//! `NR`). Routes are the VirtualService's HTTP routes, translated by the same code as the mesh's, to the same
//! `outbound|<port>|<subset>|<host>` clusters. Only HTTP servers are served here; the checks below say which
//! fields and protocols are not, naming them.
use std::collections::{BTreeMap, BTreeSet};

use keel_proto::{
    listener::{FilterChainMatch, Listener},
    route::{
        redirect_action::{RedirectResponseCode, SchemeRewriteSpecifier},
        route, RedirectAction, Route, RouteConfiguration, VirtualHost,
    },
    tls::Secret,
};

use super::{gateway_tls, listeners, routes, ClusterKey, Mesh7};
use crate::objects::{Gateway, Object, Server, VirtualService};

/// What one gateway pod serves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayView {
    pub listeners: BTreeMap<String, Listener>,
    pub route_configurations: BTreeMap<String, RouteConfiguration>,
    /// The certificates and CA bundles its HTTPS servers name (SDS resources, `kubernetes://<Secret name>`).
    pub secrets: BTreeMap<String, Secret>,
}

/// The server protocols served as HTTP.
fn serves_http(protocol: &str) -> bool {
    matches!(protocol.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC")
}

/// How a server is served, by its protocol and TLS mode (as istiod builds its filter chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerKind {
    /// Plain HTTP (HTTP, HTTP2, GRPC): the HTTP connection manager, routes by Host.
    Http,
    /// HTTPS, TLS terminated (SIMPLE, MUTUAL, OPTIONAL_MUTUAL), then HTTP routes.
    HttpsTerminated,
    /// HTTPS or TLS with PASSTHROUGH: routed by SNI (VirtualService `tls` routes), bytes untouched.
    Passthrough,
    /// TLS terminated, then VirtualService `tcp` routes.
    TlsTerminatedTcp,
    /// TCP (or MONGO) without TLS: VirtualService `tcp` routes.
    Tcp,
}

impl ServerKind {
    /// Servers of one class can share a port; the first server's class is the port's (istiod's rule).
    fn port_class(self) -> u8 {
        match self {
            ServerKind::Http => 0,
            ServerKind::HttpsTerminated | ServerKind::Passthrough | ServerKind::TlsTerminatedTcp => 1,
            ServerKind::Tcp => 2,
        }
    }
}

/// `Err` when the server is not served (its TLS settings are missing or refused; `check` says why).
fn server_kind(server: &Server) -> Result<ServerKind, ()> {
    let protocol = server.port.protocol.to_ascii_uppercase();
    let mode = server.tls.as_ref().and_then(|tls| tls.mode.as_deref()).map(str::to_ascii_uppercase);
    match protocol.as_str() {
        p if serves_http(p) => Ok(ServerKind::Http),
        "TCP" | "MONGO" => Ok(ServerKind::Tcp),
        _ if mode.as_deref() == Some("PASSTHROUGH") => Ok(ServerKind::Passthrough),
        _ if server.tls.is_none() => Err(()),
        "HTTPS" => gateway_tls::check(server, &|f| f.to_owned()).map(|_| ServerKind::HttpsTerminated).map_err(drop),
        _ => gateway_tls::check(server, &|f| f.to_owned()).map(|_| ServerKind::TlsTerminatedTcp).map_err(drop),
    }
}

/// Checks one Gateway: errors name the field; warnings name what is accepted but not served yet.
pub fn check(gateway: &Gateway) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    if gateway.spec.selector.is_empty() {
        warnings.push("spec.selector: empty: selects no gateway pod".to_owned());
    }
    for (i, server) in gateway.spec.servers.iter().enumerate() {
        let at = |field: &str| format!("spec.servers[{i}].{field}");
        let port = u16::try_from(server.port.number).ok().filter(|p| *p != 0);
        if port.is_none() {
            return Err(format!("field {}: {} is not a port number", at("port.number"), server.port.number));
        }
        let protocol = server.port.protocol.to_ascii_uppercase();
        if !matches!(protocol.as_str(), "HTTP" | "HTTPS" | "GRPC" | "HTTP2" | "MONGO" | "TCP" | "TLS") {
            return Err(format!("field {}: {:?} is not HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS", at("port.protocol"), server.port.protocol));
        }
        if server.hosts.is_empty() {
            return Err(format!("field {}: at least one host is required", at("hosts")));
        }
        match server_kind(server) {
            Ok(ServerKind::Passthrough) => {
                if server.tls.as_ref().is_some_and(|tls| tls.credential_name.is_some() || !tls.credential_names.is_empty()) {
                    warnings.push(format!("{}: a PASSTHROUGH server does not terminate TLS: ignored", at("tls.credentialName")));
                }
            }
            Ok(ServerKind::HttpsTerminated | ServerKind::TlsTerminatedTcp) => {
                warnings.extend(gateway_tls::check(server, &at).expect("server_kind checked it"))
            }
            Ok(ServerKind::Http | ServerKind::Tcp) => {
                if server.tls.as_ref().is_some_and(|tls| tls.terminates()) {
                    warnings.push(format!("{}: TLS settings on a {protocol} server are ignored (HTTPS and TLS servers terminate TLS)", at("tls")));
                }
            }
            Err(()) => match gateway_tls::check(server, &at) {
                Err(why) => warnings.push(format!("{why}: the server is not served")),
                Ok(_) => warnings.push(format!("{}: a {protocol} server needs tls settings: the server is not served", at("tls"))),
            },
        }
        if server.tls.as_ref().is_some_and(|tls| tls.https_redirect) && !serves_http(&protocol) {
            warnings.push(format!("{}: only applies to HTTP servers: ignored", at("tls.httpsRedirect")));
        }
        if server.bind.is_some() {
            warnings.push(format!("{}: keel gateway listens on every address of its pod: ignored", at("bind")));
        }
        if server.default_endpoint.is_some() {
            warnings.push(format!("{}: not supported (a sidecar setting): ignored", at("defaultEndpoint")));
        }
        if server.port.target_port.is_some() {
            warnings.push(format!("{}: keel gateway listens on port.number: ignored", at("port.targetPort")));
        }
    }
    Ok(warnings)
}

/// The views of every gateway pod, by `<namespace>/<pod name>`. Clusters the routes name are added to
/// `cluster_keys` (the mesh's clusters: a gateway reaches services as a mesh workload does).
pub(super) fn translate(
    inputs: &Mesh7,
    objects: &[Object],
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, GatewayView> {
    let gateways: Vec<&Gateway> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Gateway(g) if check(g).is_ok() && !g.spec.selector.is_empty() => Some(g),
            _ => None,
        })
        .collect();
    let virtual_services: Vec<&VirtualService> = objects
        .iter()
        .filter_map(|o| match o {
            Object::VirtualService(vs) if !vs.spec.gateways.is_empty() && super::virtual_service::check(vs).is_ok() => Some(vs),
            _ => None,
        })
        .collect();
    let mut views = BTreeMap::new();
    for pod in objects.iter().filter_map(|o| match o {
        Object::Pod(p) => Some(p),
        _ => None,
    }) {
        let selecting: Vec<&Gateway> = gateways.iter().copied().filter(|g| super::super::selects(&g.spec.selector, &pod.metadata.labels)).collect();
        if !selecting.is_empty() {
            let namespace = pod.metadata.namespace.as_str();
            let secrets: gateway_tls::NamespaceSecrets = objects
                .iter()
                .filter_map(|o| match o {
                    Object::Secret(s) if s.metadata.namespace == namespace => Some((s.metadata.name.as_str(), s)),
                    _ => None,
                })
                .collect();
            let pod_name = format!("{namespace}/{}", pod.metadata.name);
            let mut pod_warnings = Vec::new();
            let view = view(inputs, (namespace, &secrets), &selecting, &virtual_services, cluster_keys, &mut pod_warnings);
            warnings.extend(pod_warnings.into_iter().map(|w| format!("gateway pod {pod_name}: {w}")));
            views.insert(pod_name, view);
        }
    }
    views
}

fn view(
    inputs: &Mesh7,
    (pod_namespace, secrets): (&str, &gateway_tls::NamespaceSecrets),
    gateways: &[&Gateway],
    virtual_services: &[&VirtualService],
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> GatewayView {
    // Port → the servers served on it, merged across the Gateways selecting the pod.
    let mut ports: BTreeMap<u16, Vec<GatewayServer>> = BTreeMap::new();
    for gateway in gateways {
        for (index, server) in gateway.spec.servers.iter().enumerate() {
            let (Ok(port), Ok(kind)) = (u16::try_from(server.port.number), server_kind(server)) else { continue };
            ports.entry(port).or_default().push(GatewayServer { gateway, index, server, kind });
        }
    }
    let mut out = GatewayView::default();
    for (port, servers) in ports {
        // A port serves one class of protocol, its first server's (istiod skips the servers that conflict).
        let class = servers[0].kind.port_class();
        let (servers, conflicting): (Vec<GatewayServer>, Vec<GatewayServer>) = servers.into_iter().partition(|s| s.kind.port_class() == class);
        for s in conflicting {
            warnings.push(format!("{}: port {port} already serves {:?} servers: ignored", s.at("port"), servers[0].kind));
        }
        if servers[0].kind == ServerKind::Tcp {
            // Plain TCP: one chain for the port, the first `tcp` route of a bound VirtualService that applies.
            let mut routes = Tcp { inputs, port, virtual_services, cluster_keys, warnings };
            let pairs: Vec<(&Gateway, &Server)> = servers.iter().map(|s| (s.gateway, s.server)).collect();
            if let Some(clusters) = routes.tcp_clusters(&pairs) {
                let chain = listeners::tcp_chain(&listeners::name(port), &clusters, &format!("gateway_tcp_{port}"));
                out.listeners.insert(listeners::name(port), listeners::listener_with_chains(port, vec![chain]));
            }
            continue;
        }
        if servers[0].kind == ServerKind::Http {
            let route_name = format!("http.{port}");
            let pairs: Vec<(&Gateway, &Server)> = servers.iter().map(|s| (s.gateway, s.server)).collect();
            let virtual_hosts = virtual_hosts(inputs, port, &pairs, virtual_services, cluster_keys, warnings);
            out.listeners.insert(listeners::name(port), listeners::listener_with_routes(port, &route_name, &format!("gateway_0.0.0.0_{port}")));
            out.route_configurations.insert(route_name.clone(), RouteConfiguration { name: route_name, virtual_hosts });
            continue;
        }
        // TLS: filter chains picked by SNI. A terminating server is one chain (its hosts, its certificate, its
        // HTTP routes `https.<port>.<port name>.<gateway>.<namespace>` as istiod names them, or its tcp route); a
        // PASSTHROUGH server is a chain per `tls` route match of the VirtualServices bound to it (its sniHosts).
        let mut chains = Vec::new();
        let mut claimed_names: BTreeSet<String> = BTreeSet::new();
        let mut claim = |names: &[String], at: &str, warnings: &mut Vec<String>| {
            let key: Vec<String> = if names.is_empty() { vec!["*".into()] } else { names.to_vec() };
            if let Some(taken) = key.iter().find(|n| claimed_names.contains(*n)) {
                warnings.push(format!("{at}: SNI host {taken} on port {port} is already served by another chain: ignored"));
                return false;
            }
            claimed_names.extend(key);
            true
        };
        for s in &servers {
            if s.kind == ServerKind::Passthrough {
                let mut routes = Tcp { inputs, port, virtual_services, cluster_keys, warnings };
                for (sni_hosts, clusters, at) in routes.passthrough(s) {
                    if !claim(&sni_hosts, &at, routes.warnings) {
                        continue;
                    }
                    let name = format!("{port}_{}", sni_hosts.join(","));
                    let mut chain = listeners::tcp_chain(&name, &clusters, &format!("gateway_passthrough_{port}"));
                    chain.filter_chain_match = Some(FilterChainMatch {
                        server_names: sni_hosts.into_iter().filter(|h| h != "*").collect(),
                        transport_protocol: "tls".into(),
                        ..Default::default()
                    });
                    chains.push(chain);
                }
                continue;
            }
            let server_names = server_names(s.server);
            if !claim(&server_names, &s.at("hosts"), warnings) {
                continue;
            }
            let Some(termination) = gateway_tls::termination(s.server, &|f| s.at(f), pod_namespace, secrets, warnings) else { continue };
            let (g, port_name) = (&s.gateway.metadata, s.server.port.name.as_deref().unwrap_or("https"));
            let name = format!("https.{port}.{port_name}.{}.{}", g.name, g.namespace);
            let mut chain = if s.kind == ServerKind::TlsTerminatedTcp {
                let mut routes = Tcp { inputs, port, virtual_services, cluster_keys, warnings };
                let Some(clusters) = routes.tcp_clusters(&[(s.gateway, s.server)]) else { continue };
                listeners::tcp_chain(&name, &clusters, &format!("gateway_{name}"))
            } else {
                let virtual_hosts = virtual_hosts(inputs, port, &[(s.gateway, s.server)], virtual_services, cluster_keys, warnings);
                out.route_configurations.insert(name.clone(), RouteConfiguration { name: name.clone(), virtual_hosts });
                listeners::http_chain(&name, &name, &format!("gateway_{name}"))
            };
            if !server_names.is_empty() {
                chain.filter_chain_match = Some(FilterChainMatch { server_names, ..Default::default() });
            }
            chain.transport_socket = Some(termination.transport_socket);
            out.secrets.extend(termination.secrets);
            chains.push(chain);
        }
        if !chains.is_empty() {
            out.listeners.insert(listeners::name(port), listeners::listener_with_chains(port, chains));
        }
    }
    out
}

/// One server of a Gateway selecting the pod, with where it is (for warnings) and how it is served.
struct GatewayServer<'a> {
    gateway: &'a Gateway,
    index: usize,
    server: &'a Server,
    kind: ServerKind,
}

/// A PASSTHROUGH chain: its SNI hosts, its clusters with their weights, and the route match it comes from.
type PassthroughRoute = (Vec<String>, Vec<(String, u32)>, String);

/// VirtualService `tcp` and `tls` routes of the VirtualServices bound to a gateway port.
struct Tcp<'m, 'a> {
    inputs: &'m Mesh7<'a>,
    port: u16,
    virtual_services: &'m [&'a VirtualService],
    cluster_keys: &'m mut BTreeSet<ClusterKey>,
    warnings: &'m mut Vec<String>,
}

impl Tcp<'_, '_> {
    /// The VirtualServices bound to one of `servers`' Gateways with a host one of them exposes.
    fn bound<'v>(&self, servers: &[(&Gateway, &Server)]) -> Vec<&'v VirtualService>
    where
        Self: 'v,
    {
        self.virtual_services
            .iter()
            .copied()
            .filter(|vs| {
                servers.iter().any(|(g, server)| {
                    binds(vs, g)
                        && vs
                            .spec
                            .hosts
                            .iter()
                            .any(|h| server.hosts.iter().any(|p| exposes(p, &h.to_ascii_lowercase(), &vs.metadata.namespace, &g.metadata.namespace)))
                })
            })
            .collect()
    }

    /// The clusters (with weights) of the first `tcp` route that applies to the port, of the first bound
    /// VirtualService that has one (istiod's order).
    fn tcp_clusters(&mut self, servers: &[(&Gateway, &Server)]) -> Option<Vec<(String, u32)>> {
        for vs in self.bound(servers) {
            for (i, route) in vs.spec.tcp.iter().enumerate() {
                if route.matches.is_empty() || route.matches.iter().any(|m| m.port.is_none_or(|p| p == u32::from(self.port))) {
                    return Some(routes::l4_clusters(
                        self.inputs,
                        vs,
                        self.port,
                        &format!("spec.tcp[{i}]"),
                        &route.route,
                        self.cluster_keys,
                        self.warnings,
                    ));
                }
            }
        }
        let (g, s) = servers.first()?;
        self.warnings.push(format!(
            "Gateway {}/{}: port {}: no VirtualService bound to it has a tcp route for the port: nothing is served there",
            g.metadata.namespace, g.metadata.name, s.port.number
        ));
        None
    }

    /// For a PASSTHROUGH server: each `tls` route match of the bound VirtualServices that applies to the port,
    /// as (its SNI hosts the server exposes, the route's clusters, where it is).
    fn passthrough(&mut self, s: &GatewayServer) -> Vec<PassthroughRoute> {
        let mut out = Vec::new();
        for vs in self.bound(&[(s.gateway, s.server)]) {
            for (i, route) in vs.spec.tls.iter().enumerate() {
                for (j, m) in route.matches.iter().enumerate() {
                    if m.port.is_some_and(|p| p != u32::from(self.port)) {
                        continue;
                    }
                    let at = format!("VirtualService {}/{}: spec.tls[{i}].match[{j}]", vs.metadata.namespace, vs.metadata.name);
                    let sni: Vec<String> = m
                        .sni_hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .filter(|h| s.server.hosts.iter().any(|p| exposes(p, h, &vs.metadata.namespace, &s.gateway.metadata.namespace)))
                        .collect();
                    if sni.is_empty() {
                        self.warnings.push(format!("{at}.sniHosts: none is a host of {}: ignored", s.at("hosts")));
                        continue;
                    }
                    let clusters =
                        routes::l4_clusters(self.inputs, vs, self.port, &format!("spec.tls[{i}]"), &route.route, self.cluster_keys, self.warnings);
                    out.push((sni, clusters, at));
                }
            }
        }
        out
    }
}

impl GatewayServer<'_> {
    fn at(&self, field: &str) -> String {
        format!("Gateway {}/{}: spec.servers[{}].{field}", self.gateway.metadata.namespace, self.gateway.metadata.name, self.index)
    }
}

/// The SNI names a server's chain matches: its hosts without their namespace part; none (every name) when one
/// of them is `*`.
fn server_names(server: &Server) -> Vec<String> {
    let hosts: Vec<String> = server.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_ascii_lowercase()).collect();
    if hosts.iter().any(|h| h == "*") {
        return Vec::new();
    }
    let mut names: Vec<String> = hosts;
    names.sort();
    names.dedup();
    names
}

/// The virtual hosts of one route configuration: one `<host>:<port>` per host of a VirtualService bound to one
/// of `servers`' Gateways and exposed by one of them, the redirecting servers' own hosts, and the blackhole host.
fn virtual_hosts(
    inputs: &Mesh7,
    port: u16,
    servers: &[(&Gateway, &Server)],
    virtual_services: &[&VirtualService],
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> Vec<VirtualHost> {
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    let mut claimed = BTreeSet::new();
    for vs in virtual_services {
        let exposed_by: Vec<(&Gateway, &Server)> = servers.iter().filter(|(g, _)| binds(vs, g)).copied().collect();
        if exposed_by.is_empty() {
            continue;
        }
        for host in &vs.spec.hosts {
            let host = host.to_ascii_lowercase();
            let exposing: Vec<&Server> = exposed_by
                .iter()
                .filter(|(g, server)| server.hosts.iter().any(|p| exposes(p, &host, &vs.metadata.namespace, &g.metadata.namespace)))
                .map(|(_, server)| *server)
                .collect();
            if exposing.is_empty() {
                continue;
            }
            // One VirtualService per host and port, the first by name (Istio merges a few special cases).
            if !claimed.insert(host.clone()) {
                warnings.push(format!(
                    "VirtualService {}/{}: host {host} on gateway port {port} is already routed: ignored",
                    vs.metadata.namespace, vs.metadata.name
                ));
                continue;
            }
            let routes = if exposing.iter().any(|s| redirects(s)) {
                vec![https_redirect()]
            } else {
                routes::gateway_routes(inputs, vs, port, cluster_keys, warnings)
            };
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.clone(), format!("{host}:{port}")],
                routes,
                ..Default::default()
            });
        }
    }
    // A redirecting server's own hosts redirect even without a VirtualService (istiod gives them a host too).
    for (_, server) in servers.iter().filter(|(_, s)| redirects(s)) {
        for host in server.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_ascii_lowercase()) {
            if !host.contains('*') && claimed.insert(host.clone()) {
                virtual_hosts.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: vec![host.clone(), format!("{host}:{port}")],
                    routes: vec![https_redirect()],
                    ..Default::default()
                });
            }
        }
    }
    // Everything else: no route (404), as istiod's blackhole host answers.
    virtual_hosts.push(VirtualHost { name: format!("blackhole:{port}"), domains: vec!["*".into()], ..Default::default() });
    virtual_hosts
}

fn redirects(server: &Server) -> bool {
    server.tls.as_ref().is_some_and(|tls| tls.https_redirect)
}

/// `httpsRedirect`: every request answered 301 with its `https://` form (Envoy's `require_tls: ALL`).
fn https_redirect() -> Route {
    Route {
        name: "https-redirect".into(),
        r#match: Some(super::matches::any_path()),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("https".into())),
            port_redirect: 443,
            response_code: RedirectResponseCode::MovedPermanently as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Whether `vs` lists `gateway` in `spec.gateways` (`<namespace>/<name>`, or a bare name in the VS's namespace).
fn binds(vs: &VirtualService, gateway: &Gateway) -> bool {
    let (namespace, name) = (&gateway.metadata.namespace, &gateway.metadata.name);
    vs.spec.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, n)) => ns == namespace && n == name,
        None => vs.metadata.namespace == *namespace && g == name,
    })
}

/// Whether a server host pattern (`[namespace/]host`, `*`, `*.suffix`) of a Gateway in `gateway_namespace`
/// exposes `host` of a VirtualService in `vs_namespace` (`./` is the Gateway's own namespace).
fn exposes(pattern: &str, host: &str, vs_namespace: &str, gateway_namespace: &str) -> bool {
    let (namespace, pattern) = pattern.split_once('/').unwrap_or(("*", pattern));
    let namespace = if namespace == "." { gateway_namespace } else { namespace };
    if namespace != "*" && namespace != vs_namespace {
        return false;
    }
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress-0, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {serviceAccountName: ingress, nodeName: n0}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: webapp-0, namespace: shop, labels: {app: webapp}}
spec: {nodeName: n1}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: webapp, namespace: shop}
spec: {clusterIP: 10.96.0.9, selector: {app: webapp}, ports: [{name: http, port: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop/webapp.example.com", "*/api.example.com"]
  - port: {number: 81, name: http-redirect, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cert}
---
apiVersion: v1
kind: Secret
metadata: {name: secure-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: secure-cert, namespace: shop}
stringData: {tls.crt: OTHER, tls.key: OTHER}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: webapp, namespace: shop}
spec:
  hosts: [webapp.example.com, hidden.example.com]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: webapp}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other-gateway, namespace: shop}
spec:
  hosts: [api.example.com]
  gateways: [elsewhere]
  http:
  - route: [{destination: {host: webapp}}]
"#;

    #[test]
    fn a_gateway_pod_gets_the_listeners_and_routes_of_the_virtual_services_bound_to_its_gateways() {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), OBJECTS, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let r = translate(&Mesh::default(), &objects).unwrap();
        assert_eq!(r.gateway_views.keys().collect::<Vec<_>>(), ["istio-system/ingress-0"], "only the selected pod has a view");
        let view = &r.gateway_views["istio-system/ingress-0"];
        assert_eq!(view.listeners.keys().collect::<Vec<_>>(), ["0.0.0.0_443", "0.0.0.0_80", "0.0.0.0_81"]);
        // 443 terminates TLS for secure.example.com with the Secret of the gateway pod's namespace.
        let chains = &view.listeners["0.0.0.0_443"].filter_chains;
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].filter_chain_match.as_ref().unwrap().server_names, ["secure.example.com"]);
        assert!(chains[0].transport_socket.is_some());
        assert_eq!(view.secrets.keys().collect::<Vec<_>>(), ["kubernetes://secure-cert"]);
        assert!(view.route_configurations.contains_key("https.443.https.public.istio-system"));
        // The Secret of the same name in another namespace is not the gateway's.
        assert!(!format!("{:?}", view.secrets).contains("OTHER"));
        let hosts = |routes: &str| view.route_configurations[routes].virtual_hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        // webapp.example.com is exposed (its namespace matches); hidden.example.com is on no server; the VS bound to
        // another gateway gives nothing; everything else falls to the blackhole host.
        assert_eq!(hosts("http.80"), ["webapp.example.com:80", "blackhole:80"]);
        let webapp = &view.route_configurations["http.80"].virtual_hosts[0];
        assert!(format!("{:?}", webapp.routes[0]).contains("outbound|8080||webapp.shop.svc.cluster.local"), "{:?}", webapp.routes);
        assert!(r.clusters.contains_key("outbound|8080||webapp.shop.svc.cluster.local"));
        // httpsRedirect: the server's host redirects without any VirtualService.
        assert_eq!(hosts("http.81"), ["secure.example.com:81", "blackhole:81"]);
        assert!(format!("{:?}", view.route_configurations["http.81"].virtual_hosts[0].routes[0]).contains("SchemeRedirect(\"https\")"));
        // The node proxies' view has none of it, and no secret at all.
        assert!(!r.listeners.contains_key("0.0.0.0_81"));
        let snapshot = crate::snapshot::Snapshot::from_resources(&r);
        let secrets = |view| snapshot.of_type_for(view, keel_proto::SECRET_TYPE_URL).map(|s| s.len());
        assert_eq!(secrets(crate::snapshot::View::NodeProxy), Some(0));
        assert_eq!(secrets(crate::snapshot::View::Gateway("istio-system/ingress-0")), Some(1));
    }

    #[test]
    fn passthrough_and_tcp_servers_relay_to_the_clusters_of_tls_and_tcp_routes() {
        let text = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
             \x20 - port: {{number: 443, name: tls-passthrough, protocol: TLS}}\n    hosts: [\"shop/*.example.com\"]\n    tls: {{mode: PASSTHROUGH}}\n\
             \x20 - port: {{number: 31400, name: tcp, protocol: TCP}}\n    hosts: ['*']\n\
             \x20 - port: {{number: 31400, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: pass, namespace: shop}}\nspec:\n  hosts: [pass.example.com, tcp.example.com]\n  gateways: [istio-system/edge]\n\
             \x20 tls:\n  - match: [{{sniHosts: [pass.example.com, other.org], port: 443}}]\n    route: [{{destination: {{host: webapp, port: {{number: 8080}}}}}}]\n\
             \x20 tcp:\n  - match: [{{port: 31400}}]\n    route: [{{destination: {{host: webapp}}, weight: 80}}, {{destination: {{host: webapp, port: {{number: 9000}}}}, weight: 20}}]\n",
            OBJECTS
        );
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), &text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let r = translate(&Mesh::default(), &objects).unwrap();
        let view = &r.gateway_views["istio-system/ingress-0"];
        // 443: the HTTPS server of `public` (terminated) and the passthrough chain for pass.example.com share it;
        // other.org is no host of the server.
        let chains = &view.listeners["0.0.0.0_443"].filter_chains;
        assert_eq!(chains.len(), 2, "{chains:#?}");
        let pass = chains.iter().find(|c| c.transport_socket.is_none()).unwrap();
        let m = pass.filter_chain_match.as_ref().unwrap();
        assert_eq!((m.server_names.as_slice(), m.transport_protocol.as_str()), (&["pass.example.com".to_owned()][..], "tls"));
        assert!(format!("{pass:?}").contains("envoy.filters.network.tcp_proxy"));
        // 31400: the TCP server (first) wins the port; the HTTP server on it is refused with a warning.
        let tcp = &view.listeners["0.0.0.0_31400"].filter_chains;
        assert_eq!(tcp.len(), 1);
        let keel_proto::listener::filter::ConfigType::TypedConfig(any) = tcp[0].filters[0].config_type.as_ref().unwrap();
        let proxy = <keel_proto::tcp_proxy::TcpProxy as prost::Message>::decode(any.value.as_slice()).unwrap();
        assert!(
            format!("{proxy:?}").contains("outbound|8080||webapp.shop.svc.cluster.local") && format!("{proxy:?}").contains("weight: 80"),
            "{proxy:?}"
        );
        assert!(r.clusters.contains_key("outbound|9000||webapp.shop.svc.cluster.local"));
        assert!(r.warnings.iter().any(|w| w.contains("spec.servers[2].port") && w.contains("31400")), "{:#?}", r.warnings);
    }

    #[test]
    fn gateway_fields_keel_cannot_read_are_refused_naming_them() {
        let gateway = |servers: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: d}}\nspec: {{selector: {{a: b}}, servers: [{servers}]}}\n")
        };
        for (servers, field) in [
            ("{port: {number: 0, protocol: HTTP}, hosts: [a]}", "spec.servers[0].port.number"),
            ("{port: {number: 80, protocol: QUIC}, hosts: [a]}", "spec.servers[0].port.protocol"),
            ("{port: {number: 80, protocol: HTTP}}", "spec.servers[0].hosts"),
            ("{port: {number: 80, protocol: HTTP}, hosts: [a], tls: {httpsRedirekt: true}}", "httpsRedirekt"),
        ] {
            let mut loaded = Loaded::default();
            load_text(std::path::Path::new("t.yaml"), &gateway(servers), &mut loaded);
            let error = loaded.errors.first().map(|e| e.message.clone()).unwrap_or_default();
            assert!(error.contains(field), "{servers}: {error:?}");
        }
    }
}
