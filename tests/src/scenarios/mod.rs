//! End-to-end scenarios, each written once and run for both capture backends by the thin `#[test]` wrappers in
//! `tests/tests/*.rs`.
//!
//! A scenario panics on failure *while its lab is still alive*, so the lab's Drop sees a failing test: it prints
//! keel's log tail and keeps the lab's logs (see [`with_lab`]).

pub mod capture;
pub mod cni;
pub mod control_plane;
pub mod egress;
pub mod fairness;
pub mod fast_path;
pub mod gateway;
pub mod gateway_tls;
pub mod hbone_wire;
pub mod hostile;
pub mod kubernetes_gateway;
pub mod kubernetes_mesh;
pub mod l7_authorization;
pub mod lifecycle;
pub mod mesh_mtls;
pub mod node_agent;
pub mod observability;
pub mod robustness;
pub mod same_node_bypass;
pub mod selftest;
pub mod trace_export;
pub mod traffic_management;
pub mod upgrade;

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
        bail!("{} -> {to}: {bytes}-byte {} transfer failed: {v}", from.name, mode.as_arg());
    }
    Ok(Sent { bytes, local: v["local"].as_str().unwrap_or_default().to_string(), json: v })
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
    let c =
        keel.wait_connection(RECORD_TIMEOUT, |c| e.identifies(c)).with_context(|| format!("keel did not record the expected connection {e:?}"))?;
    if c.bytes_sent != e.bytes_sent || e.bytes_received.is_some_and(|b| b != c.bytes_received) {
        bail!("keel recorded wrong byte counts: {c:?}, expected {e:?}");
    }
    if let Some(err) = &c.error {
        bail!("keel recorded an error for a successful connection: {c:?} ({err})");
    }
    Ok(c)
}

/// After [`SETTLE`], fails if keel lists any connection matching `pred` (`what` describes it).
pub fn expect_not_captured(keel: &Keel, what: &str, pred: impl Fn(&Connection) -> bool) -> Result<()> {
    std::thread::sleep(SETTLE);
    if let Some(c) = keel.connections()?.iter().find(|c| pred(c)) {
        bail!("keel captured {what}, which it must not: {c:?}");
    }
    Ok(())
}

/// `after - before` of a stats counter (an error if either snapshot lacks it, see [`crate::lab::counter`]).
pub fn delta(before: &Value, after: &Value, pointer: &str) -> Result<u64> {
    Ok(crate::lab::counter(after, pointer)?.saturating_sub(crate::lab::counter(before, pointer)?))
}

/// Fails unless a stats counter grew by at least `min`.
pub fn expect_delta_at_least(before: &Value, after: &Value, pointer: &str, min: u64) -> Result<()> {
    let d = delta(before, after, pointer)?;
    if d < min {
        bail!("stats {pointer} grew by {d}, expected ≥ {min}; before: {before}; after: {after}");
    }
    Ok(())
}

/// Fails if a stats counter changed.
pub fn expect_unchanged(before: &Value, after: &Value, pointer: &str) -> Result<()> {
    let (b, a) = (crate::lab::counter(before, pointer)?, crate::lab::counter(after, pointer)?);
    if a != b {
        bail!("stats {pointer} changed from {b} to {a}; it must not");
    }
    Ok(())
}

/// How a transfer that had to fail ended at the client, read from podapp's error (the text of Rust's
/// `io::Error`, or podapp's own "mismatch" when the peer ended cleanly but short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// The connect itself was answered with a reset (ECONNREFUSED): nothing accepted it.
    Refused,
    /// Accepted, then reset: ECONNRESET on a read or write, EPIPE on a write, ENOTCONN on the half-close.
    Reset,
    /// Nothing came back within the timeout (connect, read or write).
    TimedOut,
    /// The peer closed cleanly before the bytes came back in full.
    CutShort,
}

impl Broke {
    /// Classifies a failed `podapp send` report; an error it does not recognise is an error (never a guess).
    pub fn of(report: &Value) -> Result<Broke> {
        let error = report["error"].as_str().with_context(|| format!("a failed transfer without an error: {report}"))?;
        let lower = error.to_lowercase();
        let has = |signs: &[&str]| signs.iter().any(|s| lower.contains(s));
        Ok(if has(&["connection refused", "os error 111"]) {
            Broke::Refused
        } else if has(&["connection reset", "os error 104", "broken pipe", "os error 32", "not connected", "os error 107"]) {
            Broke::Reset
        } else if has(&["timed out", "os error 110", "resource temporarily unavailable", "os error 11)", "would block"]) {
            Broke::TimedOut
        } else if lower.starts_with("mismatch:") || lower.starts_with("sink reply") {
            Broke::CutShort
        } else {
            bail!("cannot tell how this transfer broke: {report}");
        })
    }
}

/// The port a `podapp send` connected from (known even when its connect() failed, as it binds first).
pub fn local_port(report: &Value) -> Option<u16> {
    report["local_port"].as_u64().and_then(|p| u16::try_from(p).ok())
}

/// `podapp send` of 4 KiB from `from` to `to` that must fail, and fail as `broke` (a refused transfer that merely
/// timed out, or a reset that was really a refused connect, is a different failure). Its report.
pub fn send_fails(from: &Pod, to: SocketAddr, broke: Broke, what: &str) -> Result<Value> {
    let v = from.send(to, 4 * KIB, ServeMode::Echo, Duration::from_secs(5))?;
    if v["ok"] != Value::Bool(false) {
        bail!("{what}: the transfer to {to} succeeded, it must not: {v}");
    }
    let seen = Broke::of(&v).with_context(|| what.to_string())?;
    if seen != broke {
        bail!("{what}: the transfer to {to} failed as {seen:?}, expected {broke:?}: {v}");
    }
    Ok(v)
}

/// keel's account of connections from a moment on: its stats and the last connection it had listed then, so a
/// check made afterwards sees only what happened since (a refusal counted, a connection recorded).
pub struct Since<'k> {
    keel: &'k Keel,
    stats: Value,
    last: Option<Connection>,
}

impl<'k> Since<'k> {
    pub fn now(keel: &'k Keel) -> Result<Since<'k>> {
        Ok(Since { keel, stats: keel.stats()?, last: keel.connections()?.pop() })
    }

    /// The connections keel listed after the snapshot (its list is oldest first; should the snapshot's last entry
    /// have aged out of keel's 1,024, every entry is new).
    pub fn new_connections(&self) -> Result<Vec<Connection>> {
        let mut all = self.keel.connections()?;
        if let Some(last) = &self.last {
            if let Some(at) = all.iter().rposition(|c| c == last) {
                all.drain(..=at);
            }
        }
        Ok(all)
    }

    /// Waits for a connection listed since the snapshot that satisfies `pred` (`what` describes it).
    pub fn wait_connection(&self, what: &str, pred: impl Fn(&Connection) -> bool) -> Result<Connection> {
        let deadline = std::time::Instant::now() + RECORD_TIMEOUT;
        loop {
            let new = self.new_connections()?;
            if let Some(c) = new.iter().find(|c| pred(c)) {
                return Ok(c.clone());
            }
            if std::time::Instant::now() > deadline {
                let listed: Vec<String> = new.iter().map(|c| format!("{c:?}")).collect();
                bail!("keel recorded no {what} within {RECORD_TIMEOUT:?}; it recorded since:\n{}", listed.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails unless keel counted exactly `n` more refusals for `reason` and none for any other reason.
    pub fn expect_refused(&self, reason: &str, n: u64) -> Result<()> {
        let after = self.keel.stats()?;
        for other in crate::lab::api::REFUSAL_REASONS {
            let d = crate::lab::refused(&after, other)?.saturating_sub(crate::lab::refused(&self.stats, other)?);
            let want = if other == reason { n } else { 0 };
            if d != want {
                bail!(
                    "keel counted {d} more refusals for {other:?}, expected {want} ({n} for {reason:?} only); refused before: {}, after: {}",
                    self.stats["refused"],
                    after["refused"]
                );
            }
        }
        Ok(())
    }
}

/// Starts a 64 MiB transfer from `client` to a slow sink at `to`, in the background.
pub fn long_transfer(client: &Pod, to: SocketAddr) -> Result<crate::lab::process::ChildGuard> {
    client.spawn(&[
        client.podapp_path().display().to_string(),
        "send".into(),
        "--to".into(),
        to.to_string(),
        "--bytes".into(),
        (64 * MIB).to_string(),
        "--mode".into(),
        "sink".into(),
    ])
}

/// Why keel must have refused a transfer: the refusal it counts, and what its record of the connection says.
pub struct Refusal<'a> {
    /// The `"refused"` reason that keel must count once for it.
    pub counted: &'a str,
    /// Describes the record, for the error message.
    pub record: &'a str,
    /// Recognises keel's record of it (among the connections keel listed since just before the transfer).
    pub recorded: &'a dyn Fn(&Connection) -> bool,
}

/// A transfer from `from` to `to` that must fail as `broke` AND that `keel` must have refused for the stated
/// reason: it counted the refusal under `why.counted` (and nothing else) and listed a connection `why.recorded`
/// recognises, with an error. Returns the client's report and keel's record.
pub fn send_refused(from: &Pod, to: SocketAddr, broke: Broke, keel: &Keel, why: &Refusal<'_>, what: &str) -> Result<(Value, Connection)> {
    let since = Since::now(keel)?;
    let report = send_fails(from, to, broke, what)?;
    let record = since.wait_connection(why.record, |c| c.error.is_some() && (why.recorded)(c)).with_context(|| what.to_string())?;
    since.expect_refused(why.counted, 1).with_context(|| format!("{what}: {record:?}"))?;
    Ok((report, record))
}

#[cfg(test)]
mod tests {
    use super::Broke;
    use serde_json::json;

    #[test]
    fn failed_transfers_are_told_apart() {
        let of = |error: &str| Broke::of(&json!({"ok": false, "error": error}));
        assert_eq!(of("connect 10.244.0.12:7777: Connection refused (os error 111)").unwrap(), Broke::Refused);
        assert_eq!(of("connect 10.244.1.11:8080: Connection reset by peer (os error 104)").unwrap(), Broke::Reset);
        assert_eq!(of("write after 0 bytes: Broken pipe (os error 32)").unwrap(), Broke::Reset);
        assert_eq!(of("shutdown(write): Transport endpoint is not connected (os error 107)").unwrap(), Broke::Reset);
        assert_eq!(of("read: Resource temporarily unavailable (os error 11)").unwrap(), Broke::TimedOut);
        assert_eq!(of("connect 10.244.0.12:8080: connection timed out").unwrap(), Broke::TimedOut);
        assert_eq!(of("mismatch: sent 4096 bytes, peer saw/returned 0 (sha256 e3b0)").unwrap(), Broke::CutShort);
        assert!(of("something new").is_err(), "an unknown failure is not guessed");
        assert!(Broke::of(&json!({"ok": false})).is_err(), "a failure without an error");
    }
}
