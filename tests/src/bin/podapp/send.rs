//! `podapp send`: one connection carrying N deterministic bytes, verified end to end.
//!
//! Writing and reading run on two threads: an echo of tens of MiB would deadlock a single thread once both
//! directions' socket buffers fill.

use crate::{addr_string, emit, Mode};
use keel_tests::payload::{payload_sha256, Checksum, Payload};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn run(to: SocketAddr, bytes: u64, mode: Mode, timeout_ms: u64, seed: u64, spread: Duration) -> bool {
    let start = Instant::now();
    let timeout = Duration::from_millis(timeout_ms.max(1));
    // The local port is read after bind, not after connect: a connection reset while (or before) connect()
    // returns has already given its port back, and tests tie keel's records of a refused connection to it.
    let (socket, local_port) = match bound_socket(to) {
        Ok(s) => s,
        Err(e) => {
            emit(&json!({"ok": false, "sent": 0, "received": 0, "error": format!("bind: {e}"), "duration_ms": ms(start)}));
            return false;
        }
    };
    let stream: TcpStream = match socket.connect_timeout(&to.into(), timeout) {
        Ok(()) => socket.into(),
        Err(e) => {
            emit(&json!({"ok": false, "sent": 0, "received": 0, "error": format!("connect {to}: {e}"),
                         "local_port": local_port, "duration_ms": ms(start)}));
            return false;
        }
    };
    let local = addr_string(stream.local_addr());
    let peer = addr_string(stream.peer_addr());
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));

    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            emit(&json!({"ok": false, "error": format!("clone socket: {e}")}));
            return false;
        }
    };
    let write_thread = std::thread::spawn(move || write_payload(writer, bytes, seed, spread));

    let mut reader = stream;
    let mut got = Checksum::new();
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read_err = loop {
        match reader.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                got.update(&buf[..n]);
                if mode == Mode::Sink && reply.len() < 4096 {
                    reply.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    let write_res = write_thread.join().unwrap_or_else(|_| Err("writer thread panicked".into()));

    let sent = write_res.as_ref().map(|(n, _)| *n).unwrap_or(0);
    let sent_sha = match &write_res {
        Ok((_, sha)) => sha.clone(),
        Err(_) => payload_sha256(seed, bytes),
    };
    let mut errors: Vec<String> = Vec::new();
    if let Err(e) = &write_res {
        errors.push(e.clone());
    }
    if let Some(e) = read_err {
        errors.push(e);
    }
    let (received, received_sha, server) = match mode {
        Mode::Echo => (got.bytes(), got.hex(), Value::Null),
        Mode::Sink => parse_sink_reply(&reply, &mut errors),
    };
    let ok = errors.is_empty() && sent == bytes && received == bytes && received_sha == sent_sha;
    if errors.is_empty() && !ok {
        errors.push(format!("mismatch: sent {sent} bytes, peer saw/returned {received} (sha256 {received_sha})"));
    }
    emit(&json!({
        "ok": ok,
        "sent": sent,
        "received": received,
        "sha256": sent_sha,
        "received_sha256": received_sha,
        "duration_ms": ms(start),
        "local": local,
        "local_port": local_port,
        "peer": peer,
        "server": server,
        "error": errors.first(),
    }));
    ok
}

/// A socket for `to`'s family bound to an ephemeral port of the unspecified address, and that port.
fn bound_socket(to: SocketAddr) -> std::io::Result<(socket2::Socket, u16)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    socket.bind(&any.into())?;
    let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
    Ok((socket, port))
}

/// Sends `bytes` of the seeded stream, then half-closes; returns the count and SHA-256 actually written.
/// Writes `bytes` of the seed's payload, spread evenly over `spread` when it is not zero.
fn write_payload(mut w: TcpStream, bytes: u64, seed: u64, spread: Duration) -> Result<(u64, String), String> {
    let mut p = Payload::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; if spread.is_zero() { 64 * 1024 } else { 16 * 1024 }];
    let mut left = bytes;
    let started = Instant::now();
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).map_err(|e| format!("write after {} bytes: {e}", sum.bytes()))?;
        sum.update(&buf[..k]);
        left -= k as u64;
        if !spread.is_zero() {
            let due = spread.mul_f64(sum.bytes() as f64 / bytes as f64);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
    w.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(write): {e}"))?;
    Ok((sum.bytes(), sum.hex()))
}

/// The sink answers `{"bytes": n, "sha256": ..}`: what it counted is what "received" means in sink mode.
fn parse_sink_reply(reply: &[u8], errors: &mut Vec<String>) -> (u64, String, Value) {
    let text = String::from_utf8_lossy(reply);
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) => {
            let n = v["bytes"].as_u64().unwrap_or(0);
            let sha = v["sha256"].as_str().unwrap_or_default().to_string();
            (n, sha, v)
        }
        Err(e) => {
            errors.push(format!("sink reply {text:?}: {e}"));
            (0, String::new(), Value::Null)
        }
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
