//! The admin HTTP server in keel's own network namespace (or `keel gateway`'s pod): readiness for the kubelet,
//! stats, Prometheus metrics and the config dump (`keel pc --admin` reads it).
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::config_dump::ConfigDump;

/// What the admin server shows: the node daemon's state or a gateway's.
pub trait Admin: Send + Sync + 'static {
    fn is_ready(&self) -> bool;
    /// `/stats`, as JSON.
    fn stats_json(&self) -> String;
    fn metrics(&self) -> String;
    fn config_dump(&self) -> impl Future<Output = ConfigDump> + Send;
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| format!("binding the admin server on {addr}"))
}

pub async fn serve<A: Admin>(listener: TcpListener, daemon: Arc<A>) {
    serve_paths(listener, daemon, false).await;
}

/// `--readiness-addr`: only `/healthz/ready`, for the kubelet's probe on the pod's address (the admin server, with
/// stats and config, stays on loopback).
pub async fn serve_readiness<A: Admin>(listener: TcpListener, daemon: Arc<A>) {
    serve_paths(listener, daemon, true).await;
}

async fn serve_paths<A: Admin>(listener: TcpListener, daemon: Arc<A>, readiness_only: bool) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let daemon = daemon.clone();
                async move {
                    Ok::<_, Infallible>(if readiness_only && request.uri().path() != "/healthz/ready" {
                        text(StatusCode::NOT_FOUND, "only /healthz/ready is served here\n".into())
                    } else {
                        route(&request, daemon.as_ref()).await
                    })
                }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn route<A: Admin>(request: &Request<Incoming>, daemon: &A) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/healthz/ready" if daemon.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/healthz/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/stats" => {
            let mut response = text(StatusCode::OK, daemon.stats_json());
            response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
            response
        }
        "/metrics" | "/stats/prometheus" => text(StatusCode::OK, daemon.metrics()),
        "/config_dump" => text(StatusCode::OK, serde_json::to_string_pretty(&daemon.config_dump().await).expect("config dump serializes")),
        _ => text(StatusCode::NOT_FOUND, "unknown path; try /healthz/ready, /stats, /metrics, /config_dump\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
