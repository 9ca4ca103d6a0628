//! `istio.v1.auth.IstioCertificateService/CreateCertificate` as istiod serves it: a node proxy (its bearer token
//! names its node) must name the identity it asks for in the `ImpersonatedIdentity` metadata, and gets it only if a
//! workload with that identity runs on its own node; any other caller (under `--kubernetes`) gets a certificate for
//! its own ServiceAccount identity only.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use keel_proto::ca::{istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use keel_mesh::{ca::Authority, objects::Object};

use crate::{
    client_auth::{Caller, ClientAuth},
    metrics::ControlMetrics,
};

/// Default and longest validity a caller gets (istiod's defaults: 24 h).
const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The SPIFFE identities of the workloads on each node, and each pod's node, from the config in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeIdentities {
    identities: HashMap<String, HashSet<String>>,
    /// `namespace/name` → node: where a caller whose token is bound to a pod runs.
    pod_nodes: HashMap<String, String>,
    /// `namespace/name` → the pod's identity (what a gateway in that pod may ask for).
    pod_identities: HashMap<String, String>,
    /// `namespace/name` of the pods some Gateway selects: their bound tokens are `keel gateway`s.
    gateway_pods: HashSet<String>,
}

impl NodeIdentities {
    pub fn from_objects(trust_domain: &str, objects: &[Object]) -> NodeIdentities {
        let mut nodes = NodeIdentities::default();
        let selectors: Vec<_> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Gateway(g) if !g.spec.selector.is_empty() => Some(&g.spec.selector),
                _ => None,
            })
            .collect();
        for object in objects {
            if let Object::Pod(pod) = object {
                let identity = format!("spiffe://{trust_domain}/ns/{}/sa/{}", pod.metadata.namespace, pod.service_account());
                let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
                nodes.identities.entry(pod.spec.node_name.clone()).or_default().insert(identity.clone());
                nodes.pod_nodes.insert(key.clone(), pod.spec.node_name.clone());
                if selectors.iter().any(|s| s.iter().all(|(k, v)| pod.metadata.labels.get(k) == Some(v))) {
                    nodes.gateway_pods.insert(key.clone());
                }
                nodes.pod_identities.insert(key, identity);
            }
        }
        nodes
    }

    /// Whether a Gateway selects pod `namespace/name`.
    pub fn is_gateway(&self, pod: &str) -> bool {
        self.gateway_pods.contains(pod)
    }

    fn allows(&self, node: &str, identity: &str) -> bool {
        self.identities.get(node).is_some_and(|ids| ids.contains(identity))
    }

    /// The node pod `namespace/name` is scheduled on, if it is.
    pub fn node_of_pod(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pod_nodes.get(&format!("{namespace}/{name}")).map(String::as_str).filter(|node| !node.is_empty())
    }
}

pub struct CaService {
    authority: Arc<Authority>,
    auth: Arc<ClientAuth>,
    identities: watch::Receiver<Arc<NodeIdentities>>,
    metrics: ControlMetrics,
}

impl CaService {
    pub fn new(
        authority: Arc<Authority>,
        auth: Arc<ClientAuth>,
        identities: watch::Receiver<Arc<NodeIdentities>>,
        metrics: ControlMetrics,
    ) -> CaService {
        CaService { authority, auth, identities, metrics }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(&self, request: Request<IstioCertificateRequest>) -> Result<Response<IstioCertificateResponse>, Status> {
        let issued = self.issue(request).await;
        self.metrics.certificate_request(issued.as_ref().map(|_| ()).map_err(Status::code));
        issued
    }
}

impl CaService {
    /// Authenticates the caller, checks the identity it asks for against what it may have, and signs.
    async fn issue(&self, request: Request<IstioCertificateRequest>) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.auth.caller(request.metadata()).await?;
        let request = request.into_inner();
        let asked = impersonated_identity(&request);
        let (identity, caller) = match caller {
            Caller::NodeProxy { node } => {
                let identity = asked
                    .ok_or_else(|| Status::invalid_argument("metadata.ImpersonatedIdentity: a node proxy must name the identity it asks for"))?;
                if !self.identities.borrow().allows(&node, &identity) {
                    warn!(%node, %identity, "certificate refused: no such workload on the caller's node");
                    return Err(Status::permission_denied(format!("node {node} runs no workload with identity {identity}")));
                }
                (identity, format!("node {node}"))
            }
            // A gateway: its own pod's identity, never another's.
            Caller::Gateway { pod } => {
                let Some(own) = self.identities.borrow().pod_identities.get(&pod).cloned() else {
                    return Err(Status::permission_denied(format!("gateway pod {pod} is not in the config: no identity to issue")));
                };
                if asked.as_ref().is_some_and(|asked| *asked != own) {
                    warn!(%pod, asked = ?asked, "certificate refused: a gateway asked for another identity");
                    return Err(Status::permission_denied(format!("gateway {pod} may ask only for its own identity {own}")));
                }
                (own, format!("gateway {pod}"))
            }
            // istiod's rule for any other caller: a certificate for its own ServiceAccount, never another's.
            Caller::Workload { namespace, service_account } => {
                let own = format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.authority.trust_domain);
                if asked.as_ref().is_some_and(|asked| *asked != own) {
                    warn!(caller = %own, asked = ?asked, "certificate refused: a workload asked for another identity");
                    return Err(Status::permission_denied(format!(
                        "{}: it may ask only for its own identity {own}",
                        Caller::not_a_node_proxy(&namespace, &service_account)
                    )));
                }
                (own.clone(), own)
            }
        };
        let validity = match u64::try_from(request.validity_duration) {
            Ok(0) | Err(_) => DEFAULT_VALIDITY,
            Ok(seconds) => Duration::from_secs(seconds).min(MAX_VALIDITY),
        };
        let chain = self.authority.issue(&request.csr, &identity, validity).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        info!(%caller, %identity, validity_s = validity.as_secs(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain }))
    }
}

fn impersonated_identity(request: &IstioCertificateRequest) -> Option<String> {
    let field = request.metadata.as_ref()?.fields.get("ImpersonatedIdentity")?;
    match field.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}
