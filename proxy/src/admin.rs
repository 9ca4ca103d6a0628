//! The admin HTTP server in keel's own network namespace (or `keel gateway`'s pod): readiness for the kubelet,
//! stats, Prometheus metrics and the config dump (`keel pc --admin` reads it). The same server, reduced to one
//! purpose, answers on the pod's address: `--readiness-addr` (the kubelet's probe) and `--metrics-addr`
//! (Prometheus), so that the stats and config dump stay on loopback.
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
    /// OpenMetrics text: the traffic metrics and the daemon's own health.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    fn config_dump(&self) -> impl Future<Output = ConfigDump> + Send;
}

/// The content type of what the metrics are written in: OpenMetrics text (`prometheus_client`'s encoding, `# EOF`
/// last), so Prometheus reads it with its OpenMetrics parser.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| format!("binding the admin server on {addr}"))
}

/// Which paths a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    /// Everything (`--admin-addr`, loopback by default).
    All,
    /// Only `/healthz/ready` (`--readiness-addr`, for the kubelet).
    Readiness,
    /// Only `/metrics` and `/stats/prometheus` (`--metrics-addr`, Istio's 15020, for Prometheus).
    Metrics,
}

impl Paths {
    fn serves(self, path: &str) -> bool {
        match self {
            Paths::All => true,
            Paths::Readiness => path == "/healthz/ready",
            Paths::Metrics => matches!(path, "/metrics" | "/stats/prometheus"),
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            Paths::All => "",
            Paths::Readiness => "only /healthz/ready is served here\n",
            Paths::Metrics => "only /metrics and /stats/prometheus are served here\n",
        }
    }
}

pub async fn serve<A: Admin>(listener: TcpListener, daemon: Arc<A>, paths: Paths) {
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
                    Ok::<_, Infallible>(if !paths.serves(request.uri().path()) {
                        text(StatusCode::NOT_FOUND, paths.refusal().into())
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
        "/metrics" | "/stats/prometheus" => {
            let mut response = text(StatusCode::OK, daemon.metrics().await);
            response.headers_mut().insert("content-type", OPENMETRICS_TEXT.parse().expect("static header"));
            response
        }
        "/config_dump" => text(StatusCode::OK, serde_json::to_string_pretty(&daemon.config_dump().await).expect("config dump serializes")),
        _ => text(StatusCode::NOT_FOUND, "unknown path; try /healthz/ready, /stats, /metrics, /config_dump\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
