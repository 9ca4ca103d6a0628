//! HTTP termination of a captured connection whose destination port carries HTTP: hyper serves HTTP/1.1
//! (keep-alive; pipelined requests are answered in order) and HTTP/2 (h2c by its preface) on the one socket,
//! and hands each request to [`super::request::handle`].
use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::request::{handle, Downstream};
use crate::connection_error::ConnectionError;

/// Concurrent streams one HTTP/2 client may open.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Request head limit (HTTP/1.1 buffer and HTTP/2 header list), Envoy's default of 60 KiB.
const MAX_HEADERS_BYTES: usize = 60 * 1024;

/// Serves the connection until the client closes it, or until `draining` flips: then requests in flight finish
/// and the connection closes gracefully (HTTP/2 GOAWAY; HTTP/1.1 `Connection: close` after the current
/// response). Errors are the connection's end (a downstream protocol error), returned for the record.
pub async fn serve_connection<IO>(client: IO, downstream: Arc<Downstream>, draining: watch::Receiver<bool>) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &downstream.dp.limits;
    let timeouts = (limits.http_header_read_timeout, limits.http_idle_timeout);
    serve_http(client, timeouts, draining, move |request| handle(request, downstream.clone())).await
}

/// Serves HTTP/1.1 and h2c on `io` with `handle` per request, bounded as [`serve_connection`] says: a client
/// that sends no complete request head within the header-read timeout (`keel run --http-header-read-timeout-ms`)
/// is disconnected, and a connection with no request started for the idle timeout is closed. Upgrades
/// (`101 Switching Protocols`) are handed to whoever asked for them with `hyper::upgrade::on`.
pub async fn serve_http<IO, H, F, B>(
    io: IO,
    (header_read_timeout, idle_timeout): (Duration, Duration),
    mut draining: watch::Receiver<bool>,
    handle: H,
) -> Result<(), ConnectionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(MAX_HEADERS_BYTES.max(8192)).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(60));
    let last_request = Arc::new(Mutex::new(Instant::now()));
    let service = {
        let last_request = last_request.clone();
        service_fn(move |request| {
            *last_request.lock().expect("request clock poisoned") = Instant::now();
            handle(request)
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
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
    match served {
        // The client was already gone when keel closed its side (a reset HBONE stream, a closed socket): the
        // connection ended, nothing failed.
        Err(e) if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_shutdown) => Ok(()),
        served => served.map_err(|e| ConnectionError::Downstream(e.to_string())),
    }
}
