//! `/config_dump` and `keel config-dump`: the workload state keel holds, in a shape people read (addresses as
//! text, enums by name, identities as SPIFFE URIs), plus where it came from and the xDS connection's state.
//! `keel pc` prints the same document as tables.
use std::{collections::BTreeSet, net::IpAddr};

use keel_proto::{
    http_security::{HttpMatch, HttpRule},
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
    /// The authorization policies that apply to connections to it (`<ns>/<name>`, sorted).
    #[serde(default)]
    pub policies: Vec<String>,
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
    /// The same for the policy's HTTP rules (keel's `HttpAuthorization`), which decide requests on ports that
    /// carry HTTP; empty for a policy without any.
    #[serde(default)]
    pub http_rules: Vec<String>,
}

pub use crate::identity::manager::CertificateEntry;

impl ConfigDump {
    pub fn build(snapshot: &Snapshot, captured_ips: &BTreeSet<IpAddr>, certificates: Vec<CertificateEntry>, xds: Option<XdsStatus>) -> ConfigDump {
        let mut workloads: Vec<WorkloadEntry> = snapshot.workloads.values().map(|w| workload(w, snapshot, captured_ips)).collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        let mut services: Vec<ServiceEntry> = snapshot.services.values().map(|s| service(s, snapshot)).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut policies: Vec<PolicyEntry> = snapshot
            .policies
            .iter()
            .map(|(name, p)| policy(p, snapshot.http_policies.get(name).map(|h| h.rules.as_slice()).unwrap_or_default()))
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        ConfigDump { workloads, services, policies, certificates, xds, l7: crate::l7_config::dump::L7Dump::build(&snapshot.l7) }
    }
}

fn addresses(raw: impl Iterator<Item = impl AsRef<[u8]>>) -> Vec<String> {
    raw.filter_map(|a| ip_of(a.as_ref())).map(|ip| ip.to_string()).collect()
}

fn workload(w: &Workload, snapshot: &Snapshot, captured_ips: &BTreeSet<IpAddr>) -> WorkloadEntry {
    let mut services: Vec<String> = w.services.keys().cloned().collect();
    services.sort();
    let mut policies: Vec<String> = crate::policy::candidates(snapshot, w).map(|(name, _)| name.to_owned()).collect();
    policies.sort();
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
        policies,
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

fn policy(p: &Authorization, http_rules: &[HttpRule]) -> PolicyEntry {
    PolicyEntry {
        name: format!("{}/{}", p.namespace, p.name),
        scope: Scope::try_from(p.scope).map_or_else(|_| p.scope.to_string(), |s| s.as_str_name().into()),
        action: Action::try_from(p.action).map_or_else(|_| p.action.to_string(), |a| a.as_str_name().into()),
        dry_run: p.dry_run,
        rules: p.rules.iter().map(describe_rule).collect(),
        http_rules: http_rules.iter().map(describe_http_rule).collect(),
    }
}

/// `principals=[cluster.local/ns/a/sa/b] AND (ports=[80] OR not_ports=[81])`; an empty rule matches everything.
pub fn describe_rule(rule: &security::Rule) -> String {
    describe_clauses(rule.clauses.iter().map(|c| c.matches.iter().map(describe_match).collect()))
}

/// An HTTP rule the same way: `methods=[GET] paths=[/items*]`, `header[x-tenant]=[blue]`, ...
pub fn describe_http_rule(rule: &HttpRule) -> String {
    describe_clauses(rule.clauses.iter().map(|c| c.matches.iter().map(describe_http_match).collect()))
}

/// Clauses joined by AND, the matches of each by OR; no clause at all is `any`.
fn describe_clauses(clauses: impl Iterator<Item = Vec<String>>) -> String {
    let clauses: Vec<String> =
        clauses.map(|matches| if matches.len() == 1 { matches[0].clone() } else { format!("({})", matches.join(" OR ")) }).collect();
    if clauses.is_empty() {
        "any".into()
    } else {
        clauses.join(" AND ")
    }
}

fn describe_strings(v: &[security::StringMatch]) -> String {
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
}

fn describe_cidrs(v: &[security::Address]) -> String {
    v.iter().map(|a| ip_of(&a.address).map_or_else(|| "?".into(), |ip| format!("{ip}/{}", a.length))).collect::<Vec<_>>().join(",")
}

/// The fields that are set, as `name=[values]`; `any` when none is.
fn describe_fields(fields: Vec<(String, String)>) -> String {
    let set: Vec<String> = fields.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}=[{v}]")).collect();
    if set.is_empty() {
        "any".into()
    } else {
        set.join(" ")
    }
}

fn describe_http_match(m: &HttpMatch) -> String {
    use keel_proto::http_security::{path_match::Kind, request_condition::Attribute, PathMatch};
    let paths = |v: &[PathMatch]| {
        v.iter()
            .map(|p| match &p.kind {
                Some(Kind::String(s)) => describe_strings(std::slice::from_ref(s)),
                Some(Kind::Template(t)) => t.clone(),
                None => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut fields = vec![
        ("hosts".to_owned(), describe_strings(&m.hosts)),
        ("not_hosts".to_owned(), describe_strings(&m.not_hosts)),
        ("methods".to_owned(), describe_strings(&m.methods)),
        ("not_methods".to_owned(), describe_strings(&m.not_methods)),
        ("paths".to_owned(), paths(&m.paths)),
        ("not_paths".to_owned(), paths(&m.not_paths)),
        ("request_principals".to_owned(), describe_strings(&m.request_principals)),
        ("not_request_principals".to_owned(), describe_strings(&m.not_request_principals)),
        ("remote_ips".to_owned(), describe_cidrs(&m.remote_ips)),
        ("not_remote_ips".to_owned(), describe_cidrs(&m.not_remote_ips)),
    ];
    for condition in &m.conditions {
        let attribute = match &condition.attribute {
            Some(Attribute::Header(name)) => format!("header[{name}]"),
            Some(Attribute::Claim(path)) => format!("claims[{}]", path.segments.join("][")),
            Some(Attribute::Principal(())) => "request.auth.principal".into(),
            Some(Attribute::ServerName(())) => "connection.sni".into(),
            None => "?".into(),
        };
        fields.push((attribute.clone(), describe_strings(&condition.values)));
        fields.push((format!("not {attribute}"), describe_strings(&condition.not_values)));
    }
    let request = describe_fields(fields);
    match m.connection.as_ref().map(describe_match).filter(|c| c != "any") {
        Some(connection) if request == "any" => connection,
        Some(connection) => format!("{connection} {request}"),
        None => request,
    }
}

fn describe_match(m: &security::Match) -> String {
    let ports = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let accounts =
        |v: &[security::ServiceAccountMatch]| v.iter().map(|a| format!("{}/{}", a.namespace, a.service_account)).collect::<Vec<_>>().join(",");
    describe_fields(
        [
            ("namespaces", describe_strings(&m.namespaces)),
            ("not_namespaces", describe_strings(&m.not_namespaces)),
            ("principals", describe_strings(&m.principals)),
            ("not_principals", describe_strings(&m.not_principals)),
            ("source_ips", describe_cidrs(&m.source_ips)),
            ("not_source_ips", describe_cidrs(&m.not_source_ips)),
            ("destination_ips", describe_cidrs(&m.destination_ips)),
            ("not_destination_ips", describe_cidrs(&m.not_destination_ips)),
            ("ports", ports(&m.destination_ports)),
            ("not_ports", ports(&m.not_destination_ports)),
            ("service_accounts", accounts(&m.service_accounts)),
            ("not_service_accounts", accounts(&m.not_service_accounts)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
}
