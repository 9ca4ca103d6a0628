//! Relays in transit between two keels: the switch that pauses every pausable relay of this keel, and what
//! each paused relay surrenders for the successor (see `crate::l4::moving`, which runs and resumes them).
use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

/// How long a surrender waits for the running relays to pause (each stops at once; this only bounds a bug).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the successor needs to resume a relay, besides its sockets and unwritten bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedRelay {
    /// The pod the relay is for (`namespace/name`): the successor resumes it under that pod's budgets.
    pub pod: String,
    pub inbound: bool,
    pub source: SocketAddr,
    pub original_destination: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub same_node: bool,
    /// The source's identity as the inbound side knew it (same-node peers); the successor authorizes again.
    pub source_identity: Option<String>,
    /// Whether each direction had ended (EOF passed on).
    pub up_ended: bool,
    pub down_ended: bool,
    /// Bytes each direction had moved so far (carried into the successor's record).
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A paused relay, ready to move: its description, copies of its sockets, and each direction's unwritten bytes.
pub struct Surrendered {
    pub relay: MovedRelay,
    pub client: OwnedFd,
    pub server: OwnedFd,
    pub up_unwritten: bytes::Bytes,
    pub down_unwritten: bytes::Bytes,
    /// Told once the successor has the relay; dropped untold, the paused relay goes on in this keel.
    pub handed: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The node-wide switch and collection point for pausable relays.
pub struct RelayMover {
    pause: watch::Sender<bool>,
    state: Mutex<MoverState>,
}

#[derive(Default)]
struct MoverState {
    /// Pausable relays running now.
    running: usize,
    /// The surrender is over: relays that start or pause from now on stay here.
    closed: bool,
    surrendered: Vec<Surrendered>,
}

impl Default for RelayMover {
    fn default() -> Self {
        RelayMover { pause: watch::channel(false).0, state: Mutex::new(MoverState::default()) }
    }
}

impl RelayMover {
    /// A relay about to run: pausable (with the signal) unless the surrender is over.
    pub fn enter(self: &Arc<Self>) -> Option<Entered> {
        let mut state = self.state.lock().expect("relay mover poisoned");
        if state.closed {
            return None;
        }
        state.running += 1;
        Some(Entered { mover: self.clone(), signal: self.pause.subscribe() })
    }

    /// Pauses every pausable relay and takes what they surrendered; from now on relays stay in this keel.
    pub async fn surrender_all(&self) -> Vec<Surrendered> {
        let _ = self.pause.send(true);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let running = self.state.lock().expect("relay mover poisoned").running;
            if running == 0 || Instant::now() >= deadline {
                if running > 0 {
                    warn!(running, "relays still running after the pause: they stay with this keel");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut state = self.state.lock().expect("relay mover poisoned");
        state.closed = true;
        std::mem::take(&mut state.surrendered)
    }
}

/// A pausable relay's place in the count.
pub struct Entered {
    mover: Arc<RelayMover>,
    pub signal: watch::Receiver<bool>,
}

impl Entered {
    /// Hands a paused relay over; `false` if the surrender is already over (the relay then goes on here, and the
    /// copies it offered are dropped).
    pub fn surrender(&self, surrendered: Surrendered) -> bool {
        let mut state = self.mover.state.lock().expect("relay mover poisoned");
        if state.closed {
            return false;
        }
        state.surrendered.push(surrendered);
        true
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.mover.state.lock().expect("relay mover poisoned").running -= 1;
    }
}

/// The unwritten bytes of a relay in a memfd (upstream's, then downstream's), or none when there are none.
pub fn unwritten_memfd(up: &[u8], down: &[u8]) -> anyhow::Result<Option<OwnedFd>> {
    use std::io::Write as _;
    if up.is_empty() && down.is_empty() {
        return Ok(None);
    }
    let fd = rustix::fs::memfd_create("keel-relay-unwritten", rustix::fs::MemfdFlags::CLOEXEC).context("memfd_create")?;
    let mut file = std::fs::File::from(fd);
    file.write_all(up)?;
    file.write_all(down)?;
    Ok(Some(file.into()))
}

impl Surrendered {
    /// A relay as the successor receives it: its two sockets and, with unwritten bytes, the memfd holding them.
    pub fn received(relay: MovedRelay, fds: Vec<OwnedFd>, up_unwritten: usize, down_unwritten: usize) -> anyhow::Result<Surrendered> {
        use std::os::unix::fs::FileExt as _;
        let has_bytes = up_unwritten + down_unwritten > 0;
        let mut fds = fds.into_iter();
        let (Some(client), Some(server)) = (fds.next(), fds.next()) else { bail!("relay of {}: its sockets are missing", relay.pod) };
        let (mut up, mut down) = (vec![0; up_unwritten], vec![0; down_unwritten]);
        match (fds.next(), has_bytes) {
            (Some(memfd), true) => {
                let file = std::fs::File::from(memfd);
                // At offset 0: the sender's writes left the shared file offset at the end.
                file.read_exact_at(&mut up, 0).context("reading a relay's unwritten bytes")?;
                file.read_exact_at(&mut down, up_unwritten as u64).context("reading a relay's unwritten bytes")?;
            }
            (None, false) => {}
            _ => bail!("relay of {}: its unwritten bytes do not match its descriptors", relay.pod),
        }
        if fds.next().is_some() {
            bail!("relay of {}: more descriptors than a relay has", relay.pod);
        }
        Ok(Surrendered { relay, client, server, up_unwritten: up.into(), down_unwritten: down.into(), handed: None })
    }

    /// The successor has it: the paused relay in this keel lets its sockets go.
    pub fn taken(mut self) {
        if let Some(handed) = self.handed.take() {
            let _ = handed.send(());
        }
    }
}
