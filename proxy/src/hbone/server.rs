//! The HBONE server: keel listens on 15008 inside every enrolled pod and terminates mTLS there with that pod's
//! workload certificate. The client's chain must lead to the mesh root and its trust domain must be the pod's;
//! its SPIFFE identity is the source principal for authorization, logs and metrics. Each CONNECT stream is
//! checked (400: not CONNECT, bad `:authority`, or an address that is not this pod's; 401: authorization denies;
//! 503: the application refuses or does not answer), then answered 200 and relayed to the application.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use http::{Request, Response, StatusCode};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{
    headers,
    stream_io::{TunnelReader, TunnelWriter},
    CONNECTION_WINDOW, MAX_FRAME_SIZE, SERVER_MAX_HEADER_LIST, SERVER_MAX_STREAMS, STREAM_WINDOW,
};
use crate::{
    capture::Direction,
    identity::{tls, Identity},
    l4::{self, inbound, outbound::Path, relay, DataPath, PodContext},
    telemetry::{ConnectionRecord, Peer},
};

/// Accepts HBONE connections on a pod's 15008 listener until `stop` flips.
pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, dp: Arc<DataPath>, stop: watch::Receiver<bool>) {
    l4::accept_loop(listener, "hbone", pod.clone(), stop, move |stream, peer| {
        let (pod, dp) = (pod.clone(), dp.clone());
        async move {
            if let Err(e) = connection(stream, peer, &pod, &dp).await {
                debug!(pod = %pod.name, %peer, error = %e, "HBONE connection refused");
                dp.telemetry.hbone_handshake_failed();
            }
        }
    })
    .await
}

async fn connection(tcp: TcpStream, peer: SocketAddr, pod: &Arc<PodContext>, dp: &Arc<DataPath>) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let certificates = dp.certificates.clone().ok_or_else(|| anyhow::anyhow!("keel has no certificate source"))?;
    let workload = dp
        .workloads
        .snapshot()
        .workloads_by_ip
        .get(&IpAddr::V4(pod.ip))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no Workload for {}: no identity to serve HBONE with", pod.ip))?;
    let own = Identity::of_workload(&workload);
    let certificate = certificates.certificate(&own).await?;
    let config = tls::server_config_for(&certificate)?;
    let tls_stream = TlsAcceptor::from(config).accept(tcp).await?;
    let client = tls::peer_identity(tls_stream.get_ref().1.peer_certificates().unwrap_or_default())?;
    tls::require_trust_domain(&client, &own.trust_domain)?;
    let mut h2 = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .handshake::<_, Bytes>(tls_stream)
        .await?;
    while let Some(accepted) = h2.accept().await {
        let (request, respond) = accepted?;
        let (pod, dp, client) = (pod.clone(), dp.clone(), client.clone());
        tokio::spawn(async move { stream(request, respond, peer, client, &pod, &dp).await });
    }
    Ok(())
}

fn respond_with(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder().status(status).body(()).expect("a response from valid parts");
    let _ = respond.send_response(response, true);
}

/// One CONNECT stream: one tunnelled TCP connection, logged and counted like any other inbound one.
async fn stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    client: Identity,
    pod: &PodContext,
    dp: &DataPath,
) {
    let started = Instant::now();
    dp.telemetry.connection_opened(Direction::Inbound);
    let source = request
        .headers()
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(headers::forwarded_for)
        .unwrap_or(peer);
    let mut record = ConnectionRecord::new(Direction::Inbound, &pod.name, source);
    record.path = Some(Path::Hbone);
    record.mutual_tls = true;
    if let Err((status, error)) = tunnel(request, &mut respond, peer, &client, pod, dp, &mut record).await {
        if let Some(status) = status {
            respond_with(&mut respond, status);
            record.response_status = Some(status.as_u16());
        }
        record.error = Some(error);
    }
    record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    dp.telemetry.connection_closed(record, started.elapsed());
}

type Refusal = (Option<StatusCode>, String);

async fn tunnel(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    peer: SocketAddr,
    client: &Identity,
    pod: &PodContext,
    dp: &DataPath,
    record: &mut ConnectionRecord,
) -> Result<(), Refusal> {
    let bad_request = |e: String| (Some(StatusCode::BAD_REQUEST), e);
    let target = headers::parse_target(&request).map_err(bad_request)?;
    let SocketAddr::V4(target) = target else {
        return Err(bad_request(format!("{target}: IPv6 pods are not served yet")));
    };
    record.original_destination = SocketAddr::V4(target);
    if *target.ip() != pod.ip {
        return Err(bad_request(format!(":authority {target} is not this pod's address {}", pod.ip)));
    }
    let snapshot = dp.workloads.snapshot();
    record.source_peer = Peer::of(snapshot.workloads_by_ip.get(&peer.ip()));
    record.source_peer.identity = Some(client.clone());
    record.destination_peer = Peer::of(snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)));
    let tracked = inbound::authorize(dp, &snapshot, pod, peer.ip(), Some(client), target.port(), record)
        .map_err(|denied| (Some(StatusCode::UNAUTHORIZED), denied))?;
    record.upstream = Some(SocketAddr::V4(target));
    let mut app = inbound::connect_app(pod, dp, target)
        .await
        .map_err(|e| (Some(StatusCode::SERVICE_UNAVAILABLE), format!("connecting to {target}: {e}")))?;
    let send = respond
        .send_response(Response::builder().status(StatusCode::OK).body(()).expect("a 200 response"), false)
        .map_err(|e| (None, format!("answering CONNECT: {e}")))?;
    record.response_status = Some(200);
    let reader = TunnelReader::new(request.into_body());
    let mut writer = TunnelWriter::new(send);
    let result = inbound::relay_admitted((reader, &mut writer), app.split(), tracked).await;
    let failure = match result {
        Ok(outcome) => {
            record.bytes_sent = outcome.client_to_server;
            record.bytes_received = outcome.server_to_client;
            outcome.error.map(|e| e.to_string())
        }
        Err(revoked) => Some(revoked),
    };
    match failure {
        None => Ok(()),
        Some(error) => {
            writer.reset();
            relay::reset(&app);
            Err((None, error))
        }
    }
}
