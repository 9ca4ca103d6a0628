//! A gateway's TLS termination for one connection: read the ClientHello, pick the listener's filter chain by
//! its SNI (Envoy's order, see [`ListenerConfig::tls_chain`]), and finish the handshake with that chain's
//! server config from the snapshot of that moment (so a rotated certificate applies from the next handshake).
//! The whole exchange is bounded by the handshake timeout keel puts on HBONE handshakes; a connection that
//! matches no chain, or whose chain's secret is not there, is closed without a handshake.
use std::{sync::Arc, time::Duration};

use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use crate::xds::state::Snapshot;

/// The terminated stream and the name of the chain that serves it.
pub type Terminated = (TlsStream<TcpStream>, Arc<str>);

pub async fn terminate(stream: TcpStream, port: u16, snapshot: impl Fn() -> Arc<Snapshot>, timeout: Duration) -> Result<Terminated, String> {
    tokio::time::timeout(timeout, async move {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await.map_err(|e| format!("reading the ClientHello: {e}"))?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let snapshot = snapshot();
        let listener = snapshot.l7.listeners_by_port.get(&port).ok_or_else(|| format!("no listener on port {port} any more"))?;
        let chain = listener.tls_chain(sni.as_deref()).ok_or_else(|| format!("no filter chain for SNI {sni:?}"))?;
        if sni.is_none() && chain.tls.as_ref().is_some_and(|t| t.require_sni) {
            return Err(format!("chain {} requires SNI; the client sent none", chain.name));
        }
        let config = snapshot.l7.server_config(listener, chain).map_err(|why| format!("chain {}: {why}", chain.name))?;
        let chain_name: Arc<str> = Arc::from(chain.name.as_str());
        drop(snapshot);
        let tls = start.into_stream(config).await.map_err(|e| format!("TLS handshake for SNI {sni:?}: {e}"))?;
        Ok((tls, chain_name))
    })
    .await
    .map_err(|_| format!("TLS handshake not done within {timeout:?}"))?
}
