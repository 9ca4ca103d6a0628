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
    listener::Listener,
    route::{
        redirect_action::{RedirectResponseCode, SchemeRewriteSpecifier},
        route, RedirectAction, Route, RouteConfiguration, VirtualHost,
    },
};

use super::{listeners, routes, ClusterKey, Mesh7};
use crate::objects::{Gateway, Object, Server, VirtualService};

/// What one gateway pod serves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayView {
    pub listeners: BTreeMap<String, Listener>,
    pub route_configurations: BTreeMap<String, RouteConfiguration>,
}

/// The server protocols served as HTTP.
fn serves_http(protocol: &str) -> bool {
    matches!(protocol.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC")
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
        if !serves_http(&protocol) {
            warnings.push(format!("{}: {protocol} servers are not served by keel gateway yet: ignored", at("port.protocol")));
        }
        if server.tls.as_ref().is_some_and(|tls| tls.terminates()) {
            warnings.push(format!("{}: TLS termination (mode, certificates) is not served by keel gateway yet: ignored", at("tls")));
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
            views.insert(
                format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
                view(inputs, &selecting, &virtual_services, cluster_keys, warnings),
            );
        }
    }
    views
}

fn view(
    inputs: &Mesh7,
    gateways: &[&Gateway],
    virtual_services: &[&VirtualService],
    cluster_keys: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> GatewayView {
    // Port → the (gateway, server hosts) that serve HTTP on it, merged across the Gateways selecting the pod.
    let mut ports: BTreeMap<u16, Vec<(&Gateway, &Server)>> = BTreeMap::new();
    for gateway in gateways {
        for server in gateway.spec.servers.iter().filter(|s| serves_http(&s.port.protocol)) {
            let Ok(port) = u16::try_from(server.port.number) else { continue };
            ports.entry(port).or_default().push((gateway, server));
        }
    }
    let mut out = GatewayView::default();
    for (port, servers) in ports {
        let route_name = format!("http.{port}");
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
        out.listeners.insert(listeners::name(port), listeners::listener_with_routes(port, &route_name, &format!("gateway_0.0.0.0_{port}")));
        out.route_configurations.insert(route_name.clone(), RouteConfiguration { name: route_name, virtual_hosts });
    }
    out
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
        // HTTP ports only; 443 (HTTPS) is warned about, not served.
        assert_eq!(view.listeners.keys().collect::<Vec<_>>(), ["0.0.0.0_80", "0.0.0.0_81"]);
        assert!(r.warnings.iter().any(|w| w.contains("spec.servers[2]") && w.contains("not served")), "{:?}", r.warnings);
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
        // The node proxies' view has none of it.
        assert!(!r.listeners.contains_key("0.0.0.0_81"));
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
