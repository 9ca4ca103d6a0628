//! The HBONE server (inbound execution of HBONE streams; the protocol pieces are in [`crate::hbone`]): keel listens
//! on 15008 inside every enrolled pod and terminates mTLS there with that pod's
//! workload certificate. The client's chain must lead to the mesh root and its trust domain must be the pod's;
//! its SPIFFE identity is the source principal for authorization, logs and metrics. Each CONNECT stream is
//! checked (400: not CONNECT, bad `:authority`, an address that is not this pod's, or one of keel's own ports;
//! 401: authorization denies or keel has no Workload for the pod; 503: the application refuses or does not
//! answer), then answered 200 and relayed to the application by [`crate::l4`], or, where policies decide HTTP
//! requests one by one, served as HTTP by [`crate::l7::inbound`].
//!
//! Everything a peer can hold is bounded (see [`crate::limits`]): connections per pod and per node (beyond
//! them a connection is reset at accept), the TLS handshake and HTTP/2 preface together (a handshake timeout),
//! idle connections (closed with a GOAWAY), dead ones (server-side PINGs), and the client's certificate (the
//! connection ends when it expires). Unenrolling the pod or draining keel sends a GOAWAY: streams in flight
//! finish, new ones are refused.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use http::{Request, Response, StatusCode};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::{
    accept::{accept_loop, Budgets},
    chunk_io,
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    hbone::{
        headers, keepalive,
        stream_io::{TunnelReader, TunnelWriter},
        CONNECTION_WINDOW, MAX_FRAME_SIZE, SERVER_MAX_HEADER_LIST, SERVER_MAX_STREAMS, STREAM_WINDOW, TLS_SEND_BUFFER,
    },
    identity::{tls, Identity},
    l4::inbound,
    l7,
    plan::{is_keel_port, Direction, Path},
    sockets,
    telemetry::{ConnectionRecord, Peer, Refusal},
};

/// Accepts HBONE connections on a pod's 15008 listener until `stop` flips; connections already open then get a
/// GOAWAY and finish their streams.
pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, dp: Arc<DataPath>, stop: watch::Receiver<bool>) {
    let slots = vec![dp.hbone_node_slots.clone(), pod.hbone_slots.clone()];
    let draining = stop.clone();
    let telemetry_dp = dp.clone();
    accept_loop(listener, "hbone", pod.clone(), &telemetry_dp.telemetry, Budgets { slots, rate: None }, stop, move |stream, peer, slots| {
        let (pod, dp, draining) = (pod.clone(), dp.clone(), draining.clone());
        async move {
            if let Err(refused) = connection(stream, peer, &pod, &dp, draining).await {
                debug!(pod = %pod.name, %peer, reason = refused.reason.as_str(), error = %refused.error, "HBONE connection ended");
                if matches!(refused.reason, Refusal::HboneHandshakeFailed | Refusal::HboneHandshakeTimeout) {
                    dp.telemetry.hbone_handshake_failed();
                }
                dp.telemetry.refused(refused.reason);
            }
            drop(slots);
        }
    })
    .await
}

/// Why a connection was refused or ended, for the refusal counter and the log.
struct Ended {
    reason: Refusal,
    error: String,
}

impl Ended {
    fn handshake(error: impl std::fmt::Display) -> Ended {
        Ended { reason: Refusal::HboneHandshakeFailed, error: error.to_string() }
    }
}

/// Certificates valid for longer than this are treated as if they expired then (a timer needs an `Instant`).
const LONGEST_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    mut draining: watch::Receiver<bool>,
) -> Result<(), Ended> {
    let _ = tcp.set_nodelay(true);
    let limits = dp.limits.hbone;
    let Some(handshaking) = dp.hbone_handshakes.try_take(peer.ip()) else {
        sockets::reset(&tcp);
        return Err(Ended {
            reason: Refusal::SourceHandshakeLimit,
            error: format!("{} handshakes from {} in progress", dp.hbone_handshakes.limit(), peer.ip()),
        });
    };
    // Refused before any byte is read, and with RST: a FIN would race the peer's unread bytes and look to it like a
    // server that closed cleanly.
    let Some(workload) = dp.workloads.snapshot().workloads_by_ip.get(&IpAddr::V4(pod.ip)).cloned() else {
        sockets::reset(&tcp);
        return Err(Ended {
            reason: Refusal::UnknownDestinationWorkload,
            error: format!("no Workload for {}: no identity to serve HBONE with", pod.ip),
        });
    };
    let handshake = async {
        let certificates = dp.dialer.certificates.clone().ok_or_else(|| Ended::handshake("keel has no certificate source"))?;
        let own = Identity::of_workload(&workload);
        let certificate = certificates.certificate(&own).await.map_err(Ended::handshake)?;
        let config = tls::server_config_for(&certificate).map_err(Ended::handshake)?;
        let mut tls_stream = TlsAcceptor::from(config).accept(tcp).await.map_err(Ended::handshake)?;
        tls_stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let presented = tls_stream.get_ref().1.peer_certificates().unwrap_or_default();
        let client = tls::peer_identity(presented).map_err(Ended::handshake)?;
        let client_expiry = tls::peer_not_after(presented).map_err(Ended::handshake)?;
        tls::require_trust_domain(&client, &own.trust_domain).map_err(Ended::handshake)?;
        let h2 = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(SERVER_MAX_HEADER_LIST)
            .max_concurrent_streams(SERVER_MAX_STREAMS)
            .handshake::<_, Bytes>(tls_stream)
            .await
            .map_err(Ended::handshake)?;
        Ok((h2, client, client_expiry))
    };
    let (mut h2, client, client_expiry) = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(done) => done?,
        Err(_) => {
            return Err(Ended {
                reason: Refusal::HboneHandshakeTimeout,
                error: format!("no mTLS handshake and HTTP/2 preface within {:?}", limits.handshake_timeout),
            })
        }
    };
    drop(handshaking);
    let expires_in = client_expiry.duration_since(SystemTime::now()).unwrap_or_default().min(LONGEST_TIMER);
    let certificate_expired = tokio::time::sleep(expires_in);
    let ping_pong = h2.ping_pong();
    let pings = async move {
        match ping_pong {
            Some(ping_pong) => keepalive(ping_pong).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(certificate_expired, pings);
    let streams = Arc::new(StreamCount::default());
    // HTTP served inside a stream (per-request authorization) drains with the connection.
    let stream_draining = draining.clone();
    let mut closing = false;
    loop {
        // Re-armed on every turn: a stream that ended meanwhile moved the idle deadline.
        let idle_check = streams.idle_for().map_or(limits.idle_timeout, |idle| limits.idle_timeout.saturating_sub(idle));
        tokio::select! {
            accepted = h2.accept() => match accepted {
                None => return Ok(()),
                // The client closed or reset the connection, or said goodbye without an error: the connection ended, keel
                // refused nothing (counting it raced the next connection's refusals in tests, and misled operators).
                Some(Err(e)) if e.is_io() || (e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)) => {
                    debug!(pod = %pod.name, %peer, error = %e, "HBONE connection ended by the client");
                    return Ok(());
                }
                // The client broke HTTP/2 (a protocol or flow-control violation keel's h2 detected).
                Some(Err(e)) => return Err(Ended { reason: Refusal::HboneHandshakeFailed, error: format!("HTTP/2: {e}") }),
                Some(Ok((request, respond))) => {
                    let (pod, dp, client, draining) = (pod.clone(), dp.clone(), client.clone(), stream_draining.clone());
                    let open = streams.open();
                    tokio::spawn(async move {
                        stream(request, respond, peer, client, &pod, &dp, draining).await;
                        drop(open);
                    });
                }
            },
            _ = draining.wait_for(|stopped| *stopped), if !closing => {
                // Unenrolled or draining: streams in flight finish, new ones are refused by the GOAWAY.
                h2.graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep(idle_check), if !closing => {
                if streams.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    debug!(pod = %pod.name, %peer, "closing an idle HBONE connection");
                    h2.graceful_shutdown();
                    closing = true;
                }
            }
            () = &mut pings => {
                return Err(Ended { reason: Refusal::HboneHandshakeFailed, error: "the client missed its PING deadline".into() });
            }
            () = &mut certificate_expired => {
                info!(pod = %pod.name, %peer, client = %client, "closing an HBONE connection: the client's certificate expired");
                h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
        }
    }
}

/// The streams open on one connection, and since when it has had none.
struct StreamCount {
    open: AtomicUsize,
    last_closed: std::sync::Mutex<Instant>,
}

impl Default for StreamCount {
    fn default() -> Self {
        StreamCount { open: AtomicUsize::new(0), last_closed: std::sync::Mutex::new(Instant::now()) }
    }
}

struct OpenStream(Arc<StreamCount>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        *self.0.last_closed.lock().expect("stream clock poisoned") = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamCount {
    fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }

    /// How long the connection has had no stream; `None` while one is open.
    fn idle_for(&self) -> Option<Duration> {
        let last_closed = *self.last_closed.lock().expect("stream clock poisoned");
        (self.open.load(Ordering::Acquire) == 0).then(|| last_closed.elapsed())
    }
}

fn respond_with(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder().status(status).body(()).expect("a response from valid parts");
    let _ = respond.send_response(response, true);
}

/// One CONNECT stream: one tunnelled TCP connection, logged and counted like any other inbound one. Its source
/// is the TCP peer (the client keel dials from inside the source pod); a client-supplied `forwarded` header is
/// never taken for it.
async fn stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    client: Identity,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    draining: watch::Receiver<bool>,
) {
    let started = Instant::now();
    dp.telemetry.connection_opened(Direction::Inbound);
    let mut record = ConnectionRecord::new(Direction::Inbound, &pod.name, peer);
    record.path = Some(Path::Hbone);
    record.mutual_tls = true;
    if let Err((status, error)) = tunnel(request, &mut respond, peer, &client, pod, dp, draining, &mut record).await {
        if let Some(status) = status {
            respond_with(&mut respond, status);
            record.response_status = Some(status.as_u16());
        }
        error.record(&mut record);
    }
    record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    dp.telemetry.connection_closed(record, started.elapsed());
}

/// The status to answer the CONNECT with (none once it was answered), and why.
type Refused = (Option<StatusCode>, ConnectionError);

#[allow(clippy::too_many_arguments)]
async fn tunnel(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    peer: SocketAddr,
    client: &Identity,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    draining: watch::Receiver<bool>,
    record: &mut ConnectionRecord,
) -> Result<(), Refused> {
    let bad_request = |e: String| (Some(StatusCode::BAD_REQUEST), ConnectionError::Downstream(e));
    let target = headers::parse_target(&request).map_err(bad_request)?;
    let SocketAddr::V4(target) = target else {
        return Err(bad_request(format!("{target}: IPv6 pods are not served yet")));
    };
    record.original_destination = SocketAddr::V4(target);
    if *target.ip() != pod.ip {
        return Err(bad_request(format!(":authority {target} is not this pod's address {}", pod.ip)));
    }
    if is_keel_port(target.port()) {
        // A stream into keel's own port would be tunnelled into keel again and authorized with the pod as its
        // source, bypassing the policy that applies to this client (ztunnel refuses the same).
        dp.telemetry.refused(Refusal::KeelPort);
        return Err(bad_request(format!(":authority {target}: port {} is keel's own", target.port())));
    }
    let snapshot = dp.workloads.snapshot();
    record.source_peer = Peer::of(snapshot.workloads_by_ip.get(&peer.ip()));
    record.source_peer.identity = Some(client.clone());
    record.destination_peer = Peer::of(snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)));
    record.destination_service = inbound::destination_service(snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).map(AsRef::as_ref), target.port());
    let admission = inbound::authorize(dp, &snapshot, pod, peer.ip(), Some(client), target.port(), record)
        .map_err(|denied| (Some(StatusCode::UNAUTHORIZED), denied))?;
    record.upstream = Some(SocketAddr::V4(target));
    let tracked = match admission {
        inbound::Admission::Relay(tracked) => tracked,
        inbound::Admission::PerRequest { cluster } => {
            // The tunnel is open to the client; its requests are decided one by one inside it.
            let send = open_tunnel(respond, record)?;
            let io = tokio::io::join(TunnelReader::new(request.into_body()), TunnelWriter::new(send));
            let served = Arc::new(l7::inbound::Inbound::new(dp.clone(), pod.clone(), peer.ip(), Some(client.clone()), true, target, cluster));
            return l7::inbound::serve(io, served, draining).await.map_err(|e| (None, e));
        }
    };
    let mut app =
        inbound::connect_app(pod, dp, target).await.map_err(|e| (Some(StatusCode::SERVICE_UNAVAILABLE), ConnectionError::ConnectApp(target, e)))?;
    let send = open_tunnel(respond, record)?;
    let reader = TunnelReader::new(request.into_body());
    let mut writer = TunnelWriter::new(send);
    let (outcome, revoked) =
        inbound::relay_admitted((reader, &mut writer), chunk_io::socket(app.split()), tracked, dp.limits.relay, &pod.share.pacer()).await;
    record.bytes_sent = outcome.client_to_server;
    record.bytes_received = outcome.server_to_client;
    match inbound::ended_by(revoked, outcome.error) {
        None => Ok(()),
        Some(error) => {
            writer.reset();
            sockets::reset(&app);
            Err((None, error))
        }
    }
}

/// Answers the CONNECT 200: the tunnel is open, and its send half is returned.
fn open_tunnel(respond: &mut SendResponse<Bytes>, record: &mut ConnectionRecord) -> Result<h2::SendStream<Bytes>, Refused> {
    let send = respond
        .send_response(Response::builder().status(StatusCode::OK).body(()).expect("a 200 response"), false)
        .map_err(|e| (None, ConnectionError::DownstreamIo(format!("answering CONNECT: {e}"))))?;
    record.response_status = Some(200);
    Ok(send)
}
