//! `podapp http-serve`: HTTP/1.1 (keep-alive) and h2c prior knowledge on one port, with injectable failures and
//! delay, plus a streaming gRPC echo.
//!
//! Control paths `GET /__stats` and `GET /__set?fail_percent=N&delay_ms=M&fail_status=S` are neither counted nor
//! delayed nor failed. A request whose content-type starts with `application/grpc` is a gRPC call: each request
//! message is answered at once with `NAME:` + payload, then trailers `grpc-status: 0` (14 when the path ends with
//! `/Fail`).

use crate::emit;
use crate::grpc_call::{grpc_frame, GrpcDecoder};
use bytes::Bytes;
use clap::Args;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    port: u16,
    /// Sent back as `x-served-by` and in every body.
    #[arg(long)]
    name: String,
    /// Percentage of ordinary requests answered with --fail-status.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    fail_percent: u32,
    #[arg(long, default_value_t = 500)]
    fail_status: u16,
    /// Sleep before answering each ordinary request.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Call this URL (HTTP/1.1) for each ordinary request before answering, forwarding the request's id and trace
    /// headers as the Bookinfo apps do; its status is answered as `x-forwarded-status`.
    #[arg(long, requires = "forward_connect")]
    forward_to: Option<http::Uri>,
    /// The address to connect to for --forward-to (the service VIP the app's DNS would give).
    #[arg(long)]
    forward_connect: Option<SocketAddr>,
}

/// The headers an app forwards so that its calls join the trace (Istio's list for Bookinfo).
const PROPAGATED: [&str; 7] = ["x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"];

type Body = BoxBody<Bytes, Infallible>;

struct State {
    name: String,
    served_by: HeaderValue,
    fail_percent: AtomicU32,
    fail_status: AtomicU32,
    delay_ms: AtomicU64,
    /// Every request except the control paths.
    requests: AtomicU64,
    rng: AtomicU64,
    forward: Option<(http::Uri, SocketAddr)>,
}

pub fn run(a: ServeArgs) -> bool {
    let served_by = match HeaderValue::from_str(&a.name) {
        Ok(v) => v,
        Err(e) => {
            emit(&json!({"error": format!("--name {:?}: {e}", a.name)}));
            return false;
        }
    };
    if let Err(e) = StatusCode::from_u16(a.fail_status) {
        emit(&json!({"error": format!("--fail-status {}: {e}", a.fail_status)}));
        return false;
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let state = Arc::new(State {
        name: a.name,
        served_by,
        fail_percent: AtomicU32::new(a.fail_percent),
        fail_status: AtomicU32::new(a.fail_status.into()),
        delay_ms: AtomicU64::new(a.delay_ms),
        requests: AtomicU64::new(0),
        rng: AtomicU64::new(seed),
        forward: a.forward_to.zip(a.forward_connect),
    });
    let Some(rt) = crate::runtime() else {
        return false;
    };
    rt.block_on(serve(a.port, state))
}

async fn serve(port: u16, state: Arc<State>) -> bool {
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            emit(&json!({"error": format!("bind 0.0.0.0:{port}: {e}")}));
            return false;
        }
    };
    emit(&json!({ "listening": port }));
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("podapp http-serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, builder) = (state.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), peer, req));
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                eprintln!("podapp http-serve: connection from {peer}: {e}");
            }
        });
    }
}

async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() == Method::GET {
        match req.uri().path() {
            "/__stats" => {
                let n = state.requests.load(Relaxed);
                let mut response = json_response(&state, StatusCode::OK, json!({"server": state.name, "requests": n}));
                // Also as a header, so `http-load --record-header x-stats-requests` can read it.
                response.headers_mut().insert("x-stats-requests", HeaderValue::from(n));
                return Ok(response);
            }
            "/__set" => return Ok(set(&state, req.uri().query().unwrap_or(""))),
            _ => {}
        }
    }
    state.requests.fetch_add(1, Relaxed);
    let grpc = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"));
    Ok(if grpc { grpc_echo(&state, req) } else { ordinary(&state, peer, req).await })
}

/// Reads the whole request, waits, maybe fails, and describes what arrived.
async fn ordinary(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let request_bytes = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(e) => {
            let msg = json!({"server": state.name, "error": format!("reading request body: {e}")});
            return json_response(state, StatusCode::BAD_REQUEST, msg);
        }
    };
    let delay = state.delay_ms.load(Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = if state.roll() < state.fail_percent.load(Relaxed) {
        StatusCode::from_u16(state.fail_status.load(Relaxed) as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        StatusCode::OK
    };
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into());
        }
    }
    let authority =
        parts.uri.authority().map(|a| a.to_string()).or_else(|| parts.headers.get(HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()));
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Written by hand so that the identifying fields come first (load reports keep a body's first 120 chars).
    let body = format!(
        "{{\"server\":{},\"status\":{},\"method\":{},\"path\":{},\"version\":{},\"authority\":{},\
         \"request_bytes\":{},\"peer\":{},\"headers\":{}}}",
        Value::from(state.name.as_str()),
        status.as_u16(),
        Value::from(parts.method.as_str()),
        Value::from(path),
        Value::from(format!("{:?}", parts.version)),
        Value::from(authority),
        request_bytes,
        Value::from(peer.to_string()),
        Value::Object(headers),
    );
    let mut r = response(state, status, "application/json", Full::new(Bytes::from(body)).boxed());
    if let Some((uri, connect)) = &state.forward {
        let forwarded = match forward(uri, *connect, &parts.headers).await {
            Ok(status) => status.as_u16().to_string(),
            Err(e) => format!("error: {e}"),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            r.headers_mut().insert("x-forwarded-status", v);
        }
    }
    // The request's id and trace context, echoed as `x-echo-<name>` so `http-load --record-header` can see
    // what a proxy on the way set.
    for name in ["x-request-id", "traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-my-header", "authorization", "x-jwt-sub"] {
        if let Some(v) = parts.headers.get(name) {
            if let Ok(echo) = http::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()) {
                r.headers_mut().insert(echo, v.clone());
            }
        }
    }
    r
}

/// One HTTP/1.1 GET of `uri` through `connect`, carrying the trace headers of `incoming`; its status.
async fn forward(uri: &http::Uri, connect: SocketAddr, incoming: &HeaderMap) -> Result<StatusCode, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(connect))
        .await
        .map_err(|_| format!("connecting to {connect}: timed out"))?
        .map_err(|e| format!("connecting to {connect}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(HOST, uri.authority().map_or("", |a| a.as_str()))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    for name in PROPAGATED {
        if let Some(value) = incoming.get(name) {
            request.headers_mut().insert(name, value.clone());
        }
    }
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// `/__set?fail_percent=N&delay_ms=M&fail_status=S`: every parameter optional; answers the settings now in force.
fn set(state: &State, query: &str) -> Response<Body> {
    let mut fail_percent = state.fail_percent.load(Relaxed);
    let mut delay_ms = state.delay_ms.load(Relaxed);
    let mut fail_status = state.fail_status.load(Relaxed) as u16;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let ok = match k {
            "fail_percent" => v.parse().ok().filter(|p| *p <= 100).map(|p| fail_percent = p),
            "delay_ms" => v.parse().ok().map(|d| delay_ms = d),
            "fail_status" => StatusCode::from_u16(v.parse().unwrap_or(0)).ok().map(|s| fail_status = s.as_u16()),
            _ => None,
        };
        if ok.is_none() {
            let msg = json!({"server": state.name, "error": format!("bad /__set parameter {kv:?}")});
            return json_response(state, StatusCode::BAD_REQUEST, msg);
        }
    }
    state.fail_percent.store(fail_percent, Relaxed);
    state.delay_ms.store(delay_ms, Relaxed);
    state.fail_status.store(fail_status.into(), Relaxed);
    json_response(
        state,
        StatusCode::OK,
        json!({"server": state.name, "fail_percent": fail_percent, "delay_ms": delay_ms, "fail_status": fail_status}),
    )
}

/// Streams one reply per request message as soon as it is read, then trailers.
fn grpc_echo(state: &State, req: Request<Incoming>) -> Response<Body> {
    let fail = req.uri().path().ends_with("/Fail");
    let prefix = format!("{}:", state.name);
    let mut body = req.into_body();
    let (mut tx, rx) = Channel::<Bytes, Infallible>::new(16);
    tokio::spawn(async move {
        if fail {
            let _ = tx.send_trailers(grpc_trailers("14", "podapp: /Fail")).await;
            // Read the rest, so the stream ends cleanly rather than with a reset.
            while let Some(Ok(_)) = body.frame().await {}
            return;
        }
        let mut dec = GrpcDecoder::default();
        let (mut code, mut message) = ("0", "ok".to_string());
        'read: while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue, // request trailers
                },
                Err(e) => {
                    (code, message) = ("13", format!("podapp: reading request: {e}"));
                    break;
                }
            };
            dec.push(&data);
            loop {
                match dec.message() {
                    Ok(Some(m)) => {
                        let mut reply = prefix.clone().into_bytes();
                        reply.extend_from_slice(&m);
                        if tx.send_data(grpc_frame(&reply)).await.is_err() {
                            return; // the response was dropped: the client went away
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        (code, message) = ("13", format!("podapp: {e}"));
                        break 'read;
                    }
                }
            }
        }
        let _ = tx.send_trailers(grpc_trailers(code, &message)).await;
    });
    response(state, StatusCode::OK, "application/grpc", rx.boxed())
}

fn grpc_trailers(code: &'static str, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(code));
    t.insert("grpc-message", HeaderValue::from_str(message).unwrap_or_else(|_| HeaderValue::from_static("error")));
    t
}

fn json_response(state: &State, status: StatusCode, v: Value) -> Response<Body> {
    response(state, status, "application/json", Full::new(Bytes::from(v.to_string())).boxed())
}

fn response(state: &State, status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("x-served-by", state.served_by.clone());
    r
}

impl State {
    /// Uniform in 0..100 (splitmix64 over a shared counter).
    fn roll(&self) -> u32 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.rng.fetch_add(GAMMA, Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 100) as u32
    }
}
