//! Inbound: connections arriving at an enrolled pod. HBONE streams come through [`crate::hbone_server`]; everything else
//! (plaintext captured by sk_lookup or REDIRECT: a same-node keel connection, or a client outside the mesh)
//! through [`proxy`]. Both are authorized here, on the destination side, then delivered to the application from
//! inside the pod, and tracked so that a later policy can close them. Where a policy with HTTP rules applies and
//! the port carries HTTP, the decision is per request instead: the connection goes to [`crate::l7::inbound`].
use std::{
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::net::TcpStream;
use tracing::info;

use super::relay::{self, Progress, RelayOutcome};
use keel_ebpf_common::BypassKey;

use crate::{
    bypass::Grant,
    chunk_io::{ChunkRead, ChunkWrite},
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    dial::local_peers::LocalPeer,
    fair_share::Pacer,
    identity::Identity,
    limits::RelayTimeouts,
    plan::{self, Path},
    policy::{self, open_connections::Tracked, ConnectionAttributes, OpenConnection},
    sockets,
    telemetry::{ConnectionRecord, Peer, Refusal},
    xds::state::Snapshot,
};

/// How an admitted inbound connection is served.
pub enum Admission {
    /// Decided once: relayed as bytes, tracked (when keel follows a workload source) so a later policy can close it.
    Relay(Option<Tracked>),
    /// A policy with HTTP rules applies and the port carries HTTP: served as HTTP, every request decided. The
    /// Istio inbound cluster name of the service behind the port comes along for metrics.
    PerRequest { cluster: String },
}

/// The service an inbound connection to `port` of `workload` was for, when the workload's services say so
/// unambiguously (exactly one of them sends a port to `port`): the destination's metrics then carry the
/// `destination_service` the client's keel reports. An HBONE stream names the pod's address, not the service.
pub fn destination_service(workload: Option<&keel_proto::workload::Workload>, port: u16) -> Option<String> {
    let mut hosts = workload?.services.iter().filter(|(_, ports)| ports.ports.iter().any(|p| p.target_port == u32::from(port)));
    let (key, _) = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    // Keys are `<namespace>/<hostname>`.
    Some(key.split_once('/').map_or(key.as_str(), |(_, host)| host).to_owned())
}

/// Authorizes a connection to `pod`'s `target_port` and starts tracking it. A pod keel has no Workload for is
/// refused (as ztunnel does): no policy could be evaluated for it, and admitting it would let any peer reach it
/// unauthorized. Only `--capture-only` mode, which has no workload source at all, admits it untracked.
///
/// When a policy with HTTP rules applies, the connection's L4 decision (where such a rule is dropped from ALLOW
/// policies) would refuse requests the policy admits: on a port that carries HTTP it is then only used when a
/// DENY that needs no HTTP matched, which refuses every request anyway; otherwise the connection is admitted for
/// per-request decisions. On other ports the L4 decision stands (fail closed).
pub fn authorize(
    dp: &DataPath,
    snapshot: &Snapshot,
    pod: &PodContext,
    source_ip: IpAddr,
    source_identity: Option<&Identity>,
    target_port: u16,
    record: &mut ConnectionRecord,
) -> Result<Admission, ConnectionError> {
    let Some(destination) = snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)) else {
        dp.telemetry.connection_identified(record);
        if !dp.mesh {
            return Ok(Admission::Relay(None));
        }
        dp.telemetry.refused(Refusal::UnknownDestinationWorkload);
        let reason = format!("refused: keel has no Workload for destination pod {}", pod.ip);
        record.policy = Some(reason.clone());
        return Err(ConnectionError::UnknownDestinationWorkload(reason));
    };
    let attributes = ConnectionAttributes {
        source_ip,
        source_identity,
        destination_ip: IpAddr::V4(pod.ip),
        destination_port: target_port,
        destination_workload: destination,
    };
    dp.telemetry.connection_identified(record);
    let decision = policy::authorize(snapshot, &attributes);
    if policy::needs_requests(snapshot, &attributes) && !policy::denies_every_request(snapshot, &decision) {
        if let Some((host, _)) = plan::inbound_http_service(snapshot, destination, target_port) {
            record.policy = Some(format!("decided per request: HTTP policy rules or a RequestAuthentication apply to port {target_port}"));
            return Ok(Admission::PerRequest { cluster: format!("inbound|{target_port}||{host}") });
        }
    }
    for dry_run in &decision.dry_run {
        info!(pod = %pod.name, source = %source_ip, port = target_port, "{dry_run}");
    }
    record.policy = Some(decision.reason.to_string());
    if !decision.allowed() {
        dp.telemetry.refused(Refusal::Policy);
        return Err(ConnectionError::PolicyDenied(decision.reason.to_string()));
    }
    Ok(Admission::Relay(Some(dp.open_connections.track(OpenConnection::new(&attributes)))))
}

/// What [`proxy`] did with a connection.
pub enum Served {
    /// Relayed to its end.
    Relayed,
    /// Admitted for a decision per request: the caller, which owns the socket, serves it as HTTP
    /// (`crate::l7::inbound`). The source's identity and the port's inbound cluster name come along.
    PerRequest { source_identity: Option<Identity>, cluster: String },
}

/// Connects to the application in the pod (the pod's own address, from inside the pod).
pub async fn connect_app(pod: &PodContext, dp: &DataPath, target: SocketAddrV4) -> io::Result<TcpStream> {
    sockets::connect_from_pod(&pod.netns, target, dp.dialer.connect_timeout).await
}

/// Relays until both directions end, or until a policy change revokes the connection (the reason, second).
/// Either way the outcome counts the bytes that really moved.
pub async fn relay_admitted<CR, CW, SR, SW>(
    client: (CR, CW),
    server: (SR, SW),
    tracked: Option<Tracked>,
    timeouts: RelayTimeouts,
    pacer: &Pacer,
) -> (RelayOutcome, Option<String>)
where
    CR: ChunkRead,
    CW: ChunkWrite,
    SR: ChunkRead,
    SW: ChunkWrite,
{
    let progress = Progress::default();
    let relay = relay::relay_halves(client.0, client.1, server.0, server.1, timeouts, &progress, pacer);
    unless_revoked(relay, &progress, tracked).await
}

/// Runs `relay` (which counts into `progress`) to its end, or until a policy change revokes the connection it
/// carries (the reason, second; the outcome then counts what moved until the revocation).
pub async fn unless_revoked(
    relay: impl std::future::Future<Output = RelayOutcome>,
    progress: &Progress,
    tracked: Option<Tracked>,
) -> (RelayOutcome, Option<String>) {
    match tracked {
        None => (relay.await, None),
        Some(mut tracked) => tokio::select! {
            outcome = relay => (outcome, None),
            reason = tracked.revoked() => (RelayOutcome::cut_short(progress, None), Some(reason)),
        },
    }
}

/// A plaintext inbound connection. Its source has an identity only if keel itself made it from a pod of this
/// node (see [`crate::dial::local_peers`]); otherwise it is an unauthenticated peer, which STRICT mTLS refuses.
pub async fn proxy(
    client: &mut TcpStream,
    destination: SocketAddrV4,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    record: &mut ConnectionRecord,
) -> Result<Served, ConnectionError> {
    let snapshot = dp.workloads.snapshot();
    let source_ip = record.source.ip();
    let LocalPeer { identity: source_identity, bypass_from } = if dp.dialer.node_pods.contains(source_ip) {
        dp.dialer.local_peers.peer_of(record.source, SocketAddr::V4(destination)).await
    } else {
        LocalPeer::default()
    };
    record.source_peer = Peer::of(snapshot.workloads_by_ip.get(&source_ip));
    record.source_peer.identity = source_identity.clone();
    record.path = Some(if source_identity.is_some() { Path::SameNode } else { Path::Direct });
    record.destination_peer = Peer::of(snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)));
    record.destination_service = destination_service(snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).map(AsRef::as_ref), destination.port());
    let admission = authorize(dp, &snapshot, pod, source_ip, source_identity.as_ref(), destination.port(), record)?;
    record.upstream = Some(SocketAddr::V4(destination));
    let tracked = match admission {
        Admission::Relay(tracked) => tracked,
        Admission::PerRequest { cluster } => {
            return Ok(Served::PerRequest { source_identity: record.source_peer.identity.clone(), cluster });
        }
    };
    let destination_workload = snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).filter(|_| pod.share.bypass_allowed());
    if let (Some(source_netns), Some(destination_workload)) = (bypass_from, destination_workload) {
        // Admitted, plain L4, both pods here: the pair's next connections may go straight, decided the same way.
        let key = BypassKey { source_netns, destination_netns: pod.netns.cookie(), port: destination.port().into(), _pad: 0 };
        let grant = || Grant {
            connection: OpenConnection {
                source_ip,
                source_identity: record.source_peer.identity.clone(),
                destination_ip: IpAddr::V4(pod.ip),
                destination_port: destination.port(),
                destination_uid: destination_workload.uid.clone(),
            },
            record: record.clone(),
        };
        dp.bypass.grant(&dp.capture, &dp.workloads, &snapshot, key, grant);
    }
    let mut app = connect_app(pod, dp, destination).await.map_err(|e| ConnectionError::ConnectApp(destination, e))?;
    // Plain TCP both sides: the relay can move to a successor keel.
    let (outcome, revoked) = super::moving::relay_admitted_movable(client, &mut app, pod, dp, relay::Resume::default(), tracked, record).await;
    record.bytes_sent = outcome.client_to_server;
    record.bytes_received = outcome.server_to_client;
    match ended_by(revoked, outcome.error) {
        None => Ok(Served::Relayed),
        Some(error) => {
            sockets::reset(client);
            sockets::reset(&app);
            Err(error)
        }
    }
}

/// What ended an admitted relay early: a policy change first, else the relay's own error.
pub fn ended_by(revoked: Option<String>, error: Option<io::Error>) -> Option<ConnectionError> {
    match (revoked, error) {
        (Some(reason), _) => Some(ConnectionError::Revoked(reason)),
        (None, Some(e)) => Some(ConnectionError::Relay(e)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::destination_service;
    use keel_proto::workload::{Port, PortList, Workload};

    fn workload(services: &[(&str, u32)]) -> Workload {
        let services = services
            .iter()
            .map(|(key, target)| ((*key).to_owned(), PortList { ports: vec![Port { service_port: 80, target_port: *target }] }))
            .collect();
        Workload { services, ..Default::default() }
    }

    #[test]
    fn the_destination_service_is_named_only_when_one_service_leads_to_the_port() {
        let w = workload(&[("default/web.default.svc.cluster.local", 8080), ("default/admin.default.svc.cluster.local", 9090)]);
        assert_eq!(destination_service(Some(&w), 8080).as_deref(), Some("web.default.svc.cluster.local"));
        assert_eq!(destination_service(Some(&w), 7000), None, "no service leads there");
        let shared = workload(&[("default/a.default.svc.cluster.local", 8080), ("default/b.default.svc.cluster.local", 8080)]);
        assert_eq!(destination_service(Some(&shared), 8080), None, "two services lead there: which one the client dialled is unknown");
        assert_eq!(destination_service(None, 8080), None);
    }
}
