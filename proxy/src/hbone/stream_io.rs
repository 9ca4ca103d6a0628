//! An HBONE stream as byte-stream halves, so the same relay that joins two TCP sockets joins a socket and a
//! tunnel: DATA frames are the bytes, END_STREAM is the half-close, RST_STREAM is the reset.
use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::chunk_io::{ChunkRead, ChunkWrite};

/// Largest DATA frame payload keel queues at once; h2 splits by the peer's max frame size anyway.
const MAX_CHUNK: usize = 256 * 1024;

/// The receiving half: DATA frames in order; flow-control credit is returned as soon as keel has taken the
/// bytes, so the window (4 MiB per stream) bounds what a slow reader buffers.
pub struct TunnelReader {
    recv: RecvStream,
    pending: Bytes,
}

impl TunnelReader {
    pub fn new(recv: RecvStream) -> TunnelReader {
        TunnelReader { recv, pending: Bytes::new() }
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    // A stream the peer reset (or a connection that went away) is a reset of the tunnelled connection.
    if e.is_reset() || e.is_go_away() || e.is_io() {
        io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
    } else {
        io::Error::other(e)
    }
}

impl TunnelReader {
    /// Fills `pending` with the next DATA frame's bytes; leaves it empty at END_STREAM.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => break, // END_STREAM: EOF
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TunnelReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The relay takes each DATA frame's payload as h2 received it: no copy.
impl ChunkRead for TunnelReader {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        ready!(self.poll_pending(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut self.pending)))
    }
}

/// The sending half. Writes wait for stream and connection window, so a slow peer slows the sender.
pub struct TunnelWriter {
    send: SendStream<Bytes>,
    finished: bool,
}

impl TunnelWriter {
    pub fn new(send: SendStream<Bytes>) -> TunnelWriter {
        TunnelWriter { send, finished: false }
    }

    /// RST_STREAM(CANCEL): the tunnelled connection broke on this side.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }
}

impl TunnelWriter {
    /// Waits for window to send up to `len` bytes (≥ 1); returns how many may go now.
    fn poll_window(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let wanted = len.min(MAX_CHUNK);
        self.send.reserve_capacity(wanted);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => return Poll::Ready(Ok(granted.min(wanted))),
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed"))),
            }
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Ok(())
    }
}

impl AsyncWrite for TunnelWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_window(cx, buf.len()))?;
        self.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

/// The relay's chunk becomes the DATA frame itself (split where the window ends): no copy.
impl ChunkWrite for TunnelWriter {
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        let n = ready!(self.poll_window(cx, chunk.len()))?;
        self.send.send_data(chunk.split_to(n), false).map_err(h2_error)?;
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}
