//! `keel explain --from <pod> --to <host:port> [--http 'GET /path' -H name:value]`: what keel would do with that
//! connection or request right now, and why, decided by the same functions the data path runs (capture's rules,
//! [`plan::plan`], the L7 route table, [`policy::authorize`] and [`policy::authorize_request`]) over the live
//! state, without sending a byte.
//!
//! Pure: [`explain`] reads [`Inputs`] and returns an [`Explanation`]; the daemon gathers the inputs, the CLI
//! prints the answer ([`render`]).
mod destination_side;
mod http_route;
pub mod render;
mod target;

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use crate::{
    config::{CaptureMode, Exclusions},
    config_dump::CertificateEntry,
    identity::Identity,
    plan::{self, Direction, Plan},
    pods::PodSpec,
};
pub use destination_side::Upstream;
pub use http_route::RouteExplanation;
pub use target::split_request_line;

/// What to explain: a connection from an enrolled pod, and optionally one HTTP request on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// The source pod: `namespace/name` or its IP.
    pub from: String,
    /// `host:port`: an IP, a service hostname (`web`, `web.demo`, `web.demo.svc.cluster.local`) or a
    /// ServiceEntry host.
    pub to: String,
    #[serde(default)]
    pub http: Option<HttpQuery>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpQuery {
    pub method: String,
    /// Path and query, as on the request line.
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Why a query cannot be answered; each names what it could not find.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("--from {0}: no pod of that name or address is enrolled on this node, and no workload has it")]
    UnknownSource(String),
    #[error("--to {0}: expected host:port")]
    BadDestination(String),
    #[error("--to {0}: no service or ServiceEntry host of that name")]
    UnknownHost(String),
    #[error("--to {host}: service {service} has no IPv4 VIP (clients reach its endpoints by their own addresses)")]
    NoVip { host: String, service: String },
    #[error("--http {0:?}: expected 'METHOD /path'")]
    BadRequestLine(String),
    #[error("-H {0:?}: expected name:value")]
    BadHeader(String),
}

/// What the answer is built from: the node's live state.
pub struct Inputs<'a> {
    pub plan: plan::Inputs<'a>,
    /// Pods enrolled on this node.
    pub pods: &'a [PodSpec],
    pub capture: CaptureMode,
    pub exclusions: &'a Exclusions,
    /// Certificates keel holds, by identity.
    pub certificates: &'a [CertificateEntry],
}

/// The answer, one part per step a connection takes; `verdict` sums it up.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Explanation {
    /// `demo/client 10.244.0.5 (spiffe://cluster.local/ns/demo/sa/client)`.
    pub source: String,
    pub capture: String,
    /// The address the pod dials, and what it is.
    pub destination: String,
    /// What keel does with the connection (the data path's plan).
    pub plan: String,
    /// The HTTP route, for a connection the L7 engine serves.
    pub route: Option<RouteExplanation>,
    /// Where it may go: each candidate endpoint, how keel reaches it, and the destination side's decision.
    pub upstreams: Vec<Upstream>,
    /// The identities involved: the source's certificate, the peers expected.
    pub certificates: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Carried (or answered by keel) and admitted at the destination.
    #[default]
    Allowed,
    /// Refused by keel or denied by a policy.
    Denied,
    /// Allowed to some candidate endpoints and denied by others: which one the balancer picks decides.
    DependsOnEndpoint,
    /// keel never sees it: the pod connects directly.
    NotCaptured,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
}

/// Explains `query` over `inputs`.
pub fn explain(inputs: &Inputs<'_>, query: &ExplainQuery) -> Result<Explanation, ExplainError> {
    let snapshot = inputs.plan.snapshot;
    let source = target::source(inputs, &query.from)?;
    let request = query.http.as_ref().map(target::Request::parse).transpose()?;
    let to = target::destination(snapshot, &query.to, source.namespace())?;
    let identity = source.workload.as_deref().map(Identity::of_workload);
    let mut explanation = Explanation {
        source: source.describe(identity.as_ref()),
        destination: to.describe(),
        certificates: source_certificate(inputs, identity.as_ref()),
        ..Default::default()
    };
    if let Err(reason) = captured(inputs, source.enrolled, to.address) {
        explanation.capture = format!("no: {reason}");
        explanation.plan = "none: the pod connects directly, keel neither sees nor secures the connection".into();
        explanation.verdict = Verdict { outcome: Outcome::NotCaptured, reason: format!("not captured: {reason}") };
        return Ok(explanation);
    }
    explanation.capture = format!("yes: {} enrolled on this node ({} capture)", source.name, capture_name(inputs.capture));
    let destination_side =
        destination_side::DestinationSide { snapshot, source_ip: source.ip, source_identity: identity.as_ref(), request: request.as_ref() };
    match plan::plan(&inputs.plan, Direction::Outbound, source.ip, to.address) {
        Plan::Refuse(refused) => {
            explanation.plan = format!("refused before a byte is carried: {refused}");
            explanation.verdict = Verdict { outcome: Outcome::Denied, reason: refused.to_string() };
        }
        Plan::NoRoute { error, .. } => {
            explanation.plan = format!("refused: {error}");
            explanation.verdict = Verdict { outcome: Outcome::Denied, reason: error.to_string() };
        }
        Plan::Respond => {
            explanation.plan = "answered by keel itself (benchmark responder mode)".into();
            explanation.verdict = Verdict { outcome: Outcome::Allowed, reason: "keel answers every request with 200".into() };
        }
        // The plan of an outbound connection is never Inbound; said rather than assumed.
        Plan::Inbound => explanation.plan = "inbound delivery (not expected for an outbound connection)".into(),
        Plan::Relay(relay) => {
            let tls = relay.tls.as_ref().map(|t| format!(", inside TLS keel originates ({})", t.summary.sni)).unwrap_or_default();
            explanation.plan = format!("relayed as bytes (L4){tls}");
            let routes = plan::destination::candidates(snapshot, to.address, inputs.plan.resolved).unwrap_or_default();
            explanation.upstreams = routes.iter().map(|route| destination_side.upstream(&inputs.plan, source.workload.as_deref(), route)).collect();
            explanation.verdict = sum_up(&explanation.upstreams);
        }
        Plan::Http { service, .. } => {
            explanation.plan = format!("HTTP: the L7 engine serves it (service {} port {})", service.hostname, to.address.port());
            let request = request.clone().unwrap_or_else(target::Request::default_get);
            let authority = to.authority(&service.hostname);
            let (route, verdict, upstreams) =
                http_route::explain(inputs, &destination_side, source.workload.as_deref(), &request, &authority, to.address.port());
            explanation.route = Some(route);
            explanation.upstreams = upstreams;
            explanation.verdict = verdict.unwrap_or_else(|| sum_up(&explanation.upstreams));
        }
    }
    explanation
        .certificates
        .extend(explanation.upstreams.iter().filter_map(|u| u.peer_identity.as_ref()).map(|peer| format!("peer must present {peer}")));
    explanation.certificates.dedup();
    Ok(explanation)
}

/// The capture program's rules (`ebpf/programs`' `try_connect4`; the iptables rules say the same): an enrolled
/// pod's TCP connection is captured unless it goes to loopback or to an excluded port or CIDR.
fn captured(inputs: &Inputs<'_>, enrolled: bool, to: SocketAddrV4) -> Result<(), String> {
    if !enrolled {
        return Err("the pod is not enrolled on this node's keel".into());
    }
    if to.ip().is_loopback() {
        return Err("loopback destinations stay inside the pod".into());
    }
    if inputs.exclusions.outbound_ports.contains(&to.port()) {
        return Err(format!("port {} is excluded (--exclude-outbound-port)", to.port()));
    }
    if let Some(cidr) = inputs.exclusions.outbound_cidrs.iter().find(|c| c.contains(to.ip())) {
        return Err(format!("{} is in excluded CIDR {cidr} (--exclude-outbound-cidr)", to.ip()));
    }
    Ok(())
}

fn capture_name(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Ebpf => "eBPF",
        CaptureMode::Iptables => "iptables",
    }
}

/// The source's certificate as keel holds it (fetched on first need).
fn source_certificate(inputs: &Inputs<'_>, identity: Option<&Identity>) -> Vec<String> {
    let Some(identity) = identity else { return vec!["the source has no identity: keel has no Workload for it".into()] };
    let identity = identity.to_string();
    match inputs.certificates.iter().find(|c| c.identity == identity) {
        Some(c) => vec![format!("source presents {identity} ({}, serial {}, valid until {})", c.state, c.serial, c.not_after)],
        None if inputs.plan.certificates => vec![format!("source presents {identity} (certificate fetched on first need)")],
        None => vec![format!("source is {identity}, but keel has no certificate source: it cannot prove it")],
    }
}

/// Allowed when every candidate is, denied when none is, otherwise up to the balancer.
fn sum_up(upstreams: &[Upstream]) -> Verdict {
    let allowed = upstreams.iter().filter(|u| u.allowed).count();
    match (allowed, upstreams.len()) {
        (_, 0) => Verdict { outcome: Outcome::Denied, reason: "no endpoint to send it to".into() },
        (a, n) if a == n => Verdict { outcome: Outcome::Allowed, reason: upstreams[0].decision.clone() },
        (0, _) => Verdict { outcome: Outcome::Denied, reason: upstreams[0].decision.clone() },
        (a, n) => Verdict { outcome: Outcome::DependsOnEndpoint, reason: format!("{a} of {n} endpoints admit it") },
    }
}

#[cfg(test)]
mod tests;
