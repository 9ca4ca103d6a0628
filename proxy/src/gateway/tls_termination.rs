//! A gateway's TLS termination for one connection, with the server config of the chain its ClientHello picked
//! (see [`super::client_hello`]) from the snapshot of that moment: a rotated certificate applies from the next
//! handshake. Bounded by the handshake timeout keel puts on HBONE handshakes.
use std::{sync::Arc, time::Duration};

use rustls::{server::Acceptor, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

pub async fn terminate(stream: TcpStream, config: Arc<ServerConfig>, timeout: Duration) -> Result<TlsStream<TcpStream>, String> {
    tokio::time::timeout(timeout, async move {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await.map_err(|e| format!("reading the ClientHello: {e}"))?;
        start.into_stream(config).await.map_err(|e| format!("TLS handshake: {e}"))
    })
    .await
    .map_err(|_| format!("TLS handshake not done within {timeout:?}"))?
}
