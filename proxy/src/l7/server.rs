//! HTTP termination of a captured connection whose destination port carries HTTP: hyper serves HTTP/1.1
//! (keep-alive; pipelined requests are answered in order) and HTTP/2 (h2c by its preface) on the one socket,
//! and hands each request to [`super::request::handle`].
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpStream, sync::watch};

use super::request::{handle, Downstream};
use crate::connection_error::ConnectionError;

/// Concurrent streams one HTTP/2 client may open.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Request head limit (HTTP/1.1 buffer and HTTP/2 header list), Envoy's default of 60 KiB.
const MAX_HEADERS_BYTES: usize = 60 * 1024;

/// Serves the connection until the client closes it, or until `draining` flips: then requests in flight finish
/// and the connection closes gracefully (HTTP/2 GOAWAY; HTTP/1.1 `Connection: close` after the current
/// response). Errors are the connection's end (a downstream protocol error), returned for the record.
pub async fn serve_connection(client: TcpStream, downstream: Arc<Downstream>, mut draining: watch::Receiver<bool>) -> Result<(), ConnectionError> {
    // A client that sends no complete request head within this time is disconnected (`keel run
    // --http-header-read-timeout-ms`).
    let header_read_timeout = downstream.dp.limits.http_header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(MAX_HEADERS_BYTES.max(8192)).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(60));
    let idle_timeout = downstream.dp.limits.http_idle_timeout;
    let last_request = Arc::new(Mutex::new(Instant::now()));
    let service = {
        let last_request = last_request.clone();
        service_fn(move |request| {
            *last_request.lock().expect("request clock poisoned") = Instant::now();
            handle(request, downstream.clone())
        })
    };
    let connection = builder.serve_connection(TokioIo::new(client), service);
    tokio::pin!(connection);
    // The watch's guard is dropped inside this future, so nothing un-Send lives across the awaits below.
    let drain = async move { draining.wait_for(|stop| *stop).await.is_ok() };
    // No request started for `idle_timeout`: closed as on drain (a response still streaming finishes; only new
    // requests are refused), so an idle client cannot hold a connection, and with it keel's file descriptor.
    let idle = async move {
        loop {
            let since = *last_request.lock().expect("request clock poisoned");
            if since.elapsed() >= idle_timeout {
                return;
            }
            tokio::time::sleep_until((since + idle_timeout).into()).await;
        }
    };
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = drain => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = idle => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    served.map_err(|e| ConnectionError::Downstream(e.to_string()))
}
