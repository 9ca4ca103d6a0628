//! Upstream HTTP connections, pooled per source pod (a connection carries its source's identity, so pods never
//! share one) and per endpoint, each dialled the way L4 would reach the endpoint: an HBONE stream to a meshed
//! workload on another node, plain TCP inside the node (with the source identity handed over in-process) or to a
//! workload outside the mesh. HTTP/1.1 connections carry one request at a time and are driven by the request's
//! own task (`http1_pool`); HTTP/2 multiplexes every request to an endpoint on one connection, sent with the
//! request's own `:authority`.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::http1_pool::{Http1Conn, Http1Pool, Http1SendError, UpstreamBody};
use crate::{
    hbone::client::Tunnel,
    identity::Identity,
    l4::{
        destination::Route,
        local_peers::Registration,
        outbound::{self, Path},
        DataPath, PodContext,
    },
};

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

/// The pooled connections of every source pod, created on a pod's first L7 request.
#[derive(Default)]
pub struct Upstreams {
    /// Keyed by the source pod's IP (a copyable key: no allocation per request) and the endpoint.
    http1: Arc<Http1Pool>,
    http2: Mutex<HashMap<(Ipv4Addr, SocketAddrV4), Http2Sender>>,
}

impl Upstreams {
    /// Sends `request` (its URI in origin form, with `:authority`/Host set) to `endpoint` from `pod`.
    pub async fn send(
        &self,
        dp: &Arc<DataPath>,
        pod: &Arc<PodContext>,
        protocol: Protocol,
        endpoint: SocketAddrV4,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        if protocol.http2 {
            let response = self.send_http2(dp, pod, endpoint, protocol.connect_timeout, request).await?;
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
        let home = protocol.reuse.then(|| (self.http1.clone(), (pod.ip, endpoint)));
        loop {
            let pooled = if protocol.reuse { self.http1.take(pod.ip, endpoint) } else { None };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    let io = dial(dp, pod, endpoint, protocol.connect_timeout).await.map_err(SendError::ConnectFailure)?;
                    Http1Conn::handshake(io).await.map_err(|e| SendError::ConnectFailure(format!("HTTP/1.1 handshake with {endpoint}: {e}")))?
                }
            };
            match conn.send(request).await {
                Ok(response) => return Ok(response.map(|body| UpstreamBody::driving(body, conn, home))),
                // The server closed a pooled connection while it was idle: the request goes on a new one.
                Err(Http1SendError::Unsent(unsent, _)) if reused => request = unsent,
                Err(Http1SendError::Unsent(_, e) | Http1SendError::Failed(e)) => return Err(SendError::Reset(source_text(&e))),
            }
        }
    }

    async fn send_http2(
        &self,
        dp: &Arc<DataPath>,
        pod: &Arc<PodContext>,
        endpoint: SocketAddrV4,
        connect_timeout: Duration,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let key = (pod.ip, endpoint);
        let pooled = self.http2.lock().expect("upstream clients poisoned").get(&key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => {
                // Two requests racing here may both dial; the later connection is pooled, the other serves its
                // one request and closes when idle.
                let io = dial(dp, pod, endpoint, connect_timeout).await.map_err(SendError::ConnectFailure)?;
                let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| SendError::ConnectFailure(format!("HTTP/2 handshake with {endpoint}: {e}")))?;
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
            if refused { SendError::RefusedStream(e.to_string()) } else { SendError::Reset(source_text(&e)) }
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

/// A new connection to `endpoint`, given up after the cluster's `connect_timeout` (the L4 dial has keel's own
/// connect timeout too; the shorter wins).
async fn dial(dp: &DataPath, pod: &PodContext, endpoint: SocketAddrV4, connect_timeout: Duration) -> Result<UpstreamIo, String> {
    connect_within(endpoint, connect_timeout, dial_now(dp, pod, endpoint)).await
}

async fn connect_within<T>(
    endpoint: SocketAddrV4,
    connect_timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(connect_timeout, connect)
        .await
        .unwrap_or_else(|_| Err(format!("connect to {endpoint} timed out after {connect_timeout:?} (the cluster's connect_timeout)")))
}

async fn dial_now(dp: &DataPath, pod: &PodContext, endpoint: SocketAddrV4) -> Result<UpstreamIo, String> {
    let snapshot = dp.workloads.snapshot();
    let source = snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).cloned();
    let route = Route { upstream: endpoint, service: None, workload: snapshot.workloads_by_ip.get(&IpAddr::V4(*endpoint.ip())).cloned() };
    let client = std::net::SocketAddr::V4(SocketAddrV4::new(pod.ip, 0));
    let path = outbound::choose_path(dp, source.as_deref(), &route);
    match (path, source) {
        (Path::Hbone, Some(source)) => {
            let tunnel = outbound::open_tunnel(dp, pod, &source, &route, client, None).await?;
            Ok(UpstreamIo::Hbone(Box::new(tunnel)))
        }
        (Path::SameNode, Some(source)) => {
            let (stream, registration) = outbound::connect_direct(dp, pod, endpoint, Some(Identity::of_workload(&source))).await?;
            Ok(UpstreamIo::Tcp(stream, registration, Path::SameNode))
        }
        _ => {
            let (stream, registration) = outbound::connect_direct(dp, pod, endpoint, None).await?;
            Ok(UpstreamIo::Tcp(stream, registration, Path::Direct))
        }
    }
}

/// An upstream connection: a TCP socket, or a stream inside an HBONE tunnel.
pub enum UpstreamIo {
    Tcp(TcpStream, Option<Registration>, Path),
    Hbone(Box<Tunnel>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.reader).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_gives_up_after_the_clusters_connect_timeout() {
        let endpoint = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<(), String>>();
        let err = connect_within(endpoint, Duration::from_millis(50), never).await.unwrap_err();
        assert_eq!(err, "connect to 10.0.0.1:80 timed out after 50ms (the cluster's connect_timeout)");
        assert!(started.elapsed() < Duration::from_secs(5), "not keel's own (longer) connect timeout");
        assert_eq!(connect_within(endpoint, Duration::from_millis(50), async { Ok(7) }).await, Ok(7));
    }
}
