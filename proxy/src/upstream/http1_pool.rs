//! HTTP/1.1 upstream connections driven by the task of the request they carry.
//!
//! A connection task per upstream connection (what hyper's pooling client does) makes every request cross tasks
//! twice — the request over to the connection task, the response back — and each crossing may wake a parked
//! worker thread. Here the downstream request's own task polls the upstream connection: while it waits for the
//! response head, then from the response body it hands to the client. Between requests a connection waits,
//! unpolled, on a stack per (source pod, endpoint); one the server closed meanwhile shows up as not ready when
//! it is taken, and the request goes on a fresh connection instead.
use std::{
    collections::HashMap,
    future::{poll_fn, Future},
    net::{Ipv4Addr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::http1::{Connection, SendRequest},
};
use hyper_util::rt::TokioIo;

use super::RequestBody;
use crate::dial::UpstreamIo;

/// A pooled connection idle longer than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per (source pod, endpoint); more are closed when their request ends.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

type Key = (Ipv4Addr, SocketAddrV4);

/// The idle HTTP/1.1 connections of every source pod to every endpoint.
pub struct Http1Pool {
    idle: Mutex<Idle>,
}

struct Idle {
    /// Per key, oldest at the bottom.
    by_key: HashMap<Key, Vec<(Http1Conn, Instant)>>,
    last_sweep: Instant,
}

impl Default for Http1Pool {
    fn default() -> Http1Pool {
        Http1Pool { idle: Mutex::new(Idle { by_key: HashMap::new(), last_sweep: Instant::now() }) }
    }
}

/// One upstream HTTP/1.1 connection: hyper's request handle and the connection state machine, which whoever
/// holds it must poll.
pub struct Http1Conn {
    sender: SendRequest<RequestBody>,
    /// `None` once the connection closed or failed: dropping it is what tells the request handle (and so a
    /// request in flight) that it is gone.
    connection: Option<Connection<TokioIo<UpstreamIo>, RequestBody>>,
}

/// Why a request got no response on a connection.
pub enum Http1SendError {
    /// The connection was not usable (closed while idle); the request was not sent and comes back.
    Unsent(Box<http::Request<RequestBody>>, hyper::Error),
    /// The request was (at least partly) sent; it cannot be sent again.
    Failed(hyper::Error),
}

impl Http1Pool {
    /// The most recently used idle connection from `pod` to `endpoint`, if one is fresh enough.
    pub fn take(&self, pod: Ipv4Addr, endpoint: SocketAddrV4) -> Option<Http1Conn> {
        let mut idle = self.idle.lock().expect("HTTP/1.1 pool poisoned");
        let stack = idle.by_key.get_mut(&(pod, endpoint))?;
        while let Some((conn, since)) = stack.pop() {
            if since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, key: Key, conn: Http1Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("HTTP/1.1 pool poisoned");
        // Endpoints come and go: now and then, close what idled out everywhere (not just under this key), so
        // a connection to an endpoint nobody calls any more does not stay open for the pod's lifetime.
        if now.duration_since(idle.last_sweep) >= IDLE_TIMEOUT {
            idle.sweep(now);
        }
        let stack = idle.by_key.entry(key).or_default();
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push((conn, now));
        }
    }

    /// Idle connections held, over all keys.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().expect("HTTP/1.1 pool poisoned").by_key.values().map(Vec::len).sum()
    }

    /// Closes a pod's idle connections (it left the node).
    pub fn forget(&self, pod: Ipv4Addr) {
        self.idle.lock().expect("HTTP/1.1 pool poisoned").by_key.retain(|(ip, _), _| *ip != pod);
    }
}

impl Idle {
    /// Closes every connection idle for `IDLE_TIMEOUT` at `now`, and forgets keys left empty.
    fn sweep(&mut self, now: Instant) {
        self.by_key.retain(|_, stack| {
            stack.retain(|(_, since)| now.duration_since(*since) < IDLE_TIMEOUT);
            !stack.is_empty()
        });
        self.last_sweep = now;
    }
}

impl Http1Conn {
    pub async fn handshake(io: UpstreamIo) -> hyper::Result<Http1Conn> {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        Ok(Http1Conn { sender, connection: Some(connection) })
    }

    /// Lets the connection make progress: write the request, read the response, notice a close.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.connection.as_mut().is_some_and(|c| Pin::new(c).poll(cx).is_ready()) {
            self.connection = None;
        }
    }

    /// Sends `request` and waits for the response head, polling the connection meanwhile.
    pub async fn send(&mut self, request: http::Request<RequestBody>) -> Result<http::Response<Incoming>, Http1SendError> {
        let ready = poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await;
        if let Err(e) = ready {
            return Err(Http1SendError::Unsent(Box::new(request), e));
        }
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            if let Poll::Ready(result) = response.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            self.drive(cx);
            // A connection that just ended has answered the request with an error: see it now.
            response.as_mut().poll(cx)
        })
        .await
        .map_err(|mut e| match e.take_message() {
            Some(request) => Http1SendError::Unsent(Box::new(request), e.into_error()),
            None => Http1SendError::Failed(e.into_error()),
        })
    }
}

/// A response body from an upstream. On HTTP/1.1 it drives its connection while the client reads it and, once
/// the response has ended, returns the connection to the pool (or closes it, when connections are not reused).
pub struct UpstreamBody {
    body: Incoming,
    connection: Option<Http1Conn>,
    /// Where the connection goes back to after the response; `None`: closed instead.
    home: Option<(Arc<Http1Pool>, Key)>,
}

impl UpstreamBody {
    /// A body whose connection someone else drives (HTTP/2).
    pub fn detached(body: Incoming) -> UpstreamBody {
        UpstreamBody { body, connection: None, home: None }
    }

    pub fn driving(body: Incoming, connection: Http1Conn, home: Option<(Arc<Http1Pool>, Key)>) -> UpstreamBody {
        UpstreamBody { body, connection: Some(connection), home }
    }

    fn release(&mut self) {
        if let (Some(conn), Some((pool, key))) = (self.connection.take(), self.home.take()) {
            if conn.connection.is_some() {
                pool.put(key, conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = this.connection.as_mut() {
            conn.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            // An error leaves the connection in an unknown state: it is closed with this body.
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A response without a body (204, HEAD, length 0) may never be read: it still frees its connection.
        // Dropped before its end, the body takes the connection with it (the response cannot be resumed).
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt as _, Empty};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::plan::Path;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    async fn connect(server: SocketAddrV4) -> Http1Conn {
        let stream = TcpStream::connect(server).await.unwrap();
        Http1Conn::handshake(UpstreamIo::Tcp(stream, None, Path::Direct)).await.unwrap()
    }

    fn get() -> http::Request<RequestBody> {
        let mut request = http::Request::new(Empty::new().map_err(|never| match never {}).boxed());
        request.headers_mut().insert(http::header::HOST, "catalog".parse().unwrap());
        request
    }

    /// A keep-alive HTTP/1.1 server answering "ok", counting the connections it accepted.
    async fn keep_alive_server() -> (SocketAddrV4, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(address) = listener.local_addr().unwrap() else { unreachable!() };
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (address, accepted)
    }

    async fn read_all(response: http::Response<Incoming>, conn: Http1Conn, pool: &Arc<Http1Pool>, server: SocketAddrV4) -> Bytes {
        let body = UpstreamBody::driving(response.into_body(), conn, Some((pool.clone(), (POD, server))));
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_finished_response_returns_its_connection_for_the_next_request() {
        let (server, accepted) = keep_alive_server().await;
        let pool = Arc::new(Http1Pool::default());
        for _ in 0..5 {
            let mut conn = match pool.take(POD, server) {
                Some(conn) => conn,
                None => connect(server).await,
            };
            let Ok(response) = conn.send(get()).await else { panic!("request failed") };
            assert_eq!(read_all(response, conn, &pool, server).await, Bytes::from_static(b"ok"));
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "five requests in a row share one connection");
        assert_eq!(pool.idle_count(), 1);
        pool.forget(POD);
        assert!(pool.take(POD, server).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn connections_idle_past_their_time_are_closed_under_every_key() {
        let (server, _) = keep_alive_server().await;
        let pool = Arc::new(Http1Pool::default());
        for pod in [POD, Ipv4Addr::new(10, 0, 0, 2)] {
            let mut conn = connect(server).await;
            let Ok(response) = conn.send(get()).await else { panic!("request failed") };
            let body = UpstreamBody::driving(response.into_body(), conn, Some((pool.clone(), (pod, server))));
            body.collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 2);
        pool.idle.lock().unwrap().sweep(Instant::now() + Duration::from_secs(30));
        assert_eq!(pool.idle_count(), 2, "not idle long enough yet");
        pool.idle.lock().unwrap().sweep(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.idle.lock().unwrap().by_key.is_empty(), "empty keys are forgotten");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_gives_the_request_back() {
        // Answers one request, then closes without saying so (no `Connection: close`).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(server) = listener.local_addr().unwrap() else { unreachable!() };
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let pool = Arc::new(Http1Pool::default());
        let mut conn = connect(server).await;
        let Ok(response) = conn.send(get()).await else { panic!("first request failed") };
        assert_eq!(read_all(response, conn, &pool, server).await, Bytes::from_static(b"ok"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut stale = pool.take(POD, server).expect("the connection was pooled");
        match stale.send(get()).await {
            Err(Http1SendError::Unsent(request, _)) => assert_eq!(request.headers()["host"], "catalog"),
            Err(Http1SendError::Failed(e)) => panic!("the request must come back unsent, got {e}"),
            Ok(_) => panic!("a closed connection answered"),
        }
    }
}
