//! One request's life: route it, then answer locally (direct response, redirect, injected abort, overflow, no
//! healthy upstream) or forward it to an endpoint of the chosen cluster with the route's timeout and retries,
//! mirroring a copy where asked, and report it when its response ends.
//!
//! One deliberate difference from Envoy: the route timeout runs from the moment keel has the request, so an
//! injected delay counts against it (Envoy starts the timer after the fault filter). A delay fault plus a shorter
//! timeout on the same route therefore ends in 504, which is what people who configure both are testing.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use keel_proto::workload::Workload;
use rand::Rng as _;

use super::{
    body::{buffer_if_small, full, HttpBody, ReportingBody},
    trace_headers,
};
use crate::{
    data_path::{DataPath, PodContext},
    l7_config::{
        action::{edit_headers, pick_weighted, request_hash, RequestHash},
        cluster::{ActiveRequest, Cluster},
        filter_chain::ChainFilter,
        matching::RequestView,
        outlier::Outcome,
        retry::AttemptOutcome,
        route_plan::{ForwardPlan, RoutePlan, Target},
        route_table::{CompiledRoute, CompiledVirtualHost},
    },
    plan::{self, destination::Route, Path},
    telemetry::http::{HttpMetrics, RequestRecord},
    upstream::{Hop, Protocol, SendError},
    xds::state::Snapshot,
};

/// Everything the requests of one downstream connection share.
pub struct Downstream {
    pub dp: Arc<DataPath>,
    pub pod: Arc<PodContext>,
    /// The pod's name, shared by every request's record.
    pub pod_name: Arc<str>,
    /// The service port the client dialled (selects the listener and its routes).
    pub port: u16,
    /// The TLS filter chain a gateway chose for the connection at its handshake (by SNI); `None`: the
    /// listener's plain chain.
    pub filter_chain: Option<Arc<str>>,
    pub client_ip: IpAddr,
    pub source: Option<Arc<Workload>>,
    /// The source workload's (region, zone, subzone), for locality-preferring balancing.
    pub locality: Option<(String, String, String)>,
    pub metrics: Arc<HttpMetrics>,
}

/// Headers that describe one hop's connection and must not be forwarded (RFC 9110 §7.6.1). Names, not strings:
/// a string is parsed into a name on every lookup.
pub(super) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
];

pub async fn handle(request: Request<Incoming>, d: Arc<Downstream>) -> Result<Response<ReportingBody>, Infallible> {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let (authority, path_and_query) = authority_and_path(&parts);
    let grpc = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (request_id, spans) = trace_headers::prepare(&mut parts.headers, d.dp.telemetry.traces());
    let mut record = RequestRecord::new(d.pod_name.clone(), parts.method.clone(), if grpc { "grpc" } else { "http" }, request_id, d.source.clone());
    record.spans = spans;
    record.version = parts.version;
    let snapshot = d.dp.workloads.snapshot();
    let response = respond(&d, &snapshot, parts, body.boxed(), &authority, &path_and_query, &mut record, started).await;
    let response = if grpc { grpc_local_reply(response) } else { response };
    (record.authority, record.path) = (authority, path_and_query);
    record.status = response.status().as_u16();
    if record.grpc_status.is_none() {
        record.grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
    }
    let metrics = d.metrics.clone();
    Ok(response.map(|body| ReportingBody::new(body, record, metrics, started)))
}

/// Where the request says it goes: `:authority` (HTTP/2, absolute-form) or Host, and the path with its query.
pub(super) fn authority_and_path(parts: &Parts) -> (String, String) {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    (authority, parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    d: &Arc<Downstream>,
    snapshot: &Arc<Snapshot>,
    parts: Parts,
    body: HttpBody,
    authority: &str,
    path_and_query: &str,
    record: &mut RequestRecord,
    started: Instant,
) -> Response<HttpBody> {
    let Some((listener, table)) = snapshot.l7.route_table(d.port, d.filter_chain.as_deref()) else {
        record.flag("NR");
        return local_reply(StatusCode::NOT_FOUND, "");
    };
    let view = RequestView { method: parts.method.as_str(), authority, path_and_query, headers: &parts.headers };
    let Some((host, route)) = table.route(&view) else {
        record.flag("NR");
        return local_reply(StatusCode::NOT_FOUND, "");
    };
    record.route = route.route.name.clone();
    let mut response = match &route.plan {
        RoutePlan::Direct { status, body } => Response::builder().status(*status).body(full(body.clone())).expect("a valid status"),
        RoutePlan::Redirect(redirect) => Response::builder()
            .status(redirect.status)
            .header(header::LOCATION, redirect.location(authority, path_and_query))
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| local_reply(StatusCode::INTERNAL_SERVER_ERROR, "invalid redirect location")),
        RoutePlan::Forward(plan) => {
            let faults = if matches!(listener.filter, ChainFilter::Http { faults: true, .. }) { plan.faults.as_ref() } else { None };
            let request = Forward { d, snapshot, host, route, plan, parts, authority, path_and_query, started };
            request.run(faults, body, record).await
        }
    };
    edit_headers(response.headers_mut(), &route.route.response_headers_to_add, &route.route.response_headers_to_remove);
    edit_headers(response.headers_mut(), &host.host.response_headers_to_add, &host.host.response_headers_to_remove);
    response
}

/// A request on its way to a cluster.
struct Forward<'a> {
    d: &'a Arc<Downstream>,
    snapshot: &'a Arc<Snapshot>,
    host: &'a CompiledVirtualHost,
    route: &'a CompiledRoute,
    plan: &'a ForwardPlan,
    parts: Parts,
    authority: &'a str,
    path_and_query: &'a str,
    started: Instant,
}

/// The request body: in memory (can be sent again) or a stream (sent once).
enum RequestBody {
    Buffered(Bytes),
    Stream(Option<HttpBody>),
}

impl RequestBody {
    fn take(&mut self) -> HttpBody {
        match self {
            RequestBody::Buffered(bytes) => full(bytes.clone()),
            RequestBody::Stream(body) => body.take().unwrap_or_else(|| full(Bytes::new())),
        }
    }
}

impl Forward<'_> {
    async fn run(mut self, faults: Option<&crate::l7_config::fault::Faults>, body: HttpBody, record: &mut RequestRecord) -> Response<HttpBody> {
        let deadline = self.plan.deadline(self.started);
        if let Some(injected) = faults.map(|f| f.decide()) {
            if let Some(delay) = injected.delay {
                record.flag("DI");
                if deadline.is_some_and(|d| delay >= d.saturating_duration_since(Instant::now())) {
                    tokio::time::sleep_until(deadline.expect("checked").into()).await;
                    record.flag("UT");
                    return local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
                }
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = injected.abort {
                record.flag("FI");
                return local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "fault filter abort");
            }
        }
        let cluster_name = match &self.plan.target {
            Target::Cluster(name) => name.as_str(),
            Target::Weighted(w) => match pick_weighted(w) {
                Some(c) => c.name.as_str(),
                None => {
                    record.flag("NC");
                    return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no cluster");
                }
            },
        };
        record.cluster = cluster_name.to_owned();
        let Some(cluster) = self.snapshot.l7.clusters.get(cluster_name).cloned() else {
            record.flag("NC");
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no cluster");
        };
        record.cluster_found = true;
        let view = RequestView {
            method: self.parts.method.as_str(),
            authority: self.authority,
            path_and_query: self.path_and_query,
            headers: &self.parts.headers,
        };
        let RequestHash { hash, set_cookie } = request_hash(&self.plan.hash_policies, &view, self.d.client_ip);
        self.prepare_headers();
        let wants_copies = self.plan.retries.is_some() || !self.plan.mirrors.is_empty();
        let mut body = if wants_copies {
            match buffer_if_small(body).await {
                Ok(Ok(bytes)) => RequestBody::Buffered(bytes),
                Ok(Err(stream)) => RequestBody::Stream(Some(stream)),
                Err(e) => {
                    record.flag("DPE");
                    return local_reply(StatusCode::BAD_REQUEST, &format!("request body: {e}"));
                }
            }
        } else {
            RequestBody::Stream(Some(body))
        };
        if let RequestBody::Buffered(bytes) = &body {
            record.request_bytes = bytes.len() as u64;
            self.mirror(bytes);
        } else {
            record.request_bytes = header_length(&self.parts.headers);
        }
        let _admission = match until(deadline, cluster.admit()).await {
            None => {
                record.flag("UT");
                return local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            }
            Some(Err(_overflow)) => {
                record.flag("UO");
                let mut r =
                    local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: overflow");
                r.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                return r;
            }
            Some(Ok(admission)) => admission,
        };
        let mut response = self.attempts(&cluster, hash, &mut body, deadline, record).await;
        if let Some(cookie) = set_cookie {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }

    /// Route and virtual-host header edits, the rewrites, and the hop-by-hop headers dropped.
    fn prepare_headers(&mut self) {
        let headers = &mut self.parts.headers;
        edit_headers(headers, &self.route.route.request_headers_to_add, &self.route.route.request_headers_to_remove);
        edit_headers(headers, &self.host.host.request_headers_to_add, &self.host.host.request_headers_to_remove);
        strip_hop_by_hop(headers);
        let authority = self.plan.host_rewrite.as_deref().unwrap_or(self.authority);
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
        if let Some(rewrite) = &self.plan.path_rewrite {
            let rewritten = rewrite.apply_to_request(self.path_and_query);
            if let Ok(uri) = rewritten.parse() {
                self.parts.uri = uri;
            }
        } else if let Ok(uri) = self.path_and_query.parse() {
            self.parts.uri = uri;
        }
    }

    /// Fire-and-forget copies to the mirror clusters, with Envoy's `-shadow` authority; their responses are
    /// dropped and never affect this request.
    fn mirror(&self, body: &Bytes) {
        for (name, fraction) in &self.plan.mirrors {
            if rand::rng().random::<f64>() >= *fraction {
                continue;
            }
            let Some(cluster) = self.snapshot.l7.clusters.get(name).cloned() else { continue };
            let mut headers = self.parts.headers.clone();
            let authority = self.plan.host_rewrite.as_deref().unwrap_or(self.authority);
            let shadow = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{host}-shadow:{port}"),
                _ => format!("{authority}-shadow"),
            };
            if let Ok(v) = HeaderValue::from_str(&shadow) {
                headers.insert(header::HOST, v);
            }
            let (d, method, uri, body) = (self.d.clone(), self.parts.method.clone(), self.parts.uri.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(_admission) = cluster.admit().await else { return };
                let Some(endpoint) = cluster.pick(None, d.locality.as_ref()) else { return };
                let Some(endpoint_v4) = v4(endpoint.address) else { return };
                let request = build_request(&method, &uri, &headers, &shadow, cluster.config.http2, full(body));
                let protocol = protocol_of(&cluster);
                let snapshot = d.dp.workloads.snapshot();
                let sent = tokio::time::timeout(Duration::from_secs(30), d.dp.upstreams.send(hop(&d, &snapshot, endpoint_v4), protocol, request));
                if let Ok(Ok(response)) = sent.await {
                    let _ = response.into_body().collect().await;
                }
            });
        }
    }

    async fn attempts(
        &self,
        cluster: &Arc<Cluster>,
        hash: Option<u64>,
        body: &mut RequestBody,
        deadline: Option<Instant>,
        record: &mut RequestRecord,
    ) -> Response<HttpBody> {
        let retries = self.plan.retries.as_ref();
        let protocol = protocol_of(cluster);
        let mut retry_permit = None;
        let mut attempt = 0u32;
        let mut tried: Vec<std::net::SocketAddr> = Vec::new();
        loop {
            attempt += 1;
            record.attempts = attempt;
            let Some(endpoint) = pick_endpoint(cluster, hash, retries, &tried, self.d.locality.as_ref()) else {
                record.flag("UH");
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            };
            let Some(address) = v4(endpoint.address) else {
                record.flag("UF");
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error: IPv6 endpoints are not supported");
            };
            record.upstream = Some(endpoint.address);
            // The hop decides the path and names the destination workload, for the record too.
            let hop = hop(self.d, self.snapshot, address);
            record.destination.clone_from(&hop.route.workload);
            record.mutual_tls = hop.path == Path::Hbone;
            let authority = self.plan.host_rewrite.as_deref().unwrap_or(self.authority);
            let request = build_request(&self.parts.method, &self.parts.uri, &self.parts.headers, authority, protocol.http2, body.take());
            let active = ActiveRequest::start(&endpoint);
            let per_try = retries.and_then(|r| r.per_try_deadline(Instant::now()));
            let try_deadline = match (per_try, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sent = until(try_deadline, self.d.dp.upstreams.send(hop, protocol, request)).await;
            drop(active);
            let (outcome, result) = match sent {
                None => (AttemptOutcome::PerTryTimeout, Err(None)),
                Some(Ok(response)) => (AttemptOutcome::Response(response.status().as_u16()), Ok(response)),
                Some(Err(SendError::ConnectFailure(e))) => (AttemptOutcome::ConnectFailure, Err(Some(e))),
                Some(Err(SendError::RefusedStream(e))) => (AttemptOutcome::RefusedStream, Err(Some(e))),
                Some(Err(SendError::Reset(e))) => (AttemptOutcome::Reset, Err(Some(e))),
            };
            cluster.report(&endpoint, outlier_outcome(outcome));
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            let grpc_status = result.as_ref().ok().and_then(|r| r.headers().get("grpc-status")).and_then(|v| v.to_str().ok()?.parse().ok());
            let retriable = retries.is_some_and(|r| r.is_retriable(outcome) || grpc_status.is_some_and(|c| r.is_retriable_grpc(c)));
            let may_retry = retriable && !timed_out && matches!(body, RequestBody::Buffered(_)) && retries.is_some_and(|r| attempt <= r.num_retries);
            if may_retry {
                match cluster.admit_retry() {
                    Ok(permit) => {
                        retry_permit = Some(permit);
                        // Why this attempt is retried, for the access log (a gRPC status by its code).
                        record.retried_on.push(match grpc_status {
                            Some(code) if !matches!(outcome, AttemptOutcome::Response(500..)) => format!("grpc-{code}"),
                            _ => outcome.to_string(),
                        });
                        let backoff = retries.expect("retriable").backoff(attempt);
                        if until(deadline, tokio::time::sleep(backoff)).await.is_some() {
                            // Only a retry needs the hosts tried so far (no allocation for the one attempt most
                            // requests make).
                            tried.push(endpoint.address);
                            continue;
                        }
                    }
                    Err(_) => record.flag("UO"),
                }
            } else if retriable && retries.is_some() && !timed_out {
                record.flag("URX");
            }
            drop(retry_permit);
            return match result {
                Ok(response) => response.map(|b| b.boxed()),
                Err(_) if outcome == AttemptOutcome::PerTryTimeout || timed_out => {
                    record.flag("UT");
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
                Err(reason) => {
                    let (flag, what) = match outcome {
                        AttemptOutcome::ConnectFailure => ("UF", "connection failure"),
                        AttemptOutcome::RefusedStream => ("UR", "remote refused stream reset"),
                        _ => ("UC", "connection termination"),
                    };
                    record.flag(flag);
                    let detail = reason.map(|r| format!(", transport failure reason: {r}")).unwrap_or_default();
                    local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("upstream connect error or disconnect/reset before headers. reset reason: {what}{detail}"),
                    )
                }
            };
        }
    }
}

/// How a request from the downstream's pod reaches `endpoint` (the same path L4 would take).
fn hop<'a>(d: &'a Downstream, snapshot: &Snapshot, endpoint: SocketAddrV4) -> Hop<'a> {
    let route = Route { upstream: endpoint, service: None, workload: snapshot.workloads_by_ip.get(&IpAddr::V4(*endpoint.ip())).cloned() };
    let dialer = &d.dp.dialer;
    let path = plan::choose_path(d.source.as_deref(), &route, dialer.node_pods.contains(IpAddr::V4(*endpoint.ip())), dialer.certificates.is_some());
    Hop { dialer, from: d.pod.origin(), source: d.source.as_ref(), route, path }
}

/// The endpoint for the next attempt: on a retry with `previous_hosts`, one not tried yet while there is one.
/// (Envoy re-picks up to `host_selection_retry_max_attempts` times and hopes for another host; keel leaves the
/// tried hosts out of the pick, which with least request over two endpoints is the only way to get the other.)
fn pick_endpoint(
    cluster: &Cluster,
    hash: Option<u64>,
    retries: Option<&crate::l7_config::retry::Retries>,
    tried: &[std::net::SocketAddr],
    locality: Option<&(String, String, String)>,
) -> Option<Arc<crate::l7_config::balancer::Endpoint>> {
    let avoid = if retries.is_some_and(|r| r.avoid_previous_hosts) { tried } else { &[] };
    cluster.pick_avoiding(hash, locality, avoid)
}

fn protocol_of(cluster: &Cluster) -> Protocol {
    Protocol { http2: cluster.config.http2, reuse: cluster.config.max_requests_per_connection != 1, connect_timeout: cluster.config.connect_timeout }
}

fn v4(address: std::net::SocketAddr) -> Option<SocketAddrV4> {
    match address {
        std::net::SocketAddr::V4(v4) => Some(v4),
        std::net::SocketAddr::V6(_) => None,
    }
}

/// An upstream request: HTTP/2 carries the authority in the URI (`:authority`), HTTP/1.1 in Host.
fn build_request(method: &Method, uri: &http::Uri, headers: &HeaderMap, authority: &str, http2: bool, body: HttpBody) -> Request<HttpBody> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.headers_mut() = headers.clone();
    if http2 {
        *request.version_mut() = Version::HTTP_2;
        *request.uri_mut() = format!("http://{authority}{path}").parse().unwrap_or_else(|_| uri.clone());
        request.headers_mut().remove(header::HOST);
    } else {
        *request.version_mut() = Version::HTTP_11;
        *request.uri_mut() = uri.clone();
    }
    request
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `te: trailers` is how gRPC asks for trailers; any other TE is hop-by-hop.
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

fn header_length(headers: &HeaderMap) -> u64 {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn outlier_outcome(outcome: AttemptOutcome) -> Outcome {
    match outcome {
        AttemptOutcome::Response(502..=504) => Outcome::GatewayError,
        AttemptOutcome::Response(status) if status >= 500 => Outcome::ServerError,
        AttemptOutcome::Response(_) => Outcome::Success,
        // Locally originated failures count as gateway errors, as Envoy counts them by default.
        _ => Outcome::GatewayError,
    }
}

/// Runs `work` until `deadline`; `None` when the deadline came first.
async fn until<F: std::future::Future>(deadline: Option<Instant>, work: F) -> Option<F::Output> {
    match deadline {
        None => Some(work.await),
        Some(d) => tokio::time::timeout_at(d.into(), work).await.ok(),
    }
}

fn local_reply(status: StatusCode, body: &str) -> Response<HttpBody> {
    let mut response = Response::new(full(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    if !body.is_empty() {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// A gRPC client cannot read an HTTP error: keel's own answers become trailers-only gRPC responses with the
/// status Envoy maps the HTTP status to. Upstream responses pass unchanged.
fn grpc_local_reply(response: Response<HttpBody>) -> Response<HttpBody> {
    let is_grpc = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc || response.status() == StatusCode::OK {
        return response;
    }
    let code = match response.status().as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    };
    let (parts, _text) = response.into_parts();
    let message = parts.headers.get("x-envoy-overloaded").map_or("upstream failure", |_| "overflow");
    let mut out = Response::new(full(Bytes::new()));
    let headers = out.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    headers.insert("x-keel-http-status", HeaderValue::from(parts.status.as_u16()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_future<A, B, F: Fn(A, B) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper moves each request's future into its connection's slot, a copy of the whole future per request:
    /// it was 41 KiB while the rare dial and handshakes were inline (3 % of keel's CPU under load).
    #[test]
    fn a_requests_future_stays_small() {
        let size = size_of_future(handle);
        assert!(size <= 12 * 1024, "a request's future is {size} bytes: box what only some requests await");
    }
}
