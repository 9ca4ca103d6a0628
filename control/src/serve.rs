//! `keel-control serve`: follow the config (a directory, or the Kubernetes API), serve the translated snapshot over
//! delta ADS and workload certificates over the Istio CA API on the same port. A change becomes a new snapshot and
//! is pushed to every client at once. The port is bound only once the config is complete (the directory read, or
//! every Kubernetes kind listed once). Always over TLS (there is no plaintext mode), and with every connection
//! bounded: see the constants below.
mod connections;
mod monitoring;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use keel_proto::{
    ca::istio_certificate_service_server::IstioCertificateServiceServer,
    discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use tokio::sync::watch;
use tracing::info;

use keel_mesh::{
    ca::Authority,
    config_dir::ConfigDir,
    snapshot::Snapshot,
    translate::{Membership, Mesh},
    watch::POLL_INTERVAL,
};

use crate::{
    ca_service::{CaService, NodeIdentities},
    client_auth::ClientAuth,
    jwks::JwksCache,
    kubernetes::{self, token_review::TokenReviewer},
    metrics::ControlMetrics,
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

/// Where the config comes from, and with it how node proxies authenticate.
pub enum ConfigSource {
    /// A directory of YAML objects, polled; clients present a token from the tokens file
    /// (`<token> <node-name>` per line).
    Directory { config_dir: PathBuf, tokens: PathBuf },
    /// The Kubernetes API (the kubeconfig given, else the in-cluster config); pods join the mesh by Istio's ambient
    /// labels, and clients present a ServiceAccount token the API server reviews.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        /// The audiences a node proxy's token must be valid for.
        token_audiences: Vec<String>,
        /// `namespace/name` of the ServiceAccounts node proxies run as.
        node_proxy_accounts: Vec<String>,
        /// This replica (the Lease's holder identity, its namespace).
        replica: kubernetes::Replica,
    },
}

pub struct ServeOptions {
    pub source: ConfigSource,
    pub listen: SocketAddr,
    pub mesh: Mesh,
    /// istiod's plugged-in CA layout; generated there on first start when empty.
    pub ca_dir: PathBuf,
    pub trust_domain: String,
    /// Names the serving certificate carries (node proxies check one of them, or the IP they dial).
    pub server_names: Vec<String>,
    /// The monitoring port, if any: `GET /ready` (the kubelet's readiness probe) and `GET /metrics` (Prometheus).
    pub readiness_addr: Option<SocketAddr>,
    /// How often `jwksUri` key sets are fetched again.
    pub jwks_refresh: std::time::Duration,
}

/// The task that follows the config source and publishes what it makes.
type Feed = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let authority = Arc::new(Authority::load_or_generate(&options.ca_dir, &options.trust_domain)?);
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (publish_identities, identities) = watch::channel(Arc::new(NodeIdentities::default()));
    let (publish_synced, mut synced) = watch::channel(false);
    let key_sets = JwksCache::new(options.jwks_refresh);
    tokio::spawn(key_sets.clone().run());
    let (auth, mut feed, source): (ClientAuth, Feed, String) = match options.source {
        ConfigSource::Directory { config_dir, tokens } => {
            let tokens = Tokens::load(&tokens)?;
            let mut config = ConfigDir::new(&config_dir, options.mesh.clone()).with_key_sets(key_sets.clone());
            let mut key_set_changes = key_sets.changes();
            publish.send_replace(Arc::new(config.poll().unwrap_or_default()));
            publish_identities.send_replace(Arc::new(NodeIdentities::from_objects(&options.trust_domain, &config.objects())));
            publish_synced.send_replace(true);
            let trust_domain = options.trust_domain.clone();
            let feed = async move {
                loop {
                    let polled = tokio::select! {
                        () = tokio::time::sleep(POLL_INTERVAL) => config.poll(),
                        // A fetched key set changed: the same objects, translated again.
                        Ok(()) = key_set_changes.changed() => config.republish(),
                    };
                    if let Some(snapshot) = polled {
                        publish_identities.send_replace(Arc::new(NodeIdentities::from_objects(&trust_domain, &config.objects())));
                        if **publish.borrow() != snapshot {
                            info!(types = ?snapshot.types.iter().map(|(t, r)| (t.rsplit('.').next().unwrap_or(t), r.len())).collect::<Vec<_>>(), "config changed: pushing");
                            publish.send_replace(Arc::new(snapshot));
                        }
                    }
                }
            };
            (ClientAuth::TokensFile(tokens), Box::pin(feed), config_dir.display().to_string())
        }
        ConfigSource::Kubernetes { kubeconfig, token_audiences, node_proxy_accounts, replica } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            let reviewer = TokenReviewer::new(client.clone(), token_audiences, node_proxy_accounts, identities.clone());
            let mesh = Mesh { membership: Membership::AmbientLabels, ..options.mesh.clone() };
            let outputs = kubernetes::Outputs { snapshots: publish, identities: publish_identities, synced: publish_synced };
            let feed = kubernetes::run(client, mesh, options.trust_domain.clone(), replica, outputs, key_sets.clone());
            (ClientAuth::TokenReview(Box::new(reviewer)), Box::pin(feed), "the Kubernetes API".to_owned())
        }
    };
    let metrics = ControlMetrics::new();
    let readiness: Feed = match options.readiness_addr {
        Some(addr) => Box::pin(monitoring::serve(addr, synced.clone(), metrics.clone())),
        None => Box::pin(std::future::pending()),
    };
    let mut readiness = tokio::spawn(readiness);
    // Nothing is served before the config is complete: a node proxy must never be told "no workloads, no policies"
    // because keel-control had not read them yet.
    tokio::select! {
        fed = &mut feed => return fed.and_then(|()| anyhow::bail!("the config source ended before it was complete")),
        ended = &mut readiness => return Err(readiness_ended(ended)),
        _ = synced.wait_for(|synced| *synced) => {}
    }
    let auth = Arc::new(auth);
    let listener = tokio::net::TcpListener::bind(options.listen).await.with_context(|| format!("binding the xDS server on {}", options.listen))?;
    info!(listen = %options.listen, config = %source, "keel-control serving delta ADS");
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
        .add_service(AggregatedDiscoveryServiceServer::new(AdsServer::new(snapshots, auth.clone(), metrics.clone())))
        .add_service(IstioCertificateServiceServer::new(CaService::new(authority, auth, identities, metrics)))
        .serve_with_incoming(connections::limit(incoming, MAX_CONNECTIONS));
    tokio::select! {
        served = server => served.context("xDS server"),
        fed = feed => fed.and_then(|()| anyhow::bail!("the config source ended")),
        ended = readiness => Err(readiness_ended(ended)),
    }
}

fn readiness_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Err(e)) => e.context("readiness endpoint"),
        Ok(Ok(())) => anyhow::anyhow!("readiness endpoint ended"),
        Err(e) => anyhow::Error::new(e).context("readiness endpoint"),
    }
}

/// A client for the API server of the kubeconfig given, else of the cluster keel-control runs in.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("in-cluster Kubernetes config (or pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}
