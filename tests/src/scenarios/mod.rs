//! End-to-end scenarios, each written once and run for both capture backends by the thin `#[test]` wrappers in
//! `tests/tests/*.rs`.
//!
//! A scenario panics on failure *while its lab is still alive*, so the lab's Drop sees a failing test: it prints
//! keel's log tail and keeps the lab's logs (see [`with_lab`]).

pub mod capture;
pub mod control_plane;
pub mod fast_path;
pub mod hbone_wire;
pub mod hostile;
pub mod mesh_mtls;
pub mod lifecycle;
pub mod robustness;
pub mod selftest;
pub mod traffic_management;

use crate::lab::{Connection, Keel, Lab, Pod, ServeMode};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// podapp's idle timeout for transfers (per read/write, and for connect).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long keel may take to list a connection after the client saw it close.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we wait before concluding that keel did NOT record something.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Builds a lab named `name`, runs `body`, and panics with the full error chain if it fails — before the lab (and
/// any keel or server the body owns) is dropped, so cleanup knows the test failed.
pub fn with_lab(name: &str, body: impl FnOnce(&Lab) -> Result<()>) {
    let _shared = SCHEDULE.read().unwrap_or_else(|e| e.into_inner());
    run_lab(name, body);
}

/// Like [`with_lab`], but no other lab of this test binary runs meanwhile: for scenarios that assert latencies
/// (a 1 s bound on 2 shared cores must not trip because a neighbour test is pushing 50 MiB).
pub fn with_lab_alone(name: &str, body: impl FnOnce(&Lab) -> Result<()>) {
    let _alone = SCHEDULE.write().unwrap_or_else(|e| e.into_inner());
    run_lab(name, body);
}

/// Like [`with_lab`] for a lab of `nodes` nodes (see [`Lab::with_nodes`]).
pub fn with_nodes(name: &str, nodes: usize, body: impl FnOnce(&Lab) -> Result<()>) {
    let _shared = SCHEDULE.read().unwrap_or_else(|e| e.into_inner());
    let lab = match Lab::with_nodes(name, nodes) {
        Ok(lab) => lab,
        Err(e) => panic!("{name}: lab setup failed: {e:#}"),
    };
    if let Err(e) = body(&lab) {
        panic!("{name} failed: {e:#}");
    }
}

/// Polls keel's `/healthz/ready` (which waits for its workload source) for up to 10 s.
pub fn wait_ready(keel: &Keel) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = keel.admin_get("/healthz/ready")?;
        if status == 200 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("keel not ready within 10 s: {status} {body}; log tail:\n{}", keel.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tests of one binary run on parallel threads: ordinary labs share this lock, timing-sensitive ones take it alone.
static SCHEDULE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run_lab(name: &str, body: impl FnOnce(&Lab) -> Result<()>) {
    let lab = match Lab::new(name) {
        Ok(lab) => lab,
        Err(e) => panic!("{name}: lab setup failed: {e:#}"),
    };
    if let Err(e) = body(&lab) {
        panic!("{name} failed: {e:#}");
    }
}

/// What `podapp send` reported for a successful transfer.
#[derive(Debug, Clone)]
pub struct Sent {
    pub bytes: u64,
    /// The client socket's local address (its port is the connection's source port).
    pub local: String,
    pub json: Value,
}

impl Sent {
    pub fn local_port(&self) -> Option<u16> {
        crate::lab::port_of(&self.local)
    }
}

/// `podapp send` from `from` to `to` that must succeed with equal checksums.
pub fn send_ok(from: &Pod, to: SocketAddr, bytes: u64, mode: ServeMode) -> Result<Sent> {
    let v = from.send(to, bytes, mode, IO_TIMEOUT)?;
    if v["ok"] != Value::Bool(true) {
        bail!(
            "{} -> {to}: {bytes}-byte {} transfer failed: {v}",
            from.name,
            mode.as_arg()
        );
    }
    Ok(Sent {
        bytes,
        local: v["local"].as_str().unwrap_or_default().to_string(),
        json: v,
    })
}

/// What a keel connection entry must look like.
#[derive(Clone)]
pub struct Expect<'a> {
    pub direction: &'a str,
    pub pod: &'a Pod,
    pub original_destination: SocketAddr,
    /// The client's source port, when the entry must be tied to one exact connection.
    pub source_port: Option<u16>,
    pub bytes_sent: u64,
    /// `None`: any (e.g. a sink's short JSON reply).
    pub bytes_received: Option<u64>,
}

impl std::fmt::Debug for Expect<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from pod {} to {} (source port {:?}), bytes sent {} / received {:?}",
            self.direction,
            self.pod.qualified(),
            self.original_destination,
            self.source_port,
            self.bytes_sent,
            self.bytes_received
        )
    }
}

impl Expect<'_> {
    fn identifies(&self, c: &Connection) -> bool {
        c.direction == self.direction
            && c.pod == self.pod.qualified()
            && c.original_destination == self.original_destination.to_string()
            && self.source_port.is_none_or(|p| c.source_port() == Some(p))
            // Without a source port, the byte count tells apart connections to the same destination.
            && (self.source_port.is_some() || c.bytes_sent == self.bytes_sent)
    }
}

/// Waits for keel to list the connection `e` describes and checks its byte counts and error.
pub fn expect_captured(keel: &Keel, e: &Expect<'_>) -> Result<Connection> {
    let c = keel
        .wait_connection(RECORD_TIMEOUT, |c| e.identifies(c))
        .with_context(|| format!("keel did not record the expected connection {e:?}"))?;
    if c.bytes_sent != e.bytes_sent || e.bytes_received.is_some_and(|b| b != c.bytes_received) {
        bail!("keel recorded wrong byte counts: {c:?}, expected {e:?}");
    }
    if let Some(err) = &c.error {
        bail!("keel recorded an error for a successful connection: {c:?} ({err})");
    }
    Ok(c)
}

/// After [`SETTLE`], fails if keel lists any connection matching `pred` (`what` describes it).
pub fn expect_not_captured(
    keel: &Keel,
    what: &str,
    pred: impl Fn(&Connection) -> bool,
) -> Result<()> {
    std::thread::sleep(SETTLE);
    if let Some(c) = keel.connections()?.iter().find(|c| pred(c)) {
        bail!("keel captured {what}, which it must not: {c:?}");
    }
    Ok(())
}

/// `after - before` of a stats counter.
pub fn delta(before: &Value, after: &Value, pointer: &str) -> u64 {
    crate::lab::counter(after, pointer).saturating_sub(crate::lab::counter(before, pointer))
}

/// Fails unless a stats counter grew by at least `min`.
pub fn expect_delta_at_least(before: &Value, after: &Value, pointer: &str, min: u64) -> Result<()> {
    let d = delta(before, after, pointer);
    if d < min {
        bail!("stats {pointer} grew by {d}, expected ≥ {min}; before: {before}; after: {after}");
    }
    Ok(())
}

/// Fails if a stats counter changed.
pub fn expect_unchanged(before: &Value, after: &Value, pointer: &str) -> Result<()> {
    let (b, a) = (
        crate::lab::counter(before, pointer),
        crate::lab::counter(after, pointer),
    );
    if a != b {
        bail!("stats {pointer} changed from {b} to {a}; it must not");
    }
    Ok(())
}
