//! Byte relay between a captured client and its upstream: both directions at once, half-close carried over
//! (EOF on one side becomes a FIN, or an HBONE END_STREAM, on the other), a reset or error on either side resets
//! both.
use std::io;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Buffers start small (most connections are short request/response) and grow for bulk transfers.
const SMALL_BUFFER: usize = 16 * 1024;
const LARGE_BUFFER: usize = 256 * 1024;
/// Consecutive full reads after which a direction counts as bulk and gets the large buffer.
const FULL_READS_TO_GROW: u32 = 4;

#[derive(Debug, Default)]
pub struct RelayOutcome {
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub error: Option<io::Error>,
}

/// TCP to TCP: on an error both sockets are reset.
pub async fn relay(client: &mut TcpStream, server: &mut TcpStream) -> RelayOutcome {
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        relay_halves(client_read, client_write, server_read, server_write).await
    };
    if outcome.error.is_some() {
        // A failed direction ends both: close with RST so each peer learns the connection broke.
        reset(client);
        reset(server);
    }
    outcome
}

/// Both directions at once over any pair of byte streams given as halves (a TCP socket's, an HBONE stream's).
/// Stops at the first error, which the caller turns into resets on its own kind of stream.
pub async fn relay_halves<CR, CW, SR, SW>(mut client_read: CR, mut client_write: CW, mut server_read: SR, mut server_write: SW) -> RelayOutcome
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let mut outcome = RelayOutcome::default();
    let up = copy_until_eof(&mut client_read, &mut server_write);
    let down = copy_until_eof(&mut server_read, &mut client_write);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            (bytes, r) = &mut up, if !up_done => {
                up_done = true;
                outcome.client_to_server = bytes;
                if let Err(e) = r { outcome.error = Some(e); break; }
            }
            (bytes, r) = &mut down, if !down_done => {
                down_done = true;
                outcome.server_to_client = bytes;
                if let Err(e) = r { outcome.error = Some(e); break; }
            }
        }
    }
    outcome
}

/// Copies until EOF, then shuts down the writer (half-close). Returns the bytes copied even on error.
async fn copy_until_eof<R, W>(reader: &mut R, writer: &mut W) -> (u64, io::Result<()>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut copied = 0u64;
    let mut buffer = vec![0u8; SMALL_BUFFER];
    let mut full_reads = 0;
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) => return (copied, writer.shutdown().await),
            Ok(n) => n,
            Err(e) => return (copied, Err(e)),
        };
        if let Err(e) = writer.write_all(&buffer[..n]).await {
            return (copied, Err(e));
        }
        copied += n as u64;
        if n == buffer.len() && buffer.len() < LARGE_BUFFER {
            full_reads += 1;
            if full_reads >= FULL_READS_TO_GROW {
                buffer.resize(LARGE_BUFFER, 0);
            }
        } else {
            full_reads = 0;
        }
    }
}

/// Makes the next close send RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
        let relay = tokio::spawn(async move { relay(&mut client, &mut server).await });
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
        let relay = tokio::spawn(async move { relay(&mut client, &mut server).await });
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
}
