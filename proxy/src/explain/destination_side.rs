//! Each candidate endpoint: how keel reaches it (the data path's [`plan::choose_path`]) and what the destination
//! side decides ([`policy::authorize`], or [`policy::authorize_request`] on a port whose requests are decided one
//! by one). The destination's keel decides with the same control plane's state this keel holds.
use std::net::Ipv4Addr;

use keel_proto::workload::Workload;
use serde::{Deserialize, Serialize};

use super::target::Request;
use crate::{
    identity::Identity,
    plan::{self, destination::Route, Path},
    policy::{self, ConnectionAttributes, Decision, RequestAttributes},
    xds::state::Snapshot,
};

/// One endpoint a connection or request may go to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Upstream {
    pub address: String,
    /// `namespace/name (node)` of the endpoint's workload, when keel knows it.
    pub workload: Option<String>,
    /// `hbone`, `same-node` or `direct`.
    pub path: String,
    /// The identity the endpoint must prove (HBONE's mTLS), for a meshed endpoint on another node.
    pub peer_identity: Option<String>,
    /// The destination side's decision, in words.
    pub decision: String,
    /// The policy that decided, if one did.
    pub policy: Option<String>,
    /// What dry-run policies would have done.
    #[serde(default)]
    pub dry_run: Vec<String>,
    pub allowed: bool,
    /// Its port carries HTTP and policies decide each request on it (not the connection).
    pub per_request: bool,
}

/// What the destination side knows of the connection: who is calling, and (if given) the request.
pub struct DestinationSide<'a> {
    pub snapshot: &'a Snapshot,
    pub source_ip: Ipv4Addr,
    pub source_identity: Option<&'a Identity>,
    pub request: Option<&'a Request>,
}

impl DestinationSide<'_> {
    pub fn upstream(&self, inputs: &plan::Inputs<'_>, source: Option<&Workload>, route: &Route) -> Upstream {
        let upstream_ip = std::net::IpAddr::V4(*route.upstream.ip());
        let path = plan::choose_path(source, route, (inputs.on_node)(upstream_ip), inputs.certificates);
        let workload = route.workload.as_deref();
        let mut upstream = Upstream {
            address: route.upstream.to_string(),
            workload: workload.map(|w| format!("{}/{} ({})", w.namespace, w.name, if w.node.is_empty() { "no node" } else { &w.node })),
            path: path.as_str().into(),
            peer_identity: None,
            decision: String::new(),
            policy: None,
            dry_run: Vec::new(),
            allowed: true,
            per_request: false,
        };
        let Some(workload) = workload.filter(|_| matches!(path, Path::Hbone | Path::SameNode)) else {
            upstream.decision = "delivered as is: the endpoint is not in the mesh, no keel decides for it".into();
            return upstream;
        };
        if path == Path::Hbone {
            upstream.peer_identity = Some(Identity::of_workload(workload).to_string());
        }
        let connection = ConnectionAttributes {
            source_ip: std::net::IpAddr::V4(self.source_ip),
            source_identity: self.source_identity,
            destination_ip: upstream_ip,
            destination_port: route.upstream.port(),
            destination_workload: workload,
        };
        let connection_decision = policy::authorize(self.snapshot, &connection);
        upstream.per_request = policy::needs_requests(self.snapshot, &connection)
            && plan::inbound_http_service(self.snapshot, workload, route.upstream.port()).is_some();
        if !upstream.per_request || policy::denies_every_request(self.snapshot, &connection_decision) {
            self.record(&mut upstream, &connection_decision, "connection");
            return upstream;
        }
        match self.request {
            Some(request) => {
                let path = policy::normalize_path(request.path_and_query.split_once('?').map_or(&request.path_and_query, |(p, _)| p)).into_owned();
                let host = request.host(&route.upstream.to_string()).to_ascii_lowercase();
                let attributes = RequestAttributes {
                    method: &request.method,
                    host: &host,
                    path: &path,
                    headers: &request.headers,
                    // explain verifies no JWT: a request principal or claims are taken as absent.
                    principal: None,
                    claims: None,
                    server_name: None,
                };
                let decision = policy::authorize_request(self.snapshot, &connection, &attributes);
                self.record(&mut upstream, &decision, &format!("request {} {path}", request.method));
            }
            None => {
                upstream.decision =
                    format!("connection admitted; each request on port {} is decided on its own (give --http 'METHOD /path')", route.upstream.port());
            }
        }
        upstream
    }

    fn record(&self, upstream: &mut Upstream, decision: &Decision<'_>, what: &str) {
        upstream.allowed = decision.allowed();
        upstream.policy = decision.policy().map(str::to_owned);
        upstream.decision = format!("{what}: {}", decision.reason);
        upstream.dry_run = decision.dry_run.iter().map(ToString::to_string).collect();
    }
}
