//! Outbound relays: a pod's connection, planned by [`crate::plan`] as one of three paths, relayed as bytes to
//! the upstream [`crate::dial`] reaches:
//! - **HBONE** when it is a meshed workload on another node: an mTLS HTTP/2 CONNECT stream to its port 15008,
//!   presenting the source workload's certificate;
//! - **same node** when it is a meshed pod keel serves itself: plain TCP inside the node, with the source's
//!   identity handed to the inbound side in-process (no TLS for bytes that never leave the host);
//! - **direct** plain TCP when the destination is not in the mesh (or unknown), or the source has no workload
//!   identity to present.
//!
//! When the service's cluster originates TLS (a ServiceEntry's DestinationRule `tls`), the upstream reached
//! along the path is wrapped in that TLS before any of the client's bytes go through.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use keel_proto::workload::Workload;
use tokio::net::TcpStream;

use super::relay;
use crate::{
    chunk_io,
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    dial::DialError,
    identity::Identity,
    l7_config::upstream_tls::{UpstreamTls, HANDSHAKE_TIMEOUT},
    plan::{destination::Route, Path, Relay},
    sockets,
    telemetry::{ConnectionRecord, Peer},
};

/// Relays `client` as `relay` says: to its route's upstream along its path, inside the TLS it names if any.
pub async fn relay(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    relay: Relay,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    let Relay { route, path, source, tls } = relay;
    record.source_peer = Peer::of(source.as_ref());
    record.destination_peer = Peer::of(route.workload.as_ref());
    record.destination_service = route.service.as_ref().map(|s| s.hostname.clone());
    record.upstream = Some(SocketAddr::V4(route.upstream));
    record.path = Some(path);
    record.mutual_tls = path == Path::Hbone;
    dp.telemetry.connection_identified(record);
    if let Some(tls) = tls {
        return originated_tls(client, pod, dp, &route, path, source.as_ref(), &tls, record).await;
    }
    match (path, source) {
        (Path::Hbone, Some(source)) => hbone(client, pod, dp, &source, &route, record).await,
        (Path::SameNode, Some(source)) => direct(client, pod, dp, &route, Some(Identity::of_workload(&source)), record).await,
        _ => direct(client, pod, dp, &route, None, record).await,
    }
}

/// Plain TCP from inside the pod. A connection to a pod of this node is registered for the inbound side, with
/// the source's identity on the same-node path (see [`crate::dial::local_peers`]).
async fn direct(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    route: &Route,
    source_identity: Option<Identity>,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    // A pod with a bandwidth budget keeps its bytes in keel's relay, where the budget holds (no fast path).
    let plain_l4 = pod.share.bypass_allowed();
    let (mut upstream, _registration) = dp.dialer.connect_direct(pod.origin(), route.upstream, source_identity, plain_l4).await?;
    // Plain TCP both sides: the relay can move to a successor keel.
    let outcome = super::moving::relay_movable(client, &mut upstream, pod, dp, relay::Resume::default(), record, &relay::Progress::default()).await;
    finish(record, outcome)
}

async fn hbone(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    source: &Workload,
    route: &Route,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    let tunnel = dp.dialer.open_tunnel(pod.origin(), source, route, record.source, record.destination_service.as_deref()).await?;
    let (reader, mut writer, _lease) = tunnel.into_parts();
    let progress = relay::Progress::default();
    let outcome = {
        let (client_read, client_write) = chunk_io::socket(client.split());
        relay::relay_halves(client_read, client_write, reader, &mut writer, dp.limits.relay, &progress, &pod.share.pacer()).await
    };
    if outcome.error.is_some() {
        sockets::reset(client);
        writer.reset();
    }
    finish(record, outcome)
}

/// TLS keel originates: the upstream reached along `path` as for any relay (an HBONE stream carries the TLS
/// inside its mTLS), the handshake bounded, then the client's bytes relayed inside it. A cluster whose TLS
/// settings are unusable fails every connection (fail closed).
#[allow(clippy::too_many_arguments)]
async fn originated_tls(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    route: &Route,
    path: Path,
    source: Option<&Arc<Workload>>,
    tls: &UpstreamTls,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    let upstream = route.upstream;
    let failed = |reason: String| DialError::UpstreamTls(upstream, reason);
    let config = tls.client.clone().map_err(failed)?;
    let io = dp.dialer.endpoint(pod.origin(), source, route, path, dp.dialer.connect_timeout).await?;
    // Without an SNI (a wildcard host), the name rustls checks is the address; the verifier then checks the SANs.
    let server_name = tls.server_name.clone().unwrap_or_else(|| IpAddr::V4(*upstream.ip()).into());
    let handshake = tokio_rustls::TlsConnector::from(config).connect(server_name, io);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| failed(format!("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| failed(format!("TLS handshake: {e}")))?;
    let progress = relay::Progress::default();
    let outcome = {
        let (client_read, client_write) = chunk_io::socket(client.split());
        let (server_read, server_write) = chunk_io::socket(tokio::io::split(stream));
        relay::relay_halves(client_read, client_write, server_read, server_write, dp.limits.relay, &progress, &pod.share.pacer()).await
    };
    if outcome.error.is_some() {
        sockets::reset(client);
    }
    finish(record, outcome)
}

fn finish(record: &mut ConnectionRecord, outcome: relay::RelayOutcome) -> Result<(), ConnectionError> {
    record.bytes_sent = outcome.client_to_server;
    record.bytes_received = outcome.server_to_client;
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(ConnectionError::Relay(e)),
    }
}
