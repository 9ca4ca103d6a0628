//! Benchmark responder: keel answers each HTTP/1.1 request on a captured outbound connection itself, with a fixed
//! `200 OK`, and never connects upstream. Comparing capture backends with it measures what capture costs without
//! what relaying costs (`keel run --responder`; never for production traffic).
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const END_OF_HEADERS: &[u8] = b"\r\n\r\n";

/// Serves requests without bodies (GET/HEAD, as load generators send) until the client closes.
/// Returns (bytes read, bytes written).
pub async fn respond(client: &mut TcpStream) -> std::io::Result<(u64, u64)> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let (mut read, mut written) = (0u64, 0u64);
    loop {
        let n = client.read(&mut buffer).await?;
        if n == 0 {
            return Ok((read, written));
        }
        read += n as u64;
        pending.extend_from_slice(&buffer[..n]);
        let complete = count_complete_requests(&mut pending);
        if complete > 0 {
            let answers = RESPONSE.repeat(complete);
            client.write_all(&answers).await?;
            written += answers.len() as u64;
        }
    }
}

/// Counts the request heads in `pending` and drops them, keeping a partial head for the next read.
fn count_complete_requests(pending: &mut Vec<u8>) -> usize {
    let mut complete = 0;
    let mut consumed = 0;
    while let Some(end) = pending[consumed..].windows(END_OF_HEADERS.len()).position(|w| w == END_OF_HEADERS) {
        consumed += end + END_OF_HEADERS.len();
        complete += 1;
    }
    pending.drain(..consumed);
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pipelined_and_partial_requests() {
        let mut pending = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /x HT".to_vec();
        assert_eq!(count_complete_requests(&mut pending), 2);
        assert_eq!(pending, b"GET /x HT");
        pending.extend_from_slice(b"TP/1.1\r\n\r\n");
        assert_eq!(count_complete_requests(&mut pending), 1);
        assert!(pending.is_empty());
    }
}
