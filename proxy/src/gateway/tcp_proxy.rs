//! A gateway's TCP proxy (VirtualService `tcp` and `tls` routes, TLS passthrough): each connection relayed to an
//! endpoint of a cluster picked by weight, reached as the L7 engine reaches it (HBONE with the gateway's identity
//! for a meshed endpoint), with the relay's idle and half-close timeouts.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use keel_proto::workload::Workload;
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    chunk_io::socket,
    data_path::{DataPath, PodContext},
    l4::relay::{relay_halves, Progress, RelayOutcome},
    l7_config::filter_chain::TcpProxyConfig,
    limits::RelayTimeouts,
    plan::{self, destination::Route},
};

pub async fn relay<S>(
    client: S,
    proxy: &TcpProxyConfig,
    dp: &DataPath,
    pod: &PodContext,
    source: Option<&Arc<Workload>>,
) -> Result<RelayOutcome, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let snapshot = dp.workloads.snapshot();
    let name = pick(&proxy.clusters).ok_or("no cluster with a positive weight")?;
    let cluster = snapshot.l7.clusters.get(name).ok_or_else(|| format!("cluster {name} not received"))?;
    let locality = source.and_then(|w| w.locality.as_ref()).map(|l| (l.region.clone(), l.zone.clone(), l.subzone.clone()));
    let endpoint = cluster.pick(None, locality.as_ref()).ok_or_else(|| format!("cluster {name} has no healthy endpoint"))?;
    let SocketAddr::V4(address) = endpoint.address else {
        return Err(format!("cluster {name}: endpoint {} is not IPv4", endpoint.address));
    };
    let route = Route { upstream: address, service: None, workload: snapshot.workloads_by_ip.get(&IpAddr::V4(*address.ip())).cloned() };
    let dialer = &dp.dialer;
    let path =
        plan::choose_path(source.map(Arc::as_ref), &route, dialer.node_pods.contains(IpAddr::V4(*address.ip())), dialer.certificates.is_some());
    let upstream =
        dialer.endpoint(pod.origin(), source, &route, path, cluster.config.connect_timeout).await.map_err(|e| format!("cluster {name}: {e}"))?;
    drop(snapshot);
    let progress = Progress::default();
    let (client_read, client_write) = socket(tokio::io::split(client));
    let (server_read, server_write) = socket(tokio::io::split(upstream));
    let timeouts = RelayTimeouts { idle: proxy.idle_timeout, half_closed: dp.limits.relay.half_closed };
    Ok(relay_halves(client_read, client_write, server_read, server_write, timeouts, &progress, &pod.share.pacer()).await)
}

/// A cluster by weight.
fn pick(clusters: &[(String, u32)]) -> Option<&str> {
    let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut roll = rand::rng().random_range(0..total);
    for (name, weight) in clusters {
        if roll < u64::from(*weight) {
            return Some(name);
        }
        roll -= u64::from(*weight);
    }
    None
}
