//! An HBONE CONNECT request as a peer sends it: the header block (`name\0value` lines, pseudo-headers
//! included, in order) HPACK-encoded as literals into an HTTP/2 HEADERS frame, read by the h2 server keel's HBONE
//! server uses, then checked by `parse_target` and `forwarded_for` as the server does.
#![no_main]
use std::sync::LazyLock;

use keel::hbone::headers::{forwarded_for, parse_target};
use keel_fuzz::header_lines;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt as _;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime"));

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// The client side of the connection: preface, empty SETTINGS, one HEADERS frame on stream 1.
fn client_bytes(block: &[u8]) -> Vec<u8> {
    let mut fields = Vec::new();
    for (name, value) in header_lines(block) {
        fields.push(0x00); // literal header field without indexing, new name
        hpack_int(&mut fields, 0, 7, name.len());
        fields.extend_from_slice(name);
        hpack_int(&mut fields, 0, 7, value.len());
        fields.extend_from_slice(value);
    }
    fields.truncate(16_384); // the default maximum frame size
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let length = fields.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x1, 0x4, 0, 0, 0, 1]); // HEADERS, END_HEADERS, stream 1
    out.extend_from_slice(&fields);
    out
}

fuzz_target!(|data: &[u8]| {
    for (name, value) in header_lines(data) {
        if name.eq_ignore_ascii_case(b"forwarded") {
            if let Ok(value) = std::str::from_utf8(value) {
                let _ = forwarded_for(value);
            }
        }
    }
    let bytes = client_bytes(data);
    RUNTIME.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // Then end the client's side: the server reads the frames, then EOF, so it never waits for more.
        if client.write_all(&bytes).await.is_err() || client.shutdown().await.is_err() {
            return;
        }
        let Ok(mut connection) = h2::server::handshake(server).await else { return };
        if let Some(Ok((request, _respond))) = connection.accept().await {
            let _ = parse_target(&request);
            if let Some(value) = request.headers().get("forwarded").and_then(|v| v.to_str().ok()) {
                let _ = forwarded_for(value);
            }
        }
    });
});
