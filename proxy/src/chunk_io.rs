//! Byte streams as owned chunks, for the relay: what keel reads from a socket is handed to an HBONE stream as the
//! DATA frame itself, and a DATA frame received is written to a socket from where h2 put it. A copy per byte per
//! keel less than reading into a buffer of the relay's and copying out of it.
use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// Buffers start small (most connections are short request/response) and grow for bulk transfers. The sizes leave
/// room for HTTP/2's 9-byte frame header, so a chunk sent as one DATA frame fills whole 16 KiB TLS records.
const SMALL_BUFFER: usize = 16 * 1024 - 9;
const LARGE_BUFFER: usize = 16 * 16 * 1024 - 9;
/// Consecutive full reads after which a direction counts as bulk and gets the large buffer.
const FULL_READS_TO_GROW: u32 = 4;

/// One direction's source: the next bytes as an owned chunk. An empty chunk is the end of the stream.
pub trait ChunkRead {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>>;
}

/// One direction's destination.
pub trait ChunkWrite {
    /// Takes a non-empty prefix of `chunk` (the chunk is advanced past it).
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>>;
    /// The half-close: a FIN, an END_STREAM.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<W: ChunkWrite> ChunkWrite for &mut W {
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        (**self).poll_write_chunk(cx, chunk)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_finish(cx)
    }
}

/// The read half of a socket as a chunk source: reads into one buffer that starts small and grows once a direction
/// proves to be bulk. A chunk written to a socket is dropped before the next read, so the buffer's memory is reused;
/// one still queued in an HBONE stream keeps its memory, and the next read gets a new buffer.
pub struct SocketReader<R> {
    inner: R,
    buffer: BytesMut,
    read_size: usize,
    full_reads: u32,
}

impl<R> SocketReader<R> {
    pub fn new(inner: R) -> SocketReader<R> {
        SocketReader { inner, buffer: BytesMut::new(), read_size: SMALL_BUFFER, full_reads: 0 }
    }
}

impl<R: AsyncRead + Unpin> ChunkRead for SocketReader<R> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        if self.buffer.capacity() < self.read_size {
            self.buffer.reserve(self.read_size);
        }
        // The buffer may hold more than asked for (a reclaimed or grown allocation): a read never exceeds the size
        // that keeps an HBONE frame within whole TLS records.
        let mut room = (&mut self.buffer).limit(self.read_size);
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut room))?;
        if n >= self.read_size && self.read_size < LARGE_BUFFER {
            self.full_reads += 1;
            if self.full_reads >= FULL_READS_TO_GROW {
                self.read_size = LARGE_BUFFER;
            }
        } else {
            self.full_reads = 0;
        }
        Poll::Ready(Ok(self.buffer.split().freeze()))
    }
}

/// The write half of a socket as a chunk destination.
pub struct SocketWriter<W>(pub W);

impl<W: AsyncWrite + Unpin> ChunkWrite for SocketWriter<W> {
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_write(cx, chunk))? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => {
                chunk.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Both halves of a socket, for [`relay_halves`].
pub fn socket<R, W>((read, write): (R, W)) -> (SocketReader<R>, SocketWriter<W>) {
    (SocketReader::new(read), SocketWriter(write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    #[tokio::test]
    async fn a_socket_reader_hands_out_every_byte_in_order_and_grows_for_bulk() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (sender, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (mut sender, (receiver, _)) = (sender.unwrap(), accepted.unwrap());
        let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            sender.write_all(&sent).await.unwrap();
            sender.shutdown().await.unwrap();
        });
        let mut reader = SocketReader::new(receiver);
        let (mut received, mut largest) = (Vec::new(), 0);
        loop {
            let chunk = poll_fn(|cx| reader.poll_chunk(cx)).await.unwrap();
            if chunk.is_empty() {
                break; // EOF
            }
            largest = largest.max(chunk.len());
            received.extend_from_slice(&chunk);
        }
        writer.await.unwrap();
        assert_eq!(received, payload);
        assert!(largest > SMALL_BUFFER && largest <= LARGE_BUFFER, "largest chunk {largest}: the buffer never grew");
    }
}
