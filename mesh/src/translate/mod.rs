//! Translation of validated objects into the resources node proxies consume: `istio.workload.Address` (Workload
//! and Service) and `istio.security.Authorization`, named as istiod names them (`<cluster>//Pod/<ns>/<name>`,
//! `<ns>/<hostname>`, `<ns>/<name>`). Pure functions of a whole snapshot: a push recomputes, then diffs.
//! Pods, Services and AuthorizationPolicies translate here; ServiceEntries and PeerAuthentications in their own
//! modules, since both also change the Workloads of the pods they select. VirtualServices and DestinationRules are
//! checked in theirs and yield no workload or authorization resource: together with the Services' HTTP ports and
//! the pods behind them they become the Envoy L7 resources (Listener, RouteConfiguration, Cluster,
//! ClusterLoadAssignment) made in l7/.
mod authorization;
mod destination_rule;
mod field;
mod l7;
mod peer_authentication;
mod request_authentication;

pub use authorization::check_path_template;
pub use request_authentication::{check_jwks, inline_key_sets, KeySets};
mod service_entry;
mod virtual_service;

#[cfg(test)]
mod evaluate;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use keel_proto::{
    security,
    workload::{self, address, NetworkAddress, Port, PortList, TunnelProtocol, WorkloadStatus, WorkloadType},
};

use crate::ambient;
use crate::objects::{AuthorizationPolicy, EndpointSlice, Object, PeerAuthentication, Pod, PortRef, Service, ServiceEntry};
use authorization::{authorization, NodePolicy};

/// Cluster-wide naming settings.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub cluster_id: String,
    /// Service hostnames are `<name>.<namespace>.svc.<domain>`.
    pub domain: String,
    /// Policies in this namespace without a selector apply mesh-wide.
    pub root_namespace: String,
    pub membership: Membership,
}

/// Which pods get HBONE Workloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Membership {
    /// Every pod not opted out (a config directory lists the mesh's pods and nothing else).
    #[default]
    EveryPod,
    /// Istio's ambient labels on the namespace or the pod (the Kubernetes API lists every pod of the cluster).
    AmbientLabels,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            cluster_id: "Kubernetes".into(),
            domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            membership: Membership::EveryPod,
        }
    }
}

/// Translated resources by resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub addresses: BTreeMap<String, workload::Address>,
    pub authorizations: BTreeMap<String, security::Authorization>,
    /// The HTTP rules of the policies that have some (keel's own type, see authorization.rs), by the same name.
    pub http_authorizations: BTreeMap<String, keel_proto::http_security::HttpAuthorization>,
    /// What each gateway pod serves (`keel gateway`), by `<namespace>/<pod>`: its own listeners and route
    /// configurations, served to that gateway's xDS stream only (see `snapshot.rs`).
    pub gateway_views: BTreeMap<String, l7::gateway::GatewayView>,
    /// RequestAuthentications (keel's own type, see request_authentication.rs), `<ns>/<name>`; key sets given by
    /// `jwksUri` are still empty here: keel-control fills them.
    pub request_authentications: BTreeMap<String, keel_proto::http_security::RequestAuthentication>,
    /// The Envoy L7 subset (l7/), each keyed by resource name: listeners `0.0.0.0_<port>`, route configs by
    /// port, clusters and their load assignments `outbound|<port>|<subset>|<host>`.
    pub listeners: BTreeMap<String, keel_proto::listener::Listener>,
    pub route_configurations: BTreeMap<String, keel_proto::route::RouteConfiguration>,
    pub clusters: BTreeMap<String, keel_proto::cluster::Cluster>,
    pub cluster_load_assignments: BTreeMap<String, keel_proto::endpoint::ClusterLoadAssignment>,
    /// Objects that translated with a caveat (e.g. HTTP-only policy fields a node proxy cannot see).
    pub warnings: Vec<String>,
}

/// Checks what parsing cannot: the semantics of one object (ports, policy actions, CIDRs). The config loader
/// runs it per object, so a bad object is rejected alone and its last good version stays in force.
pub fn check(mesh: &Mesh, object: &Object) -> Result<(), String> {
    match object {
        Object::Service(svc) => service(mesh, svc).map(drop),
        Object::AuthorizationPolicy(policy) => authorization(mesh, policy).map(drop),
        Object::ServiceEntry(entry) => service_entry::check(entry),
        Object::PeerAuthentication(peer) => peer_authentication::check(peer),
        Object::RequestAuthentication(ra) => request_authentication::check(mesh, ra),
        Object::VirtualService(vs) => virtual_service::check(vs).map(drop),
        Object::DestinationRule(rule) => destination_rule::check(rule).map(drop),
        Object::Gateway(gateway) => l7::gateway::check(gateway).map(drop),
        Object::Pod(_) | Object::EndpointSlice(_) | Object::Secret(_) => Ok(()),
    }
}

/// The objects of a snapshot by kind, for the translations that look across objects (what selects a pod).
/// ServiceEntries and PeerAuthentications that fail [`check`] are left out, so they change no pod.
struct ByKind<'a> {
    pods: Vec<&'a Pod>,
    services: Vec<&'a Service>,
    endpoint_slices: Vec<&'a EndpointSlice>,
    authorization_policies: Vec<&'a AuthorizationPolicy>,
    service_entries: Vec<&'a ServiceEntry>,
    peer_authentications: Vec<&'a PeerAuthentication>,
}

impl<'a> ByKind<'a> {
    fn of(objects: &'a [Object]) -> Self {
        let mut by_kind = ByKind {
            pods: vec![],
            services: vec![],
            endpoint_slices: vec![],
            authorization_policies: vec![],
            service_entries: vec![],
            peer_authentications: vec![],
        };
        for object in objects {
            match object {
                Object::Pod(o) if o.is_workload() => by_kind.pods.push(o),
                Object::Pod(_) => {}
                Object::Service(o) => by_kind.services.push(o),
                Object::EndpointSlice(o) => by_kind.endpoint_slices.push(o),
                Object::AuthorizationPolicy(o) => by_kind.authorization_policies.push(o),
                Object::ServiceEntry(o) if service_entry::check(o).is_ok() => by_kind.service_entries.push(o),
                Object::PeerAuthentication(o) if peer_authentication::check(o).is_ok() => by_kind.peer_authentications.push(o),
                Object::ServiceEntry(_)
                | Object::PeerAuthentication(_)
                | Object::RequestAuthentication(_)
                | Object::VirtualService(_)
                | Object::DestinationRule(_)
                | Object::Gateway(_)
                | Object::Secret(_) => {}
            }
        }
        by_kind
    }
}

/// Translates a whole snapshot of objects. Objects that fail [`check`] are left out and reported.
pub fn translate(mesh: &Mesh, objects: &[Object]) -> Result<Resources, Vec<String>> {
    let mut out = Resources::default();
    let mut errors = Vec::new();
    let by_kind = ByKind::of(objects);
    // Services and AuthorizationPolicies apply to pods of their own namespace only: looking only there keeps the
    // translation from growing with pods × Services of the whole cluster (most of keel-control's time at 10,000
    // pods before).
    let services_by_namespace = by_namespace(&by_kind.services, |s| &s.metadata.namespace);
    let policies_by_namespace = by_namespace(&by_kind.authorization_policies, |p| &p.metadata.namespace);
    // PeerAuthentications translate as a set: which policies exist, and at which scope, depends on all of them.
    let mtls = peer_authentication::translate(mesh, &by_kind.peer_authentications, &by_kind.pods);
    out.warnings.extend(mtls.warnings.iter().cloned());
    out.authorizations.extend(mtls.authorizations.iter().map(|a| (format!("{}/{}", a.namespace, a.name), a.clone())));
    for object in objects {
        match object {
            // EndpointSlices are read through the Services they back (see `backs`).
            Object::Pod(pod) if !pod.is_workload() => {}
            Object::EndpointSlice(_) => {}
            // Secrets are read through the Gateways that name them (`l7::gateway`).
            Object::Secret(_) => {}
            Object::Pod(pod) => {
                let namespace = pod.metadata.namespace.as_str();
                let (services, policies) = (in_namespace(&services_by_namespace, namespace), in_namespace(&policies_by_namespace, namespace));
                let mut w = pod_workload(mesh, pod, services, &by_kind.endpoint_slices, policies);
                // As for Services: a hostname already defined keeps its first definition.
                for (host, ports) in service_entry::services_of_selected_pod(pod, &by_kind.service_entries) {
                    w.services.entry(host).or_insert(ports);
                }
                w.authorization_policies.extend(mtls.attached_to(pod).iter().cloned());
                out.addresses.insert(w.uid.clone(), workload::Address { r#type: Some(address::Type::Workload(w)) });
            }
            Object::Service(svc) => match service(mesh, svc) {
                Ok(s) => {
                    let name = format!("{}/{}", s.namespace, s.hostname);
                    out.addresses.insert(name, workload::Address { r#type: Some(address::Type::Service(s)) });
                }
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
            Object::AuthorizationPolicy(policy) => match authorization(mesh, policy) {
                Ok(NodePolicy::Enforced { l4, http, warnings }) => {
                    out.warnings.extend(warnings.into_iter().map(|w| format!("{}: {w}", object.reference())));
                    let name = format!("{}/{}", l4.namespace, l4.name);
                    if let Some(http) = http {
                        out.http_authorizations.insert(name.clone(), http);
                    }
                    out.authorizations.insert(name, l4);
                }
                Ok(NodePolicy::NoEffect(why)) => out.warnings.push(format!("{}: {why}", object.reference())),
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
            Object::ServiceEntry(entry) => match service_entry::translate(mesh, entry) {
                Ok(translated) => {
                    out.warnings.extend(translated.warnings.into_iter().map(|w| format!("{}: {w}", object.reference())));
                    for s in translated.services {
                        let name = format!("{}/{}", s.namespace, s.hostname);
                        // One name, one definition: a Service's own hostname is never replaced (its arm inserts
                        // unconditionally), and among ServiceEntries the first in snapshot order (by name) stays.
                        if out.addresses.contains_key(&name) {
                            out.warnings.push(format!("{}: host {} is already defined in {}: ignored", object.reference(), s.hostname, s.namespace));
                            continue;
                        }
                        out.addresses.insert(name, workload::Address { r#type: Some(address::Type::Service(s)) });
                    }
                    for w in translated.workloads {
                        out.addresses.insert(w.uid.clone(), workload::Address { r#type: Some(address::Type::Workload(w)) });
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
            Object::RequestAuthentication(ra) => {
                let namespace = ra.metadata.namespace.as_str();
                let pods: Vec<_> = by_kind.pods.iter().filter(|p| p.metadata.namespace == namespace).map(|p| (*p, workload_uid(mesh, p))).collect();
                match request_authentication::translate(mesh, ra, &pods) {
                    Ok(request_authentication::NodeRules::Enforced(r)) => {
                        out.request_authentications.insert(format!("{}/{}", r.namespace, r.name), r);
                    }
                    Ok(request_authentication::NodeRules::NoEffect(why)) => out.warnings.push(format!("{}: {why}", object.reference())),
                    Err(e) => errors.push(format!("{}: {e}", object.reference())),
                }
            }
            // Translated as a set above; an invalid one is only reported here.
            Object::PeerAuthentication(peer) => {
                if let Err(e) = peer_authentication::check(peer) {
                    errors.push(format!("{}: {e}", object.reference()));
                }
            }
            // Checked only, with their warnings: the Listener/RouteConfiguration/Cluster resources they configure
            // are made by the L7 translation, which takes the whole set of them with the Services they name.
            Object::VirtualService(vs) => match virtual_service::check(vs) {
                Ok(warnings) => out.warnings.extend(warnings.into_iter().map(|w| format!("{}: {w}", object.reference()))),
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
            Object::DestinationRule(rule) => match destination_rule::check(rule) {
                Ok(warnings) => out.warnings.extend(warnings.into_iter().map(|w| format!("{}: {w}", object.reference()))),
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
            Object::Gateway(gateway) => match l7::gateway::check(gateway) {
                Ok(warnings) => out.warnings.extend(warnings.into_iter().map(|w| format!("{}: {w}", object.reference()))),
                Err(e) => errors.push(format!("{}: {e}", object.reference())),
            },
        }
    }
    // Across objects: which ports are HTTP, which subsets and hosts routes name, which pods back each cluster.
    let l7 = l7::translate(mesh, objects);
    out.warnings.extend(l7.warnings);
    out.listeners = l7.listeners;
    out.route_configurations = l7.route_configurations;
    out.clusters = l7.clusters;
    out.cluster_load_assignments = l7.cluster_load_assignments;
    out.gateway_views = l7.gateway_views;
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `objects` grouped by namespace, each group in snapshot order.
fn by_namespace<'a, T>(objects: &[&'a T], namespace: impl Fn(&'a T) -> &'a String) -> HashMap<&'a str, Vec<&'a T>> {
    let mut groups: HashMap<&str, Vec<&T>> = HashMap::new();
    for object in objects {
        groups.entry(namespace(object).as_str()).or_default().push(object);
    }
    groups
}

/// The group of `namespace` in [`by_namespace`]'s map (empty when it has none).
fn in_namespace<'m, 'a, T>(groups: &'m HashMap<&str, Vec<&'a T>>, namespace: &str) -> &'m [&'a T] {
    groups.get(namespace).map_or(&[], Vec::as_slice)
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `pod` backs `service`: the pods its selector selects, or, for a Service without a selector (whose
/// endpoints are managed by someone else), the pods its EndpointSlices list.
fn backs(service: &Service, pod: &Pod, slices: &[&EndpointSlice]) -> bool {
    if service.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    if !service.spec.selector.is_empty() {
        return selects(&service.spec.selector, &pod.metadata.labels);
    }
    slices.iter().any(|slice| {
        slice.metadata.namespace == service.metadata.namespace && slice.service_name() == Some(service.metadata.name.as_str()) && slice.lists(pod)
    })
}

pub fn hostname(mesh: &Mesh, name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{}", mesh.domain)
}

/// A pod's Workload uid, as istiod names it.
fn workload_uid(mesh: &Mesh, pod: &Pod) -> String {
    format!("{}//Pod/{}/{}", mesh.cluster_id, pod.metadata.namespace, pod.metadata.name)
}

fn pod_workload(mesh: &Mesh, pod: &Pod, services: &[&Service], slices: &[&EndpointSlice], policies: &[&AuthorizationPolicy]) -> workload::Workload {
    let m = &pod.metadata;
    let in_mesh = in_mesh(mesh, pod);
    let mut member_of = BTreeMap::new();
    for svc in services.iter().filter(|s| backs(s, pod, slices)) {
        let ports = svc
            .spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: p.port as u32,
                // Named target ports resolve against container ports, which this input does not carry: 0 tells
                // the proxy to use the service port.
                target_port: match &p.target_port {
                    Some(PortRef::Number(n)) => *n as u32,
                    Some(PortRef::Name(_)) => 0,
                    None => p.port as u32,
                },
            })
            .collect();
        member_of.insert(format!("{}/{}", m.namespace, hostname(mesh, &svc.metadata.name, &m.namespace)), PortList { ports });
    }
    let authorization_policies = policies
        .iter()
        .filter(|p| p.metadata.namespace == m.namespace)
        .filter(|p| p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, &m.labels)))
        .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
        .collect();
    let (canonical_name, canonical_revision) = canonical_name_and_revision(&m.labels, &m.name);
    workload::Workload {
        uid: workload_uid(mesh, pod),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        addresses: pod.ips().iter().map(ip_bytes).collect(),
        tunnel_protocol: if in_mesh { TunnelProtocol::Hbone } else { TunnelProtocol::None } as i32,
        service_account: pod.service_account().to_owned(),
        node: pod.spec.node_name.clone(),
        canonical_name,
        canonical_revision,
        workload_type: WorkloadType::Pod as i32,
        workload_name: m.name.clone(),
        services: member_of,
        authorization_policies,
        cluster_id: mesh.cluster_id.clone(),
        locality: pod_locality(pod),
        // Node proxies choose only HEALTHY endpoints: a terminating pod takes no new connections, its open ones finish.
        status: if pod.is_serving() { WorkloadStatus::Healthy } else { WorkloadStatus::Unhealthy } as i32,
        ..Default::default()
    }
}

/// Whether the pod's Workload is HBONE: by Istio's ambient rule (see [`crate::ambient`]), the namespace counting
/// as ambient when every pod is in the mesh.
fn in_mesh(mesh: &Mesh, pod: &Pod) -> bool {
    let every_pod = BTreeMap::from([(ambient::DATAPLANE_MODE_LABEL.to_owned(), "ambient".to_owned())]);
    let namespace_labels = match mesh.membership {
        Membership::EveryPod => Some(&every_pod),
        Membership::AmbientLabels => pod.context.namespace_labels.as_ref(),
    };
    let facts = ambient::PodFacts {
        labels: &pod.metadata.labels,
        annotations: &pod.metadata.annotations,
        host_network: pod.spec.host_network,
        namespace_labels,
    };
    ambient::membership(&facts) == ambient::Membership::Ambient
}

/// The pod's locality (`None` without any topology label), which the proxies use to prefer nearby endpoints.
fn pod_locality(pod: &Pod) -> Option<workload::Locality> {
    let (region, zone, subzone) = pod.locality();
    (!(region.is_empty() && zone.is_empty() && subzone.is_empty())).then_some(workload::Locality { region, zone, subzone })
}

/// Istio's canonical service (telemetry's name and version of a workload) from the usual labels.
fn canonical_name_and_revision(labels: &BTreeMap<String, String>, fallback_name: &str) -> (String, String) {
    let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    (
        label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]).unwrap_or_else(|| fallback_name.to_owned()),
        label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]).unwrap_or_else(|| "latest".into()),
    )
}

fn service(mesh: &Mesh, svc: &Service) -> Result<workload::Service, String> {
    let m = &svc.metadata;
    let addresses = svc.vips()?.iter().map(|ip| NetworkAddress { network: String::new(), address: ip_bytes(ip) }).collect();
    let mut ports = Vec::new();
    for (i, p) in svc.spec.ports.iter().enumerate() {
        if p.port == 0 {
            return Err(format!("field spec.ports[{i}].port: must be 1-65535"));
        }
        let target_port = match &p.target_port {
            Some(PortRef::Number(0)) => return Err(format!("field spec.ports[{i}].targetPort: must be 1-65535")),
            Some(PortRef::Number(n)) => *n as u32,
            Some(PortRef::Name(_)) => 0,
            None => p.port as u32,
        };
        ports.push(Port { service_port: p.port as u32, target_port });
    }
    Ok(workload::Service {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        hostname: hostname(mesh, &m.name, &m.namespace),
        addresses,
        ports,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{load_text, Loaded};
    use keel_proto::security::{Action, Scope};

    fn objects(yaml: &str) -> Vec<Object> {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects.into_iter().map(|(_, o)| o).collect()
    }

    /// The Workload of the pod named `name` in `resources`.
    fn workload_named<'a>(resources: &'a Resources, name: &str) -> Option<&'a workload::Workload> {
        resources.addresses.values().find_map(|a| match &a.r#type {
            Some(address::Type::Workload(w)) if w.name == name => Some(w),
            _ => None,
        })
    }

    const LIFECYCLE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ready, namespace: demo, labels: {app: echo}}
status: {phase: Running, podIPs: [{ip: 10.244.0.11}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: demo, labels: {app: echo}}
status: {phase: Running, podIPs: [{ip: 10.244.0.12}], conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: terminating, namespace: demo, labels: {app: echo}, deletionTimestamp: "2026-12-05T10:00:00Z"}
status: {phase: Running, podIPs: [{ip: 10.244.0.13}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: demo, labels: {app: echo}}
status: {phase: Succeeded, podIPs: [{ip: 10.244.0.14}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: demo, labels: {app: echo}}
status: {phase: Pending}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080, appProtocol: http}]}
"#;

    #[test]
    fn only_ready_pods_that_are_not_terminating_take_new_connections_and_finished_ones_are_gone() {
        let resources = translate(&Mesh::default(), &objects(LIFECYCLE)).unwrap();
        let status = |name: &str| workload_named(&resources, name).map(|w| WorkloadStatus::try_from(w.status).unwrap());
        assert_eq!(status("ready"), Some(WorkloadStatus::Healthy));
        assert_eq!(status("starting"), Some(WorkloadStatus::Unhealthy));
        assert_eq!(status("terminating"), Some(WorkloadStatus::Unhealthy));
        assert_eq!(status("done"), None, "a Succeeded pod is no workload: its IP may be reused");
        assert_eq!(status("pending"), None, "a pod without an address is no workload yet");

        use keel_proto::core::HealthStatus;
        let assignment = &resources.cluster_load_assignments["outbound|80||echo.demo.svc.cluster.local"];
        let mut health: Vec<(String, HealthStatus)> = assignment
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| match &e.host_identifier {
                Some(keel_proto::endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    (ep.hostname.clone(), HealthStatus::try_from(e.health_status).unwrap())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        health.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            health,
            [
                ("ready.demo".to_owned(), HealthStatus::Healthy),
                ("starting.demo".to_owned(), HealthStatus::Unhealthy),
                ("terminating.demo".to_owned(), HealthStatus::Draining),
            ]
        );
    }

    const SELECTORLESS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: by-ref, namespace: demo}
status: {podIPs: [{ip: 10.244.0.21}]}
---
apiVersion: v1
kind: Pod
metadata: {name: by-address, namespace: demo}
status: {podIPs: [{ip: 10.244.0.22}]}
---
apiVersion: v1
kind: Pod
metadata: {name: unlisted, namespace: demo}
status: {podIPs: [{ip: 10.244.0.23}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: demo}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80, targetPort: 8080, appProtocol: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-abc, namespace: demo, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.21], targetRef: {kind: Pod, name: by-ref, namespace: demo}}
- {addresses: [10.244.0.22]}
ports: [{port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-abc, namespace: demo, labels: {kubernetes.io/service-name: other}}
endpoints: [{addresses: [10.244.0.23]}]
"#;

    #[test]
    fn a_service_without_a_selector_is_backed_by_the_pods_its_endpoint_slices_list() {
        let resources = translate(&Mesh::default(), &objects(SELECTORLESS)).unwrap();
        let services = |name: &str| workload_named(&resources, name).map(|w| w.services.keys().cloned().collect::<Vec<_>>()).unwrap();
        assert_eq!(services("by-ref"), ["demo/legacy.demo.svc.cluster.local"]);
        assert_eq!(services("by-address"), ["demo/legacy.demo.svc.cluster.local"]);
        assert!(services("unlisted").is_empty(), "listed only by another Service's slice");
        let assignment = &resources.cluster_load_assignments["outbound|80||legacy.demo.svc.cluster.local"];
        assert_eq!(assignment.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 2, "L7 endpoints are the same pods");
    }

    #[test]
    fn with_ambient_labels_the_namespace_or_the_pod_decides_and_the_node_gives_the_locality() {
        let mut objects = objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: on}\nstatus: {podIPs: [{ip: 10.244.0.1}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: off}\nstatus: {podIPs: [{ip: 10.244.0.2}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: off, labels: {istio.io/dataplane-mode: ambient}}\nstatus: {podIPs: [{ip: 10.244.0.3}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: on, labels: {istio.io/dataplane-mode: none}}\nstatus: {podIPs: [{ip: 10.244.0.4}]}\n",
        );
        for object in &mut objects {
            let Object::Pod(pod) = object else { continue };
            let ambient = pod.metadata.namespace == "on";
            pod.context.namespace_labels =
                Some(if ambient { BTreeMap::from([("istio.io/dataplane-mode".into(), "ambient".into())]) } else { BTreeMap::new() });
            pod.context.node_labels = BTreeMap::from([("topology.kubernetes.io/zone".into(), "z1".into())]);
        }
        let mesh = Mesh { membership: Membership::AmbientLabels, ..Mesh::default() };
        let resources = translate(&mesh, &objects).unwrap();
        let hbone = |name: &str| workload_named(&resources, name).unwrap().tunnel_protocol == TunnelProtocol::Hbone as i32;
        assert!(hbone("a") && !hbone("b") && hbone("c") && !hbone("d"));
        assert_eq!(workload_named(&resources, "a").unwrap().locality.as_ref().map(|l| l.zone.as_str()), Some("z1"));
        // The same objects from a config directory: every pod not opted out is in the mesh.
        let resources = translate(&Mesh::default(), &objects).unwrap();
        let hbone = |name: &str| workload_named(&resources, name).unwrap().tunnel_protocol == TunnelProtocol::Hbone as i32;
        assert!(hbone("a") && hbone("b") && hbone("c") && !hbone("d"));
    }

    const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: demo, labels: {app: echo, version: v2}}
spec: {serviceAccountName: echo, nodeName: node-a}
status: {podIPs: [{ip: 10.244.0.12}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}, {port: 81}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/sleep"], notNamespaces: ["kube-*"]}}, {source: {ipBlocks: [10.1.0.0/16]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: destination.port, values: ["8080"]}]
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
"#;

    #[test]
    fn pods_and_services_become_addresses_named_as_istiod_names_them() {
        let r = translate(&Mesh::default(), &objects(TOPOLOGY)).unwrap();
        let names: Vec<&str> = r.addresses.keys().map(String::as_str).collect();
        assert_eq!(names, ["Kubernetes//Pod/demo/echo-1", "demo/echo.demo.svc.cluster.local"]);
        let Some(address::Type::Workload(w)) = &r.addresses["Kubernetes//Pod/demo/echo-1"].r#type else { panic!() };
        assert_eq!(w.addresses, vec![vec![10, 244, 0, 12]]);
        assert_eq!(
            (w.service_account.as_str(), w.node.as_str(), w.canonical_name.as_str(), w.canonical_revision.as_str()),
            ("echo", "node-a", "echo", "v2")
        );
        assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32);
        assert_eq!(
            w.services["demo/echo.demo.svc.cluster.local"].ports,
            vec![Port { service_port: 80, target_port: 8080 }, Port { service_port: 81, target_port: 81 }]
        );
        assert_eq!(w.authorization_policies, vec!["demo/only-sleep".to_owned()]);
        let Some(address::Type::Service(s)) = &r.addresses["demo/echo.demo.svc.cluster.local"].r#type else { panic!() };
        assert_eq!(s.addresses[0].address, vec![10, 96, 0, 10]);
    }

    #[test]
    fn authorization_policies_keep_istio_semantics_at_l4() {
        let r = translate(&Mesh::default(), &objects(TOPOLOGY)).unwrap();
        let allow = &r.authorizations["demo/only-sleep"];
        assert_eq!((allow.scope, allow.action), (Scope::WorkloadSelector as i32, Action::Allow as i32));
        // The HTTP-only rule is dropped from an ALLOW policy (fail closed), with a warning.
        assert_eq!(allow.rules.len(), 1);
        assert!(r.warnings.iter().any(|w| w.contains("only-sleep") && w.contains("the rule is dropped")), "{:?}", r.warnings);
        let clauses = &allow.rules[0].clauses;
        assert_eq!(clauses.len(), 3, "from, to and one when clause");
        assert_eq!(clauses[0].matches.len(), 2, "two sources: any of them");
        use security::string_match::MatchType;
        assert_eq!(clauses[0].matches[0].principals[0].match_type, Some(MatchType::Exact("cluster.local/ns/demo/sa/sleep".into())));
        assert_eq!(clauses[0].matches[0].not_namespaces[0].match_type, Some(MatchType::Prefix("kube-".into())));
        assert_eq!(clauses[0].matches[1].source_ips, vec![security::Address { address: vec![10, 1, 0, 0], length: 16 }]);
        assert_eq!(clauses[1].matches[0].destination_ports, vec![8080]);
        let deny = &r.authorizations["istio-system/deny-all"];
        assert_eq!((deny.scope, deny.action, deny.rules.len()), (Scope::Global as i32, Action::Deny as i32, 1));
    }

    /// A resource's version is the hash of its encoding: the same objects must encode the same way every time, or
    /// every recomputation pushes them again to every node. Maps (a Workload's services, a route's filter configs)
    /// are where the order could wander.
    #[test]
    fn the_same_objects_translate_to_the_same_versions_every_time() {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: demo, labels: {app: echo}}\nstatus: {phase: Running, podIPs: [{ip: 10.244.0.11}]}\n",
        );
        for s in 0..8 {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: demo}}\nspec: {{selector: {{app: echo}}, clusterIP: 10.96.0.{}, ports: [{{port: 80, appProtocol: http}}]}}\n",
                s + 10
            ));
        }
        yaml.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: s0, namespace: demo}\nspec:\n  hosts: [s0]\n  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 10}}, delay: {fixedDelay: 1s, percentage: {value: 10}}}\n    route: [{destination: {host: s1}}]\n");
        let objects = objects(&yaml);
        let first = crate::snapshot::Snapshot::from_resources(&translate(&Mesh::default(), &objects).unwrap());
        assert_eq!(workload_named(&translate(&Mesh::default(), &objects).unwrap(), "p").map(|w| w.services.len()), Some(8));
        for _ in 0..10 {
            let again = crate::snapshot::Snapshot::from_resources(&translate(&Mesh::default(), &objects).unwrap());
            assert_eq!(again, first, "the same objects translated to different bytes");
        }
    }

    #[test]
    fn remote_ip_blocks_are_http_only_and_target_refs_bind_no_node_proxy() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: office, namespace: demo}\n\
                    spec: {rules: [{from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]}]}\n\
                    ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: not-office, namespace: demo}\n\
                    spec: {action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [192.0.2.0/24], namespaces: [other]}}]}]}\n\
                    ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: at-waypoint, namespace: demo}\n\
                    spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], rules: [{}]}\n";
        let r = translate(&Mesh::default(), &objects(yaml)).unwrap();
        // An ALLOW rule on remote IPs allows nothing at a node proxy (it matched every connection before), ...
        assert!(r.authorizations["demo/office"].rules.is_empty());
        assert!(r.warnings.iter().any(|w| w.contains("office") && w.contains("the rule is dropped")), "{:?}", r.warnings);
        // ... a DENY rule keeps its L4 part, ...
        let deny = &r.authorizations["demo/not-office"];
        assert_eq!(deny.rules.len(), 1);
        assert_eq!(deny.rules[0].clauses[0].matches[0].namespaces.len(), 1);
        // ... and a policy bound to a waypoint is no namespace-wide node policy.
        assert!(!r.authorizations.contains_key("demo/at-waypoint"));
        assert!(r.warnings.iter().any(|w| w.contains("at-waypoint") && w.contains("targetRefs")), "{:?}", r.warnings);
    }

    #[test]
    fn an_empty_selector_selects_the_whole_namespace() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all, namespace: demo}\nspec: {selector: {matchLabels: {}}, action: DENY, rules: [{}]}\n";
        let r = translate(&Mesh::default(), &objects(yaml)).unwrap();
        assert_eq!(r.authorizations["demo/all"].scope, Scope::Namespace as i32);
    }

    #[test]
    fn invalid_policy_fields_are_named_when_loading() {
        let mut loaded = Loaded::default();
        load_text(
            std::path::Path::new("t.yaml"),
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-port, namespace: demo}
spec: {rules: [{to: [{operation: {ports: ["http"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-action, namespace: demo}
spec: {action: MAYBE}
"#,
            &mut loaded,
        );
        assert!(loaded.objects.is_empty());
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("bad-port") && errors[0].contains("spec.rules[0].to[0].operation.ports"), "{}", errors[0]);
        assert!(errors[1].contains("bad-action") && errors[1].contains("spec.action"), "{}", errors[1]);
    }
}
