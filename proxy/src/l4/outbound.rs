//! Outbound relays: a pod's connection, planned by [`crate::plan`] as one of three paths, relayed as bytes to
//! the upstream [`crate::dial`] reaches:
//! - **HBONE** when it is a meshed workload on another node: an mTLS HTTP/2 CONNECT stream to its port 15008,
//!   presenting the source workload's certificate;
//! - **same node** when it is a meshed pod keel serves itself: plain TCP inside the node, with the source's
//!   identity handed to the inbound side in-process (no TLS for bytes that never leave the host);
//! - **direct** plain TCP when the destination is not in the mesh (or unknown), or the source has no workload
//!   identity to present.
use std::{net::SocketAddr, sync::Arc};

use keel_proto::workload::Workload;
use tokio::net::TcpStream;

use super::relay;
use crate::{
    chunk_io,
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    identity::Identity,
    plan::{destination::Route, Path},
    sockets,
    telemetry::{ConnectionRecord, Peer},
};

/// Relays `client` to `route`'s upstream along `path`.
pub async fn relay(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    route: Route,
    path: Path,
    source: Option<Arc<Workload>>,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    record.source_peer = Peer::of(source.as_ref());
    record.destination_peer = Peer::of(route.workload.as_ref());
    record.destination_service = route.service.as_ref().map(|s| s.hostname.clone());
    record.upstream = Some(SocketAddr::V4(route.upstream));
    record.path = Some(path);
    record.mutual_tls = path == Path::Hbone;
    dp.telemetry.connection_identified(record);
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
    let (mut upstream, _registration) = dp.dialer.connect_direct(pod.origin(), route.upstream, source_identity, true).await?;
    finish(record, relay::relay(client, &mut upstream, dp.limits.relay).await)
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
        relay::relay_halves(client_read, client_write, reader, &mut writer, dp.limits.relay, &progress).await
    };
    if outcome.error.is_some() {
        sockets::reset(client);
        writer.reset();
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
