//! HTTP on the destination side. When a policy that applies to a pod has HTTP rules (methods, paths, hosts,
//! headers, request principals: keel's `HttpAuthorization`), or a RequestAuthentication does, keel cannot decide
//! its connections once: it serves them as HTTP here, verifies the request's JWT ([`jwt::authenticate`]: a bad
//! one is answered 401/403), decides every request with the policies as written ([`policy::authorize_request`]),
//! answers a denied one `403 RBAC: access denied` as Envoy does, and forwards the rest to the application from
//! inside the pod. It runs for HBONE streams and same-node connections alike, so a client that skips its own keel's L7 path
//! (a ztunnel, a raw HBONE client) meets the same decision.
//!
//! Each client connection gets its own connection to the application, opened at its first allowed request (a
//! client whose requests are all denied never reaches the application), in the client's HTTP version; an
//! HTTP/1.1 upgrade (WebSocket) is relayed as bytes once the application agrees to it. The request path is
//! normalized before it is decided ([`policy::normalize_path`]) and forwarded as decided.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info};

use super::{
    body::{full, HttpBody, ReportingBody},
    request::{authority_and_path, HOP_BY_HOP},
    server::serve_http,
};
use crate::{
    connection_error::ConnectionError,
    data_path::{DataPath, PodContext},
    identity::Identity,
    jwt,
    policy::{self, ConnectionAttributes, RequestAttributes},
    sockets,
    telemetry::{http::RequestRecord, Refusal},
};

/// What the requests of one inbound connection share.
pub struct Inbound {
    pub dp: Arc<DataPath>,
    pub pod: Arc<PodContext>,
    pub pod_name: Arc<str>,
    pub source_ip: IpAddr,
    /// The client's identity (HBONE, or a same-node pod keel dialled for); `None` for a plaintext peer.
    pub source_identity: Option<Identity>,
    /// The client came over HBONE (mTLS); a same-node connection carries an identity without it.
    pub mutual_tls: bool,
    /// The application: the pod's address and the target port the client asked for.
    pub target: SocketAddrV4,
    /// Istio's inbound cluster name for the service behind the port (`inbound|<port>||<host>`), for metrics.
    pub cluster: String,
    app: Mutex<Option<AppConnection>>,
}

/// The open connection to the application, in the client's HTTP version.
enum AppConnection {
    Http1(http1::SendRequest<HttpBody>),
    Http2(http2::SendRequest<HttpBody>),
}

impl Inbound {
    pub fn new(
        dp: Arc<DataPath>,
        pod: Arc<PodContext>,
        source_ip: IpAddr,
        source_identity: Option<Identity>,
        mutual_tls: bool,
        target: SocketAddrV4,
        cluster: String,
    ) -> Inbound {
        let pod_name = Arc::from(pod.name.as_str());
        Inbound { dp, pod, pod_name, source_ip, source_identity, mutual_tls, target, cluster, app: Mutex::new(None) }
    }
}

/// Serves the client's connection (a TCP socket or an HBONE stream) until it ends, bounded like the L7
/// engine's connections (header-read and idle timeouts, drain).
pub async fn serve<IO>(io: IO, inbound: Arc<Inbound>, draining: watch::Receiver<bool>) -> Result<(), ConnectionError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &inbound.dp.limits;
    let timeouts = (limits.http_header_read_timeout, limits.http_idle_timeout);
    serve_http(io, timeouts, draining, move |request| handle(request, inbound.clone())).await
}

/// Envoy's RBAC filter's answer to a denied request.
pub const DENIED_BODY: &str = "RBAC: access denied";

async fn handle(mut request: Request<Incoming>, inbound: Arc<Inbound>) -> Result<Response<ReportingBody>, Infallible> {
    let started = Instant::now();
    let upgrade = wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let (authority, path_and_query) = authority_and_path(&parts);
    let path = policy::normalize_path(&path_and_query).into_owned();
    let snapshot = inbound.dp.workloads.snapshot();
    // With span export on, the destination side is a hop of the trace too (as Envoy's inbound listener is): a
    // SERVER span under the caller's CLIENT span and a CLIENT span towards the application, which sees the
    // latter as its parent. Without it the headers pass untouched (the source side already set them).
    let (request_id, spans) = match inbound.dp.telemetry.traces() {
        Some(traces) => super::trace_headers::prepare(&mut parts.headers, Some(traces)),
        None => (parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(), None),
    };
    let grpc = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let source = snapshot.workloads_by_ip.get(&inbound.source_ip).cloned();
    let mut record = RequestRecord::new(inbound.pod_name.clone(), parts.method.clone(), if grpc { "grpc" } else { "http" }, request_id, source);
    record.reporter = "destination";
    record.version = parts.version;
    record.spans = spans;
    record.destination = snapshot.workloads_by_ip.get(&IpAddr::V4(inbound.pod.ip)).cloned();
    record.mutual_tls = inbound.mutual_tls;
    (record.cluster, record.cluster_found) = (inbound.cluster.clone(), true);
    (record.authority, record.path) = (authority.clone(), path_and_query.clone());

    // The end user first (RequestAuthentication): a token that is present must verify.
    let providers = snapshot
        .request_authentications
        .values()
        .filter(|r| record.destination.as_deref().is_some_and(|d| r.applies_to(d)))
        .flat_map(|r| r.providers.iter());
    let user = match jwt::authenticate(providers, &mut parts) {
        Ok(user) => user,
        Err(refused) => {
            inbound.dp.telemetry.refused(Refusal::RequestAuthentication);
            record.policy = Some(format!("request authentication failed: {}", refused.message));
            // Envoy's words for it, spaces as underscores as Envoy writes details.
            record.details = Some(format!("jwt_authn_access_denied{{{}}}", refused.message.replace(' ', "_")).into());
            debug!(pod = %inbound.pod.name, source = %inbound.source_ip, method = %record.method, path = %path, reason = refused.message, "request refused: JWT");
            let mut response = local_reply(refused.status, refused.message);
            if refused.status == StatusCode::UNAUTHORIZED {
                // RFC 6750's challenge, as Envoy sends it.
                let challenge = format!("Bearer realm=\"http://{authority}{path}\", error=\"invalid_token\"");
                if let Ok(value) = http::HeaderValue::from_str(&challenge) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
            }
            record.status = response.status().as_u16();
            let metrics = inbound.dp.telemetry.http.clone();
            return Ok(response.map(|body| ReportingBody::new(body, record, metrics, started)));
        }
    };
    record.request_principal = user.as_ref().map(|u| u.principal.clone());
    let decision = match record.destination.as_deref() {
        None => policy::Decision { reason: policy::Reason::DestinationGone, dry_run: Vec::new() },
        Some(destination) => {
            let connection = ConnectionAttributes {
                source_ip: inbound.source_ip,
                source_identity: inbound.source_identity.as_ref(),
                destination_ip: IpAddr::V4(inbound.pod.ip),
                destination_port: inbound.target.port(),
                destination_workload: destination,
            };
            let host = authority.to_ascii_lowercase();
            let attributes = RequestAttributes {
                method: parts.method.as_str(),
                host: &host,
                path: &path,
                headers: &parts.headers,
                principal: user.as_ref().map(|u| u.principal.as_str()),
                claims: user.as_ref().map(|u| &u.claims),
                server_name: None,
            };
            policy::authorize_request(&snapshot, &connection, &attributes)
        }
    };
    for dry_run in &decision.dry_run {
        info!(pod = %inbound.pod.name, source = %inbound.source_ip, method = %parts.method, path = %path, "{dry_run}");
    }
    record.policy = Some(decision.to_string());
    let metrics = inbound.dp.telemetry.http.clone();
    let response = if decision.allowed() {
        set_path(&mut parts.uri, &path, &path_and_query);
        record.upstream = Some(SocketAddr::V4(inbound.target));
        record.attempts = 1;
        match forward(&inbound, parts, body.boxed(), upgrade).await {
            Ok(response) => response.map(|body| body.boxed()),
            Err(error) => {
                debug!(pod = %inbound.pod.name, target = %inbound.target, %error, "forwarding an inbound request failed");
                record.flag(if matches!(error, ForwardError::Connect(_)) { "UF" } else { "UC" });
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers")
            }
        }
    } else {
        inbound.dp.telemetry.refused(Refusal::RequestPolicy);
        record.details = Some(rbac_details(&decision).into());
        debug!(pod = %inbound.pod.name, source = %inbound.source_ip, method = %record.method, path = %path, decision = %decision, "request denied");
        local_reply(StatusCode::FORBIDDEN, DENIED_BODY)
    };
    record.status = response.status().as_u16();
    Ok(response.map(|body| ReportingBody::new(body, record, metrics, started)))
}

/// Envoy's RBAC details: the DENY policy that matched, in Istio's `ns[<ns>]-policy[<name>]` naming, or `none`
/// when no ALLOW policy matched.
fn rbac_details(decision: &policy::Decision<'_>) -> String {
    match decision.reason {
        policy::Reason::DeniedBy(name) => {
            let (namespace, policy) = name.split_once('/').unwrap_or(("", name));
            format!("rbac_access_denied_matched_policy[ns[{namespace}]-policy[{policy}]]")
        }
        _ => "rbac_access_denied_matched_policy[none]".into(),
    }
}

/// Replaces the path of `uri` by the normalized one, keeping the query.
fn set_path(uri: &mut Uri, normalized: &str, path_and_query: &str) {
    if uri.path() == normalized {
        return;
    }
    let query = path_and_query.split_once('?').map(|(_, q)| q);
    let rebuilt = match query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

fn local_reply(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("a valid local reply")
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and the like).
fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11 && request.headers().contains_key(header::UPGRADE)
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("connecting to the application: {0}")]
    Connect(String),
    #[error("the application's connection: {0}")]
    Connection(#[from] hyper::Error),
}

async fn forward(
    inbound: &Inbound,
    mut parts: http::request::Parts,
    body: HttpBody,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Incoming>, ForwardError> {
    strip_hop_by_hop(&mut parts.headers, downstream_upgrade.is_some());
    let http2 = parts.version == Version::HTTP_2;
    if !http2 {
        // HTTP/1.1 to the application: origin-form, as a client would send it.
        parts.uri = parts.uri.path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
    }
    let request = Request::from_parts(parts, body);
    let mut app = inbound.app.lock().await;
    if app.as_ref().is_none_or(AppConnection::is_closed) {
        *app = Some(connect(inbound, http2).await?);
    }
    let mut response = match app.as_mut().expect("connected above") {
        AppConnection::Http1(sender) => {
            // One request at a time on HTTP/1.1: the lock is held until the response head arrives.
            sender.ready().await?;
            sender.send_request(request).await?
        }
        AppConnection::Http2(sender) => {
            let mut sender = sender.clone();
            drop(app);
            return Ok(sender.send_request(request).await?);
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The application's connection now carries the upgraded protocol: it is no longer one to send on.
        *app = None;
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(downstream), Ok(upstream)) = (downstream.await, upstream.await) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(downstream), &mut TokioIo::new(upstream)).await;
                }
            });
        }
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    Ok(response)
}

impl AppConnection {
    fn is_closed(&self) -> bool {
        match self {
            AppConnection::Http1(sender) => sender.is_closed(),
            AppConnection::Http2(sender) => sender.is_closed(),
        }
    }
}

async fn connect(inbound: &Inbound, http2: bool) -> Result<AppConnection, ForwardError> {
    let stream = sockets::connect_from_pod(&inbound.pod.netns, inbound.target, inbound.dp.dialer.connect_timeout)
        .await
        .map_err(|e| ForwardError::Connect(format!("{}: {e}", inbound.target)))?;
    let io = TokioIo::new(stream);
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        Ok(AppConnection::Http2(sender))
    } else {
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(connection.with_upgrades());
        Ok(AppConnection::Http1(sender))
    }
}

/// Drops the headers that describe one hop; an upgrade keeps `Connection` and `Upgrade`, which ask for it.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    for name in &HOP_BY_HOP {
        if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
}
