//! The monitoring port (`--readiness-addr`, istiod's 15014): the kubelet's readiness probe, `GET /ready`, answers
//! 200 once keel-control serves a complete config (under `--kubernetes`: every kind listed once), 503 before, so
//! the Service sends node proxies only to a keel-control that has something true to tell them; `GET /metrics` is
//! for Prometheus. Plain HTTP/1.1, one request per connection; nothing else is served.
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

use crate::metrics::ControlMetrics;

/// A probe connection is closed after this, answered or not (a probe is one request).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes answered at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(addr: SocketAddr, ready: watch::Receiver<bool>, metrics: ControlMetrics) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the monitoring endpoint on {addr}"))?;
    info!(%addr, "monitoring endpoint listening (/ready, /metrics)");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.context("readiness slots closed")?;
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "readiness endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| std::future::ready(Ok::<_, Infallible>(answer(&request, *ready.borrow(), &metrics))));
            let connection = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

/// The content type of what [`ControlMetrics::encode`] writes.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer<B>(request: &Request<B>, ready: bool, metrics: &ControlMetrics) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ready") if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the config is not complete yet\n"),
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert("content-type", OPENMETRICS_TEXT.parse().expect("static header"));
            return response;
        }
        _ => (StatusCode::NOT_FOUND, "only GET /ready and GET /metrics are served here\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_synced_metrics_always_and_nothing_else() {
        let metrics = ControlMetrics::new();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(answer(&get("/ready"), true, &metrics).status(), StatusCode::OK);
        assert_eq!(answer(&get("/ready"), false, &metrics).status(), StatusCode::SERVICE_UNAVAILABLE);
        let scraped = answer(&get("/metrics"), false, &metrics);
        assert_eq!(scraped.status(), StatusCode::OK);
        assert_eq!(scraped.headers()["content-type"], OPENMETRICS_TEXT);
        assert_eq!(answer(&get("/"), true, &metrics).status(), StatusCode::NOT_FOUND);
        assert_eq!(answer(&Request::post("/ready").body(()).unwrap(), true, &metrics).status(), StatusCode::NOT_FOUND);
    }
}
