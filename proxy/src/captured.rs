//! The top of the data path for captured connections (outbound, and plaintext inbound): accept, ask
//! [`crate::plan`] what the connection is, execute the plan (the L4 relay in [`crate::l4`], the L7 engine in
//! [`crate::l7`]), and close its record, mapping a failure to its log text and response flag once, here.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use keel_proto::workload::{Service, Workload};
use tokio::{net::TcpListener, net::TcpStream, sync::watch};
use tracing::debug;

use crate::{
    accept::{accept_loop, Budgets},
    connection_error::{self, ConnectionError},
    data_path::{DataPath, PodContext},
    l4::{inbound, outbound, responder},
    l7::{self, request::Downstream, server::serve_connection},
    plan::{self, Direction, Path, Plan},
    sockets,
    telemetry::{ConnectionRecord, Peer},
};

/// Serves a captured-traffic listener (outbound or plaintext inbound).
pub async fn serve(listener: TcpListener, direction: Direction, pod: Arc<PodContext>, data_path: Arc<DataPath>, stop: watch::Receiver<bool>) {
    let what = match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    let draining = stop.clone();
    let slots = vec![pod.connection_slots.clone()];
    let dp = data_path.clone();
    accept_loop(listener, what, pod.clone(), &dp.telemetry, Budgets { slots, rate: pod.connection_rate.clone() }, stop, move |stream, peer, slots| {
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
    match carry(&mut client, direction, pod, dp, &mut record).await {
        Ok(Carried::Done) => {}
        Ok(Carried::Http(downstream)) => {
            if let Err(e) = serve_connection(client, downstream, draining).await {
                debug!(pod = %pod.name, error = %e, "HTTP connection ended with an error");
                e.record(&mut record);
            }
        }
        Ok(Carried::InboundHttp(served)) => {
            if let Err(e) = l7::inbound::serve(client, served, draining).await {
                debug!(pod = %pod.name, error = %e, "inbound HTTP connection ended with an error");
                e.record(&mut record);
            }
        }
        Err(e) => {
            debug!(pod = %pod.name, error = %e, "connection failed");
            sockets::reset(&client);
            e.record(&mut record);
        }
    }
    let elapsed = started.elapsed();
    record.duration_ms = elapsed.as_secs_f64() * 1e3;
    dp.telemetry.connection_closed(record, elapsed);
}

/// What became of a connection after its first steps.
enum Carried {
    /// Carried as bytes (or answered by the responder), to its end.
    Done,
    /// HTTP for the L7 engine, which takes the socket.
    Http(Arc<Downstream>),
    /// Inbound HTTP whose requests policies decide one by one (see `l7::inbound`), which takes the socket.
    InboundHttp(Arc<l7::inbound::Inbound>),
}

async fn carry(
    client: &mut TcpStream,
    direction: Direction,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    record: &mut ConnectionRecord,
) -> Result<Carried, ConnectionError> {
    let destination =
        dp.capture.original_destination(direction, pod.netns.cookie(), client).map_err(|e| ConnectionError::OriginalDestination(e.to_string()))?;
    record.original_destination = SocketAddr::V4(destination);
    let planned = {
        let snapshot = dp.workloads.snapshot();
        let on_node = |ip: IpAddr| dp.dialer.node_pods.contains(ip);
        let inputs = dp.plan_inputs(&snapshot, &on_node);
        plan::plan(&inputs, direction, pod.ip, destination)
    };
    match planned {
        Plan::Refuse(refused) => {
            dp.telemetry.refused(connection_error::refusal(&refused));
            Err(refused.into())
        }
        Plan::Respond => {
            let (read, written) = responder::respond(client).await.map_err(|e| ConnectionError::DownstreamIo(e.to_string()))?;
            record.bytes_sent = read;
            record.bytes_received = written;
            Ok(Carried::Done)
        }
        Plan::Http { service, source } => Ok(Carried::Http(downstream(destination, service, source, pod, dp, record))),
        Plan::NoRoute { source, error } => {
            record.source_peer = Peer::of(source.as_ref());
            Err(error.into())
        }
        Plan::Relay(relay) => outbound::relay(client, pod, dp, relay, record).await.map(|()| Carried::Done),
        Plan::Inbound => match inbound::proxy(client, destination, pod, dp, record).await? {
            inbound::Served::Relayed => Ok(Carried::Done),
            inbound::Served::PerRequest { source_identity, cluster } => Ok(Carried::InboundHttp(Arc::new(l7::inbound::Inbound::new(
                dp.clone(),
                pod.clone(),
                record.source.ip(),
                source_identity,
                false,
                destination,
                cluster,
            )))),
        },
    }
}

/// The L7 engine's view of an HTTP connection to `service`.
fn downstream(
    destination: SocketAddrV4,
    service: Arc<Service>,
    source: Option<Arc<Workload>>,
    pod: &Arc<PodContext>,
    dp: &Arc<DataPath>,
    record: &mut ConnectionRecord,
) -> Arc<Downstream> {
    record.path = Some(Path::Http);
    record.source_peer = Peer::of(source.as_ref());
    record.destination_service = Some(service.hostname.clone());
    Arc::new(Downstream {
        filter_chain: None,
        dp: dp.clone(),
        pod: pod.clone(),
        pod_name: Arc::from(pod.name.as_str()),
        port: destination.port(),
        client_ip: IpAddr::V4(pod.ip),
        locality: source.as_ref().and_then(|w| w.locality.as_ref()).map(|l| (l.region.clone(), l.zone.clone(), l.subzone.clone())),
        source,
        metrics: dp.telemetry.http.clone(),
    })
}
