//! `DeltaAggregatedResources`: one task per connected node proxy. The first request of a type opens a wildcard
//! subscription (the client's `initial_resource_versions` count as already delivered) and is always answered,
//! even with nothing, because a node proxy is ready only after one response of each type. Every new snapshot
//! then sends each subscribed type's diff with a fresh nonce. ACKs need nothing; a NACK is logged with the
//! client's message, and the rejected resources are not sent again until they change.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use keel_proto::discovery::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    client_auth::{ClientAuth, XdsClient},
    metrics::ControlMetrics,
};
use keel_mesh::snapshot::{diff, Snapshot, View};

pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<ClientAuth>,
    nonces: Arc<AtomicU64>,
    metrics: ControlMetrics,
}

impl AdsServer {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, auth: Arc<ClientAuth>, metrics: ControlMetrics) -> AdsServer {
        AdsServer { snapshots, auth, nonces: Arc::new(AtomicU64::new(1)), metrics }
    }
}

/// Per connected client and type URL: what it holds (name → version).
#[derive(Default)]
struct Subscriptions {
    known: BTreeMap<String, BTreeMap<String, String>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let node = self.auth.xds_client(request.metadata()).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut snapshots = self.snapshots.clone();
        let nonces = self.nonces.clone();
        let metrics = self.metrics.clone();
        let gateway = matches!(node, XdsClient::Gateway { .. });
        tokio::spawn(async move {
            info!(%node, "xDS client connected");
            metrics.client_connected(gateway);
            let mut subs = Subscriptions::default();
            'session: loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(request)) => {
                            let snapshot = snapshots.borrow().clone();
                            if let Some(response) = on_request(&node, request, &mut subs, &snapshot.view(&node), &nonces, &metrics) {
                                metrics.pushed(&response.type_url);
                                if tx.send(Ok(response)).await.is_err() { break; }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => { debug!(%node, %status, "xDS stream ended"); break; }
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let snapshot = snapshots.borrow_and_update().clone();
                        for response in on_snapshot(&mut subs, &snapshot.view(&node), &nonces) {
                            metrics.pushed(&response.type_url);
                            if tx.send(Ok(response)).await.is_err() { break 'session; }
                        }
                    }
                }
            }
            metrics.client_disconnected(gateway);
            info!(%node, "xDS client disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One client's view of a snapshot: node proxies see the mesh's resources; a gateway its own listeners and routes
/// in place of the mesh's.
struct ClientSnapshot<'s> {
    snapshot: &'s Snapshot,
    view: View<'s>,
}

trait ViewOf {
    fn view<'s>(&'s self, client: &'s XdsClient) -> ClientSnapshot<'s>;
}

impl ViewOf for Arc<Snapshot> {
    fn view<'s>(&'s self, client: &'s XdsClient) -> ClientSnapshot<'s> {
        let view = match client {
            XdsClient::NodeProxy { .. } => View::NodeProxy,
            XdsClient::Gateway { pod } => View::Gateway(pod),
        };
        ClientSnapshot { snapshot: self, view }
    }
}

fn response(type_url: &str, known: &mut BTreeMap<String, String>, snapshot: &ClientSnapshot<'_>, nonces: &AtomicU64) -> DeltaDiscoveryResponse {
    let empty = BTreeMap::new();
    let current = snapshot.snapshot.of_type_for(snapshot.view, type_url).unwrap_or(&empty);
    let d = diff(known, current);
    for (name, entry) in &d.updated {
        known.insert(name.clone(), entry.version.clone());
    }
    for name in &d.removed {
        known.remove(name);
    }
    DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        nonce: nonces.fetch_add(1, Ordering::Relaxed).to_string(),
        resources: d
            .updated
            .into_iter()
            .map(|(name, entry)| Resource { name, version: entry.version, resource: Some(entry.resource), ..Default::default() })
            .collect(),
        removed_resources: d.removed,
        ..Default::default()
    }
}

fn on_request(
    node: &XdsClient,
    request: DeltaDiscoveryRequest,
    subs: &mut Subscriptions,
    snapshot: &ClientSnapshot<'_>,
    nonces: &AtomicU64,
    metrics: &ControlMetrics,
) -> Option<DeltaDiscoveryResponse> {
    let type_url = request.type_url.clone();
    if let Some(error) = &request.error_detail {
        metrics.rejected(&type_url);
        warn!(%node, %type_url, nonce = %request.response_nonce, error = %error.message, "xDS NACK");
        return None;
    }
    if !request.response_nonce.is_empty() {
        debug!(%node, %type_url, nonce = %request.response_nonce, "xDS ACK");
        return None;
    }
    if subs.known.contains_key(&type_url) {
        return None; // a repeated subscription changes nothing for a wildcard watcher
    }
    let mut known: BTreeMap<String, String> = request.initial_resource_versions.into_iter().collect();
    let first = response(&type_url, &mut known, snapshot, nonces);
    subs.known.insert(type_url, known);
    Some(first)
}

fn on_snapshot(subs: &mut Subscriptions, snapshot: &ClientSnapshot<'_>, nonces: &AtomicU64) -> Vec<DeltaDiscoveryResponse> {
    subs.known
        .iter_mut()
        .map(|(type_url, known)| response(type_url, known, snapshot, nonces))
        .filter(|r| !r.resources.is_empty() || !r.removed_resources.is_empty())
        .collect()
}
