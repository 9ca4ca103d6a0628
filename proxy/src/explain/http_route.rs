//! A request the L7 engine serves: the route table of the port, the virtual host and route the request matches
//! (the engine's own [`RouteTable::route`](crate::l7_config::route_table::RouteTable::route)), what the route does
//! (clusters and weights, timeout, retries, faults, mirrors, rewrites, or keel's own answer), and each endpoint of
//! each cluster it may go to.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use keel_proto::workload::Workload;
use serde::{Deserialize, Serialize};

use super::{destination_side::DestinationSide, target::Request, Inputs, Outcome, Upstream, Verdict};
use crate::{
    l7_config::{
        dump::{describe_action, describe_match},
        matching::RequestView,
        route_plan::{ForwardPlan, RoutePlan, Target},
    },
    plan::destination::Route,
};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RouteExplanation {
    /// `GET /items (Host web.demo.svc.cluster.local)`.
    pub request: String,
    pub route_config: String,
    pub virtual_host: Option<String>,
    /// The route's name and match, when one matched.
    pub route: Option<String>,
    /// Where it sends the request, as `keel pc routes` shows it.
    pub action: String,
    /// Timeout, retries, faults, mirrors, rewrites, the clusters' balancing and limits.
    pub details: Vec<String>,
}

/// The route, a verdict when the route settles it by itself (no route, keel's own answer), and the endpoints.
pub fn explain(
    inputs: &Inputs<'_>,
    side: &DestinationSide<'_>,
    source: Option<&Workload>,
    request: &Request,
    authority: &str,
    port: u16,
) -> (RouteExplanation, Option<Verdict>, Vec<Upstream>) {
    let snapshot = inputs.plan.snapshot;
    let host = request.host(authority).to_owned();
    let mut route = RouteExplanation { request: format!("{} (Host {host})", request.line()), ..Default::default() };
    let Some((_, table)) = snapshot.l7.route_table(port, None) else {
        let verdict = Verdict { outcome: Outcome::Denied, reason: format!("404 (NR): no HTTP listener on port {port}") };
        return (route, Some(verdict), Vec::new());
    };
    route.route_config = table.name.clone();
    let view = RequestView { method: &request.method, authority: &host, path_and_query: &request.path_and_query, headers: &request.headers };
    route.virtual_host = table.virtual_host(&host).map(|v| v.name.clone());
    let Some((_, matched)) = table.route(&view) else {
        let reason = match &route.virtual_host {
            None => format!("404 (NR): no virtual host of route config {} serves {host}", table.name),
            Some(v) => format!("404 (NR): no route of virtual host {v} matches {}", request.line()),
        };
        return (route, Some(Verdict { outcome: Outcome::Denied, reason }), Vec::new());
    };
    let name = if matched.route.name.is_empty() { "(unnamed)" } else { &matched.route.name };
    route.route = Some(format!("{name}: {}", describe_match(&matched.route)));
    route.action = describe_action(&matched.route);
    match &matched.plan {
        RoutePlan::Direct { status, .. } => {
            let verdict = Verdict { outcome: Outcome::Allowed, reason: format!("answered by keel: direct response {status}") };
            (route, Some(verdict), Vec::new())
        }
        RoutePlan::Redirect(redirect) => {
            let location = redirect.location(&host, &request.path_and_query);
            let verdict = Verdict { outcome: Outcome::Allowed, reason: format!("answered by keel: redirect {} to {location}", redirect.status) };
            (route, Some(verdict), Vec::new())
        }
        RoutePlan::Forward(plan) => {
            route.details = forward_details(plan);
            let mut upstreams = Vec::new();
            for (cluster_name, weight) in clusters(plan) {
                let Some(cluster) = snapshot.l7.clusters.get(&cluster_name) else {
                    route.details.push(format!("cluster {cluster_name} (weight {weight}): unknown to keel, answered 503 (NC)"));
                    continue;
                };
                let limits = &cluster.config.limits;
                route.details.push(format!(
                    "cluster {cluster_name} (weight {weight}): {} endpoints, {} ejected, connect timeout {:?}, limits {} connections / {} pending / {} requests / {} retries",
                    cluster.balancer.endpoints().len(),
                    cluster.ejected(),
                    cluster.config.connect_timeout,
                    threshold(limits.max_connections),
                    threshold(limits.max_pending_requests),
                    threshold(limits.max_requests),
                    threshold(limits.max_retries),
                ));
                for endpoint in cluster.balancer.endpoints() {
                    let SocketAddr::V4(address) = endpoint.address else { continue };
                    let workload = snapshot.workloads_by_ip.get(&IpAddr::V4(*address.ip())).cloned();
                    let to = Route { upstream: SocketAddrV4::new(*address.ip(), address.port()), service: None, workload };
                    let mut upstream = side.upstream(&inputs.plan, source, &to);
                    if endpoint.ejected.load(std::sync::atomic::Ordering::Relaxed) {
                        upstream.decision = format!("ejected by outlier detection now; {}", upstream.decision);
                    }
                    upstreams.push(upstream);
                }
            }
            (route, None, upstreams)
        }
    }
}

/// The clusters a route may pick, with their weights.
fn clusters(plan: &ForwardPlan) -> Vec<(String, u32)> {
    match &plan.target {
        Target::Cluster(name) => vec![(name.clone(), 100)],
        Target::Weighted(w) => w.clusters.iter().map(|c| (c.name.clone(), c.weight.unwrap_or(0))).collect(),
    }
}

fn forward_details(plan: &ForwardPlan) -> Vec<String> {
    let mut details = vec![match plan.timeout {
        Some(t) => format!("timeout {}", seconds(t)),
        None => "no timeout".into(),
    }];
    details.push(plan.retries.as_ref().map_or_else(|| "no retries".into(), |r| r.describe()));
    if let Some(faults) = &plan.faults {
        details.push(format!("fault injection: {}", faults.describe()));
    }
    for (cluster, fraction) in &plan.mirrors {
        details.push(format!("mirrored to {cluster} ({}% of requests)", fraction * 100.0));
    }
    if let Some(host) = &plan.host_rewrite {
        details.push(format!("Host rewritten to {host}"));
    }
    if plan.path_rewrite.is_some() {
        details.push("path rewritten (see `keel pc routes`)".into());
    }
    details
}

fn seconds(d: Duration) -> String {
    format!("{d:?}")
}

fn threshold(n: u32) -> String {
    crate::l7_config::dump::Threshold(n).to_string()
}
