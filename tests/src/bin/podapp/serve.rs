//! `podapp serve`: an echo or sink server, one thread per connection.

use crate::{addr_string, emit, Mode};
use keel_tests::payload::Checksum;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

pub fn run(port: u16, mode: Mode, read_delay_ms: u64, read_chunk: usize) -> bool {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            emit(&json!({"error": format!("bind 0.0.0.0:{port}: {e}")}));
            return false;
        }
    };
    // The harness waits for this line: after it, connections are accepted (the socket is already listening).
    emit(&json!({ "listening": port }));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let r = match mode {
                        Mode::Echo => echo(stream),
                        Mode::Sink => sink(stream, read_delay_ms, read_chunk),
                    };
                    if let Err(e) = r {
                        eprintln!("podapp serve: connection error: {e}");
                    }
                });
            }
            Err(e) => eprintln!("podapp serve: accept: {e}"),
        }
    }
    true
}

/// Writes back every byte; on the peer's EOF half-closes our side, so the peer reads EOF only after all echoes.
fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)
}

/// Reads to EOF (slowly, when asked), then reports what arrived and who the peer appeared to be.
fn sink(mut s: TcpStream, read_delay_ms: u64, read_chunk: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; read_chunk];
    let mut sum = Checksum::new();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sum.update(&buf[..n]);
        if read_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(read_delay_ms));
        }
    }
    let reply = json!({
        "bytes": sum.bytes(),
        "peer": addr_string(s.peer_addr()),
        "local": addr_string(s.local_addr()),
        "sha256": sum.hex(),
    });
    s.write_all(format!("{reply}\n").as_bytes())?;
    s.shutdown(Shutdown::Write)
}
