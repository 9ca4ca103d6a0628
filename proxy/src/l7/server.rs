//! HTTP termination of a captured connection whose destination port carries HTTP: hyper serves HTTP/1.1
//! (keep-alive; pipelined requests are answered in order) and HTTP/2 (h2c by its preface) on the one socket,
//! and hands each request to [`super::request::handle`].
use std::{sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpStream;

use super::request::{handle, Downstream};

/// A client that sends no complete request head within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams one HTTP/2 client may open.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Request head limit (HTTP/1.1 buffer and HTTP/2 header list), Envoy's default of 60 KiB.
const MAX_HEADERS_BYTES: usize = 60 * 1024;

/// Serves the connection until the client closes it; errors are the connection's end, returned for the log.
pub async fn serve_connection(client: TcpStream, downstream: Arc<Downstream>) -> Result<(), String> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS_BYTES.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(60));
    let service = service_fn(move |request| handle(request, downstream.clone()));
    builder.serve_connection(TokioIo::new(client), service).await.map_err(|e| e.to_string())
}
