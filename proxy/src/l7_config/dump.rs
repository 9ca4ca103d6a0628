//! The L7 part of `/config_dump`, in the shape `keel pc listeners|routes|clusters|endpoints` prints (after
//! `istioctl proxy-config`): what keel is routing by right now, with live balancer and outlier state.
use std::sync::atomic::Ordering;

use keel_proto::route::{route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, Route};
use serde::{Deserialize, Serialize};

use super::{
    balancer::Policy,
    config::L7Config,
    downstream_tls::{ClientCertificates, DownstreamTls},
    filter_chain::ChainFilter,
    secret::SecretSummary,
};

/// A TLS chain in a line: `SIMPLE cert=kubernetes://web` or `MUTUAL cert=... ca=...`.
fn describe_tls(tls: &DownstreamTls) -> String {
    let mode = match tls.client_certificates {
        ClientCertificates::NotAsked => "SIMPLE",
        ClientCertificates::Optional => "OPTIONAL_MUTUAL",
        ClientCertificates::Required => "MUTUAL",
    };
    let ca = tls.trusted_ca.as_ref().map(|ca| format!(" ca={ca}")).unwrap_or_default();
    format!("{mode} cert={}{ca}", tls.certificate)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct L7Dump {
    pub listeners: Vec<ListenerEntry>,
    pub routes: Vec<RouteEntry>,
    pub clusters: Vec<ClusterEntry>,
    pub endpoints: Vec<EndpointEntry>,
    /// A gateway's certificates and CA bundles (never their keys).
    #[serde(default)]
    pub secrets: Vec<SecretSummary>,
}

/// One filter chain of a listener.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerEntry {
    pub name: String,
    pub port: u16,
    /// The SNI names a TLS chain serves (`-`: a plain chain; `*`: any name).
    #[serde(default)]
    pub server_names: String,
    /// `-`, or the TLS termination: client certificates asked, certificate and CA secrets.
    #[serde(default)]
    pub tls: String,
    pub route_config: String,
    pub faults: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RouteEntry {
    pub route_config: String,
    pub virtual_host: String,
    pub domains: usize,
    pub name: String,
    pub matches: String,
    pub action: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub name: String,
    pub lb_policy: String,
    pub http2: bool,
    pub endpoints: usize,
    pub ejected: usize,
    pub limits: ClusterLimits,
    pub outlier_detection: bool,
    /// The TLS keel originates to the endpoints ("" for none).
    #[serde(default)]
    pub tls: String,
}

/// A cluster's circuit-breaker thresholds (Envoy's `circuit_breakers.thresholds[0]`, from DestinationRule
/// `connectionPool`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterLimits {
    pub max_connections: Threshold,
    pub max_pending_requests: Threshold,
    pub max_requests: Threshold,
    pub max_retries: Threshold,
}

/// One threshold, written as a person writes it: a number, or `unlimited` for the value Istio sends when a
/// DestinationRule sets none (`4294967295`, u32's largest), in tables and in JSON/YAML alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(pub u32);

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            u32::MAX => f.write_str("unlimited"),
            n => write!(f, "{n}"),
        }
    }
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            u32::MAX => serializer.serialize_str("unlimited"),
            n => serializer.serialize_u32(n),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u32),
            Word(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(n) => Ok(Threshold(n)),
            Written::Word(w) if w == "unlimited" => Ok(Threshold(u32::MAX)),
            Written::Word(w) => Err(serde::de::Error::custom(format!("a threshold is a number or `unlimited`, not {w:?}"))),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub address: String,
    pub cluster: String,
    pub outlier_check: String,
    pub active_requests: u64,
    pub locality: String,
}

pub(crate) fn describe_match(route: &Route) -> String {
    let Some(m) = &route.r#match else { return "-".into() };
    let mut parts = vec![match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => format!("prefix {p}"),
        Some(PathSpecifier::Path(p)) => format!("path {p}"),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("prefix {p}/"),
        None => "any path".into(),
    }];
    parts.extend(m.headers.iter().map(|h| format!("header {}", h.name)));
    parts.extend(m.query_parameters.iter().map(|q| format!("query {}", q.name)));
    parts.join(", ")
}

pub(crate) fn describe_action(route: &Route) -> String {
    match &route.action {
        Some(Action::Route(a)) => match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c.clone(),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().map(|c| format!("{}={}", c.name, c.weight.unwrap_or(0))).collect::<Vec<_>>().join(" ")
            }
            _ => "-".into(),
        },
        Some(Action::Redirect(r)) => format!(
            "redirect {}{}",
            r.host_redirect,
            match &r.path_rewrite_specifier {
                Some(keel_proto::route::redirect_action::PathRewriteSpecifier::PathRedirect(p)) => p.as_str(),
                _ => "",
            }
        ),
        Some(Action::DirectResponse(d)) => format!("direct response {}", d.status),
        None => "-".into(),
    }
}

fn policy_name(p: &Policy) -> &'static str {
    match p {
        Policy::LeastRequest { .. } => "LEAST_REQUEST",
        Policy::RoundRobin => "ROUND_ROBIN",
        Policy::Random => "RANDOM",
        Policy::RingHash { .. } => "RING_HASH",
        Policy::Maglev { .. } => "MAGLEV",
    }
}

impl L7Dump {
    pub fn build(l7: &L7Config) -> L7Dump {
        let mut listeners: Vec<ListenerEntry> = l7
            .listeners
            .values()
            .flat_map(|l| {
                l.chains.iter().map(|c| ListenerEntry {
                    name: l.name.clone(),
                    port: l.port,
                    server_names: match (c.tls_client_hello, c.server_names.is_empty()) {
                        (false, _) => "-".into(),
                        (true, true) => "*".into(),
                        (true, false) => c.server_names.join(","),
                    },
                    tls: match (&c.tls, c.tls_client_hello) {
                        (Some(tls), _) => describe_tls(tls),
                        (None, true) => "PASSTHROUGH".into(),
                        (None, false) => "-".into(),
                    },
                    route_config: match &c.filter {
                        ChainFilter::Http { route_config, .. } => route_config.clone(),
                        ChainFilter::Tcp(proxy) => format!(
                            "tcp → {}",
                            proxy.clusters.iter().map(|(name, weight)| format!("{name} ({weight})")).collect::<Vec<_>>().join(", ")
                        ),
                    },
                    faults: matches!(c.filter, ChainFilter::Http { faults: true, .. }),
                })
            })
            .collect();
        listeners.sort_by(|a, b| (a.port, &a.server_names).cmp(&(b.port, &b.server_names)));
        let mut secrets: Vec<SecretSummary> = l7.secrets.values().map(|s| s.summary.clone()).collect();
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        let mut names: Vec<&String> = l7.route_tables.keys().collect();
        names.sort();
        let routes = names
            .into_iter()
            .flat_map(|name| {
                l7.route_tables[name].virtual_hosts().iter().flat_map(move |host| {
                    host.routes.iter().map(move |r| RouteEntry {
                        route_config: name.clone(),
                        virtual_host: host.name.clone(),
                        domains: host.host.domains.len(),
                        name: if r.route.name.is_empty() { "-".into() } else { r.route.name.clone() },
                        matches: describe_match(&r.route),
                        action: describe_action(&r.route),
                    })
                })
            })
            .collect();
        let mut clusters: Vec<ClusterEntry> = l7
            .clusters
            .values()
            .map(|c| {
                let l = &c.config.limits;
                ClusterEntry {
                    name: c.config.name.clone(),
                    lb_policy: policy_name(&c.config.policy).into(),
                    http2: c.config.http2,
                    endpoints: c.balancer.endpoints().len(),
                    ejected: c.ejected(),
                    limits: ClusterLimits {
                        max_connections: Threshold(l.max_connections),
                        max_pending_requests: Threshold(l.max_pending_requests),
                        max_requests: Threshold(l.max_requests),
                        max_retries: Threshold(l.max_retries),
                    },
                    outlier_detection: c.config.outlier.is_some(),
                    tls: c.config.upstream_tls.as_ref().map(|t| describe_upstream_tls(&t.summary)).unwrap_or_default(),
                }
            })
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let mut endpoints: Vec<EndpointEntry> = l7
            .clusters
            .values()
            .flat_map(|c| {
                let localities = c.assignment.iter().flat_map(|a| a.endpoints.iter()).map(|e| e.locality.clone());
                c.balancer.endpoints().iter().zip(localities).map(|(e, locality)| EndpointEntry {
                    address: e.address.to_string(),
                    cluster: c.config.name.clone(),
                    outlier_check: if e.ejected.load(Ordering::Relaxed) { "FAILED" } else { "OK" }.into(),
                    active_requests: e.active.load(Ordering::Relaxed),
                    locality: locality
                        .map_or_else(|| "-".into(), |(r, z, s)| [r, z, s].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("/")),
                })
            })
            .collect();
        endpoints.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
        L7Dump { listeners, routes, clusters, endpoints, secrets }
    }
}

/// `sni=<name> verify=<CA> san=<names> cert=<file>`, or why the cluster's connections fail.
fn describe_upstream_tls(t: &super::upstream_tls::UpstreamTlsSummary) -> String {
    if let Some(error) = &t.error {
        return format!("unusable: {error}");
    }
    let mut parts = vec![format!("sni={}", if t.sni.is_empty() { "-" } else { &t.sni }), format!("verify={}", t.verify)];
    if !t.subject_alt_names.is_empty() {
        parts.push(format!("san={}", t.subject_alt_names.join(",")));
    }
    if let Some(cert) = &t.client_certificate {
        parts.push(format!("cert={cert}"));
    }
    parts.join(" ")
}
