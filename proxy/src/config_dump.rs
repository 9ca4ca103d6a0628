//! `/config_dump` and `keel config-dump`: the workload state keel holds, in a shape people read (addresses as
//! text, enums by name, identities as SPIFFE URIs), plus where it came from and the xDS connection's state.
//! `keel pc` prints the same document as tables.
use std::{collections::BTreeSet, net::IpAddr};

use keel_proto::{
    security::{self, string_match::MatchType, Action, Authorization, Scope},
    workload::{Service, TunnelProtocol, Workload, WorkloadStatus},
};
use serde::{Deserialize, Serialize};

use crate::{
    identity::Identity,
    xds::{
        client::XdsStatus,
        state::{ip_of, service_name, Snapshot},
    },
};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigDump {
    pub workloads: Vec<WorkloadEntry>,
    pub services: Vec<ServiceEntry>,
    pub policies: Vec<PolicyEntry>,
    /// Workload certificates keel holds for the identities of its pods (fetched on first need).
    pub certificates: Vec<CertificateEntry>,
    /// `None` when keel runs without a workload source.
    pub xds: Option<XdsStatus>,
    /// Listeners, routes, clusters and endpoints of the L7 engine.
    #[serde(default)]
    pub l7: crate::l7_config::dump::L7Dump,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkloadEntry {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub node: String,
    pub identity: String,
    pub protocol: String,
    pub status: String,
    pub services: Vec<String>,
    /// Enrolled in capture on this node.
    pub captured: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub vips: Vec<String>,
    /// `service_port→target_port` (target 0 = same as the service port).
    pub ports: Vec<String>,
    pub endpoints: usize,
    pub healthy_endpoints: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub name: String,
    pub scope: String,
    pub action: String,
    pub dry_run: bool,
    /// One line per rule: clauses joined by AND, matches within a clause by OR.
    pub rules: Vec<String>,
}

pub use crate::identity::manager::CertificateEntry;

impl ConfigDump {
    pub fn build(snapshot: &Snapshot, captured_ips: &BTreeSet<IpAddr>, certificates: Vec<CertificateEntry>, xds: Option<XdsStatus>) -> ConfigDump {
        let mut workloads: Vec<WorkloadEntry> = snapshot.workloads.values().map(|w| workload(w, captured_ips)).collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        let mut services: Vec<ServiceEntry> = snapshot.services.values().map(|s| service(s, snapshot)).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut policies: Vec<PolicyEntry> = snapshot.policies.values().map(|p| policy(p)).collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        ConfigDump { workloads, services, policies, certificates, xds, l7: crate::l7_config::dump::L7Dump::build(&snapshot.l7) }
    }
}

fn addresses(raw: impl Iterator<Item = impl AsRef<[u8]>>) -> Vec<String> {
    raw.filter_map(|a| ip_of(a.as_ref())).map(|ip| ip.to_string()).collect()
}

fn workload(w: &Workload, captured_ips: &BTreeSet<IpAddr>) -> WorkloadEntry {
    let mut services: Vec<String> = w.services.keys().cloned().collect();
    services.sort();
    WorkloadEntry {
        uid: w.uid.clone(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        addresses: addresses(w.addresses.iter()),
        node: w.node.clone(),
        identity: Identity::of_workload(w).to_string(),
        protocol: TunnelProtocol::try_from(w.tunnel_protocol).map_or_else(|_| w.tunnel_protocol.to_string(), |p| p.as_str_name().into()),
        status: WorkloadStatus::try_from(w.status).map_or_else(|_| w.status.to_string(), |s| s.as_str_name().into()),
        services,
        captured: w.addresses.iter().filter_map(|a| ip_of(a)).any(|ip| captured_ips.contains(&ip)),
    }
}

fn service(s: &Service, snapshot: &Snapshot) -> ServiceEntry {
    let name = service_name(s);
    let endpoints = snapshot.endpoints.get(&name).map(Vec::as_slice).unwrap_or_default();
    ServiceEntry {
        vips: addresses(s.addresses.iter().map(|a| &a.address)),
        ports: s.ports.iter().map(|p| format!("{}→{}", p.service_port, p.target_port)).collect(),
        endpoints: endpoints.len(),
        healthy_endpoints: endpoints.iter().filter(|w| w.status == WorkloadStatus::Healthy as i32).count(),
        name,
    }
}

fn policy(p: &Authorization) -> PolicyEntry {
    PolicyEntry {
        name: format!("{}/{}", p.namespace, p.name),
        scope: Scope::try_from(p.scope).map_or_else(|_| p.scope.to_string(), |s| s.as_str_name().into()),
        action: Action::try_from(p.action).map_or_else(|_| p.action.to_string(), |a| a.as_str_name().into()),
        dry_run: p.dry_run,
        rules: p.rules.iter().map(describe_rule).collect(),
    }
}

/// `principals=[cluster.local/ns/a/sa/b] AND (ports=[80] OR not_ports=[81])`; an empty rule matches everything.
pub fn describe_rule(rule: &security::Rule) -> String {
    if rule.clauses.is_empty() {
        return "any".into();
    }
    let clauses: Vec<String> = rule
        .clauses
        .iter()
        .map(|c| {
            let matches: Vec<String> = c.matches.iter().map(describe_match).collect();
            if matches.len() == 1 {
                matches[0].clone()
            } else {
                format!("({})", matches.join(" OR "))
            }
        })
        .collect();
    clauses.join(" AND ")
}

fn describe_match(m: &security::Match) -> String {
    let strings = |v: &[security::StringMatch]| -> String {
        v.iter()
            .map(|s| match &s.match_type {
                Some(MatchType::Exact(x)) => x.clone(),
                Some(MatchType::Prefix(x)) => format!("{x}*"),
                Some(MatchType::Suffix(x)) => format!("*{x}"),
                Some(MatchType::Presence(())) => "*".into(),
                None => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let cidrs = |v: &[security::Address]| -> String {
        v.iter().map(|a| ip_of(&a.address).map_or_else(|| "?".into(), |ip| format!("{ip}/{}", a.length))).collect::<Vec<_>>().join(",")
    };
    let ports = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let accounts =
        |v: &[security::ServiceAccountMatch]| v.iter().map(|a| format!("{}/{}", a.namespace, a.service_account)).collect::<Vec<_>>().join(",");
    let fields = [
        ("namespaces", strings(&m.namespaces)),
        ("not_namespaces", strings(&m.not_namespaces)),
        ("principals", strings(&m.principals)),
        ("not_principals", strings(&m.not_principals)),
        ("source_ips", cidrs(&m.source_ips)),
        ("not_source_ips", cidrs(&m.not_source_ips)),
        ("destination_ips", cidrs(&m.destination_ips)),
        ("not_destination_ips", cidrs(&m.not_destination_ips)),
        ("ports", ports(&m.destination_ports)),
        ("not_ports", ports(&m.not_destination_ports)),
        ("service_accounts", accounts(&m.service_accounts)),
        ("not_service_accounts", accounts(&m.not_service_accounts)),
    ];
    let set: Vec<String> = fields.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}=[{v}]")).collect();
    if set.is_empty() {
        "any".into()
    } else {
        set.join(" ")
    }
}
