//! ServiceEntry (networking.istio.io/v1) → `istio.workload.Address`, as istiod's ambient index shapes it:
//! - each host is one Service `<ns>/<host>` carrying the entry's VIPs, ports and subject alt names;
//! - each inline endpoint is one Workload `<cluster>/networking.istio.io/ServiceEntry/<ns>/<name>/<address>` that
//!   backs every host. A hostname endpoint (resolution DNS) goes in `hostname`, for the proxy to resolve; with
//!   resolution DNS and no endpoints each host is a hostname endpoint of its own Service. Endpoints
//!   are outside the mesh (tunnel NONE) and on no node, so no inbound policy is attached to them;
//! - a `workloadSelector` instead adds the hosts to the `services` of the selected pods of the entry's namespace.
//!
//! `spec.addresses` must be single addresses: a Service carries VIPs, not ranges, so a CIDR wider than one host is
//! rejected by [`check`] rather than dropped (dropping it would silently stop matching the traffic it names).
use std::{collections::BTreeMap, net::IpAddr};

use keel_proto::workload::{self, Locality, NetworkAddress, Port, PortList, TunnelProtocol, WorkloadStatus, WorkloadType};

use super::{canonical_name_and_revision, ip_bytes, selects, Mesh};
use crate::objects::{Pod, ServiceEntry, ServiceEntryPort, WorkloadEntrySpec};

/// How the proxy finds the endpoints of the hosts (`spec.resolution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

impl Resolution {
    fn parse(value: Option<&str>) -> Result<Resolution, String> {
        match value.unwrap_or("NONE") {
            "NONE" => Ok(Resolution::None),
            "STATIC" => Ok(Resolution::Static),
            "DNS" => Ok(Resolution::Dns),
            "DNS_ROUND_ROBIN" => Ok(Resolution::DnsRoundRobin),
            other => Err(format!("field spec.resolution: {other:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN")),
        }
    }

    fn resolves_names(self) -> bool {
        matches!(self, Resolution::Dns | Resolution::DnsRoundRobin)
    }
}

/// Where an endpoint's traffic goes: an IP, or a name the proxy resolves.
enum EndpointAddress {
    Ip(IpAddr),
    Hostname,
}

fn endpoint_address(address: &str) -> Option<EndpointAddress> {
    if let Ok(ip) = address.parse() {
        return Some(EndpointAddress::Ip(ip));
    }
    let is_hostname = !address.is_empty() && address.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    is_hostname.then_some(EndpointAddress::Hostname)
}

/// A VIP: an IP, or a CIDR that names exactly one (`/32`, `/128`).
fn vip(value: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = value.parse() {
        return Ok(ip);
    }
    let net: ipnet::IpNet = value.parse().map_err(|_| format!("{value:?} is not an IP address"))?;
    if net.prefix_len() != net.max_prefix_len() {
        return Err(format!("{value:?} is a range; a Service has single addresses (write /{} or the IPs)", net.max_prefix_len()));
    }
    Ok(net.addr())
}

pub fn check(entry: &ServiceEntry) -> Result<(), String> {
    let spec = &entry.spec;
    if spec.hosts.is_empty() {
        return Err("field spec.hosts: at least one host is required".into());
    }
    let resolution = Resolution::parse(spec.resolution.as_deref())?;
    match spec.location.as_deref().unwrap_or("MESH_EXTERNAL") {
        "MESH_EXTERNAL" | "MESH_INTERNAL" => {}
        other => return Err(format!("field spec.location: {other:?} is not MESH_EXTERNAL or MESH_INTERNAL")),
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host.is_empty() {
            return Err(format!("field spec.hosts[{i}]: must not be empty"));
        }
        if let Some(first) = spec.hosts[..i].iter().position(|h| h == host) {
            return Err(format!("field spec.hosts[{i}]: repeats spec.hosts[{first}]"));
        }
        // Nothing to resolve a wildcard against when the hosts themselves are the DNS names.
        if resolution.resolves_names() && spec.endpoints.is_empty() && host.contains('*') {
            return Err(format!("field spec.hosts[{i}]: {host:?} is a wildcard, which resolution DNS cannot resolve"));
        }
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        vip(address).map_err(|e| format!("field spec.addresses[{i}]: {e}"))?;
    }
    check_ports(&spec.ports)?;
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        return Err("field spec.workloadSelector: cannot be used together with spec.endpoints".into());
    }
    if let Some(selector) = &spec.workload_selector {
        if selector.labels.is_empty() {
            return Err("field spec.workloadSelector.labels: must not be empty".into());
        }
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => {
            return Err("field spec.endpoints: resolution NONE takes no endpoints (the destination address is used as is)".into())
        }
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => {
            return Err("field spec.endpoints: resolution STATIC needs endpoints or a spec.workloadSelector".into())
        }
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => {
            return Err("field spec.endpoints: resolution DNS_ROUND_ROBIN takes at most one endpoint".into())
        }
        _ => {}
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        check_endpoint(endpoint, resolution, &spec.ports).map_err(|e| format!("field spec.endpoints[{i}].{e}"))?;
        if let Some(first) = spec.endpoints[..i].iter().position(|e| e.address == endpoint.address) {
            // The address is part of the Workload's uid.
            return Err(format!("field spec.endpoints[{i}].address: repeats spec.endpoints[{first}]"));
        }
    }
    Ok(())
}

fn check_ports(ports: &[ServiceEntryPort]) -> Result<(), String> {
    for (i, port) in ports.iter().enumerate() {
        if port.number == 0 {
            return Err(format!("field spec.ports[{i}].number: must be 1-65535"));
        }
        if port.target_port == Some(0) {
            return Err(format!("field spec.ports[{i}].targetPort: must be 1-65535"));
        }
        if let Some(first) = ports[..i].iter().position(|p| p.number == port.number) {
            return Err(format!("field spec.ports[{i}].number: {} repeats spec.ports[{first}]", port.number));
        }
        // Endpoints name their ports: a name must say which one.
        if let Some(first) = ports[..i].iter().position(|p| p.name.is_some() && p.name == port.name) {
            return Err(format!("field spec.ports[{i}].name: repeats spec.ports[{first}]"));
        }
    }
    Ok(())
}

/// Errors start with the endpoint's field name, for the caller to prefix.
fn check_endpoint(endpoint: &WorkloadEntrySpec, resolution: Resolution, ports: &[ServiceEntryPort]) -> Result<(), String> {
    match endpoint_address(&endpoint.address) {
        None => return Err(format!("address: {:?} is not an IP address or a hostname", endpoint.address)),
        Some(EndpointAddress::Hostname) if !resolution.resolves_names() => {
            return Err(format!("address: {:?} is not an IP address (a hostname needs resolution DNS)", endpoint.address))
        }
        Some(_) => {}
    }
    for (name, number) in &endpoint.ports {
        if !ports.iter().any(|p| p.name.as_deref() == Some(name.as_str())) {
            return Err(format!("ports.{name}: no port of spec.ports is named {name:?}"));
        }
        if *number == 0 {
            return Err(format!("ports.{name}: must be 1-65535"));
        }
    }
    Ok(())
}

/// What one ServiceEntry translates to, and what was left out.
#[derive(Debug, Default)]
pub struct Translated {
    pub services: Vec<workload::Service>,
    pub workloads: Vec<workload::Workload>,
    pub warnings: Vec<String>,
}

pub fn translate(mesh: &Mesh, entry: &ServiceEntry) -> Result<Translated, String> {
    check(entry)?;
    let (m, spec) = (&entry.metadata, &entry.spec);
    let mut out = Translated::default();
    let addresses: Vec<NetworkAddress> =
        spec.addresses.iter().filter_map(|a| vip(a).ok()).map(|ip| NetworkAddress { network: String::new(), address: ip_bytes(&ip) }).collect();
    let ports: Vec<Port> =
        spec.ports.iter().map(|p| Port { service_port: p.number as u32, target_port: p.target_port.unwrap_or(p.number) as u32 }).collect();
    for host in &spec.hosts {
        out.services.push(workload::Service {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            hostname: host.clone(),
            addresses: addresses.clone(),
            ports: ports.clone(),
            subject_alt_names: spec.subject_alt_names.clone(),
            ..Default::default()
        });
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        if endpoint.weight.is_some() {
            out.warnings.push(format!("spec.endpoints[{i}].weight: ignored (a Workload has no capacity to carry it)"));
        }
        out.workloads.push(endpoint_workload(mesh, entry, endpoint));
    }
    // Resolution DNS without endpoints: each host is its own endpoint, resolved by the proxy (Envoy's STRICT_DNS
    // cluster of the host itself).
    if Resolution::parse(spec.resolution.as_deref())?.resolves_names() && spec.endpoints.is_empty() && spec.workload_selector.is_none() {
        for host in &spec.hosts {
            let mut w = endpoint_workload(mesh, entry, &WorkloadEntrySpec { address: host.clone(), ..Default::default() });
            w.services.retain(|service, _| *service == format!("{}/{host}", m.namespace));
            out.workloads.push(w);
        }
    }
    Ok(out)
}

fn endpoint_workload(mesh: &Mesh, entry: &ServiceEntry, endpoint: &WorkloadEntrySpec) -> workload::Workload {
    let (m, spec) = (&entry.metadata, &entry.spec);
    // The endpoint's labels describe it more closely than the entry's.
    let mut labels = m.labels.clone();
    labels.extend(endpoint.labels.clone());
    let (canonical_name, canonical_revision) = canonical_name_and_revision(&labels, &m.name);
    let (addresses, hostname) = match endpoint_address(&endpoint.address) {
        Some(EndpointAddress::Ip(ip)) => (vec![ip_bytes(&ip)], String::new()),
        _ => (vec![], endpoint.address.clone()),
    };
    let port_list = PortList {
        ports: spec
            .ports
            .iter()
            .map(|p| {
                let named = p.name.as_ref().and_then(|name| endpoint.ports.get(name)).copied();
                Port { service_port: p.number as u32, target_port: named.or(p.target_port).unwrap_or(p.number) as u32 }
            })
            .collect(),
    };
    workload::Workload {
        uid: format!("{}/networking.istio.io/ServiceEntry/{}/{}/{}", mesh.cluster_id, m.namespace, m.name, endpoint.address),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        addresses,
        hostname,
        network: endpoint.network.clone().unwrap_or_default(),
        tunnel_protocol: TunnelProtocol::None as i32,
        service_account: endpoint.service_account.clone().unwrap_or_else(|| "default".into()),
        canonical_name,
        canonical_revision,
        // istiod's choice too: of the kinds the proto knows, a single addressable instance is closest to a pod.
        workload_type: WorkloadType::Pod as i32,
        workload_name: m.name.clone(),
        services: spec.hosts.iter().map(|host| (format!("{}/{host}", m.namespace), port_list.clone())).collect(),
        status: WorkloadStatus::Healthy as i32,
        cluster_id: mesh.cluster_id.clone(),
        locality: endpoint.locality.as_deref().map(locality),
        ..Default::default()
    }
}

/// Istio's `region/zone/subzone`, each part optional from the right.
fn locality(value: &str) -> Locality {
    let mut parts = value.splitn(3, '/').map(str::to_owned);
    Locality { region: parts.next().unwrap_or_default(), zone: parts.next().unwrap_or_default(), subzone: parts.next().unwrap_or_default() }
}

/// The `services` entries a pod gains from the ServiceEntries of its namespace whose workloadSelector selects it.
pub fn services_of_selected_pod(pod: &Pod, entries: &[&ServiceEntry]) -> BTreeMap<String, PortList> {
    let m = &pod.metadata;
    let mut services = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.metadata.namespace == m.namespace) {
        let Some(selector) = &entry.spec.workload_selector else { continue };
        if !selects(&selector.labels, &m.labels) {
            continue;
        }
        // A pod declares no named ports here, so the target port is the entry's targetPort or the port itself.
        let ports = entry
            .spec
            .ports
            .iter()
            .map(|p| Port { service_port: p.number as u32, target_port: p.target_port.unwrap_or(p.number) as u32 })
            .collect::<Vec<_>>();
        for host in &entry.spec.hosts {
            services.entry(format!("{}/{host}", m.namespace)).or_insert_with(|| PortList { ports: ports.clone() });
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use keel_proto::workload::address;

    use super::*;
    use crate::{
        objects::Object,
        source::{load_text, Loaded},
        translate::translate as translate_all,
    };

    fn load(yaml: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        loaded
    }

    fn objects(yaml: &str) -> Vec<Object> {
        let loaded = load(yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects.into_iter().map(|(_, o)| o).collect()
    }

    fn workload<'a>(r: &'a crate::translate::Resources, uid: &str) -> &'a workload::Workload {
        match &r.addresses.get(uid).unwrap_or_else(|| panic!("no {uid} in {:?}", r.addresses.keys())).r#type {
            Some(address::Type::Workload(w)) => w,
            other => panic!("{uid} is not a workload: {other:?}"),
        }
    }

    fn service<'a>(r: &'a crate::translate::Resources, name: &str) -> &'a workload::Service {
        match &r.addresses.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", r.addresses.keys())).r#type {
            Some(address::Type::Service(s)) => s,
            other => panic!("{name} is not a service: {other:?}"),
        }
    }

    fn port(service_port: u32, target_port: u32) -> Port {
        Port { service_port, target_port }
    }

    #[test]
    fn hosts_become_services_and_inline_endpoints_become_workloads() {
        let r = translate_all(
            &Mesh::default(),
            &objects(
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [api.payments.example, api-v2.payments.example]
  addresses: [240.240.0.10, "2001:db8::10/128"]
  ports: [{number: 443, name: https, protocol: TLS, targetPort: 8443}, {number: 80, name: http}]
  location: MESH_EXTERNAL
  resolution: DNS
  subjectAltNames: [spiffe://payments.example/api]
  endpoints:
  - {address: 203.0.113.7, ports: {https: 9443}, labels: {app: payments, version: v3}, serviceAccount: payments, network: edge, locality: eu-west1/eu-west1-b, weight: 10}
  - {address: backup.payments.example}
"#,
            ),
        )
        .unwrap();
        let s = service(&r, "shop/api.payments.example");
        assert_eq!((s.name.as_str(), s.namespace.as_str(), s.hostname.as_str()), ("payments", "shop", "api.payments.example"));
        let vips: Vec<&[u8]> = s.addresses.iter().map(|a| a.address.as_slice()).collect();
        assert_eq!(vips, [&[240, 240, 0, 10][..], &"2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap().octets()[..]]);
        assert_eq!(s.ports, [port(443, 8443), port(80, 80)]);
        assert_eq!(s.subject_alt_names, ["spiffe://payments.example/api"]);
        assert_eq!(service(&r, "shop/api-v2.payments.example").ports, s.ports, "one Service per host, same ports");

        let ip = workload(&r, "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/203.0.113.7");
        assert_eq!((ip.addresses.clone(), ip.hostname.as_str()), (vec![vec![203, 0, 113, 7]], ""));
        assert_eq!((ip.service_account.as_str(), ip.network.as_str(), ip.namespace.as_str()), ("payments", "edge", "shop"));
        assert_eq!((ip.canonical_name.as_str(), ip.canonical_revision.as_str()), ("payments", "v3"));
        assert_eq!(ip.tunnel_protocol, TunnelProtocol::None as i32, "an external endpoint speaks no HBONE");
        assert_eq!((ip.status, ip.cluster_id.as_str()), (WorkloadStatus::Healthy as i32, "Kubernetes"));
        assert_eq!(ip.locality, Some(Locality { region: "eu-west1".into(), zone: "eu-west1-b".into(), subzone: String::new() }));
        let mut keys: Vec<&str> = ip.services.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["shop/api-v2.payments.example", "shop/api.payments.example"]);
        assert_eq!(ip.services["shop/api.payments.example"].ports, [port(443, 9443), port(80, 80)], "the endpoint's named port wins");

        let dns = workload(&r, "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/backup.payments.example");
        assert!(dns.addresses.is_empty());
        assert_eq!(dns.hostname, "backup.payments.example", "resolved by the proxy, not by the control plane");
        assert_eq!(dns.service_account, "default");
        assert_eq!(dns.canonical_name, "payments", "no labels: named after the entry");
        assert_eq!(dns.services["shop/api.payments.example"].ports, [port(443, 8443), port(80, 80)]);

        assert!(r.warnings.iter().any(|w| w.contains("spec.endpoints[0].weight")), "{:?}", r.warnings);
        assert_eq!(r.addresses.len(), 4);
    }

    #[test]
    fn resolution_dns_without_endpoints_makes_each_host_its_own_hostname_endpoint() {
        let r = translate_all(
            &Mesh::default(),
            &objects("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: shop}\nspec:\n  hosts: [a.example.com, b.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n"),
        )
        .unwrap();
        for host in ["a.example.com", "b.example.com"] {
            let w = workload(&r, &format!("Kubernetes/networking.istio.io/ServiceEntry/shop/ext/{host}"));
            assert_eq!((w.hostname.as_str(), w.addresses.len()), (host, 0));
            assert_eq!(w.services.keys().collect::<Vec<_>>(), [&format!("shop/{host}")], "each host backs only its own Service");
        }
    }

    #[test]
    fn a_workload_selector_adds_the_hosts_to_the_selected_pods_of_its_namespace() {
        let r = translate_all(
            &Mesh::default(),
            &objects(
                r#"
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: data, labels: {app: db}}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: cache-0, namespace: data, labels: {app: cache}}
status: {podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: other, labels: {app: db}}
status: {podIP: 10.244.2.5}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.data.internal]
  addresses: [10.50.0.1/32]
  ports: [{number: 5432, name: postgres, targetPort: 15432}, {number: 9187, name: metrics}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
"#,
            ),
        )
        .unwrap();
        assert_eq!(service(&r, "data/db.data.internal").addresses[0].address, [10, 50, 0, 1], "a /32 is its address");
        let db = workload(&r, "Kubernetes//Pod/data/db-0");
        assert_eq!(db.services["data/db.data.internal"].ports, [port(5432, 15432), port(9187, 9187)]);
        assert!(workload(&r, "Kubernetes//Pod/data/cache-0").services.is_empty(), "labels do not match");
        assert!(workload(&r, "Kubernetes//Pod/other/db-0").services.is_empty(), "a selector stays in its namespace");
        assert!(!r.addresses.keys().any(|k| k.contains("ServiceEntry")), "the pods are the endpoints");
    }

    #[test]
    fn a_host_already_defined_keeps_its_first_definition() {
        let r = translate_all(
            &Mesh::default(),
            &objects(
                r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-alias, namespace: demo}
spec: {hosts: [echo.demo.svc.cluster.local], addresses: [240.240.0.1], ports: [{number: 81}]}
"#,
            ),
        )
        .unwrap();
        assert_eq!(service(&r, "demo/echo.demo.svc.cluster.local").ports, [port(80, 80)]);
        assert!(r.warnings.iter().any(|w| w.contains("echo-alias") && w.contains("already defined")), "{:?}", r.warnings);
    }

    /// Each invalid spec is rejected when loading, naming the field.
    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("{hosts: []}", "field spec.hosts:"),
            ("{hosts: [a.example, a.example]}", "field spec.hosts[1]: repeats spec.hosts[0]"),
            ("{hosts: ['*.example'], resolution: DNS}", "field spec.hosts[0]:"),
            ("{hosts: [a.example], addresses: [10.0.0.0/24]}", "field spec.addresses[0]: \"10.0.0.0/24\" is a range"),
            ("{hosts: [a.example], addresses: [nope]}", "field spec.addresses[0]:"),
            ("{hosts: [a.example], ports: [{number: 80}, {number: 0}]}", "field spec.ports[1].number: must be 1-65535"),
            ("{hosts: [a.example], ports: [{number: 80, targetPort: 0}]}", "field spec.ports[0].targetPort"),
            ("{hosts: [a.example], ports: [{number: 80}, {number: 80}]}", "field spec.ports[1].number: 80 repeats spec.ports[0]"),
            ("{hosts: [a.example], ports: [{number: 80, name: h}, {number: 81, name: h}]}", "field spec.ports[1].name"),
            ("{hosts: [a.example], resolution: SOMETIMES}", "field spec.resolution:"),
            ("{hosts: [a.example], location: MESH_NEARBY}", "field spec.location:"),
            (
                "{hosts: [a.example], resolution: STATIC, endpoints: [{address: 10.0.0.1}], workloadSelector: {labels: {app: a}}}",
                "field spec.workloadSelector: cannot be used together with spec.endpoints",
            ),
            ("{hosts: [a.example], resolution: STATIC, workloadSelector: {labels: {}}}", "field spec.workloadSelector.labels"),
            ("{hosts: [a.example], resolution: STATIC}", "field spec.endpoints: resolution STATIC needs endpoints"),
            ("{hosts: [a.example], endpoints: [{address: 10.0.0.1}]}", "field spec.endpoints: resolution NONE"),
            (
                "{hosts: [a.example], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.x}, {address: b.x}]}",
                "field spec.endpoints: resolution DNS_ROUND_ROBIN",
            ),
            (
                "{hosts: [a.example], resolution: STATIC, endpoints: [{address: db.example}]}",
                "field spec.endpoints[0].address: \"db.example\" is not an IP",
            ),
            ("{hosts: [a.example], resolution: DNS, endpoints: [{address: 'unix:///sock'}]}", "field spec.endpoints[0].address"),
            (
                "{hosts: [a.example], resolution: STATIC, endpoints: [{address: 10.0.0.1}, {address: 10.0.0.1}]}",
                "field spec.endpoints[1].address: repeats",
            ),
            (
                "{hosts: [a.example], resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1, ports: {grpc: 9000}}]}",
                "field spec.endpoints[0].ports.grpc: no port of spec.ports is named \"grpc\"",
            ),
            (
                "{hosts: [a.example], resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1, ports: {http: 0}}]}",
                "field spec.endpoints[0].ports.http: must be 1-65535",
            ),
        ];
        for (spec, expected) in cases {
            let loaded =
                load(&format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se, namespace: demo}}\nspec: {spec}\n"));
            assert!(loaded.objects.is_empty(), "{spec} was accepted");
            let error = loaded.errors[0].to_string();
            assert!(error.contains("ServiceEntry demo/se: ") && error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn valid_variants_are_accepted() {
        for spec in [
            "{hosts: ['*.wild.example'], ports: [{number: 443}]}",
            "{hosts: [a.example], addresses: [\"2001:db8::1\"], resolution: DNS}",
            "{hosts: [a.example], resolution: STATIC, endpoints: [{address: \"2001:db8::2\"}]}",
            "{hosts: [a.example], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.example}]}",
        ] {
            let loaded = load(&format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec: {spec}\n"));
            assert!(loaded.errors.is_empty(), "{spec}: {:?}", loaded.errors);
        }
    }
}
