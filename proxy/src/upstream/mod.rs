//! The L7 engine's upstream HTTP connections (below `l7`, above `dial`), pooled per source pod (a connection carries its source's identity, so pods never
//! share one) and per endpoint, each dialled the way L4 would reach the endpoint: an HBONE stream to a meshed
//! workload on another node, plain TCP inside the node (with the source identity handed over in-process) or to a
//! workload outside the mesh. HTTP/1.1 connections carry one request at a time and are driven by the request's
//! own task (`http1_pool`); HTTP/2 multiplexes every request to an endpoint on one connection, sent with the
//! request's own `:authority`.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo};

use http1_pool::{Http1Conn, Http1Pool, Http1SendError, UpstreamBody};
use keel_proto::workload::Workload;

use crate::{
    dial::{Dialer, Origin},
    plan::{destination::Route, Path},
};

pub mod http1_pool;

pub type RequestBody = BoxBody<Bytes, hyper::Error>;
type Http2Sender = hyper::client::conn::http2::SendRequest<RequestBody>;

/// What kind of upstream connections a cluster wants.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Protocol {
    pub http2: bool,
    /// `maxRequestsPerConnection: 1`: a fresh connection per request.
    pub reuse: bool,
    /// The cluster's `connect_timeout` (DestinationRule `connectTimeout`): how long a new connection (TCP, or
    /// the HBONE tunnel and its TLS handshake) may take.
    pub connect_timeout: Duration,
}

/// Why an attempt got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (Envoy's UF).
    ConnectFailure(String),
    /// The upstream refused the HTTP/2 stream before processing it.
    RefusedStream(String),
    /// The connection or stream broke before the response headers (Envoy's UC / reset).
    Reset(String),
}

/// Where one attempt goes and how it is reached: from which pod and source workload, to which endpoint, by
/// which path (decided by [`crate::plan::choose_path`]).
pub struct Hop<'a> {
    pub dialer: &'a Dialer,
    pub from: Origin<'a>,
    pub source: Option<&'a Arc<Workload>>,
    pub route: Route,
    pub path: Path,
}

impl Hop<'_> {
    /// A new connection, given up after the cluster's `connect_timeout`.
    ///
    /// Boxed, like the handshakes after it: a dial (an HBONE tunnel, a TLS handshake) is a large future, and
    /// inline it would make every request's future as large (tens of KiB, copied whenever the request's future
    /// moves) though requests on pooled connections never dial.
    async fn dial(&self, connect_timeout: Duration) -> Result<crate::dial::UpstreamIo, SendError> {
        Box::pin(self.dialer.endpoint(self.from, self.source, &self.route, self.path, connect_timeout))
            .await
            .map_err(|e| SendError::ConnectFailure(e.to_string()))
    }
}

/// The pooled connections of every source pod, created on a pod's first L7 request.
#[derive(Default)]
pub struct Upstreams {
    /// Keyed by the source pod's IP (a copyable key: no allocation per request) and the endpoint.
    http1: Arc<Http1Pool>,
    http2: Mutex<HashMap<(Ipv4Addr, SocketAddrV4), Http2Sender>>,
}

impl Upstreams {
    /// Sends `request` (its URI in origin form, with `:authority`/Host set) over `hop`.
    pub async fn send(
        &self,
        hop: Hop<'_>,
        protocol: Protocol,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let endpoint = hop.route.upstream;
        let pod_ip = hop.from.ip;
        if protocol.http2 {
            // Boxed: HTTP/2's futures would otherwise size every HTTP/1.1 request's future too.
            let response = Box::pin(self.send_http2(&hop, protocol.connect_timeout, request)).await?;
            return Ok(response.map(UpstreamBody::detached));
        }
        let (mut parts, body) = request.into_parts();
        // Origin form on the wire (the Host header carries the authority); a request that came in over HTTP/2
        // has an absolute URI.
        if parts.uri.authority().is_some() {
            let mut origin = http::uri::Parts::default();
            origin.path_and_query = Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
            parts.uri = http::Uri::from_parts(origin).map_err(|e| SendError::Reset(format!("{e}")))?;
        }
        let mut request = http::Request::from_parts(parts, body);
        let home = protocol.reuse.then(|| (self.http1.clone(), (pod_ip, endpoint)));
        loop {
            let pooled = if protocol.reuse { self.http1.take(pod_ip, endpoint) } else { None };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    let io = hop.dial(protocol.connect_timeout).await?;
                    Box::pin(Http1Conn::handshake(io))
                        .await
                        .map_err(|e| SendError::ConnectFailure(format!("HTTP/1.1 handshake with {endpoint}: {e}")))?
                }
            };
            match conn.send(request).await {
                Ok(response) => return Ok(response.map(|body| UpstreamBody::driving(body, conn, home))),
                // The server closed a pooled connection while it was idle: the request goes on a new one.
                Err(Http1SendError::Unsent(unsent, _)) if reused => request = *unsent,
                Err(Http1SendError::Unsent(_, e) | Http1SendError::Failed(e)) => return Err(SendError::Reset(source_text(&e))),
            }
        }
    }

    async fn send_http2(
        &self,
        hop: &Hop<'_>,
        connect_timeout: Duration,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let endpoint = hop.route.upstream;
        let key = (hop.from.ip, endpoint);
        let pooled = self.http2.lock().expect("upstream clients poisoned").get(&key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => {
                // Two requests racing here may both dial; the later connection is pooled, the other serves its
                // one request and closes when idle.
                let io = hop.dial(connect_timeout).await?;
                let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(TokioIo::new(io));
                let (sender, connection) =
                    Box::pin(handshake).await.map_err(|e| SendError::ConnectFailure(format!("HTTP/2 handshake with {endpoint}: {e}")))?;
                tokio::spawn(connection);
                self.http2.lock().expect("upstream clients poisoned").insert(key, sender.clone());
                sender
            }
        };
        sender.ready().await.map_err(|e| SendError::Reset(e.to_string()))?;
        sender.send_request(request).await.map_err(|e| {
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM));
            if refused {
                SendError::RefusedStream(e.to_string())
            } else {
                SendError::Reset(source_text(&e))
            }
        })
    }

    /// Drops a pod's pooled connections when it leaves the node.
    pub fn forget(&self, pod_ip: Ipv4Addr) {
        self.http1.forget(pod_ip);
        self.http2.lock().expect("upstream clients poisoned").retain(|(ip, _), _| *ip != pod_ip);
    }
}

/// The innermost cause, which is what says what happened ("connection refused", "connection reset").
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
