//! Which kinds keel-control watches, and at which API version: the four built-in kinds always, and the Istio kinds
//! keel reads at whichever of their versions the API server serves (Istio's CRDs serve several; keel reads the same
//! schema under each, preferring the newest).
use kube::{
    api::ApiResource,
    discovery::{ApiGroup, Discovery},
    Client,
};

use super::cluster_state::{NAMESPACE, NODE, POD};

/// A kind to watch: its name (what [`super::cluster_state::ClusterState`] files its objects under) and where the API
/// serves it.
#[derive(Clone, Debug)]
pub struct WatchedKind {
    pub kind: &'static str,
    pub resource: ApiResource,
}

pub const NETWORKING_GROUP: &str = "networking.istio.io";
pub const SECURITY_GROUP: &str = "security.istio.io";

/// The Istio kinds keel reads: group, kind, and the versions keel understands, newest first.
const ISTIO_KINDS: [(&str, &str, &[&str]); 7] = [
    (NETWORKING_GROUP, "VirtualService", &["v1", "v1beta1", "v1alpha3"]),
    (NETWORKING_GROUP, "DestinationRule", &["v1", "v1beta1", "v1alpha3"]),
    (NETWORKING_GROUP, "ServiceEntry", &["v1", "v1beta1", "v1alpha3"]),
    (NETWORKING_GROUP, "Gateway", &["v1", "v1beta1", "v1alpha3"]),
    (SECURITY_GROUP, "AuthorizationPolicy", &["v1", "v1beta1"]),
    (SECURITY_GROUP, "PeerAuthentication", &["v1", "v1beta1"]),
    (SECURITY_GROUP, "RequestAuthentication", &["v1", "v1beta1"]),
];

/// Pods, Services, EndpointSlices (for Services without a selector), Namespaces, Nodes and Secrets (the
/// certificates Gateways name): served by every API server.
pub fn builtins() -> Vec<WatchedKind> {
    use k8s_openapi::api::{
        core::v1::{Namespace, Node, Pod, Secret, Service},
        discovery::v1::EndpointSlice,
    };
    vec![
        WatchedKind { kind: "EndpointSlice", resource: ApiResource::erase::<EndpointSlice>(&()) },
        WatchedKind { kind: POD, resource: ApiResource::erase::<Pod>(&()) },
        WatchedKind { kind: "Service", resource: ApiResource::erase::<Service>(&()) },
        WatchedKind { kind: NAMESPACE, resource: ApiResource::erase::<Namespace>(&()) },
        WatchedKind { kind: NODE, resource: ApiResource::erase::<Node>(&()) },
        WatchedKind { kind: "Secret", resource: ApiResource::erase::<Secret>(&()) },
    ]
}

/// The Istio kinds the API server serves now, and the names of those it does not (their CRDs are not installed, or
/// only at versions keel does not read).
pub async fn istio(client: &Client) -> Result<(Vec<WatchedKind>, Vec<String>), kube::Error> {
    let discovery = Discovery::new(client.clone()).filter(&[NETWORKING_GROUP, SECURITY_GROUP]).run().await?;
    Ok(choose(|group| discovery.get(group)))
}

/// For each Istio kind, the first of its versions (newest first) that its group serves it at.
fn choose<'a>(group: impl Fn(&str) -> Option<&'a ApiGroup>) -> (Vec<WatchedKind>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (group_name, kind, versions) in ISTIO_KINDS {
        let resource = group(group_name).and_then(|group| {
            versions.iter().find_map(|version| group.versioned_resources(version).into_iter().map(|(r, _)| r).find(|r| r.kind == kind))
        });
        match resource {
            Some(resource) => found.push(WatchedKind { kind, resource }),
            None => missing.push(format!("{kind}.{group_name} ({})", versions.join(", "))),
        }
    }
    (found, missing)
}
