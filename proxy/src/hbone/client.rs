//! The HBONE client: opens CONNECT streams to `<destination workload IP>:15008`, reusing mTLS+HTTP/2
//! connections from a pool keyed by (source identity, destination identity, source IP, destination IP), as
//! ztunnel does. A connection carries at most min(100, peer's limit) streams; a busy key opens another one. New
//! connections for one key are made one at a time, so a burst of connects shares them instead of racing.
//! Idle connections close after 5 minutes; a GOAWAY or a missed PING retires one.
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::{
    keepalive,
    stream_io::{TunnelReader, TunnelWriter},
    CLIENT_MAX_HEADER_LIST, CLIENT_MAX_STREAMS, CONNECTION_WINDOW, CONNECT_RESPONSE_TIMEOUT, FAILED_DIAL_MEMORY, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT,
    MAX_FRAME_SIZE, STREAM_WINDOW, TLS_SEND_BUFFER,
};
use crate::{identity::Identity, netns::Netns, sockets};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source_identity: Identity,
    pub destination_identity: Identity,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, io::Error),
    #[error("mTLS handshake with {0}: {1}")]
    Tls(SocketAddrV4, io::Error),
    #[error("HTTP/2 with {0}: {1}")]
    Http2(SocketAddrV4, h2::Error),
    #[error("{0} answered CONNECT with {1}")]
    Status(SocketAddrV4, StatusCode),
    #[error("client certificate: {0:#}")]
    Certificate(anyhow::Error),
    #[error("{1} with {0} did not finish within {2:?}")]
    Timeout(SocketAddrV4, &'static str, Duration),
    #[error("dialling {0} failed {1:?} ago ({2}); not retried yet")]
    RecentlyFailed(SocketAddrV4, Duration, String),
}

/// Bounds `step` of talking to `peer` by `limit`.
async fn within<T, E>(peer: SocketAddrV4, what: &'static str, limit: Duration, step: impl Future<Output = Result<T, E>>) -> Result<T, HboneError>
where
    HboneError: From<(SocketAddrV4, E)>,
{
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(|e| HboneError::from((peer, e))),
        Err(_) => Err(HboneError::Timeout(peer, what, limit)),
    }
}

impl From<(SocketAddrV4, h2::Error)> for HboneError {
    fn from((peer, e): (SocketAddrV4, h2::Error)) -> Self {
        HboneError::Http2(peer, e)
    }
}

impl From<(SocketAddrV4, io::Error)> for HboneError {
    fn from((peer, e): (SocketAddrV4, io::Error)) -> Self {
        HboneError::Tls(peer, e)
    }
}

/// One tunnelled connection: the stream's halves, and its slot on a pooled connection (freed on drop).
pub struct Tunnel {
    pub reader: TunnelReader,
    pub writer: TunnelWriter,
    _lease: Lease,
}

impl Tunnel {
    /// The halves for the relay, and the slot to hold until the relay ends.
    pub fn into_parts(self) -> (TunnelReader, TunnelWriter, impl Drop) {
        (self.reader, self.writer, self._lease)
    }
}

/// How to make a new connection when the pool has no room: from inside the source pod, with TLS settings built
/// only then (they need the source workload's certificate, whose expiry also ends the connection's pool life).
pub struct Dial<'a, F> {
    pub netns: &'a Netns,
    pub peer: SocketAddrV4,
    pub connect_timeout: Duration,
    pub tls: F,
}

/// The client TLS settings for a new connection, and when the certificate they present expires.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub certificate_expiry: SystemTime,
}

struct Pooled {
    sender: SendRequest<Bytes>,
    /// No new stream after this: the peer verified a certificate that is no longer valid.
    usable_until: SystemTime,
    max_streams: usize,
    active: AtomicUsize,
    closed: Arc<AtomicBool>,
    idle_since: Mutex<Instant>,
}

struct Lease(Arc<Pooled>);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().expect("idle clock poisoned") = Instant::now();
        }
    }
}

#[derive(Default)]
struct KeyPool {
    /// Held while dialling, so concurrent callers wait and share the new connection.
    dialling: tokio::sync::Mutex<()>,
    connections: Mutex<Vec<Arc<Pooled>>>,
    /// When the last dial failed, and why (see [`FAILED_DIAL_MEMORY`]).
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl KeyPool {
    fn lease(&self) -> Option<Lease> {
        let mut connections = self.connections.lock().expect("pool poisoned");
        let now = SystemTime::now();
        connections.retain(|c| !c.closed.load(Ordering::Acquire) && c.usable_until > now);
        connections.iter().find_map(|c| {
            c.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < c.max_streams).then_some(n + 1)).ok().map(|_| Lease(c.clone()))
        })
    }
}

#[derive(Default)]
pub struct HboneClient {
    pools: Mutex<HashMap<PoolKey, Arc<KeyPool>>>,
    /// mTLS connections dialled since start (streams reuse them: this grows far slower than connections).
    dialled: AtomicUsize,
}

/// The pool as `keel stats` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HbonePoolStats {
    pub open_connections: usize,
    pub connections_dialled: usize,
}

impl HboneClient {
    pub fn new() -> Arc<HboneClient> {
        let client = Arc::new(HboneClient::default());
        let weak = Arc::downgrade(&client);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Some(client) = weak.upgrade() else { return };
                client.close_idle(IDLE_TIMEOUT);
            }
        });
        client
    }

    pub fn stats(&self) -> HbonePoolStats {
        let pools = self.pools.lock().expect("pools poisoned");
        HbonePoolStats {
            open_connections: pools.values().map(|p| p.connections.lock().expect("pool poisoned").len()).sum(),
            connections_dialled: self.dialled.load(Ordering::Relaxed),
        }
    }

    fn close_idle(&self, idle_for: Duration) {
        let now = SystemTime::now();
        let mut pools = self.pools.lock().expect("pools poisoned");
        pools.retain(|_, pool| {
            let mut connections = pool.connections.lock().expect("pool poisoned");
            // Dropping the last SendRequest lets h2 finish the connection with a GOAWAY.
            connections.retain(|c| {
                !c.closed.load(Ordering::Acquire)
                    && c.usable_until > now
                    && (c.active.load(Ordering::Acquire) > 0 || c.idle_since.lock().expect("idle clock poisoned").elapsed() < idle_for)
            });
            !connections.is_empty()
        });
    }

    /// Opens a CONNECT stream for `request` to the peer, on a pooled connection or a new one. A pooled
    /// connection the peer has since sent a GOAWAY on (keel drains, the pod was unenrolled) is retired and the
    /// stream opened on a new connection: the peer saw nothing of it, so trying again is safe.
    pub async fn open<F, Fut>(&self, key: PoolKey, dial: Dial<'_, F>, request: Request<()>) -> Result<Tunnel, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<ClientTls>>,
    {
        let pool = self.pools.lock().expect("pools poisoned").entry(key).or_default().clone();
        let peer = dial.peer;
        let mut dial = Some(dial);
        loop {
            let (lease, pooled) = match pool.lease() {
                Some(lease) => (lease, true),
                None => (self.dial_or_share(&pool, &mut dial).await?, false),
            };
            match open_stream(peer, &lease, clone_request(&request)).await {
                Ok(tunnel) => return Ok(tunnel.holding(lease)),
                Err(StreamError { error, peer_saw_nothing }) => {
                    if peer_saw_nothing {
                        lease.0.closed.store(true, Ordering::Release);
                        if pooled && dial.is_some() {
                            debug!(%peer, error = %error, "pooled HBONE connection refused the stream; opening a new one");
                            continue;
                        }
                    }
                    return Err(error);
                }
            }
        }
    }

    /// A lease on a new connection, or on the one a concurrent caller just dialled (`dial` is used up then).
    async fn dial_or_share<F, Fut>(&self, pool: &KeyPool, dial: &mut Option<Dial<'_, F>>) -> Result<Lease, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<ClientTls>>,
    {
        let _dialling = pool.dialling.lock().await;
        if let Some(lease) = pool.lease() {
            return Ok(lease);
        }
        let dial = dial.take().expect("dialled at most once per open");
        let peer = dial.peer;
        if let Some((at, why)) = pool.last_failure.lock().expect("pool poisoned").clone() {
            if at.elapsed() < FAILED_DIAL_MEMORY {
                return Err(HboneError::RecentlyFailed(peer, at.elapsed(), why));
            }
        }
        let connection = match connect(dial).await {
            Ok(connection) => connection,
            Err(e) => {
                *pool.last_failure.lock().expect("pool poisoned") = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        self.dialled.fetch_add(1, Ordering::Relaxed);
        let lease = Lease(connection.clone());
        connection.active.store(1, Ordering::Release);
        pool.connections.lock().expect("pool poisoned").push(connection);
        Ok(lease)
    }
}

/// Why a CONNECT stream did not open, and whether the peer can have seen any of it (a stream refused by GOAWAY or
/// REFUSED_STREAM was never processed: RFC 9113 §8.7).
struct StreamError {
    error: HboneError,
    peer_saw_nothing: bool,
}

/// A CONNECT request has no body and its headers are cheap to copy: a copy goes out on each attempt.
fn clone_request(request: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

async fn open_stream(peer: SocketAddrV4, lease: &Lease, request: Request<()>) -> Result<OpenedStream, StreamError> {
    let refused = |e: h2::Error| {
        let peer_saw_nothing = e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM);
        StreamError { error: HboneError::Http2(peer, e), peer_saw_nothing }
    };
    let mut sender = match lease.0.sender.clone().ready().await {
        Ok(sender) => sender,
        Err(e) => {
            // A dead connection (or one past a GOAWAY): retire it whatever the retry decides.
            lease.0.closed.store(true, Ordering::Release);
            return Err(StreamError { error: HboneError::Http2(peer, e), peer_saw_nothing: true });
        }
    };
    let (response, send) = sender.send_request(request, false).map_err(refused)?;
    let response = match tokio::time::timeout(CONNECT_RESPONSE_TIMEOUT, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(refused(e)),
        Err(_) => {
            let error = HboneError::Timeout(peer, "the CONNECT answer", CONNECT_RESPONSE_TIMEOUT);
            return Err(StreamError { error, peer_saw_nothing: false });
        }
    };
    if response.status() != StatusCode::OK {
        return Err(StreamError { error: HboneError::Status(peer, response.status()), peer_saw_nothing: false });
    }
    Ok(OpenedStream { response, send })
}

/// A CONNECT stream the peer answered 200.
struct OpenedStream {
    response: http::Response<h2::RecvStream>,
    send: h2::SendStream<Bytes>,
}

impl OpenedStream {
    fn holding(self, lease: Lease) -> Tunnel {
        Tunnel { reader: TunnelReader::new(self.response.into_body()), writer: TunnelWriter::new(self.send), _lease: lease }
    }
}

async fn connect<F, Fut>(dial: Dial<'_, F>) -> Result<Arc<Pooled>, HboneError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<ClientTls>>,
{
    let peer = dial.peer;
    let tls = (dial.tls)().await.map_err(HboneError::Certificate)?;
    let tcp = sockets::connect_from_pod(dial.netns, peer, dial.connect_timeout).await.map_err(|e| HboneError::Connect(peer, e))?;
    // An IP server name: rustls sends no SNI for it, as HBONE requires; the verifier checks the URI SAN instead.
    let mut tls_stream = within(
        peer,
        "the mTLS handshake",
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(tls.config).connect(ServerName::IpAddress((*peer.ip()).into()), tcp),
    )
    .await?;
    tls_stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let (sender, mut connection) = within(
        peer,
        "the HTTP/2 handshake",
        HANDSHAKE_TIMEOUT,
        h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(CLIENT_MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(tls_stream),
    )
    .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    {
        let closed = closed.clone();
        tokio::spawn(async move {
            let outcome = match ping_pong {
                Some(ping_pong) => tokio::select! {
                    outcome = &mut connection => outcome,
                    () = keepalive(ping_pong) => {
                        debug!(%peer, "HBONE peer missed its PING deadline");
                        Ok(())
                    }
                },
                None => connection.await,
            };
            if let Err(e) = outcome {
                debug!(%peer, error = %e, "HBONE connection ended");
            }
            closed.store(true, Ordering::Release);
        });
    }
    let max_streams = sender.current_max_send_streams().clamp(1, CLIENT_MAX_STREAMS);
    debug!(%peer, max_streams, "HBONE connection open");
    Ok(Arc::new(Pooled {
        sender,
        usable_until: tls.certificate_expiry,
        max_streams,
        active: AtomicUsize::new(0),
        closed,
        idle_since: Mutex::new(Instant::now()),
    }))
}
