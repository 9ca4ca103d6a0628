//! `podapp connect-loop`: many short sequential connections, to catch per-connection stalls (e.g. the 1 s SYN
//! retransmit that TIME_WAIT collisions cause under transparent interception).

use crate::emit;
use keel_tests::payload::percentile;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn run(to: SocketAddr, count: u32, bytes: usize, timeout_ms: u64) -> bool {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let msg: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(count as usize);
    let mut failed = 0u32;
    let mut errors: Vec<String> = Vec::new();
    for i in 0..count {
        let t = Instant::now();
        match one(to, &msg, timeout) {
            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(format!("#{i} after {:.1} ms: {e}", t.elapsed().as_secs_f64() * 1000.0));
                }
            }
        }
    }
    let max = lat.iter().cloned().fold(0.0, f64::max);
    emit(&json!({
        "ok": lat.len(),
        "failed": failed,
        "max_ms": max,
        "p99_ms": percentile(&lat, 99.0),
        "p50_ms": percentile(&lat, 50.0),
        "total_ms": start.elapsed().as_secs_f64() * 1000.0,
        "errors": errors,
    }));
    failed == 0
}

/// A fresh socket (kernel-chosen ephemeral port), send, half-close, read the echo back to EOF.
fn one(to: SocketAddr, msg: &[u8], timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::with_capacity(msg.len());
    s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != msg {
        return Err(format!("echo mismatch: sent {} bytes, got {}", msg.len(), back.len()));
    }
    Ok(())
}
