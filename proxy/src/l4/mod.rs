//! L4 proxying of captured connections: accept on keel's in-pod listeners, find the original destination,
//! connect to it from inside the pod (as the pod would have), relay, and record what happened.
pub mod destination;
pub mod relay;
pub mod responder;
pub mod sockets;

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use keel_ebpf_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::{net::TcpListener, net::TcpStream, sync::watch};
use tracing::{debug, warn};

use crate::{
    capture::{Capture, Direction},
    netns::Netns,
    telemetry::{ConnectionRecord, Peer, Telemetry},
    xds::state::{Snapshot, WorkloadStore},
};

/// What every connection handler of one pod shares.
pub struct PodContext {
    pub name: String,
    pub netns: Netns,
    /// The pod's own IPv4 address: shown as the source of its outbound connections.
    pub ip: std::net::Ipv4Addr,
}

/// Node-wide inputs of the data path, built once.
pub struct DataPath {
    pub capture: Capture,
    pub telemetry: Telemetry,
    /// Workloads, services and policies (from a control plane or the local config directory; empty without).
    pub workloads: Arc<WorkloadStore>,
    pub connect_timeout: std::time::Duration,
    /// Benchmark mode: answer outbound HTTP requests in keel instead of relaying them (see [`responder`]).
    pub responder: bool,
}

/// Accepts on one of a pod's listeners until `stop` flips (unenroll or shutdown). Connections already accepted
/// keep running to their natural end.
pub async fn serve(
    listener: TcpListener,
    direction: Direction,
    pod: Arc<PodContext>,
    data_path: Arc<DataPath>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (pod, data_path) = (pod.clone(), data_path.clone());
                tokio::spawn(async move { handle(stream, peer, direction, &pod, &data_path).await });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning; the listener stays.
                warn!(pod = %pod.name, ?direction, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut client: TcpStream, peer: SocketAddr, direction: Direction, pod: &PodContext, dp: &DataPath) {
    let started = Instant::now();
    dp.telemetry.connection_opened(direction);
    let _ = client.set_nodelay(true);
    let source = match (direction, peer) {
        // After the connect4 rewrite the app's socket is on 127.0.0.1: name the pod's address instead.
        (Direction::Outbound, SocketAddr::V4(v4)) if v4.ip().is_loopback() => SocketAddr::V4(SocketAddrV4::new(pod.ip, v4.port())),
        _ => peer,
    };
    let mut record = ConnectionRecord {
        direction,
        pod: pod.name.clone(),
        source,
        original_destination: SocketAddr::V4(SocketAddrV4::new([0, 0, 0, 0].into(), 0)),
        upstream: None,
        source_peer: Peer::default(),
        destination_peer: Peer::default(),
        destination_service: None,
        bytes_sent: 0,
        bytes_received: 0,
        duration_ms: 0.0,
        error: None,
    };
    match proxy(&mut client, direction, pod, dp, &mut record).await {
        Ok(()) => {}
        Err(e) => {
            debug!(pod = %pod.name, error = %e, "connection failed");
            relay::reset(&client);
            record.error = Some(e);
        }
    }
    let elapsed = started.elapsed();
    record.duration_ms = elapsed.as_secs_f64() * 1e3;
    dp.telemetry.connection_closed(record, elapsed);
}

async fn proxy(
    client: &mut TcpStream,
    direction: Direction,
    pod: &PodContext,
    dp: &DataPath,
    record: &mut ConnectionRecord,
) -> Result<(), String> {
    let destination = dp
        .capture
        .original_destination(direction, pod.netns.cookie(), client)
        .map_err(|e| e.to_string())?;
    record.original_destination = SocketAddr::V4(destination);
    if dp.responder && direction == Direction::Outbound {
        let (read, written) = responder::respond(client).await.map_err(|e| e.to_string())?;
        record.bytes_sent = read;
        record.bytes_received = written;
        return Ok(());
    }
    if is_keel_port(destination.port()) {
        // A connection addressed to keel's own port would come straight back to keel: refuse the loop.
        return Err(format!("refusing {destination}: a keel port, not an application's"));
    }
    let snapshot = dp.workloads.snapshot();
    let pod_workload = Peer::of(snapshot.workloads_by_ip.get(&std::net::IpAddr::V4(pod.ip)));
    let upstream = match direction {
        Direction::Outbound => {
            record.source_peer = pod_workload;
            let route = destination::resolve(&snapshot, destination)?;
            record.destination_peer = Peer::of(route.workload.as_ref());
            record.destination_service = route.service.as_ref().map(|s| s.hostname.clone());
            route.upstream
        }
        Direction::Inbound => {
            record.source_peer = peer_at(&snapshot, record.source);
            record.destination_peer = pod_workload;
            destination
        }
    };
    record.upstream = Some(SocketAddr::V4(upstream));
    let mut upstream = sockets::connect_from_pod(&pod.netns, upstream, dp.connect_timeout)
        .await
        .map_err(|e| format!("connecting to {upstream}: {e}"))?;
    let outcome = relay::relay(client, &mut upstream).await;
    record.bytes_sent = outcome.client_to_server;
    record.bytes_received = outcome.server_to_client;
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(e.to_string()),
    }
}

fn peer_at(snapshot: &Snapshot, address: SocketAddr) -> Peer {
    Peer::of(snapshot.workloads_by_ip.get(&address.ip()))
}

fn is_keel_port(port: u16) -> bool {
    port == OUTBOUND_PORT || port == INBOUND_PORT || port == HBONE_PORT
}
