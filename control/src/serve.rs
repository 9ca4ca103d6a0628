//! `keel-control serve`: read the config directory, keep watching it, serve the translated snapshot over delta
//! ADS and workload certificates over the Istio CA API on the same port. A change on disk becomes a new snapshot within one poll interval and is pushed to every client at once.
//! Always over TLS (there is no plaintext mode), and with every connection bounded: see the constants below.
mod connections;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use keel_proto::{
    ca::istio_certificate_service_server::IstioCertificateServiceServer,
    discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use tokio::sync::watch;
use tracing::info;

use keel_mesh::{ca::Authority, config_dir::ConfigDir, translate::Mesh, watch::POLL_INTERVAL};

use crate::{
    ca_service::{CaService, NodeIdentities},
    tokens::Tokens,
    xds::server::AdsServer,
};

/// Server PINGs on every HTTP/2 connection this often, so a node that went away (powered off, partitioned: no
/// FIN, no RST) is noticed while its ADS stream would otherwise look merely idle; istiod's default too.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long closes the connection and every stream on it.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive under HTTP/2: probes start after this much silence, `TCP_KEEPALIVE_INTERVAL` apart, and after
/// `TCP_KEEPALIVE_RETRIES` unanswered ones the kernel closes the socket (also when a peer never finishes TLS).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const TCP_KEEPALIVE_RETRIES: u32 = 4;
/// A TLS handshake not done by then is dropped: an open socket that never speaks holds a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may have open at once. A node proxy holds one ADS stream and asks certificates for
/// the pods that start on its node, a burst of at most about a hundred; beyond this, its client queues.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// The request headers of one call (the bearer token and gRPC metadata are a few hundred bytes).
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Each call's handler must answer within this. For ADS this covers only opening the stream (the handler returns
/// the response stream at once), never the stream's life; `CreateCertificate` signs in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once: each node proxy holds two (xDS and CA), so about 2000 nodes. Past it, connections
/// wait in the listen backlog. The process's file descriptor limit must allow as many.
pub const MAX_CONNECTIONS: usize = 4096;

pub struct ServeOptions {
    pub config_dir: PathBuf,
    pub listen: SocketAddr,
    pub tokens: PathBuf,
    pub mesh: Mesh,
    /// istiod's plugged-in CA layout; generated there on first start when empty.
    pub ca_dir: PathBuf,
    pub trust_domain: String,
    /// Names the serving certificate carries (node proxies check one of them, or the IP they dial).
    pub server_names: Vec<String>,
}

pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let tokens = Arc::new(Tokens::load(&options.tokens)?);
    let authority = Arc::new(Authority::load_or_generate(&options.ca_dir, &options.trust_domain)?);
    let mut config = ConfigDir::new(&options.config_dir, options.mesh.clone());
    let first = config.poll().unwrap_or_default();
    let (publish, snapshots) = watch::channel(Arc::new(first));
    let (publish_identities, identities) = watch::channel(Arc::new(NodeIdentities::from_objects(&options.trust_domain, &config.objects())));
    let listener = tokio::net::TcpListener::bind(options.listen).await.with_context(|| format!("binding the xDS server on {}", options.listen))?;
    info!(listen = %options.listen, config = %options.config_dir.display(), "keel-control serving delta ADS");
    let (chain, key) = authority.issue_serving(&options.server_names, &[options.listen.ip()])?;
    let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(chain, key)).timeout(TLS_HANDSHAKE_TIMEOUT);
    // TCP options on the incoming sockets themselves: the builder's `tcp_*` settings apply only to a socket tonic
    // binds on its own (`serve(addr)`), not to `serve_with_incoming`.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .timeout(REQUEST_TIMEOUT)
        .add_service(AggregatedDiscoveryServiceServer::new(AdsServer::new(snapshots, tokens.clone())))
        .add_service(IstioCertificateServiceServer::new(CaService::new(authority, tokens, identities)))
        .serve_with_incoming(connections::limit(incoming, MAX_CONNECTIONS));
    let watcher = async {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if let Some(snapshot) = config.poll() {
                publish_identities.send_replace(Arc::new(NodeIdentities::from_objects(&options.trust_domain, &config.objects())));
                if **publish.borrow() != snapshot {
                    info!(types = ?snapshot.types.iter().map(|(t, r)| (t.rsplit('.').next().unwrap_or(t), r.len())).collect::<Vec<_>>(), "config changed: pushing");
                    publish.send_replace(Arc::new(snapshot));
                }
            }
        }
    };
    tokio::select! {
        served = server => served.context("xDS server"),
        () = watcher => Ok(()),
    }
}
