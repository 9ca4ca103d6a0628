//! Byte relays that move to a successor keel (`keel run --takeover`): a plain TCP-to-TCP relay (outbound direct
//! or same-node, plaintext inbound) runs pausable. When this keel hands over,
//! [`RelayMover::surrender_all`](crate::handover::relays::RelayMover::surrender_all)
//! pauses every one of them where it is; each gives up copies of its two sockets with the bytes it had read and
//! not yet written ([`Surrendered`]), the handover carries them to the successor, and [`resume`] carries on
//! there: the unwritten bytes first, then the relay, paced and (inbound) authorized by the successor's own view.
//! The application sees neither a reset nor a gap. HBONE and L7 connections (TLS and HTTP/2 state) do not move:
//! the old keel serves them to their end.
//!
//! A relay that starts after the surrender (a connection accepted just before the old keel stopped accepting)
//! is not pausable: the old keel serves it to its end, as it would any connection it cannot move.
use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::Instant,
};

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{
    inbound,
    relay::{self, DirectionState, Ended, Progress, RelayOutcome, Resume},
};
use crate::{
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    handover::relays::{MovedRelay, Surrendered},
    identity::Identity,
    plan::{Direction, Path},
    policy::open_connections::Tracked,
    sockets,
    telemetry::{ConnectionRecord, Peer},
};

/// Relays `client` and `server` (plain TCP both) from `resume` until the connection ends, pausable, counting into
/// `progress`: a relay paused for a handover is surrendered (the outcome then counts what moved here, with no
/// error) and this keel lets its copies of the sockets go without touching the connection.
pub async fn relay_movable(
    client: &mut TcpStream,
    server: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    resume: Resume,
    record: &ConnectionRecord,
    progress: &Progress,
) -> RelayOutcome {
    let pacer = pod.share.pacer();
    let counting = (progress, &pacer);
    let Some(entered) = dp.mover.enter() else {
        return finished(relay::relay_pausable(client, server, resume, dp.limits.relay, counting, None).await, progress);
    };
    let state = match relay::relay_pausable(client, server, resume, dp.limits.relay, counting, Some(entered.signal.clone())).await {
        Ended::Finished(outcome) => return outcome,
        Ended::Paused(state) => state,
    };
    let copies = client.as_fd().try_clone_to_owned().and_then(|c| Ok((c, server.as_fd().try_clone_to_owned()?)));
    let (handed, taken) = tokio::sync::oneshot::channel();
    let surrendered = match copies {
        Ok((client_copy, server_copy)) => entered.surrender(Surrendered {
            relay: describe(record, &state, progress),
            client: client_copy,
            server: server_copy,
            up_unwritten: state.up.unwritten.clone(),
            down_unwritten: state.down.unwritten.clone(),
            handed: Some(handed),
        }),
        Err(e) => {
            warn!(pod = %pod.name, error = %e, "cannot copy a relay's sockets for the successor: it stays with this keel");
            false
        }
    };
    drop(entered);
    // Only once the successor has the sockets does this keel let go; otherwise the relay goes on here.
    if surrendered && taken.await.is_ok() {
        debug!(pod = %pod.name, "relay paused and taken by the successor");
        return RelayOutcome::cut_short(progress, None);
    }
    // Not taken (the surrender was over, the copies failed, or the successor went away): carry on here.
    finished(relay::relay_pausable(client, server, state, dp.limits.relay, counting, None).await, progress)
}

/// The outcome of a relay run without a pause signal.
fn finished(ended: Ended, progress: &Progress) -> RelayOutcome {
    match ended {
        Ended::Finished(outcome) => outcome,
        // Never happens without a signal; what moved is still what moved.
        Ended::Paused(_) => RelayOutcome::cut_short(progress, None),
    }
}

fn describe(record: &ConnectionRecord, state: &Resume, progress: &Progress) -> MovedRelay {
    MovedRelay {
        pod: record.pod.clone(),
        inbound: record.direction == Direction::Inbound,
        source: record.source,
        original_destination: record.original_destination,
        upstream: record.upstream,
        same_node: record.path == Some(Path::SameNode),
        source_identity: record.source_peer.identity.as_ref().map(ToString::to_string),
        up_ended: state.up.ended,
        down_ended: state.down.ended,
        bytes_sent: record.bytes_sent + progress.client_to_server(),
        bytes_received: record.bytes_received + progress.server_to_client(),
    }
}

/// Relays an admitted inbound connection (plain TCP to the app), pausable, until it ends or a policy change
/// revokes it (the reason, second). Either way the outcome counts the bytes that really moved.
pub async fn relay_admitted_movable(
    client: &mut TcpStream,
    app: &mut TcpStream,
    pod: &PodContext,
    dp: &DataPath,
    resume: Resume,
    tracked: Option<Tracked>,
    record: &ConnectionRecord,
) -> (RelayOutcome, Option<String>) {
    let progress = Progress::default();
    let relay = relay_movable(client, app, pod, dp, resume, record, &progress);
    inbound::unless_revoked(relay, &progress, tracked).await
}

/// Resumes a relay a previous keel surrendered, for `pod`, to its end (or its next move), and records it.
pub async fn resume(surrendered: Surrendered, pod: Arc<PodContext>, dp: Arc<DataPath>) {
    let Surrendered { relay: moved, client, server, up_unwritten, down_unwritten, .. } = surrendered;
    let started = Instant::now();
    let direction = if moved.inbound { Direction::Inbound } else { Direction::Outbound };
    dp.telemetry.connection_opened(direction);
    let mut record = ConnectionRecord::new(direction, &pod.name, moved.source);
    record.original_destination = moved.original_destination;
    record.upstream = moved.upstream;
    record.path = Some(if moved.same_node { Path::SameNode } else { Path::Direct });
    record.bytes_sent = moved.bytes_sent;
    record.bytes_received = moved.bytes_received;
    let resume = Resume {
        up: DirectionState { ended: moved.up_ended, unwritten: up_unwritten },
        down: DirectionState { ended: moved.down_ended, unwritten: down_unwritten },
    };
    let result = match (tcp_stream(client), tcp_stream(server)) {
        (Ok(mut client), Ok(mut server)) => {
            let result = carry_resumed(&mut client, &mut server, &moved, &pod, &dp, resume, &mut record).await;
            if result.is_err() {
                sockets::reset(&client);
                sockets::reset(&server);
            }
            result
        }
        (client, server) => {
            let error = client.err().or(server.err()).map(|e| e.to_string()).unwrap_or_default();
            Err(ConnectionError::DownstreamIo(format!("a surrendered socket: {error}")))
        }
    };
    if let Err(e) = result {
        debug!(pod = %pod.name, error = %e, "resumed relay ended with an error");
        e.record(&mut record);
    }
    let elapsed = started.elapsed();
    record.duration_ms = elapsed.as_secs_f64() * 1e3;
    dp.telemetry.connection_closed(record, elapsed);
}

async fn carry_resumed(
    client: &mut TcpStream,
    server: &mut TcpStream,
    moved: &MovedRelay,
    pod: &PodContext,
    dp: &DataPath,
    resume: Resume,
    record: &mut ConnectionRecord,
) -> Result<(), ConnectionError> {
    let tracked = if moved.inbound {
        // Authorized again under this keel's policies: a connection they would refuse now is closed.
        let snapshot = dp.workloads.snapshot();
        let identity = moved.source_identity.as_deref().and_then(|uri| Identity::parse(uri).ok());
        record.source_peer = Peer::of(snapshot.workloads_by_ip.get(&moved.source.ip()));
        record.source_peer.identity = identity.clone();
        let port = moved.original_destination.port();
        match inbound::authorize(dp, &snapshot, pod, moved.source.ip(), identity.as_ref(), port, record)? {
            inbound::Admission::Relay(tracked) => tracked,
            inbound::Admission::PerRequest { .. } => {
                return Err(ConnectionError::PolicyDenied("the port is now decided per HTTP request; a moved byte relay cannot be".into()));
            }
        }
    } else {
        None
    };
    let (outcome, revoked) = relay_admitted_movable(client, server, pod, dp, resume, tracked, record).await;
    record.bytes_sent += outcome.client_to_server;
    record.bytes_received += outcome.server_to_client;
    match inbound::ended_by(revoked, outcome.error) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

fn tcp_stream(fd: OwnedFd) -> std::io::Result<TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Resumes every relay the previous keel surrendered, each for its pod (a pod this keel does not serve: reset,
/// nothing carried unauthorized).
pub fn resume_all(surrendered: Vec<Surrendered>, pods: &[Arc<PodContext>], dp: &Arc<DataPath>) {
    let count = surrendered.len();
    for relay in surrendered {
        match pods.iter().find(|p| p.name == relay.relay.pod) {
            Some(pod) => {
                tokio::spawn(resume(relay, pod.clone(), dp.clone()));
            }
            None => {
                warn!(pod = %relay.relay.pod, "a surrendered relay of a pod this keel does not serve: closed");
                for fd in [relay.client, relay.server] {
                    if let Ok(stream) = tcp_stream(fd) {
                        sockets::reset(&stream);
                    }
                }
            }
        }
    }
    if count > 0 {
        info!(relays = count, "resumed the previous keel's relays");
    }
}
