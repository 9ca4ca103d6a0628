//! How a gateway connection opens, read from its first bytes without consuming them: the chain that takes the
//! connection reads them again (TLS termination) or forwards them untouched (passthrough, plain TCP). A
//! ClientHello split over several segments is waited for; the caller bounds the wait.
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// A TLS record of type handshake starts with this byte; anything else is not a ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;
/// The most keel peeks at: a ClientHello larger than this (several KiB is already unusual) is refused.
const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// Between peeks while a ClientHello is incomplete (peek returns what is there at once).
const REPEEK_AFTER: Duration = Duration::from_millis(5);

#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// Not TLS.
    Plain,
    /// A TLS ClientHello, with the name it asks for.
    Tls { sni: Option<String> },
}

pub async fn peek(stream: &TcpStream) -> Result<Opening, String> {
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| format!("reading the connection's first bytes: {e}"))?;
        if n == 0 {
            return Err("the client closed before sending anything".into());
        }
        if buf[0] != TLS_HANDSHAKE {
            return Ok(Opening::Plain);
        }
        match parse(&buf[..n])? {
            Some(opening) => return Ok(opening),
            None if n == buf.len() => return Err(format!("a ClientHello larger than {MAX_CLIENT_HELLO} bytes")),
            None => tokio::time::sleep(REPEEK_AFTER).await,
        }
    }
}

/// The opening in `bytes`, or `None` when the ClientHello is not complete yet.
fn parse(bytes: &[u8]) -> Result<Option<Opening>, String> {
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(Some(Opening::Tls { sni: accepted.client_hello().server_name().map(str::to_owned) })),
        Ok(None) => Ok(None),
        Err((e, _)) => Err(format!("not a TLS ClientHello: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a rustls client naming `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(Arc::new(config), sni.to_owned().try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_sni_is_read_once_the_whole_client_hello_is_there() {
        let hello = client_hello("pass.example.com");
        assert_eq!(parse(&hello).unwrap(), Some(Opening::Tls { sni: Some("pass.example.com".into()) }));
        // Split across segments: not decided until the rest arrives.
        assert_eq!(parse(&hello[..hello.len() / 2]).unwrap(), None);
        assert!(parse(b"\x16\x03\x01\x00\x05hello").is_err());
    }
}
