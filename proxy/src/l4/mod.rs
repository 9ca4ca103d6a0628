//! L4 proxying of captured connections: accept on keel's in-pod listeners, find the original destination,
//! connect to it from inside the pod (as the pod would have), relay, and record what happened.
pub mod destination;
pub mod inbound;
pub mod local_peers;
pub mod open_connections;
pub mod outbound;
pub mod relay;
pub mod responder;
pub mod sockets;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use arc_swap::ArcSwap;

use keel_ebpf_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::{net::TcpListener, net::TcpStream, sync::watch};
use tracing::{debug, warn};

use crate::{
    capture::{Capture, Direction},
    limits::{Limits, Slot, Slots},
    telemetry::Refusal,
    l7::request::Downstream,
    hbone::client::HboneClient,
    identity::CertificateManager,
    netns::Netns,
    telemetry::{ConnectionRecord, Telemetry},
    xds::state::WorkloadStore,
};
use local_peers::LocalPeers;
use open_connections::OpenConnections;

/// What every connection handler of one pod shares.
pub struct PodContext {
    pub name: String,
    pub netns: Netns,
    /// The pod's own IPv4 address: shown as the source of its outbound connections.
    pub ip: std::net::Ipv4Addr,
    /// Captured connections (outbound and plaintext inbound) the pod may have in flight.
    pub connection_slots: Arc<Slots>,
    /// HBONE connections the pod's 15008 accepts.
    pub hbone_slots: Arc<Slots>,
}

impl PodContext {
    pub fn new(name: String, netns: Netns, ip: std::net::Ipv4Addr, limits: &Limits) -> PodContext {
        PodContext {
            name,
            netns,
            ip,
            connection_slots: Slots::new(limits.connections_per_pod, Refusal::PodConnectionLimit),
            hbone_slots: Slots::new(limits.hbone.connections_per_pod, Refusal::PodHboneLimit),
        }
    }
}

/// Node-wide inputs of the data path, built once.
pub struct DataPath {
    pub capture: Capture,
    pub telemetry: Telemetry,
    /// Workloads, services and policies (from a control plane or the local config directory; empty without).
    pub workloads: Arc<WorkloadStore>,
    /// Workload certificates for mTLS; `None` when keel has no control plane or local CA to get them from.
    pub certificates: Option<CertificateManager>,
    pub hbone: Arc<HboneClient>,
    /// Pooled upstream HTTP connections of the L7 engine.
    pub upstreams: crate::l7::upstream::Upstreams,
    /// The pods enrolled on this node (their traffic to each other stays inside the node).
    pub node_pods: NodePods,
    pub local_peers: Arc<LocalPeers>,
    pub open_connections: Arc<OpenConnections>,
    pub cluster_id: String,
    pub connect_timeout: std::time::Duration,
    pub limits: Limits,
    /// HBONE connections the whole node accepts (every pod's 15008 together).
    pub hbone_node_slots: Arc<Slots>,
    /// HBONE handshakes in progress per source address, node-wide.
    pub hbone_handshakes: crate::limits::PerSourceSlots,
    /// keel follows a workload source (control plane or config directory): a pod keel has no Workload for is
    /// not in the mesh as far as keel knows, and its traffic is refused rather than carried unauthenticated.
    /// Off only in `--capture-only` mode (benchmarks and capture tests), where keel carries bytes and nothing
    /// else.
    pub mesh: bool,
    /// Benchmark mode: answer outbound HTTP requests in keel instead of relaying them (see [`responder`]).
    pub responder: bool,
}

/// The addresses of the pods enrolled on this node, read on every outbound connection, written on enrollment.
#[derive(Default)]
pub struct NodePods(ArcSwap<HashSet<IpAddr>>);

impl NodePods {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.load().contains(&ip)
    }

    pub fn set(&self, ips: HashSet<IpAddr>) {
        self.0.store(Arc::new(ips));
    }
}

/// Accepts on one of a pod's listeners until `stop` flips (unenroll or shutdown), running `handle` on its own
/// task for each connection. A connection gets a slot of every pool in `slots` or is refused at once with a
/// reset (counted under the pool's reason): a peer cannot make keel hold more sockets than the limits allow.
/// Connections already accepted keep running to their natural end.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    what: &'static str,
    pod: Arc<PodContext>,
    telemetry: &Telemetry,
    slots: Vec<Arc<Slots>>,
    mut stop: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Vec<Slot>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                sockets::set_keepalive(&stream);
                let mut held = Vec::with_capacity(slots.len());
                let refused = slots.iter().find(|pool| match pool.try_take() {
                    Some(slot) => {
                        held.push(slot);
                        false
                    }
                    None => true,
                });
                if let Some(pool) = refused {
                    telemetry.refused(pool.refusal);
                    warn!(pod = %pod.name, listener = what, %peer, reason = pool.refusal.as_str(), limit = pool.limit(),
                          "connection refused: limit reached");
                    relay::reset(&stream);
                    continue;
                }
                tokio::spawn(handle(stream, peer, held));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning; the listener stays.
                warn!(pod = %pod.name, listener = what, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves a captured-traffic listener (outbound or plaintext inbound).
pub async fn serve(listener: TcpListener, direction: Direction, pod: Arc<PodContext>, data_path: Arc<DataPath>, stop: watch::Receiver<bool>) {
    let what = match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    let draining = stop.clone();
    let slots = vec![pod.connection_slots.clone()];
    let dp = data_path.clone();
    accept_loop(listener, what, pod.clone(), &dp.telemetry, slots, stop, move |stream, peer, slots| {
        let (pod, data_path, draining) = (pod.clone(), data_path.clone(), draining.clone());
        async move {
            handle(stream, peer, direction, &pod, &data_path, draining).await;
            drop(slots);
        }
    })
    .await
}

/// `draining` flips when the pod's listeners stop (unenroll or shutdown): HTTP connections then finish their
/// requests and close (GOAWAY on HTTP/2); byte relays run to their natural end.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    draining: watch::Receiver<bool>,
) {
    let started = Instant::now();
    dp.telemetry.connection_opened(direction);
    let _ = client.set_nodelay(true);
    let source = match (direction, peer) {
        // After the connect4 rewrite the app's socket is on 127.0.0.1: name the pod's address instead.
        (Direction::Outbound, SocketAddr::V4(v4)) if v4.ip().is_loopback() => SocketAddr::V4(SocketAddrV4::new(pod.ip, v4.port())),
        _ => peer,
    };
    let mut record = ConnectionRecord::new(direction, &pod.name, source);
    match proxy(&mut client, direction, pod, dp, &mut record).await {
        Ok(Handled::Relayed) => {}
        Ok(Handled::Http(downstream)) => {
            if let Err(e) = crate::l7::server::serve_connection(client, downstream, draining).await {
                debug!(pod = %pod.name, error = %e, "HTTP connection ended with an error");
                record.error = Some(e);
            }
        }
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

/// What became of a connection after its first steps.
enum Handled {
    /// Relayed as bytes, to its end.
    Relayed,
    /// HTTP for the L7 engine, which takes the socket.
    Http(Arc<Downstream>),
}

async fn proxy(
    client: &mut TcpStream,
    direction: Direction,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    record: &mut ConnectionRecord,
) -> Result<Handled, String> {
    let destination = dp
        .capture
        .original_destination(direction, pod.netns.cookie(), client)
        .map_err(|e| e.to_string())?;
    record.original_destination = SocketAddr::V4(destination);
    if dp.responder && direction == Direction::Outbound {
        let (read, written) = responder::respond(client).await.map_err(|e| e.to_string())?;
        record.bytes_sent = read;
        record.bytes_received = written;
        return Ok(Handled::Relayed);
    }
    if is_loop_port(destination.port()) || (direction == Direction::Inbound && is_keel_port(destination.port())) {
        // Addressed to keel's own port: it would come straight back to keel (a loop), or reach keel's own
        // endpoints inside the pod by way of capture.
        dp.telemetry.refused(Refusal::KeelPort);
        return Err(format!("refusing {destination}: a keel port, not an application's"));
    }
    if direction == Direction::Outbound && dp.mesh && !dp.workloads.snapshot().workloads_by_ip.contains_key(&IpAddr::V4(pod.ip)) {
        // An enrolled pod keel has no Workload for has no identity to present: carrying its connection would
        // send it into the mesh unauthenticated (or in plaintext to another node).
        dp.telemetry.refused(Refusal::UnknownSourceWorkload);
        return Err(format!("refusing: keel has no Workload for source pod {} (no identity to present)", pod.ip));
    }
    match direction {
        Direction::Outbound => match http_downstream(destination, pod, dp, record) {
            Some(downstream) => Ok(Handled::Http(downstream)),
            None => outbound::proxy(client, destination, pod, dp, record).await.map(|()| Handled::Relayed),
        },
        Direction::Inbound => inbound::proxy(client, destination, pod, dp, record).await.map(|()| Handled::Relayed),
    }
}

/// A connection to a service VIP on a port the L7 config routes for that service is HTTP for the L7 engine;
/// everything else stays L4.
fn http_downstream(destination: SocketAddrV4, pod: &Arc<PodContext>, dp: &Arc<DataPath>, record: &mut ConnectionRecord) -> Option<Arc<Downstream>> {
    let snapshot = dp.workloads.snapshot();
    let service = snapshot.services_by_vip.get(&IpAddr::V4(*destination.ip()))?;
    let (_, table) = snapshot.l7.route_table(destination.port())?;
    table.virtual_host(&service.hostname)?;
    let source = snapshot.workloads_by_ip.get(&IpAddr::V4(pod.ip)).cloned();
    record.path = Some(outbound::Path::Http);
    record.source_peer = crate::telemetry::Peer::of(source.as_ref());
    record.destination_service = Some(service.hostname.clone());
    Some(Arc::new(Downstream {
        dp: dp.clone(),
        pod: pod.clone(),
        port: destination.port(),
        client_ip: IpAddr::V4(pod.ip),
        locality: source.as_ref().and_then(|w| w.locality.as_ref()).map(|l| (l.region.clone(), l.zone.clone(), l.subzone.clone())),
        source,
        metrics: dp.telemetry.http.clone(),
    }))
}

/// keel's own ports in a pod and on the node: 15001 (outbound capture), 15006 (inbound capture), 15008 (HBONE),
/// 15000 (admin), 15020 and 15021 (metrics and health, as Istio reserves them). No captured connection or
/// HBONE stream is ever delivered to one: keel tunnelling into itself would re-evaluate the inner connection
/// with the pod as its source and bypass the policy that applied to the outer one.
pub const KEEL_PORTS: [u16; 6] = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT, 15020, 15021];
const ADMIN_PORT: u16 = 15000;

pub fn is_keel_port(port: u16) -> bool {
    KEEL_PORTS.contains(&port)
}

/// The ports capture hands to keel: an outbound connection to one would loop back into keel.
fn is_loop_port(port: u16) -> bool {
    port == OUTBOUND_PORT || port == INBOUND_PORT || port == HBONE_PORT
}
