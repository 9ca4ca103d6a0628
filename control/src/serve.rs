//! `keel-control serve`: read the config directory, keep watching it, serve the translated snapshot over delta
//! ADS and workload certificates over the Istio CA API on the same port. A change on disk becomes a new snapshot within one poll interval and is pushed to every client at once.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use keel_proto::{
    ca::istio_certificate_service_server::IstioCertificateServiceServer,
    discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use tokio::sync::watch;
use tracing::info;

use crate::{
    ca::Authority,
    ca_service::{CaService, NodeIdentities},
    config_dir::ConfigDir,
    tokens::Tokens,
    translate::Mesh,
    watch::POLL_INTERVAL,
    xds::server::AdsServer,
};

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
    let (publish_identities, identities) =
        watch::channel(Arc::new(NodeIdentities::from_objects(&options.trust_domain, &config.objects())));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding the xDS server on {}", options.listen))?;
    info!(listen = %options.listen, config = %options.config_dir.display(), "keel-control serving delta ADS");
    let (chain, key) = authority.issue_serving(&options.server_names, &[options.listen.ip()])?;
    let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(chain, key));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .add_service(AggregatedDiscoveryServiceServer::new(AdsServer::new(snapshots, tokens.clone())))
        .add_service(IstioCertificateServiceServer::new(CaService::new(authority, tokens, identities)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
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
