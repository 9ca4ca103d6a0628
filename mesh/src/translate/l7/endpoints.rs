//! ClusterLoadAssignments: the pods a cluster's service selects (narrowed by the subset's labels), at pod IP and
//! target port, grouped by locality. The control plane runs no health checks: a pod is HEALTHY while Kubernetes
//! says it is Ready and not being deleted (DRAINING then, UNHEALTHY when not Ready), and outlier detection in the
//! engine takes bad ones out.
use std::collections::BTreeMap;

use keel_proto::{
    core::{address, socket_address::PortSpecifier, Address, HealthStatus, Locality, SocketAddress},
    endpoint::{lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints},
};

use super::{ClusterKey, Mesh7};
use crate::objects::{Pod, PortRef};

pub fn load_assignment(mesh: &Mesh7, key: &ClusterKey) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<(String, String, String), Vec<LbEndpoint>> = BTreeMap::new();
    if let Some(service) = mesh.services.get(&key.host) {
        let subset_labels =
            key.subset.as_ref().and_then(|name| mesh.rules.get(&key.host)?.spec.subsets.iter().find(|s| &s.name == name)).map(|s| &s.labels);
        // A subset no DestinationRule defines selects nothing (see the module comment of l7).
        let subset_missing = key.subset.is_some() && subset_labels.is_none();
        let target_port = service.spec.ports.iter().find(|p| p.port == key.port).map_or(key.port, |p| match &p.target_port {
            Some(PortRef::Number(n)) => *n,
            // Named target ports resolve against container ports, which the input does not carry; the service
            // port is the usual convention (the workload translation makes the same choice).
            Some(PortRef::Name(_)) | None => key.port,
        });
        let selected = super::super::in_namespace(&mesh.pods_by_namespace, &service.metadata.namespace).iter().filter(|pod| {
            !subset_missing
                && super::super::backs(service, pod, &mesh.slices)
                && subset_labels.is_none_or(|labels| labels.iter().all(|(k, v)| pod.metadata.labels.get(k) == Some(v)))
        });
        for pod in selected {
            for ip in pod.ips() {
                by_locality.entry(pod.locality()).or_default().push(lb_endpoint(pod, &ip.to_string(), target_port));
            }
        }
    }
    let endpoints = by_locality
        .into_iter()
        .map(|((region, zone, sub_zone), lb_endpoints)| LocalityLbEndpoints {
            locality: (!(region.is_empty() && zone.is_empty() && sub_zone.is_empty())).then_some(Locality { region, zone, sub_zone }),
            lb_endpoints,
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment { cluster_name: key.name(), endpoints }
}

fn lb_endpoint(pod: &Pod, ip: &str, port: u16) -> LbEndpoint {
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    };
    LbEndpoint {
        // A terminating or unready pod keeps its place (its open streams finish) but is chosen no more.
        health_status: match (pod.is_serving(), pod.metadata.deletion_timestamp.is_some()) {
            (true, _) => HealthStatus::Healthy,
            (false, true) => HealthStatus::Draining,
            (false, false) => HealthStatus::Unhealthy,
        } as i32,
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(address),
            hostname: format!("{}.{}", pod.metadata.name, pod.metadata.namespace),
        })),
        ..Default::default()
    }
}
