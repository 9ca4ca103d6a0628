//! Outbound: where a pod's connection goes and how. The destination (a service VIP is load-balanced first) is
//! reached one of three ways:
//! - **HBONE** when it is a meshed workload on another node: an mTLS HTTP/2 CONNECT stream to its port 15008,
//!   presenting the source workload's certificate;
//! - **same node** when it is a meshed pod keel serves itself: plain TCP inside the node, with the source's
//!   identity handed to the inbound side in-process (no TLS for bytes that never leave the host);
//! - **direct** plain TCP when the destination is not in the mesh (or unknown), or the source has no workload
//!   identity to present.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use keel_ebpf_common::HBONE_PORT;
use keel_proto::workload::{TunnelProtocol, Workload};
use serde::Serialize;
use tokio::net::TcpStream;

use super::{
    destination::{self, Route},
    local_peers::Registration,
    relay, sockets, DataPath, PodContext,
};
use crate::{
    hbone::{
        client::{ClientTls, Dial, PoolKey, Tunnel},
        headers::ConnectRequest,
    },
    identity::{tls, Identity},
    telemetry::{ConnectionRecord, Peer},
};

/// How a connection left keel, as logs and `keel connections` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    Direct,
    SameNode,
    Hbone,
    /// Terminated by the L7 engine; each request went its own way (see the access log).
    Http,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::SameNode => "same-node",
            Path::Hbone => "hbone",
            Path::Http => "http",
        }
    }
}

pub async fn proxy(
    client: &mut TcpStream,
    destination: SocketAddrV4,
    pod: &PodContext,
    dp: &DataPath,
    record: &mut ConnectionRecord,
) -> Result<(), String> {
    let snapshot = dp.workloads.snapshot();
    let source = snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).cloned();
    record.source_peer = Peer::of(source.as_ref());
    let route = destination::resolve(&snapshot, destination)?;
    record.destination_peer = Peer::of(route.workload.as_ref());
    record.destination_service = route.service.as_ref().map(|s| s.hostname.clone());
    record.upstream = Some(SocketAddr::V4(route.upstream));
    let path = choose_path(dp, source.as_deref(), &route);
    record.path = Some(path);
    record.mutual_tls = path == Path::Hbone;
    dp.telemetry.connection_identified(record);
    match (path, source) {
        (Path::Hbone, Some(source)) => hbone(client, pod, dp, &source, &route, record).await,
        (Path::SameNode, Some(source)) => direct(client, pod, dp, &route, Some(Identity::of_workload(&source)), record).await,
        _ => direct(client, pod, dp, &route, None, record).await,
    }
}

pub fn choose_path(dp: &DataPath, source: Option<&Workload>, route: &Route) -> Path {
    let meshed = route.workload.as_ref().is_some_and(|w| w.tunnel_protocol == TunnelProtocol::Hbone as i32);
    if !meshed || source.is_none() {
        return Path::Direct;
    }
    if dp.node_pods.contains(IpAddr::V4(*route.upstream.ip())) {
        return Path::SameNode;
    }
    if dp.certificates.is_none() {
        // No certificate source (keel runs without a control plane or local CA): nothing to prove identity with.
        return Path::Direct;
    }
    Path::Hbone
}

/// Plain TCP from inside the pod. A connection to a pod of this node is registered for the inbound side, with
/// the source's identity on the same-node path (see [`super::local_peers`]).
async fn direct(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    route: &Route,
    source_identity: Option<Identity>,
    record: &mut ConnectionRecord,
) -> Result<(), String> {
    let (mut upstream, _registration) = connect_direct(dp, pod, route.upstream, source_identity).await?;
    finish(record, relay::relay(client, &mut upstream, dp.limits.relay).await)
}

/// Connects from inside `pod` to `upstream`; the registration (held as long as the connection) tells the
/// inbound side of a same-node pod who the source is.
pub async fn connect_direct(
    dp: &DataPath,
    pod: &PodContext,
    upstream: SocketAddrV4,
    source_identity: Option<Identity>,
) -> Result<(TcpStream, Option<Registration>), String> {
    let stream = sockets::connect_from_pod(&pod.netns, upstream, dp.connect_timeout)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    let registration = if dp.node_pods.contains(IpAddr::V4(*upstream.ip())) {
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        Some(dp.local_peers.register(local, SocketAddr::V4(upstream), source_identity))
    } else {
        None
    };
    Ok((stream, registration))
}

async fn hbone(
    client: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    source: &Workload,
    route: &Route,
    record: &mut ConnectionRecord,
) -> Result<(), String> {
    let tunnel = open_tunnel(dp, pod, source, route, record.source, record.destination_service.as_deref()).await?;
    let (reader, mut writer, _lease) = tunnel.into_parts();
    let progress = relay::Progress::default();
    let outcome = {
        let (client_read, client_write) = client.split();
        relay::relay_halves(client_read, client_write, reader, &mut writer, dp.limits.relay, &progress).await
    };
    if outcome.error.is_some() {
        relay::reset(client);
        writer.reset();
    }
    finish(record, outcome)
}

/// An HBONE CONNECT stream from `pod`, presenting `source`'s certificate, to `route`'s upstream on its node
/// (pooled: streams share the mTLS connection per source and destination identity).
pub async fn open_tunnel(
    dp: &DataPath,
    pod: &PodContext,
    source: &Workload,
    route: &Route,
    client: SocketAddr,
    service_host: Option<&str>,
) -> Result<Tunnel, String> {
    let certificates = dp.certificates.clone().ok_or("no certificate source")?;
    let destination = route.workload.as_ref().ok_or("no destination workload")?;
    let source_identity = Identity::of_workload(source);
    let expected = expected_identities(route, destination);
    let key = PoolKey {
        source_identity: source_identity.clone(),
        destination_identity: expected[0].clone(),
        source_ip: IpAddr::V4(pod.ip),
        destination_ip: IpAddr::V4(*route.upstream.ip()),
    };
    let request = ConnectRequest {
        target: SocketAddr::V4(route.upstream),
        client,
        service_host,
        source: Some(source),
        cluster_id: &dp.cluster_id,
    }
    .build();
    let dial = Dial {
        netns: &pod.netns,
        peer: SocketAddrV4::new(*route.upstream.ip(), HBONE_PORT),
        connect_timeout: dp.connect_timeout,
        tls: || async move {
            let certificate = certificates.certificate(&source_identity).await?;
            Ok(ClientTls { config: tls::client_config(&certificate, expected)?, certificate_expiry: certificate.not_after })
        },
    };
    dp.hbone.open(key, dial, request).await.map_err(|e| e.to_string())
}

/// The identities the destination may prove: the service's `subject_alt_names` when it sets them, else the
/// workload's own.
fn expected_identities(route: &Route, destination: &Arc<Workload>) -> Vec<Identity> {
    let from_service: Vec<Identity> = route
        .service
        .iter()
        .flat_map(|s| s.subject_alt_names.iter())
        .filter_map(|san| Identity::parse(san).ok())
        .collect();
    if from_service.is_empty() { vec![Identity::of_workload(destination)] } else { from_service }
}

fn finish(record: &mut ConnectionRecord, outcome: relay::RelayOutcome) -> Result<(), String> {
    record.bytes_sent = outcome.client_to_server;
    record.bytes_received = outcome.server_to_client;
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(e.to_string()),
    }
}
