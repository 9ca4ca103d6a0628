//! Hitless restart and upgrade (`keel run --takeover`): a new keel on the node takes the running one's listening
//! sockets over a Unix socket in the state directory, so not one connection is refused or lost in an accept queue
//! while keel changes, and the old keel serves what it already carries to its natural end.
//!
//! The exchange (versioned, JSON documents on SOCK_SEQPACKET with descriptors as SCM_RIGHTS, see [`seqpacket`]):
//!
//! 1. new → old `hello {version}`; an old keel of another version answers `refused` and, when the new one then
//!    asks `stop`, stops as for a restart (today's drain-and-restart: pods refused until the new keel has them);
//! 2. old → new `offer {pods}`, then one `pod {spec}` per enrolled pod carrying its three listeners (15001,
//!    15006, 15008 in the pod's network namespace), then `node {names}` carrying the admin, readiness and metrics
//!    listeners. The old keel keeps accepting meanwhile: both processes accept on the same sockets, so every
//!    connection in the queues is served by one of them;
//! 3. the new keel enrolls the pods on those sockets (capture's maps and pinned links are shared: it re-registers
//!    the same sockets and replaces the pinned links with its own) and starts accepting, then says `took_over`;
//! 4. the old keel stops accepting (its copies of the sockets close; the new keel's stay open), pauses its byte
//!    relays and sends each as `relay {…}` carrying its two sockets and, when it had read bytes it had not yet
//!    written, a memfd holding them (see [`relays`]); then `bye`. It sends a GOAWAY on its HBONE connections
//!    (streams in flight go on; new ones go to the new keel), serves every connection it still has to its end or
//!    until `--drain-max`, and exits. The new keel resumes the relays where they paused.
//!
//! If either side dies during the exchange nothing is lost: until `took_over`, the old keel never stopped
//! accepting, and the capture state in the kernel (pinned maps and links) is the same for both.
pub mod relays;
pub mod seqpacket;

use std::{
    future::Future,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{pods::PodSpec, sockets::PodListeners};

/// This keel's handover protocol version: a pair of keels of different versions falls back to drain-and-restart.
pub const VERSION: u32 = 2;
/// How long either side waits for the other's next message.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the running keel waits for a connected successor's hello (it gets its config first).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(90);

/// Where a running keel listens for its successor.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Hello {
        version: u32,
    },
    Refused {
        reason: String,
    },
    Stop,
    Offer {
        pods: usize,
    },
    /// Carries the pod's outbound, inbound and HBONE listeners, in that order.
    Pod {
        spec: PodSpec,
    },
    /// Carries these listeners of keel's own (`admin`, `readiness`, `metrics`), in that order, bound in the
    /// network namespace `netns` (its inode): a successor in another one (a new pod, as a DaemonSet's surge
    /// creates) binds its own.
    Node {
        names: Vec<String>,
        netns: u64,
    },
    TookOver,
    /// Carries the relay's client and server sockets, then a memfd with its unwritten bytes (upstream's first)
    /// when there are any.
    Relay {
        relay: relays::MovedRelay,
        up_unwritten: usize,
        down_unwritten: usize,
    },
    Bye,
}

/// What a running keel hands over: its pods with their listeners, and its own listeners by name (copies: the
/// sockets stay open in both processes).
pub struct Offer {
    pub pods: Vec<(PodSpec, PodListeners)>,
    pub node: Vec<(String, std::net::TcpListener)>,
}

/// The running keel's side.
pub trait Handover: Send + Sync + 'static {
    /// Copies of what it would hand over now.
    fn offer(&self) -> impl Future<Output = anyhow::Result<Offer>> + Send;
    /// The successor serves everything now: stop accepting, drain, exit.
    fn handed_over(&self);
    /// A successor of another version asked for the old way: stop as for a restart; done once this keel's
    /// listeners are closed (the successor opens its own then).
    fn stop_for_restart(&self) -> impl Future<Output = ()> + Send;
    /// Pauses the relays that can move and gives them up for the successor. Each one marked taken is the
    /// successor's; one dropped unmarked goes on in this keel.
    fn surrender_relays(&self) -> impl Future<Output = Vec<relays::Surrendered>> + Send;
}

/// Serves successors, one at a time, for as long as keel runs (a blocking thread: handovers are rare).
pub fn serve<H: Handover>(listener: OwnedFd, keel: std::sync::Arc<H>, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("keel-handover".into())
        .spawn(move || loop {
            let peer = match seqpacket::accept(&listener, HELLO_TIMEOUT) {
                Ok(peer) => peer,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "handover connection refused");
                    // A failing accept (out of descriptors) must not spin.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match hand_over(&peer, keel.as_ref(), &runtime) {
                Ok(true) => return,
                Ok(false) => {}
                // The successor went away or misbehaved before taking over: nothing changed here.
                Err(e) => warn!(error = %format!("{e:#}"), "handover abandoned; this keel goes on serving"),
            }
        })
        .context("starting the handover thread")?;
    Ok(())
}

/// One successor's exchange; `true` once it took over (or this keel was asked to stop).
fn hand_over<H: Handover>(peer: &OwnedFd, keel: &H, runtime: &tokio::runtime::Handle) -> anyhow::Result<bool> {
    let (hello, _): (Message, _) = seqpacket::receive(peer)?;
    let Message::Hello { version } = hello else { bail!("expected hello, got {hello:?}") };
    seqpacket::set_timeout(peer, EXCHANGE_TIMEOUT)?;
    if version != VERSION {
        let reason = format!("this keel speaks handover version {VERSION}, the new one {version}");
        warn!(%reason, "handover refused: falling back to drain-and-restart if asked");
        seqpacket::send(peer, &Message::Refused { reason }, &[])?;
        return match seqpacket::receive::<Message>(peer) {
            Ok((Message::Stop, _)) => {
                // The connection stays open until the listeners are closed: the successor waits for its end.
                runtime.block_on(keel.stop_for_restart());
                Ok(true)
            }
            _ => Ok(false),
        };
    }
    let offer = runtime.block_on(keel.offer())?;
    seqpacket::send(peer, &Message::Offer { pods: offer.pods.len() }, &[])?;
    for (spec, listeners) in &offer.pods {
        let fds = [listeners.outbound.as_fd(), listeners.inbound.as_fd(), listeners.hbone.as_fd()];
        seqpacket::send(peer, &Message::Pod { spec: spec.clone() }, &fds)?;
    }
    let names = offer.node.iter().map(|(name, _)| name.clone()).collect();
    let fds: Vec<_> = offer.node.iter().map(|(_, listener)| listener.as_fd()).collect();
    seqpacket::send(peer, &Message::Node { names, netns: own_netns()? }, &fds)?;
    let (answer, _): (Message, _) = seqpacket::receive(peer)?;
    let Message::TookOver = answer else { bail!("expected took_over, got {answer:?}") };
    keel.handed_over();
    let mut moved = 0;
    for relay in runtime.block_on(keel.surrender_relays()) {
        // One that is not sent is dropped unmarked: it goes on here, and so do the ones after it.
        if let Err(e) = send_relay(peer, &relay) {
            warn!(error = %format!("{e:#}"), "the successor took no more relays: the rest stay with this keel");
            break;
        }
        relay.taken();
        moved += 1;
    }
    info!(pods = offer.pods.len(), relays = moved, "handed over to the new keel: draining");
    // After the daemon was told: the successor waits for this before it answers on the API.
    let _ = seqpacket::send(peer, &Message::Bye, &[]);
    Ok(true)
}

fn send_relay(peer: &OwnedFd, relay: &relays::Surrendered) -> anyhow::Result<()> {
    let message = Message::Relay { relay: relay.relay.clone(), up_unwritten: relay.up_unwritten.len(), down_unwritten: relay.down_unwritten.len() };
    let unwritten = relays::unwritten_memfd(&relay.up_unwritten, &relay.down_unwritten)?;
    let mut fds = vec![relay.client.as_fd(), relay.server.as_fd()];
    fds.extend(unwritten.as_ref().map(AsFd::as_fd));
    seqpacket::send(peer, &message, &fds)
}

/// What the new keel received.
pub struct Received {
    pub pods: Vec<(PodSpec, PodListeners)>,
    /// keel's own listeners by name.
    pub node: Vec<(String, std::net::TcpListener)>,
    connection: OwnedFd,
}

impl Received {
    /// Takes the named listener of keel's own, if the old keel had one.
    pub fn node_listener(&mut self, name: &str) -> Option<std::net::TcpListener> {
        let at = self.node.iter().position(|(n, _)| n == name)?;
        Some(self.node.swap_remove(at).1)
    }

    /// Tells the old keel this one serves everything now, and waits until it has stopped accepting; the relays
    /// it paused for this keel to resume.
    pub fn took_over(self) -> anyhow::Result<Vec<relays::Surrendered>> {
        seqpacket::send(&self.connection, &Message::TookOver, &[])?;
        let mut moved = Vec::new();
        loop {
            let (message, fds): (Message, Vec<OwnedFd>) = seqpacket::receive(&self.connection)?;
            match message {
                Message::Bye => return Ok(moved),
                Message::Relay { relay, up_unwritten, down_unwritten } => {
                    moved.push(relays::Surrendered::received(relay, fds, up_unwritten, down_unwritten)?);
                }
                other => bail!("expected a relay or bye, got {other:?}"),
            }
        }
    }
}

/// A connection to the running keel, before the exchange.
pub struct Pending {
    connection: OwnedFd,
}

/// The new keel's first step: connects to the running keel; `None` when no keel runs here. The connection may
/// wait (up to [`HELLO_TIMEOUT`]) while this keel gets ready to serve, before [`Pending::exchange`].
pub fn connect(state_dir: &Path) -> anyhow::Result<Option<Pending>> {
    let path = socket_path(state_dir);
    let connection = seqpacket::connect(&path, EXCHANGE_TIMEOUT)?;
    if connection.is_none() {
        info!(socket = %path.display(), "no running keel to take over from: starting afresh");
    }
    Ok(connection.map(|connection| Pending { connection }))
}

impl Pending {
    /// The running keel's pods and listeners, or `None` when it speaks another version (it was asked to stop as
    /// for a restart, and has closed its listeners when this returns).
    pub fn exchange(self, version: u32) -> anyhow::Result<Option<Received>> {
        let connection = self.connection;
        seqpacket::send(&connection, &Message::Hello { version }, &[])?;
        let (answer, _): (Message, _) = seqpacket::receive(&connection)?;
        let pods = match answer {
            Message::Offer { pods } => pods,
            Message::Refused { reason } => {
                warn!(%reason, "the running keel cannot hand over: asking it to stop as for a restart (pods refused until restored)");
                seqpacket::send(&connection, &Message::Stop, &[])?;
                wait_until_gone(&connection);
                return Ok(None);
            }
            other => bail!("expected an offer, got {other:?}"),
        };
        receive_offer(connection, pods).map(Some)
    }
}

fn receive_offer(connection: OwnedFd, pods: usize) -> anyhow::Result<Received> {
    let mut received = Received { pods: Vec::with_capacity(pods), node: Vec::new(), connection };
    for i in 0..pods {
        let (message, fds): (Message, Vec<OwnedFd>) = seqpacket::receive(&received.connection)?;
        let Message::Pod { spec } = message else { bail!("pod {i} of {pods}: got {message:?}") };
        let [outbound, inbound, hbone]: [OwnedFd; 3] =
            fds.try_into().map_err(|fds: Vec<OwnedFd>| anyhow::anyhow!("pod {}: {} listeners, want 3", spec.pod_name(), fds.len()))?;
        let listeners = PodListeners { outbound: outbound.into(), inbound: inbound.into(), hbone: hbone.into() };
        received.pods.push((spec, listeners));
    }
    let (message, fds): (Message, Vec<OwnedFd>) = seqpacket::receive(&received.connection)?;
    let Message::Node { names, netns } = message else { bail!("expected keel's own listeners, got {message:?}") };
    if names.len() != fds.len() {
        bail!("{} listener names for {} descriptors", names.len(), fds.len());
    }
    if netns == own_netns()? {
        received.node = names.into_iter().zip(fds.into_iter().map(std::net::TcpListener::from)).collect();
    } else {
        info!("the running keel's admin and probe ports are in another network namespace: binding this keel's own");
    }
    Ok(received)
}

/// The inode of this process's network namespace.
fn own_netns() -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino())
}

/// Waits (bounded by the exchange timeout) for the old keel to close the connection: it does so as it exits.
fn wait_until_gone(connection: &OwnedFd) {
    let _ = seqpacket::receive::<Message>(connection);
}

/// The handover socket this keel serves its successor on.
pub struct Listening {
    pub socket: OwnedFd,
    path: PathBuf,
    /// The socket file's inode: a successor's socket at the same path is not this keel's to remove.
    inode: u64,
}

impl Listening {
    /// Removes the socket file, if it is still this keel's (a successor has bound its own there after a handover).
    pub fn remove_if_ours(&self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the handover socket this keel will serve its successor on.
pub fn listen(state_dir: &Path) -> anyhow::Result<Listening> {
    use std::os::unix::fs::MetadataExt as _;
    let path = socket_path(state_dir);
    let socket = seqpacket::listen(&path).context("the handover socket")?;
    let inode = std::fs::metadata(&path)?.ino();
    Ok(Listening { socket, path, inode })
}

#[cfg(test)]
mod tests;
