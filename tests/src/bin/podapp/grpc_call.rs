//! `podapp grpc-call`: one h2c (prior knowledge) gRPC call that streams both ways: send a message, wait for its
//! reply, send the next; then end the request stream and read the remaining replies and the trailers.
//! Also gRPC's length-prefixed message framing, shared with `http-serve`.

use crate::emit;
use crate::http_load::{connect, err_chain, Target};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Args;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, Method, Request};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

#[derive(Args)]
pub struct GrpcArgs {
    /// http://HOST[:PORT]/package.Service/Method (HOST:PORT is the :authority).
    #[arg(long)]
    url: String,
    /// Where to connect when it is not the URL's host.
    #[arg(long)]
    connect: Option<String>,
    #[arg(long, default_value_t = 1)]
    messages: u32,
    #[arg(long, default_value = "hello")]
    payload: String,
    /// For the whole call.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// A pause before each message after the first (a call that lasts).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
}

/// One gRPC message: uncompressed flag, 4-byte big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Reassembles gRPC messages from body chunks.
#[derive(Default)]
pub struct GrpcDecoder {
    buf: BytesMut,
}

impl GrpcDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one has arrived.
    pub fn message(&mut self) -> Result<Option<Bytes>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(format!("compressed gRPC message (flag {}) not supported", self.buf[0]));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// What the call saw so far (reported even when it fails half-way).
#[derive(Default)]
struct Call {
    status: Option<u16>,
    headers: HeaderMap,
    trailers: HeaderMap,
    replies: Vec<String>,
}

pub fn run(a: GrpcArgs) -> bool {
    let target = match Target::parse(&a.url, a.connect.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            emit(&json!({ "error": e }));
            return false;
        }
    };
    let Some(rt) = crate::runtime() else {
        return false;
    };
    let mut out = Call::default();
    let res = rt.block_on(call(&a, &target, &mut out));
    let header = |m: &HeaderMap, n: &str| m.get(n).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // A trailers-only response carries grpc-status in its headers.
    let grpc = |n: &str| header(&out.trailers, n).or_else(|| header(&out.headers, n));
    let map = |m: &HeaderMap| m.keys().filter_map(|k| Some((k.to_string(), Value::from(header(m, k.as_str())?)))).collect::<Map<_, _>>();
    emit(&json!({
        "status": out.status,
        "served_by": header(&out.headers, "x-served-by"),
        "replies": out.replies,
        "grpc_status": grpc("grpc-status"),
        "grpc_message": grpc("grpc-message"),
        "trailers": map(&out.trailers),
        "headers": map(&out.headers),
        "error": res.as_ref().err(),
    }));
    res.is_ok()
}

async fn call(a: &GrpcArgs, t: &Target, out: &mut Call) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms.max(1));
    let io = TokioIo::new(connect(&t.connect, deadline).await?);
    let (mut send, conn) = timeout_at(deadline, http2::handshake(TokioExecutor::new(), io))
        .await
        .map_err(|_| "handshake: timeout".to_string())?
        .map_err(|e| format!("handshake: {}", err_chain(&e)))?;
    tokio::spawn(conn);

    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    let req = Request::builder()
        .method(Method::POST)
        .uri(t.uri(true))
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(body)
        .map_err(|e| format!("building request: {e}"))?;
    let response = send.send_request(req);
    // The first message goes before waiting for the response headers: a server may hold them until it has one.
    let mut sent = 0;
    if a.messages > 0 && message(&mut tx, &a.payload).await {
        sent = 1;
    }
    let resp = timeout_at(deadline, response)
        .await
        .map_err(|_| "timeout waiting for response headers".to_string())?
        .map_err(|e| format!("request: {}", err_chain(&e)))?;
    out.status = Some(resp.status().as_u16());
    out.headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut dec = GrpcDecoder::default();

    // Ping-pong: each reply releases the next message.
    let mut ended = false;
    while out.replies.len() < sent {
        match reply(&mut body, &mut dec, out, deadline).await? {
            Some(r) => out.replies.push(r),
            None => {
                ended = true;
                break;
            }
        }
        if out.replies.len() == sent && sent < a.messages as usize {
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
            if !message(&mut tx, &a.payload).await {
                break;
            }
            sent += 1;
        }
    }
    drop(tx); // ends the request stream
    while !ended {
        match reply(&mut body, &mut dec, out, deadline).await? {
            Some(r) => out.replies.push(r),
            None => ended = true,
        }
    }
    Ok(())
}

/// Sends one message; false when the request stream is already gone.
async fn message(tx: &mut Sender<Bytes, Infallible>, payload: &str) -> bool {
    tx.send_data(grpc_frame(payload.as_bytes())).await.is_ok()
}

/// The next reply message, or None at the end of the response (its trailers are stored in `out`).
async fn reply(body: &mut Incoming, dec: &mut GrpcDecoder, out: &mut Call, deadline: Instant) -> Result<Option<String>, String> {
    loop {
        if let Some(m) = dec.message()? {
            return Ok(Some(String::from_utf8_lossy(&m).into_owned()));
        }
        let frame = timeout_at(deadline, body.frame()).await.map_err(|_| "timeout waiting for a reply".to_string())?;
        let frame = match frame {
            None => return Ok(None),
            Some(f) => f.map_err(|e| format!("response body: {}", err_chain(&e)))?,
        };
        match frame.into_data() {
            Ok(d) => dec.push(&d),
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    out.trailers = t;
                }
            }
        }
    }
}
