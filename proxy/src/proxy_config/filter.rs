//! `--namespace`, `--workload` and `--port`: which rows of each view stay. Each filter narrows the views it has a
//! meaning for and leaves the others whole (a port says nothing about a certificate); together they all apply.
use std::collections::BTreeSet;

use crate::config_dump::ConfigDump;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct Filters {
    /// Only this namespace: its workloads, services, policies and certificates, and the clusters, routes and
    /// endpoints of its services (`<host>.<namespace>.svc.*`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this workload (`name` or `namespace/name`): it, the services it serves, the policies that apply to
    /// it, its certificate, and the clusters, routes and listeners that lead to it.
    #[arg(long)]
    pub workload: Option<String>,
    /// Only this port: listeners on it, its routes, its clusters (`outbound|<port>||...`), endpoints on it and
    /// services that expose it.
    #[arg(long)]
    pub port: Option<u16>,
}

impl Filters {
    pub fn apply(&self, dump: &mut ConfigDump) -> anyhow::Result<()> {
        if let Some(workload) = &self.workload {
            by_workload(dump, workload)?;
        }
        if let Some(namespace) = &self.namespace {
            by_namespace(dump, namespace);
        }
        if let Some(port) = self.port {
            by_port(dump, port);
        }
        Ok(())
    }
}

fn by_workload(dump: &mut ConfigDump, wanted: &str) -> anyhow::Result<()> {
    let (namespace, name) = wanted.split_once('/').map_or((None, wanted), |(ns, name)| (Some(ns), name));
    dump.workloads.retain(|w| w.name == name && namespace.is_none_or(|ns| w.namespace == ns));
    if dump.workloads.is_empty() {
        anyhow::bail!("--workload {wanted}: keel knows no such workload");
    }
    let services: BTreeSet<&str> = dump.workloads.iter().flat_map(|w| w.services.iter().map(String::as_str)).collect();
    let policies: BTreeSet<&str> = dump.workloads.iter().flat_map(|w| w.policies.iter().map(String::as_str)).collect();
    let identities: BTreeSet<&str> = dump.workloads.iter().map(|w| w.identity.as_str()).collect();
    let addresses: BTreeSet<&str> = dump.workloads.iter().flat_map(|w| w.addresses.iter().map(String::as_str)).collect();
    dump.services.retain(|s| services.contains(s.name.as_str()));
    dump.policies.retain(|p| policies.contains(p.name.as_str()));
    dump.certificates.retain(|c| identities.contains(c.identity.as_str()));
    let l7 = &mut dump.l7;
    l7.endpoints.retain(|e| addresses.contains(host_of(&e.address)));
    let clusters: BTreeSet<String> = l7.endpoints.iter().map(|e| e.cluster.clone()).collect();
    l7.clusters.retain(|c| clusters.contains(&c.name));
    l7.routes.retain(|r| names_a_cluster(&r.action, &clusters));
    let route_configs: BTreeSet<&str> = l7.routes.iter().map(|r| r.route_config.as_str()).collect();
    l7.listeners.retain(|l| route_configs.contains(l.route_config.as_str()) || names_a_cluster(&l.route_config, &clusters));
    Ok(())
}

fn by_namespace(dump: &mut ConfigDump, namespace: &str) {
    let prefix = format!("{namespace}/");
    let in_namespace = |text: &str| text.contains(&format!(".{namespace}.svc"));
    dump.workloads.retain(|w| w.namespace == namespace);
    dump.services.retain(|s| s.name.starts_with(&prefix));
    dump.policies.retain(|p| p.name.starts_with(&prefix));
    dump.certificates.retain(|c| c.identity.contains(&format!("/ns/{namespace}/")));
    let l7 = &mut dump.l7;
    l7.clusters.retain(|c| in_namespace(&c.name));
    l7.endpoints.retain(|e| in_namespace(&e.cluster));
    l7.routes.retain(|r| in_namespace(&r.virtual_host) || in_namespace(&r.action));
}

fn by_port(dump: &mut ConfigDump, port: u16) {
    let port_text = port.to_string();
    // `80→8080`: a service port and the target port it leads to.
    dump.services.retain(|s| s.ports.iter().any(|p| p.split('→').any(|side| side == port_text)));
    let l7 = &mut dump.l7;
    let route_configs: BTreeSet<String> = l7.listeners.iter().filter(|l| l.port == port).map(|l| l.route_config.clone()).collect();
    l7.listeners.retain(|l| l.port == port);
    l7.routes.retain(|r| route_configs.contains(&r.route_config));
    // `outbound|80||web.demo.svc.cluster.local`: the port is the second field.
    let cluster_port = |name: &str| name.split('|').nth(1) == Some(port_text.as_str());
    l7.clusters.retain(|c| cluster_port(&c.name));
    l7.endpoints.retain(|e| cluster_port(&e.cluster) || e.address.rsplit_once(':').is_some_and(|(_, p)| p == port_text));
}

/// `10.0.0.5:8080` → `10.0.0.5`.
fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

/// Whether a route's destination (`cluster` or `a=90 b=10`, or a TCP chain's `tcp → a (1)`) names one of
/// `clusters`.
fn names_a_cluster(destination: &str, clusters: &BTreeSet<String>) -> bool {
    destination.split([' ', '=', ',']).any(|word| clusters.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config_dump::WorkloadEntry,
        l7_config::dump::{ClusterEntry, ClusterLimits, EndpointEntry, ListenerEntry, RouteEntry, Threshold},
    };

    fn cluster(name: &str) -> ClusterEntry {
        let unset = Threshold(u32::MAX);
        ClusterEntry {
            name: name.into(),
            lb_policy: "ROUND_ROBIN".into(),
            http2: false,
            endpoints: 1,
            ejected: 0,
            limits: ClusterLimits { max_connections: Threshold(100), max_pending_requests: unset, max_requests: unset, max_retries: unset },
            outlier_detection: false,
            tls: String::new(),
        }
    }

    fn dump() -> ConfigDump {
        let mut dump = ConfigDump::default();
        dump.workloads.push(WorkloadEntry {
            uid: "u1".into(),
            namespace: "demo".into(),
            name: "web-1".into(),
            addresses: vec!["10.0.1.5".into()],
            node: "node-1".into(),
            identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
            protocol: "HBONE".into(),
            status: "HEALTHY".into(),
            services: vec!["demo/web.demo.svc.cluster.local".into()],
            policies: vec!["demo/allow-get".into()],
            captured: true,
        });
        let endpoint = |address: &str, cluster: &str| EndpointEntry {
            address: address.into(),
            cluster: cluster.into(),
            outlier_check: "OK".into(),
            active_requests: 0,
            locality: "-".into(),
        };
        dump.l7.endpoints = vec![
            endpoint("10.0.1.5:8080", "outbound|80||web.demo.svc.cluster.local"),
            endpoint("10.0.2.9:9090", "outbound|9090||db.data.svc.cluster.local"),
        ];
        dump.l7.clusters = vec![cluster("outbound|80||web.demo.svc.cluster.local"), cluster("outbound|9090||db.data.svc.cluster.local")];
        let route = |config: &str, host: &str, action: &str| RouteEntry {
            route_config: config.into(),
            virtual_host: host.into(),
            domains: 1,
            name: "-".into(),
            matches: "prefix /".into(),
            action: action.into(),
        };
        dump.l7.routes = vec![
            route("80", "web.demo.svc.cluster.local:80", "outbound|80||web.demo.svc.cluster.local"),
            route("9090", "db.data.svc.cluster.local:9090", "outbound|9090||db.data.svc.cluster.local"),
        ];
        let listener = |port: u16| ListenerEntry {
            name: format!("0.0.0.0_{port}"),
            port,
            server_names: "-".into(),
            tls: "-".into(),
            route_config: port.to_string(),
            faults: false,
        };
        dump.l7.listeners = vec![listener(80), listener(9090)];
        dump
    }

    #[test]
    fn a_workload_narrows_to_what_leads_to_it() {
        let mut d = dump();
        Filters { workload: Some("demo/web-1".into()), ..Default::default() }.apply(&mut d).unwrap();
        assert_eq!(d.l7.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["outbound|80||web.demo.svc.cluster.local"]);
        assert_eq!(d.l7.routes.len(), 1);
        assert_eq!(d.l7.listeners.iter().map(|l| l.port).collect::<Vec<_>>(), [80]);
        let err = Filters { workload: Some("nope".into()), ..Default::default() }.apply(&mut dump()).unwrap_err();
        assert_eq!(err.to_string(), "--workload nope: keel knows no such workload");
    }

    #[test]
    fn a_namespace_and_a_port_narrow_the_views_they_mean_something_for() {
        let mut d = dump();
        Filters { namespace: Some("data".into()), ..Default::default() }.apply(&mut d).unwrap();
        assert!(d.workloads.is_empty());
        assert_eq!(d.l7.endpoints.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.0.2.9:9090"]);
        assert_eq!(d.l7.listeners.len(), 2, "listeners belong to no namespace");
        let mut d = dump();
        Filters { port: Some(9090), ..Default::default() }.apply(&mut d).unwrap();
        assert_eq!((d.l7.listeners.len(), d.l7.routes.len(), d.l7.clusters.len(), d.workloads.len()), (1, 1, 1, 1));
        assert_eq!(d.l7.routes[0].route_config, "9090");
    }
}
