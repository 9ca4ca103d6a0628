//! Byte relay between a captured client and its upstream: both directions at once, half-close carried over
//! (EOF on one side becomes a FIN, or an HBONE END_STREAM, on the other), a reset or error on either side resets
//! both. Bytes are counted as they move (in [`Progress`], which the caller owns), so a connection that is reset,
//! times out or is closed by a policy change still reports what really crossed it. A connection with no byte in
//! either direction for [`Timeouts::idle`](crate::limits::RelayTimeouts::idle), or whose remaining direction is silent for [`Timeouts::half_closed`](crate::limits::RelayTimeouts::half_closed)
//! after the other ended, is ended with a timeout error: a peer cannot hold keel's sockets forever.
//!
//! Bytes move as owned chunks (see [`crate::chunk_io`]), so the relay adds no copy of its own on the HBONE path.
use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::{
    chunk_io::{socket, ChunkRead, ChunkWrite},
    fair_share::{DirectionPacer, Pacer},
    limits::RelayTimeouts as Timeouts,
    sockets::reset,
};

/// What a relay moved so far, readable while it runs and after it was cut short.
#[derive(Debug)]
pub struct Progress {
    client_to_server: AtomicU64,
    server_to_client: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last byte in either direction.
    last_activity_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            client_to_server: AtomicU64::new(0),
            server_to_client: AtomicU64::new(0),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }
    }
}

impl Progress {
    pub fn client_to_server(&self) -> u64 {
        self.client_to_server.load(Ordering::Relaxed)
    }

    pub fn server_to_client(&self) -> u64 {
        self.server_to_client.load(Ordering::Relaxed)
    }

    fn moved(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Default)]
pub struct RelayOutcome {
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub error: Option<io::Error>,
}

impl RelayOutcome {
    /// The counts of `progress` with `error`: what a relay that was cut short reports.
    pub fn cut_short(progress: &Progress, error: Option<io::Error>) -> RelayOutcome {
        RelayOutcome { client_to_server: progress.client_to_server(), server_to_client: progress.server_to_client(), error }
    }
}

/// TCP to TCP: on an error both sockets are reset.
pub async fn relay(client: &mut TcpStream, server: &mut TcpStream, timeouts: Timeouts, pacer: &Pacer) -> RelayOutcome {
    let progress = Progress::default();
    let outcome = {
        let (client_read, client_write) = socket(client.split());
        let (server_read, server_write) = socket(server.split());
        relay_halves(client_read, client_write, server_read, server_write, timeouts, &progress, pacer).await
    };
    if outcome.error.is_some() {
        // A failed direction ends both: close with RST so each peer learns the connection broke.
        reset(client);
        reset(server);
    }
    outcome
}

/// Both directions at once over any pair of byte streams given as halves (a TCP socket's, an HBONE stream's).
/// Stops at the first error or timeout, which the caller turns into resets on its own kind of stream. Each
/// direction is paced by `pacer` (its pod's bandwidth budget and share of worker time, see [`crate::fair_share`]).
pub async fn relay_halves<CR, CW, SR, SW>(
    mut client_read: CR,
    mut client_write: CW,
    mut server_read: SR,
    mut server_write: SW,
    timeouts: Timeouts,
    progress: &Progress,
    pacer: &Pacer,
) -> RelayOutcome
where
    CR: ChunkRead,
    CW: ChunkWrite,
    SR: ChunkRead,
    SW: ChunkWrite,
{
    let up = copy_until_eof(&mut client_read, &mut server_write, progress, &progress.client_to_server, pacer.direction());
    let down = copy_until_eof(&mut server_read, &mut client_write, progress, &progress.server_to_client, pacer.direction());
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut error = None;
    while !(up_done && down_done) {
        let limit = if up_done || down_done { timeouts.half_closed } else { timeouts.idle };
        let check_in = limit.saturating_sub(progress.silent_for());
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r { error = Some(e); break; }
            }
            r = &mut down, if !down_done => {
                down_done = true;
                if let Err(e) = r { error = Some(e); break; }
            }
            () = tokio::time::sleep(check_in) => {
                if progress.silent_for() >= limit {
                    let state = if up_done || down_done { "half-closed" } else { "idle" };
                    error = Some(io::Error::new(io::ErrorKind::TimedOut, format!("{state} for {} s", limit.as_secs())));
                    break;
                }
            }
        }
    }
    RelayOutcome::cut_short(progress, error)
}

/// Copies until EOF, then finishes the writer (half-close), counting every byte written into `counter`.
async fn copy_until_eof<R, W>(
    reader: &mut R,
    writer: &mut W,
    progress: &Progress,
    counter: &AtomicU64,
    mut pacer: DirectionPacer<'_>,
) -> io::Result<()>
where
    R: ChunkRead,
    W: ChunkWrite,
{
    loop {
        let mut chunk = poll_fn(|cx| reader.poll_chunk(cx)).await?;
        if chunk.is_empty() {
            return poll_fn(|cx| writer.poll_finish(cx)).await;
        }
        pacer.moved(chunk.len()).await;
        while !chunk.is_empty() {
            let before = chunk.len();
            poll_fn(|cx| writer.poll_write_chunk(cx, &mut chunk)).await?;
            progress.moved(counter, before - chunk.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair_share::PodShare;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_and_half_close() {
        // app <-> (client, server) <-> upstream
        let (mut app, mut client) = pair().await;
        let (mut server, mut upstream) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap(); // half-close: the app still reads the reply
            let mut reply = Vec::new();
            app.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap(); // EOF arrives only through the half-close
        assert_eq!(received, payload);
        upstream.write_all(b"done").await.unwrap();
        drop(upstream);
        assert_eq!(writer.await.unwrap(), b"done");
        let outcome = relay.await.unwrap();
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.client_to_server, payload.len() as u64);
        assert_eq!(outcome.server_to_client, 4);
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client() {
        let (mut app, mut client) = pair().await;
        let (mut server, upstream) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
        app.write_all(b"hello").await.unwrap();
        reset(&upstream);
        drop(upstream);
        let mut buf = [0u8; 16];
        let err = loop {
            match app.read(&mut buf).await {
                Ok(0) => panic!("clean EOF where a reset was expected"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(relay.await.unwrap().error.is_some());
    }

    #[tokio::test]
    async fn a_reset_reports_the_bytes_both_directions_moved() {
        let (mut app, mut client) = pair().await;
        let (mut server, mut upstream) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
        app.write_all(&[7u8; 3000]).await.unwrap();
        let mut got = vec![0u8; 3000];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(&[9u8; 500]).await.unwrap();
        let mut back = vec![0u8; 500];
        app.read_exact(&mut back).await.unwrap();
        reset(&upstream);
        drop(upstream);
        let outcome = relay.await.unwrap();
        assert!(outcome.error.is_some());
        // The direction that did not fail still counts what it moved (it was dropped on the first error before).
        assert_eq!((outcome.client_to_server, outcome.server_to_client), (3000, 500), "{outcome:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_ended_and_a_half_closed_one_too() {
        let timeouts = Timeouts { idle: Duration::from_millis(300), half_closed: Duration::from_millis(200) };
        let (mut app, mut client) = pair().await;
        let (mut server, upstream) = pair().await;
        let started = Instant::now();
        let relay = tokio::spawn(async move { relay(&mut client, &mut server, timeouts, &PodShare::unshared().pacer()).await });
        // Activity postpones the idle deadline.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            app.write_all(b"x").await.unwrap();
        }
        let outcome = relay.await.unwrap();
        let error = outcome.error.expect("an idle timeout");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("idle"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(850), "ended after {:?}, before the idle limit", started.elapsed());
        assert_eq!(outcome.client_to_server, 4);
        drop(upstream);

        let (mut app, mut client) = pair().await;
        let (mut server, _upstream) = pair().await;
        let half_closed = tokio::spawn(async move { super::relay(&mut client, &mut server, timeouts, &PodShare::unshared().pacer()).await });
        app.shutdown().await.unwrap();
        let error = half_closed.await.unwrap().error.expect("a half-closed timeout");
        assert!(error.to_string().contains("half-closed"), "{error}");
    }
}
