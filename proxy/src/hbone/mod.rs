//! HBONE: TCP connections carried as HTTP/2 CONNECT streams inside mutual TLS to port 15008 of the destination
//! workload, wire-compatible with Istio's ztunnel (the reference's section 1): `client` opens (pooled) tunnels,
//! `headers` is the request on the wire, `stream_io` turns a stream into byte-stream halves for the relay. The
//! server side executes inbound streams and so lives above, in `hbone_server`; this module imports only
//! `chunk_io`, `identity`, `netns` and `sockets`.
pub mod client;
pub mod headers;
pub mod stream_io;

use std::time::Duration;

/// ztunnel's HTTP/2 settings: per-stream and per-connection windows, frame and header-list limits.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// How much TLS data rustls may hold for sending (its default is 64 KiB). One DATA frame of the relay (≤ 256 KiB)
/// is then encrypted in one pass and written with one `writev` of whole records, instead of four rounds of a
/// quarter frame each; per pooled connection, so the memory stays small.
pub const TLS_SEND_BUFFER: usize = 512 * 1024;
pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;
/// What the server advertises, and the most streams the client puts on one connection.
pub const SERVER_MAX_STREAMS: u32 = 200;
pub const CLIENT_MAX_STREAMS: usize = 100;
/// A PING every 10 s; no answer within 20 s and the connection is dropped.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The client's bounds on a peer that accepts TCP and then stalls: the mTLS handshake, the HTTP/2 handshake and
/// the answer to a CONNECT each get this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed dial, callers that queued behind it for the same pool key fail at once for this long instead
/// of each dialling the same unresponsive peer in turn.
pub const FAILED_DIAL_MEMORY: Duration = Duration::from_secs(1);
/// Pooled connections with no stream for this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Keeps an HTTP/2 connection honest: PINGs it every [`PING_INTERVAL`] and returns when a PONG does not come
/// within [`PING_TIMEOUT`] (or the connection is gone), so the caller can drop it.
pub async fn keepalive(mut ping_pong: h2::PingPong) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => continue,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
