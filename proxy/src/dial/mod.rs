//! Reaching an endpoint from inside a pod, as the pod itself would have: the three ways a planned connection
//! (see [`crate::plan`]) leaves keel, used alike by the L4 relay and the L7 engine's upstream pools.
//! - **direct**: plain TCP from the pod's namespace;
//! - **same node**: plain TCP to a pod keel serves itself, registered in [`local_peers`] with the source's
//!   identity so the inbound side authorizes it as mTLS would have;
//! - **HBONE**: an mTLS HTTP/2 CONNECT stream to the destination's 15008, presenting the source workload's
//!   certificate ([`Dialer::open_tunnel`]).
//!
//! Below `l4`, `l7` and `upstream`; imports only `plan` (routes and paths), `hbone` (the client), `sockets`,
//! `identity` and `netns`. Failures are [`DialError`]s.
pub mod local_peers;

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use keel_ebpf_common::HBONE_PORT;
use keel_proto::workload::Workload;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    hbone::{
        client::{ClientTls, Dial, HboneClient, HboneError, PoolKey, Tunnel},
        headers::ConnectRequest,
    },
    identity::{tls, CertificateManager, Identity},
    netns::Netns,
    plan::{destination::Route, Path},
    sockets,
};
use local_peers::{LocalPeer, LocalPeers, Registration};

/// Why an endpoint could not be reached. The texts are what logs and `keel connections` have always shown.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed or timed out (keel's `--connect-timeout`).
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, io::Error),
    /// The connected socket has no local address (it died at once).
    #[error("{0}")]
    LocalAddress(io::Error),
    #[error("no certificate source")]
    NoCertificates,
    #[error("no destination workload")]
    NoDestinationWorkload,
    /// The HBONE tunnel could not be opened (TCP, mTLS, HTTP/2 or the CONNECT answer).
    #[error(transparent)]
    Hbone(#[from] HboneError),
    /// The L7 cluster's own `connect_timeout` ran out first.
    #[error("connect to {0} timed out after {1:?} (the cluster's connect_timeout)")]
    ClusterConnectTimeout(SocketAddrV4, Duration),
    /// The TLS keel originates to the upstream could not be set up (unusable settings, or the handshake failed).
    #[error("TLS origination to {0}: {1}")]
    UpstreamTls(SocketAddrV4, String),
}

/// The addresses of the pods enrolled on this node, read on every outbound connection, written on enrollment.
#[derive(Default)]
pub struct NodePods(ArcSwap<HashSet<IpAddr>>);

impl NodePods {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.load().contains(&ip)
    }

    pub fn set(&self, ips: HashSet<IpAddr>) {
        self.0.store(Arc::new(ips));
    }
}

/// The pod a connection is made from.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub netns: &'a Netns,
    pub ip: Ipv4Addr,
}

/// What dialling needs, node-wide.
pub struct Dialer {
    pub hbone: Arc<HboneClient>,
    /// Workload certificates for mTLS; `None` when keel has no control plane or local CA to get them from.
    pub certificates: Option<CertificateManager>,
    /// The pods enrolled on this node (their traffic to each other stays inside the node).
    pub node_pods: NodePods,
    pub local_peers: Arc<LocalPeers>,
    pub cluster_id: String,
    /// keel's own connect timeout (`--connect-timeout`).
    pub connect_timeout: Duration,
}

impl Dialer {
    /// Connects from inside `from` to `upstream`; the registration (held as long as the connection) tells the
    /// inbound side of a same-node pod who the source is.
    /// `plain_l4`: keel carries the connection as bytes (no L7), so the inbound side may let the pair bypass it later.
    pub async fn connect_direct(
        &self,
        from: Origin<'_>,
        upstream: SocketAddrV4,
        source_identity: Option<Identity>,
        plain_l4: bool,
    ) -> Result<(TcpStream, Option<Registration>), DialError> {
        let stream = sockets::connect_from_pod(from.netns, upstream, self.connect_timeout).await.map_err(|e| DialError::Connect(upstream, e))?;
        let registration = if self.node_pods.contains(IpAddr::V4(*upstream.ip())) {
            let local = stream.local_addr().map_err(DialError::LocalAddress)?;
            let bypass_from = (plain_l4 && source_identity.is_some()).then(|| from.netns.cookie());
            Some(self.local_peers.register(local, SocketAddr::V4(upstream), LocalPeer { identity: source_identity, bypass_from }))
        } else {
            None
        };
        Ok((stream, registration))
    }

    /// An HBONE CONNECT stream from `from`, presenting `source`'s certificate, to `route`'s upstream on its node
    /// (pooled: streams share the mTLS connection per source and destination identity).
    pub async fn open_tunnel(
        &self,
        from: Origin<'_>,
        source: &Workload,
        route: &Route,
        client: SocketAddr,
        service_host: Option<&str>,
    ) -> Result<Tunnel, DialError> {
        let certificates = self.certificates.clone().ok_or(DialError::NoCertificates)?;
        let destination = route.workload.as_ref().ok_or(DialError::NoDestinationWorkload)?;
        let source_identity = Identity::of_workload(source);
        let expected = expected_identities(route, destination);
        let key = PoolKey {
            source_identity: source_identity.clone(),
            destination_identity: expected[0].clone(),
            source_ip: IpAddr::V4(from.ip),
            destination_ip: IpAddr::V4(*route.upstream.ip()),
        };
        let request =
            ConnectRequest { target: SocketAddr::V4(route.upstream), client, service_host, source: Some(source), cluster_id: &self.cluster_id }
                .build();
        let dial = Dial {
            netns: from.netns,
            peer: SocketAddrV4::new(*route.upstream.ip(), HBONE_PORT),
            connect_timeout: self.connect_timeout,
            tls: || async move {
                let certificate = certificates.certificate(&source_identity).await?;
                Ok(ClientTls { config: tls::client_config(&certificate, expected)?, certificate_expiry: certificate.not_after })
            },
        };
        Ok(self.hbone.open(key, dial, request).await?)
    }

    /// A connection to an L7 endpoint, reached the way `path` says (see [`crate::plan::choose_path`]), given
    /// up after the cluster's `connect_timeout` (keel's own connect timeout applies too; the shorter wins).
    pub async fn endpoint(
        &self,
        from: Origin<'_>,
        source: Option<&Arc<Workload>>,
        route: &Route,
        path: Path,
        connect_timeout: Duration,
    ) -> Result<UpstreamIo, DialError> {
        let endpoint = route.upstream;
        let connect = async {
            let client = SocketAddr::V4(SocketAddrV4::new(from.ip, 0));
            match (path, source) {
                (Path::Hbone, Some(source)) => {
                    let tunnel = self.open_tunnel(from, source, route, client, None).await?;
                    Ok(UpstreamIo::Hbone(Box::new(tunnel)))
                }
                (Path::SameNode, Some(source)) => {
                    let (stream, registration) = self.connect_direct(from, endpoint, Some(Identity::of_workload(source)), false).await?;
                    Ok(UpstreamIo::Tcp(stream, registration, Path::SameNode))
                }
                _ => {
                    let (stream, registration) = self.connect_direct(from, endpoint, None, false).await?;
                    Ok(UpstreamIo::Tcp(stream, registration, Path::Direct))
                }
            }
        };
        connect_within(endpoint, connect_timeout, connect).await
    }
}

async fn connect_within<T>(
    endpoint: SocketAddrV4,
    connect_timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(connect_timeout, connect).await.unwrap_or(Err(DialError::ClusterConnectTimeout(endpoint, connect_timeout)))
}

/// The identities the destination may prove: the service's `subject_alt_names` when it sets them, else the
/// workload's own.
fn expected_identities(route: &Route, destination: &Arc<Workload>) -> Vec<Identity> {
    let from_service: Vec<Identity> =
        route.service.iter().flat_map(|s| s.subject_alt_names.iter()).filter_map(|san| Identity::parse(san).ok()).collect();
    if from_service.is_empty() {
        vec![Identity::of_workload(destination)]
    } else {
        from_service
    }
}

/// An upstream connection: a TCP socket, or a stream inside an HBONE tunnel.
pub enum UpstreamIo {
    Tcp(TcpStream, Option<Registration>, Path),
    Hbone(Box<Tunnel>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.reader).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s, ..) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Hbone(t) => Pin::new(&mut t.writer).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_gives_up_after_the_clusters_connect_timeout() {
        let endpoint = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<(), DialError>>();
        let err = connect_within(endpoint, Duration::from_millis(50), never).await.unwrap_err();
        assert_eq!(err.to_string(), "connect to 10.0.0.1:80 timed out after 50ms (the cluster's connect_timeout)");
        assert!(started.elapsed() < Duration::from_secs(5), "not keel's own (longer) connect timeout");
        assert_eq!(connect_within(endpoint, Duration::from_millis(50), async { Ok(7) }).await.unwrap(), 7);
    }
}
