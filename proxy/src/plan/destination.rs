//! Where a captured outbound connection goes. A service VIP is load-balanced over the service's healthy
//! endpoints (uniformly at random: the workload API carries no per-endpoint weight); any other address is the
//! destination itself, with its Workload attached when keel knows it.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use keel_proto::workload::{Service, Workload, WorkloadStatus};
use rand::Rng as _;

use super::Resolved;
use crate::xds::state::{ip_of, service_name, Snapshot};

#[derive(Clone, Debug)]
pub struct Route {
    /// The address keel connects to.
    pub upstream: SocketAddrV4,
    /// The service whose VIP the client dialled, if it dialled one.
    pub service: Option<Arc<Service>>,
    /// The destination workload, when keel knows it (always, for a service endpoint).
    pub workload: Option<Arc<Workload>>,
}

/// Why a service VIP resolves to no endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("service {service} has no port {port}")]
    NoServicePort { service: String, port: u16 },
    #[error("no healthy endpoint for service {service} port {port}")]
    NoHealthyEndpoint { service: String, port: u16 },
}

/// Resolves an original destination against the workload state: one of [`candidates`], picked at random.
pub fn resolve(snapshot: &Snapshot, destination: SocketAddrV4, resolved: &dyn Resolved) -> Result<Route, RouteError> {
    let mut candidates = candidates(snapshot, destination, resolved)?;
    let chosen = rand::rng().random_range(0..candidates.len());
    Ok(candidates.swap_remove(chosen))
}

/// Every route a connection to `destination` may take (never empty): a service VIP's healthy endpoints on the
/// port, a hostname endpoint (a ServiceEntry's with resolution DNS) once per address its name resolves to, as
/// Envoy's STRICT_DNS hosts; any other address is the one route to itself. `keel explain` lists them all.
pub fn candidates(snapshot: &Snapshot, destination: SocketAddrV4, resolved: &dyn Resolved) -> Result<Vec<Route>, RouteError> {
    let ip = IpAddr::V4(*destination.ip());
    let Some(service) = snapshot.services_by_vip.get(&ip) else {
        return Ok(vec![Route { upstream: destination, service: None, workload: snapshot.workloads_by_ip.get(&ip).cloned() }]);
    };
    let name = service_name(service);
    let port = destination.port();
    let Some(service_port) = service.ports.iter().find(|p| p.service_port == u32::from(port)) else {
        return Err(RouteError::NoServicePort { service: name, port });
    };
    let candidates: Vec<Route> = snapshot
        .endpoints
        .get(&name)
        .into_iter()
        .flatten()
        .filter(|w| w.status == WorkloadStatus::Healthy as i32)
        .flat_map(|w| {
            let address = w.addresses.iter().filter_map(|a| ip_of(a)).find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            });
            let addresses = match address {
                Some(address) => vec![address],
                None if !w.hostname.is_empty() => resolved.addresses(&w.hostname.to_ascii_lowercase()),
                None => Vec::new(),
            };
            let target = target_port(w, &name, port, service_port.target_port);
            addresses.into_iter().filter_map(move |address: Ipv4Addr| {
                Some(Route { upstream: SocketAddrV4::new(address, target?), service: Some(service.clone()), workload: Some(w.clone()) })
            })
        })
        .collect();
    if candidates.is_empty() {
        return Err(RouteError::NoHealthyEndpoint { service: name, port });
    }
    Ok(candidates)
}

/// The endpoint's own port mapping wins (it resolves named target ports); then the service's target port; a
/// zero everywhere means "same as the service port".
pub(super) fn target_port(w: &Workload, service: &str, port: u16, service_target: u32) -> Option<u16> {
    let from_endpoint = w
        .services
        .get(service)
        .and_then(|list| list.ports.iter().find(|p| p.service_port == u32::from(port)))
        .map(|p| p.target_port)
        .filter(|t| *t != 0);
    let chosen = from_endpoint.or((service_target != 0).then_some(service_target)).unwrap_or(u32::from(port));
    u16::try_from(chosen).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use keel_proto::workload::{NetworkAddress, Port, PortList};

    use super::*;
    use crate::{
        plan::NoNames,
        xds::state::{Resource, WorkloadStore},
    };

    const SERVICE: &str = "demo/echo.demo.svc.cluster.local";

    fn endpoint(uid: &str, ip: [u8; 4], healthy: bool, target: u32) -> (String, Resource) {
        let w = Workload {
            uid: uid.into(),
            namespace: "demo".into(),
            addresses: vec![ip.to_vec()],
            status: if healthy { WorkloadStatus::Healthy } else { WorkloadStatus::Unhealthy } as i32,
            services: BTreeMap::from([(SERVICE.to_owned(), PortList { ports: vec![Port { service_port: 80, target_port: target }] })]),
            ..Default::default()
        };
        (uid.into(), Resource::Workload(Box::new(w)))
    }

    fn store_with(endpoints: Vec<(String, Resource)>) -> WorkloadStore {
        let service = Service {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![10, 96, 0, 10] }],
            ports: vec![Port { service_port: 80, target_port: 8080 }],
            ..Default::default()
        };
        let store = WorkloadStore::default();
        let mut all = endpoints;
        all.push((SERVICE.into(), Resource::Service(service)));
        store.apply(all, &[]);
        store
    }

    #[test]
    fn a_vip_goes_to_healthy_endpoints_only_and_to_each_of_them() {
        let store =
            store_with(vec![endpoint("a", [10, 0, 0, 1], true, 0), endpoint("b", [10, 0, 0, 2], true, 9090), endpoint("c", [10, 0, 0, 3], false, 0)]);
        let snapshot = store.snapshot();
        let seen: HashSet<SocketAddrV4> =
            (0..200).map(|_| resolve(&snapshot, "10.96.0.10:80".parse().unwrap(), &NoNames).unwrap().upstream).collect();
        // a: the service's target port; b: its own mapping; c: unhealthy, never.
        let expected: HashSet<SocketAddrV4> = ["10.0.0.1:8080".parse().unwrap(), "10.0.0.2:9090".parse().unwrap()].into();
        assert_eq!(seen, expected);
    }

    #[test]
    fn no_endpoint_or_unknown_port_is_an_error_naming_the_service() {
        let snapshot = store_with(vec![endpoint("c", [10, 0, 0, 3], false, 0)]).snapshot();
        let err = resolve(&snapshot, "10.96.0.10:80".parse().unwrap(), &NoNames).unwrap_err();
        assert_eq!(err.to_string(), format!("no healthy endpoint for service {SERVICE} port 80"));
        let err = resolve(&snapshot, "10.96.0.10:81".parse().unwrap(), &NoNames).unwrap_err();
        assert_eq!(err.to_string(), format!("service {SERVICE} has no port 81"));
    }

    #[test]
    fn other_addresses_pass_through_with_their_workload() {
        let snapshot = store_with(vec![endpoint("a", [10, 0, 0, 1], true, 0)]).snapshot();
        let route = resolve(&snapshot, "10.0.0.1:7000".parse().unwrap(), &NoNames).unwrap();
        assert_eq!(route.upstream, "10.0.0.1:7000".parse().unwrap());
        assert_eq!(route.workload.unwrap().uid, "a");
        let route = resolve(&snapshot, "192.0.2.1:7000".parse().unwrap(), &NoNames).unwrap();
        assert!(route.workload.is_none() && route.service.is_none());
    }
}
