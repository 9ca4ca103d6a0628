//! `podapp http-load`: N requests over C keep-alive connections (HTTP/1.1, or h2c prior knowledge), tallied by
//! status, server, error, latency, chosen response headers and non-2xx bodies.

use crate::emit;
use bytes::Bytes;
use clap::Args;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

#[derive(Args)]
pub struct LoadArgs {
    /// http://HOST[:PORT]/PATH: HOST:PORT is the Host header (:authority with --http2).
    #[arg(long)]
    url: String,
    /// Where to connect (IP:PORT or name:port) when it is not the URL's host.
    #[arg(long)]
    connect: Option<String>,
    #[arg(long)]
    requests: u64,
    /// Workers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// h2c with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    #[arg(long, default_value = "GET")]
    method: String,
    /// 'name: value', repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Request body size (bytes of 'x').
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Per request, including any (re)connect.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Response header to tally by value, repeatable ("" when absent).
    #[arg(long = "record-header")]
    record_headers: Vec<String>,
}

/// Where a URL's requests go: `authority` is the Host/:authority, `connect` the TCP destination.
pub struct Target {
    pub authority: String,
    pub path: String,
    pub connect: String,
}

impl Target {
    pub fn parse(url: &str, connect: Option<&str>) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url {url:?}: only http:// is supported"));
        }
        let auth = uri.authority().ok_or_else(|| format!("--url {url:?}: no host"))?;
        let connect = match connect {
            Some(c) => c.to_string(),
            None => format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80)),
        };
        Ok(Target { authority: auth.as_str().to_string(), path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(), connect })
    }

    /// The request URI: origin form for HTTP/1.1 (with a Host header), absolute for HTTP/2 (:scheme, :authority).
    pub fn uri(&self, http2: bool) -> String {
        if http2 {
            format!("http://{}{}", self.authority, self.path)
        } else {
            self.path.clone()
        }
    }
}

pub async fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => Err("connect: timeout".into()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// An error and its sources ("connection error: Connection reset by peer (os error 104)").
pub fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = x.source();
    }
    s
}

struct Cfg {
    target: Target,
    http2: bool,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
    record: Vec<HeaderName>,
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(cfg: &Cfg, deadline: Instant) -> Result<Conn, String> {
        let io = TokioIo::new(connect(&cfg.target.connect, deadline).await?);
        let hs = |e: hyper::Error| format!("handshake: {}", err_chain(&e));
        let timed_out = |_| "handshake: timeout".to_string();
        if cfg.http2 {
            let (s, conn) = timeout_at(deadline, http2::handshake(TokioExecutor::new(), io)).await.map_err(timed_out)?.map_err(hs)?;
            tokio::spawn(conn);
            Ok(Conn::H2(s))
        } else {
            let (s, conn) = timeout_at(deadline, http1::handshake(io)).await.map_err(timed_out)?.map_err(hs)?;
            tokio::spawn(conn);
            Ok(Conn::H1(s))
        }
    }

    /// Whether the connection can take another request (false once the server closed it).
    async fn usable(&mut self, deadline: Instant) -> bool {
        match self {
            Conn::H1(s) => !s.is_closed() && timeout_at(deadline, s.ready()).await.is_ok_and(|r| r.is_ok()),
            Conn::H2(s) => !s.is_closed() && timeout_at(deadline, s.ready()).await.is_ok_and(|r| r.is_ok()),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Conn::H1(s) => s.send_request(req).await,
            Conn::H2(s) => s.send_request(req).await,
        }
    }
}

/// One worker's (then the merged) results.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    served_by: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    bodies: BTreeMap<String, u64>,
    headers: BTreeMap<String, BTreeMap<String, u64>>,
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        fn add(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
            for (k, n) in from {
                *into.entry(k).or_default() += n;
            }
        }
        add(&mut self.statuses, o.statuses);
        add(&mut self.served_by, o.served_by);
        add(&mut self.errors, o.errors);
        add(&mut self.bodies, o.bodies);
        for (k, m) in o.headers {
            add(self.headers.entry(k).or_default(), m);
        }
        self.latencies_ms.extend(o.latencies_ms);
    }
}

pub fn run(a: LoadArgs) -> bool {
    let cfg = match config(&a) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            emit(&json!({ "error": e }));
            return false;
        }
    };
    let Some(rt) = crate::runtime() else {
        return false;
    };
    let start = Instant::now();
    let total = rt.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> =
            (0..a.concurrency.clamp(1, a.requests.max(1) as usize)).map(|_| tokio::spawn(worker(cfg.clone(), next.clone(), a.requests))).collect();
        let mut total = Tally::default();
        for w in workers {
            match w.await {
                Ok(t) => total.merge(t),
                Err(e) => *total.errors.entry(format!("worker: {e}")).or_default() += 1,
            }
        }
        total
    });
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut lat = total.latencies_ms;
    lat.sort_by(f64::total_cmp);
    let mut headers: BTreeMap<String, BTreeMap<String, u64>> = cfg.record.iter().map(|h| (h.to_string(), BTreeMap::new())).collect();
    for (k, m) in total.headers {
        headers.insert(k, m);
    }
    emit(&json!({
        "requests": a.requests,
        "responses": lat.len(),
        "statuses": total.statuses,
        "served_by": total.served_by,
        "errors": total.errors,
        "latency_ms": {
            "p50": percentile(&lat, 50.0),
            "p90": percentile(&lat, 90.0),
            "p99": percentile(&lat, 99.0),
            "max": lat.last().map(|x| round3(*x)),
        },
        "bodies": total.bodies,
        "headers": headers,
        "elapsed_ms": round3(elapsed_ms),
    }));
    true
}

fn config(a: &LoadArgs) -> Result<Cfg, String> {
    let target = Target::parse(&a.url, a.connect.as_deref())?;
    let method = Method::from_bytes(a.method.to_ascii_uppercase().as_bytes()).map_err(|e| format!("--method {:?}: {e}", a.method))?;
    let mut headers = Vec::new();
    for h in &a.headers {
        let (n, v) = h.split_once(':').ok_or_else(|| format!("--header {h:?}: expected 'name: value'"))?;
        let n = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|e| format!("--header {h:?}: {e}"))?;
        let v = HeaderValue::from_str(v.trim()).map_err(|e| format!("--header {h:?}: {e}"))?;
        headers.push((n, v));
    }
    let record = a
        .record_headers
        .iter()
        .map(|h| HeaderName::from_bytes(h.trim().as_bytes()).map_err(|e| format!("--record-header {h:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cfg {
        target,
        http2: a.http2,
        method,
        headers,
        body: Bytes::from(vec![b'x'; a.body_bytes]),
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        record,
    })
}

async fn worker(cfg: Arc<Cfg>, next: Arc<AtomicU64>, requests: u64) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<Conn> = None;
    while next.fetch_add(1, Relaxed) < requests {
        let start = Instant::now();
        match one(&cfg, &mut conn, start + cfg.timeout).await {
            Ok((resp, body)) => {
                t.latencies_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                record(&cfg, &mut t, &resp, &body);
            }
            Err(e) => {
                *t.errors.entry(e).or_default() += 1;
                conn = None; // after a timeout or error, the connection's state is unknown: start afresh
            }
        }
    }
    t
}

/// One request on the worker's connection (reopened when the server closed it); returns the response and body.
async fn one(cfg: &Cfg, conn: &mut Option<Conn>, deadline: Instant) -> Result<(http::response::Parts, Bytes), String> {
    if let Some(c) = conn.as_mut() {
        if !c.usable(deadline).await {
            *conn = None;
        }
    }
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(cfg, deadline).await?),
    };
    let mut req = Request::builder().method(cfg.method.clone()).uri(cfg.target.uri(cfg.http2));
    let user_host = cfg.headers.iter().any(|(n, _)| n == HOST);
    if !cfg.http2 && !user_host {
        req = req.header(HOST, cfg.target.authority.as_str());
    }
    for (n, v) in &cfg.headers {
        req = req.header(n, v);
    }
    let req = req.body(Full::new(cfg.body.clone())).map_err(|e| format!("building request: {e}"))?;
    let resp = timeout_at(deadline, c.send(req)).await.map_err(|_| "timeout".to_string())?.map_err(|e| format!("request: {}", err_chain(&e)))?;
    let (parts, body) = resp.into_parts();
    let body = timeout_at(deadline, body.collect())
        .await
        .map_err(|_| "timeout (reading body)".to_string())?
        .map_err(|e| format!("body: {}", err_chain(&e)))?
        .to_bytes();
    Ok((parts, body))
}

fn record(cfg: &Cfg, t: &mut Tally, resp: &http::response::Parts, body: &Bytes) {
    let header = |name: &str| resp.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    *t.statuses.entry(resp.status.as_u16().to_string()).or_default() += 1;
    *t.served_by.entry(header("x-served-by")).or_default() += 1;
    for h in &cfg.record {
        *t.headers.entry(h.to_string()).or_default().entry(header(h.as_str())).or_default() += 1;
    }
    if !resp.status.is_success() {
        let text: String = String::from_utf8_lossy(body).chars().take(120).collect();
        *t.bodies.entry(text).or_default() += 1;
    }
}

/// Nearest-rank percentile of sorted samples (null when there are none).
fn percentile(sorted: &[f64], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    round3(sorted[rank.clamp(1, sorted.len()) - 1]).into()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
