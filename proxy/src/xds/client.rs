//! keel's delta ADS client: one stream over TLS (mesh root, bearer token, `clusterid`), subscribing to the
//! workload then the authorization type URL as ztunnel does. Valid resources are applied at once, invalid ones
//! are NACKed naming resource and field (the rest of the response still applies). After a broken stream it
//! reconnects with exponential backoff and jitter, sending `initial_resource_versions` for what it holds; the
//! last good state keeps serving meanwhile. Ready once the first response of each type arrived.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use keel_proto::{
    core::Node,
    discovery::{
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
    },
    google::rpc,
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, HTTP_AUTHORIZATION_TYPE_URL, LISTENER_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, SECRET_TYPE_URL,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::{
    persisted,
    state::{decode, Rejected, WorkloadStore},
};

/// The workload types in the order ztunnel subscribes in, keel's HTTP half of policies, then the Envoy types of the L7 engine in the order
/// Envoy's ADS sequencing uses (clusters before their endpoints, listeners before their routes).
pub const TYPE_URLS: [&str; 9] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    HTTP_AUTHORIZATION_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL,
    CLUSTER_TYPE_URL,
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
    // A gateway's certificates, before the listeners that name them (none for a node proxy).
    SECRET_TYPE_URL,
    LISTENER_TYPE_URL,
    ROUTE_CONFIGURATION_TYPE_URL,
];
/// What keel must have heard from the control plane before it is ready.
pub const READY_TYPE_URLS: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct XdsConfig {
    /// `https://host:port`.
    pub address: String,
    /// The mesh root the control plane's certificate chains to.
    pub root_pem: String,
    /// The name the control plane's certificate must carry.
    pub server_name: String,
    pub token: String,
    pub cluster_id: String,
    pub node: Node,
    /// `--insecure-control-plane`: `http://` allowed.
    pub insecure: bool,
}

impl XdsConfig {
    pub fn control_plane(&self) -> super::channel::ControlPlaneAddress<'_> {
        super::channel::ControlPlaneAddress {
            address: &self.address,
            root_pem: &self.root_pem,
            server_name: &self.server_name,
            insecure: self.insecure,
        }
    }
}

/// What `/config_dump` and `keel pc status` show about the xDS connection.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct XdsStatus {
    /// Where the state comes from: `xds <address>` or `local <directory>`.
    pub source: String,
    pub connected: bool,
    pub versions: HashMap<String, usize>,
    pub last_nack: Option<String>,
    pub last_error: Option<String>,
    /// Per type URL: how the control plane's responses were answered (the health metrics read it).
    #[serde(default)]
    pub responses: BTreeMap<String, TypeResponses>,
}

/// How keel answered one type's responses on the live stream (saved state read at start is not counted).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TypeResponses {
    pub acks: u64,
    pub nacks: u64,
    pub last_ack: Option<SystemTime>,
    pub last_nack: Option<SystemTime>,
}

impl TypeResponses {
    fn record(&mut self, nack: bool, at: SystemTime) {
        if nack {
            self.nacks += 1;
            self.last_nack = Some(at);
        } else {
            self.acks += 1;
            self.last_ack = Some(at);
        }
    }
}

pub struct XdsClient {
    config: XdsConfig,
    store: Arc<WorkloadStore>,
    ready: watch::Sender<bool>,
    status: watch::Sender<XdsStatus>,
    /// type URL → resource name → the accepted resource: its version for `initial_resource_versions` on
    /// reconnect, and its bytes for the snapshot on disk.
    held: HashMap<String, HashMap<String, XdsResource>>,
    /// Where the last good state is saved (see [`super::persisted`]); `None` in tests.
    snapshot_file: Option<PathBuf>,
}

impl XdsClient {
    pub fn new(config: XdsConfig, store: Arc<WorkloadStore>) -> (XdsClient, watch::Receiver<bool>, watch::Receiver<XdsStatus>) {
        let (ready, ready_rx) = watch::channel(false);
        let (status, status_rx) = watch::channel(XdsStatus { source: format!("xds {}", config.address), ..Default::default() });
        (XdsClient { config, store, ready, status, held: HashMap::new(), snapshot_file: None }, ready_rx, status_rx)
    }

    /// Saves the accepted state to `path` after every response, and first serves what a previous keel saved
    /// there (validated again, as if the control plane had just sent it). Returns how many resources it loaded.
    pub fn persist_to(&mut self, path: PathBuf) -> anyhow::Result<usize> {
        // Saving goes on even when what is there cannot be read: the next response replaces it.
        self.snapshot_file = Some(path.clone());
        let saved = persisted::load(&path)?;
        let mut loaded = 0;
        for response in saved {
            let ack = self.apply(response);
            if let Some(nack) = ack.error_detail {
                warn!(type_url = %ack.type_url, message = %nack.message, "saved xDS state: resource refused");
            }
        }
        for held in self.held.values() {
            loaded += held.len();
        }
        Ok(loaded)
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        loop {
            let result = self.session(&mut backoff).await;
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = result.as_ref().err().map(|e| format!("{e:#}"));
            });
            if let Err(e) = result {
                warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "xDS stream failed; serving the last good state");
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self, backoff: &mut Duration) -> anyhow::Result<()> {
        let channel = super::channel::endpoint(&self.config.control_plane())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.config.address))?;
        let (requests, outbound) = mpsc::channel(16);
        for (i, type_url) in TYPE_URLS.iter().enumerate() {
            requests
                .send(DeltaDiscoveryRequest {
                    node: (i == 0).then(|| self.config.node.clone()),
                    type_url: (*type_url).to_owned(),
                    initial_resource_versions: self
                        .held
                        .get(*type_url)
                        .map(|held| held.iter().map(|(name, r)| (name.clone(), r.version.clone())).collect())
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.config.token).parse()?);
        request.metadata_mut().insert("clusterid", self.config.cluster_id.parse()?);
        let mut responses = AggregatedDiscoveryServiceClient::new(channel).delta_aggregated_resources(request).await?.into_inner();
        self.status.send_modify(|s| s.connected = true);
        info!(address = %self.config.address, "xDS stream open");
        *backoff = BACKOFF_START;
        let mut seen: Vec<String> = Vec::new();
        while let Some(response) = responses.message().await? {
            let ack = self.apply(response);
            self.status.send_modify(|s| {
                s.responses.entry(ack.type_url.clone()).or_default().record(ack.error_detail.is_some(), SystemTime::now());
            });
            self.save();
            if !seen.contains(&ack.type_url) {
                seen.push(ack.type_url.clone());
                // Ready once the workload types are answered: a control plane that serves no L7 types (istiod
                // serving an ambient node proxy) still makes keel ready.
                if READY_TYPE_URLS.iter().all(|t| seen.iter().any(|s| s == t)) {
                    self.ready.send_replace(true);
                }
            }
            requests.send(ack).await?;
        }
        anyhow::bail!("the control plane closed the stream")
    }

    fn save(&self) {
        if let Some(path) = &self.snapshot_file {
            if let Err(e) = persisted::save(path, &self.held) {
                warn!(error = %format!("{e:#}"), "could not save the xDS state; a restart would wait for the control plane");
            }
        }
    }

    /// Applies the valid part of a response and returns the ACK (or NACK) for it.
    fn apply(&mut self, mut response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let type_url = response.type_url.clone();
        if !TYPE_URLS.contains(&type_url.as_str()) {
            // Nothing of it is applied: a type keel never subscribed to has no state to change.
            let message = format!("field `type_url`: {type_url:?} is not a type keel subscribed to");
            warn!(%type_url, %message, "NACK");
            let error_detail = Some(rpc::Status { code: tonic::Code::InvalidArgument as i32, message, details: vec![] });
            return DeltaDiscoveryRequest { type_url, response_nonce: response.nonce, error_detail, ..Default::default() };
        }
        let mut rejected: Vec<Rejected> = contradictions(&mut response);
        let held = self.held.entry(type_url.clone()).or_default();
        let mut upserts = Vec::new();
        for resource in response.resources {
            let bytes = resource.resource.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
            if let Some(any) = resource.resource.as_ref().filter(|any| any.type_url != type_url) {
                let reason = format!("field `resource.type_url`: {:?} in a response of {type_url}", any.type_url);
                rejected.push(Rejected { name: resource.name.clone(), reason });
                continue;
            }
            match decode(&type_url, &resource.name, bytes) {
                Ok(r) => {
                    let name = resource.name.clone();
                    held.insert(
                        name.clone(),
                        XdsResource { name: name.clone(), version: resource.version, resource: resource.resource, ..Default::default() },
                    );
                    upserts.push((name, r));
                }
                Err(e) => rejected.push(e),
            }
        }
        for name in &response.removed_resources {
            held.remove(name);
        }
        let removed: Vec<(String, String)> = response.removed_resources.iter().map(|n| (type_url.clone(), n.clone())).collect();
        self.store.apply(upserts, &removed);
        let count = held.len();
        let error_detail = (!rejected.is_empty()).then(|| {
            let message = rejected.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            warn!(%type_url, %message, "NACK");
            rpc::Status { code: tonic::Code::InvalidArgument as i32, message, details: vec![] }
        });
        self.status.send_modify(|s| {
            s.versions.insert(type_url.clone(), count);
            if let Some(e) = &error_detail {
                s.last_nack = Some(e.message.clone());
            }
        });
        DeltaDiscoveryRequest { type_url, response_nonce: response.nonce, error_detail, ..Default::default() }
    }
}

/// Takes out of `response` every name it lists more than once (twice among the resources, or both as a resource
/// and as removed): which one the control plane meant is unknowable, so none is applied and each is refused
/// (what keel held under that name stays).
fn contradictions(response: &mut DeltaDiscoveryResponse) -> Vec<Rejected> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for name in response.resources.iter().map(|r| r.name.as_str()).chain(response.removed_resources.iter().map(String::as_str)) {
        *count.entry(name).or_default() += 1;
    }
    let twice: Vec<String> = count.into_iter().filter(|(_, n)| *n > 1).map(|(name, _)| name.to_owned()).collect();
    if twice.is_empty() {
        return Vec::new();
    }
    response.resources.retain(|r| !twice.contains(&r.name));
    response.removed_resources.retain(|n| !twice.contains(n));
    let mut rejected: Vec<Rejected> = twice
        .into_iter()
        .map(|name| Rejected { name, reason: "listed more than once in one response (added twice, or added and removed)".into() })
        .collect();
    rejected.sort_by(|a, b| a.name.cmp(&b.name));
    rejected
}

/// ±50 % jitter, so a control-plane restart is not met by every node at the same instant.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::{discovery::Resource as XdsResource, workload};
    use prost::Message as _;
    use std::net::IpAddr;

    fn client() -> XdsClient {
        let config = XdsConfig {
            address: "https://127.0.0.1:1".into(),
            root_pem: String::new(),
            server_name: "keel-control".into(),
            token: "t".into(),
            cluster_id: "Kubernetes".into(),
            node: Node::default(),
            insecure: false,
        };
        XdsClient::new(config, Arc::new(WorkloadStore::default())).0
    }

    #[test]
    fn a_response_with_one_bad_resource_applies_the_rest_and_nacks_naming_it() {
        let mut c = client();
        let good = workload::Address {
            r#type: Some(workload::address::Type::Workload(workload::Workload {
                uid: "u".into(),
                addresses: vec![vec![10, 0, 0, 1]],
                ..Default::default()
            })),
        };
        let any = |value: Vec<u8>| Some(prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value });
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "7".into(),
            resources: vec![
                XdsResource { name: "good".into(), version: "v1".into(), resource: any(good.encode_to_vec()), ..Default::default() },
                XdsResource { name: "bad".into(), version: "v1".into(), resource: any(vec![0xff, 0xff]), ..Default::default() },
            ],
            ..Default::default()
        };
        let ack = c.apply(response);
        assert_eq!(ack.response_nonce, "7");
        let nack = ack.error_detail.expect("a NACK");
        assert!(nack.message.starts_with("resource bad:"), "{}", nack.message);
        assert!(c.store.snapshot().workloads.contains_key("good"), "the valid resource still applies");
        assert_eq!(c.held[ADDRESS_TYPE_URL].keys().collect::<Vec<_>>(), ["good"], "only accepted versions are held");
    }

    #[test]
    fn contradictory_or_mistyped_resources_are_refused_and_the_held_state_stays() {
        let mut c = client();
        let workload = |ip: u8| {
            let w = workload::Workload { uid: format!("u{ip}"), addresses: vec![vec![10, 0, 0, ip]], ..Default::default() };
            workload::Address { r#type: Some(workload::address::Type::Workload(w)) }.encode_to_vec()
        };
        let resource = |name: &str, type_url: &str, value: Vec<u8>| XdsResource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(prost_types::Any { type_url: type_url.into(), value }),
            ..Default::default()
        };
        let response = |resources: Vec<XdsResource>, removed: Vec<&str>| DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n".into(),
            resources,
            removed_resources: removed.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        assert!(c.apply(response(vec![resource("a", ADDRESS_TYPE_URL, workload(1))], vec![])).error_detail.is_none());

        // The same name twice, a name both added and removed, a resource of another type.
        let ack = c.apply(response(
            vec![
                resource("b", ADDRESS_TYPE_URL, workload(2)),
                resource("b", ADDRESS_TYPE_URL, workload(3)),
                resource("a", ADDRESS_TYPE_URL, workload(4)),
                resource("c", AUTHORIZATION_TYPE_URL, workload(5)),
                resource("d", ADDRESS_TYPE_URL, workload(6)),
            ],
            vec!["a"],
        ));
        let nack = ack.error_detail.expect("a NACK").message;
        assert!(nack.contains("resource a: listed more than once"), "{nack}");
        assert!(nack.contains("resource b: listed more than once"), "{nack}");
        assert!(nack.contains("resource c: field `resource.type_url`"), "{nack}");
        let snapshot = c.store.snapshot();
        let ips: Vec<IpAddr> = snapshot.workloads_by_ip.keys().copied().collect();
        assert!(ips.contains(&"10.0.0.1".parse().unwrap()), "the held `a` stays as it was: {ips:?}");
        assert!(ips.contains(&"10.0.0.6".parse().unwrap()), "the uncontested `d` applies: {ips:?}");
        assert_eq!(ips.len(), 2, "{ips:?}");

        // A type keel never subscribed to changes nothing.
        let mut foreign = response(vec![], vec!["a", "d"]);
        foreign.type_url = "type.googleapis.com/envoy.config.secret.v3.Secret".into();
        let nack = c.apply(foreign).error_detail.expect("a NACK").message;
        assert!(nack.contains("field `type_url`"), "{nack}");
        assert_eq!(c.store.snapshot().workloads_by_ip.len(), 2);
    }

    #[test]
    fn a_restarted_client_serves_the_saved_state_and_offers_its_versions() {
        let dir = std::env::temp_dir().join(format!("keel-xds-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = persisted::path_in(&dir);
        let _ = std::fs::remove_file(&path);
        let mut first = client();
        assert_eq!(first.persist_to(path.clone()).unwrap(), 0, "nothing saved yet");
        let w = workload::Address {
            r#type: Some(workload::address::Type::Workload(workload::Workload {
                uid: "u".into(),
                addresses: vec![vec![10, 0, 0, 9]],
                ..Default::default()
            })),
        };
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            resources: vec![XdsResource {
                name: "w".into(),
                version: "v7".into(),
                resource: Some(prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value: w.encode_to_vec() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        first.apply(response);
        first.save();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let mut restarted = client();
        assert_eq!(restarted.persist_to(path.clone()).unwrap(), 1);
        assert!(restarted.store.snapshot().workloads_by_ip.contains_key(&"10.0.0.9".parse().unwrap()), "the saved workload is served");
        assert_eq!(restarted.held[ADDRESS_TYPE_URL]["w"].version, "v7", "its version is offered on reconnect");

        std::fs::write(&path, b"\xff\xff garbage").unwrap();
        assert!(client().persist_to(path.clone()).is_err(), "a corrupted file is reported, not half-applied");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
