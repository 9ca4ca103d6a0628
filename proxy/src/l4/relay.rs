//! Byte relay between a captured client and its upstream: both directions at once, half-close carried over
//! (EOF on one side becomes a FIN, or an HBONE END_STREAM, on the other), a reset or error on either side resets
//! both. Bytes are counted as they move (in [`Progress`], which the caller owns), so a connection that is reset,
//! times out or is closed by a policy change still reports what really crossed it. A connection with no byte in
//! either direction for [`Timeouts::idle`](crate::limits::RelayTimeouts::idle), or whose remaining direction is silent for [`Timeouts::half_closed`](crate::limits::RelayTimeouts::half_closed)
//! after the other ended, is ended with a timeout error: a peer cannot hold keel's sockets forever.
//!
//! Bytes move as owned chunks (see [`crate::chunk_io`]), so the relay adds no copy of its own on the HBONE path.
//!
//! A TCP-to-TCP relay can also be *paused* ([`relay_pausable`]): each direction stops at once, keeping what it
//! had read and not yet written, so another keel can take both sockets and [`Resume`] where this one stopped
//! (see [`super::moving`]).
use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{net::TcpStream, sync::watch};

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

/// Both directions at once over any pair of byte streams given as halves (a TCP socket's, an HBONE stream's).
/// Stops at the first error or timeout, which the caller turns into resets on its own kind of stream. Each
/// direction is paced by `pacer` (its pod's bandwidth budget and share of worker time, see [`crate::fair_share`]).
pub async fn relay_halves<CR, CW, SR, SW>(
    client_read: CR,
    client_write: CW,
    server_read: SR,
    server_write: SW,
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
    let halves = Halves { client_read, client_write, server_read, server_write };
    match relay_from(halves, Resume::default(), timeouts, progress, pacer, None).await {
        Ended::Finished(outcome) => outcome,
        Ended::Paused(..) => unreachable!("a relay without a pause signal is never paused"),
    }
}

/// Where a relay starts: fresh, or where another keel paused it. Per direction: whether it had ended (EOF read
/// and passed on as a FIN) and the bytes it had read and not yet written, which go first.
#[derive(Debug, Default)]
pub struct Resume {
    pub up: DirectionState,
    pub down: DirectionState,
}

#[derive(Debug, Default)]
pub struct DirectionState {
    pub ended: bool,
    pub unwritten: Bytes,
}

/// How a pausable relay ended.
#[derive(Debug)]
pub enum Ended {
    Finished(RelayOutcome),
    /// Paused on request: both directions stopped, with what each still owed its writer (what moved until then
    /// is in the caller's [`Progress`]). The sockets are intact.
    Paused(Resume),
}

/// TCP to TCP, pausable: when `pause` (if any) flips to true both directions stop where they are and the relay
/// returns [`Ended::Paused`] (the sockets are left open and untouched). Starts from `resume`; counts into
/// `progress` (one `Progress` across a pause and a resume in this keel counts the whole connection). On an error
/// both sockets are reset: a failed direction ends both, and each peer learns the connection broke.
pub async fn relay_pausable(
    client: &mut TcpStream,
    server: &mut TcpStream,
    resume: Resume,
    timeouts: Timeouts,
    (progress, pacer): (&Progress, &Pacer),
    pause: Option<watch::Receiver<bool>>,
) -> Ended {
    let ended = {
        let (client_read, client_write) = socket(client.split());
        let (server_read, server_write) = socket(server.split());
        let halves = Halves { client_read, client_write, server_read, server_write };
        relay_from(halves, resume, timeouts, progress, pacer, pause).await
    };
    if matches!(&ended, Ended::Finished(outcome) if outcome.error.is_some()) {
        reset(client);
        reset(server);
    }
    ended
}

/// A relay's four halves.
struct Halves<CR, CW, SR, SW> {
    client_read: CR,
    client_write: CW,
    server_read: SR,
    server_write: SW,
}

async fn relay_from<CR, CW, SR, SW>(
    halves: Halves<CR, CW, SR, SW>,
    resume: Resume,
    timeouts: Timeouts,
    progress: &Progress,
    pacer: &Pacer,
    pause: Option<watch::Receiver<bool>>,
) -> Ended
where
    CR: ChunkRead,
    CW: ChunkWrite,
    SR: ChunkRead,
    SW: ChunkWrite,
{
    let Halves { mut client_read, mut client_write, mut server_read, mut server_write } = halves;
    let (mut up_done, mut down_done) = (resume.up.ended, resume.down.ended);
    let up = copy_until_eof(
        &mut client_read,
        &mut server_write,
        Counting { progress, counter: &progress.client_to_server },
        pacer.direction(),
        resume.up.unwritten,
        pause.clone(),
    );
    let down = copy_until_eof(
        &mut server_read,
        &mut client_write,
        Counting { progress, counter: &progress.server_to_client },
        pacer.direction(),
        resume.down.unwritten,
        pause,
    );
    tokio::pin!(up, down);
    let mut error = None;
    let mut paused =
        Resume { up: DirectionState { ended: up_done, ..Default::default() }, down: DirectionState { ended: down_done, ..Default::default() } };
    let mut was_paused = false;
    while !(up_done && down_done) {
        let limit = if up_done || down_done { timeouts.half_closed } else { timeouts.idle };
        let check_in = limit.saturating_sub(progress.silent_for());
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                match r {
                    Ok(Copied::Eof) => paused.up.ended = true,
                    Ok(Copied::Paused(unwritten)) => { was_paused = true; paused.up.unwritten = unwritten; }
                    Err(e) => { error = Some(e); break; }
                }
            }
            r = &mut down, if !down_done => {
                down_done = true;
                match r {
                    Ok(Copied::Eof) => paused.down.ended = true,
                    Ok(Copied::Paused(unwritten)) => { was_paused = true; paused.down.unwritten = unwritten; }
                    Err(e) => { error = Some(e); break; }
                }
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
    if was_paused && error.is_none() {
        return Ended::Paused(paused);
    }
    Ended::Finished(RelayOutcome::cut_short(progress, error))
}

/// How one direction's copy ended.
enum Copied {
    Eof,
    /// Paused, with the bytes read and not yet written.
    Paused(Bytes),
}

/// Where one direction counts what it wrote.
struct Counting<'a> {
    progress: &'a Progress,
    counter: &'a AtomicU64,
}

/// Writes `unwritten` first, then copies until EOF and finishes the writer (half-close), counting every byte
/// written. With a `pause` signal, stops as soon as it flips, returning what it had read and not yet written.
async fn copy_until_eof<R, W>(
    reader: &mut R,
    writer: &mut W,
    counting: Counting<'_>,
    mut pacer: DirectionPacer<'_>,
    unwritten: Bytes,
    mut pause: Option<watch::Receiver<bool>>,
) -> io::Result<Copied>
where
    R: ChunkRead,
    W: ChunkWrite,
{
    let mut chunk = unwritten;
    loop {
        while !chunk.is_empty() {
            let before = chunk.len();
            tokio::select! {
                written = poll_fn(|cx| writer.poll_write_chunk(cx, &mut chunk)) => written?,
                () = paused(&mut pause) => return Ok(Copied::Paused(chunk)),
            }
            counting.progress.moved(counting.counter, before - chunk.len());
        }
        chunk = tokio::select! {
            read = poll_fn(|cx| reader.poll_chunk(cx)) => read?,
            () = paused(&mut pause) => return Ok(Copied::Paused(Bytes::new())),
        };
        if chunk.is_empty() {
            poll_fn(|cx| writer.poll_finish(cx)).await?;
            return Ok(Copied::Eof);
        }
        // A relay waiting for its pod's bandwidth budget pauses as promptly as one waiting on a socket.
        tokio::select! {
            () = pacer.moved(chunk.len()) => {}
            () = paused(&mut pause) => return Ok(Copied::Paused(chunk)),
        }
    }
}

/// Resolves once `pause` is set to true; never without a signal (or once its sender is gone).
async fn paused(pause: &mut Option<watch::Receiver<bool>>) {
    if let Some(signal) = pause {
        if signal.wait_for(|paused| *paused).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair_share::PodShare;
    use std::os::fd::AsFd as _;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A fresh, unpausable TCP relay to its end.
    async fn relay_to_end(client: &mut TcpStream, server: &mut TcpStream, timeouts: Timeouts, pacer: &Pacer) -> RelayOutcome {
        match relay_pausable(client, server, Resume::default(), timeouts, (&Progress::default(), pacer), None).await {
            Ended::Finished(outcome) => outcome,
            Ended::Paused(..) => unreachable!("no pause signal"),
        }
    }

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
        let relay = tokio::spawn(async move { relay_to_end(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
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
        let relay = tokio::spawn(async move { relay_to_end(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
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
        let relay = tokio::spawn(async move { relay_to_end(&mut client, &mut server, Timeouts::default(), &PodShare::unshared().pacer()).await });
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
        let relay = tokio::spawn(async move { relay_to_end(&mut client, &mut server, timeouts, &PodShare::unshared().pacer()).await });
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
        let half_closed = tokio::spawn(async move { relay_to_end(&mut client, &mut server, timeouts, &PodShare::unshared().pacer()).await });
        app.shutdown().await.unwrap();
        let error = half_closed.await.unwrap().error.expect("a half-closed timeout");
        assert!(error.to_string().contains("half-closed"), "{error}");
    }

    #[tokio::test]
    async fn a_paused_relay_resumes_on_copies_of_its_sockets_with_nothing_lost() {
        let (mut app, mut client) = pair().await;
        let (mut server, mut upstream) = pair().await;
        let (pause, signal) = watch::channel(false);
        let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap();
            let mut reply = Vec::new();
            app.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let first = tokio::spawn(async move {
            let (share, progress) = (PodShare::unshared(), Progress::default());
            let ended =
                relay_pausable(&mut client, &mut server, Resume::default(), Timeouts::default(), (&progress, &share.pacer()), Some(signal)).await;
            // What a surrender hands on: copies of both sockets (the originals close here, untouched).
            let copies = (client.as_fd().try_clone_to_owned().unwrap(), server.as_fd().try_clone_to_owned().unwrap());
            (ended, copies, progress.client_to_server())
        });
        // Read slowly at first so the relay holds unwritten bytes when it pauses.
        let mut received = vec![0u8; 1_000_000];
        upstream.read_exact(&mut received).await.unwrap();
        pause.send(true).unwrap();
        let (ended, (client_fd, server_fd), moved) = first.await.unwrap();
        let Ended::Paused(state) = ended else { panic!("not paused: {ended:?}") };
        assert!(moved >= 1_000_000, "{moved} bytes moved before the pause");
        assert!(!state.up.ended && !state.down.ended);
        let as_stream = |fd: std::os::fd::OwnedFd| {
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true).unwrap();
            TcpStream::from_std(stream).unwrap()
        };
        let (mut client, mut server) = (as_stream(client_fd), as_stream(server_fd));
        let second = tokio::spawn(async move {
            let share = PodShare::unshared();
            relay_pausable(&mut client, &mut server, state, Timeouts::default(), (&Progress::default(), &share.pacer()), None).await
        });
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        received.extend_from_slice(&rest);
        assert!(received == payload, "{} bytes arrived of {}, or out of order", received.len(), payload.len());
        upstream.write_all(b"done").await.unwrap();
        drop(upstream);
        assert_eq!(writer.await.unwrap(), b"done");
        let Ended::Finished(outcome) = second.await.unwrap() else { panic!("the resumed relay paused") };
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.client_to_server + moved, payload.len() as u64);
    }
}
