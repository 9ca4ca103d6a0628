//! Client authentication under `--kubernetes`, istiod's rules: the bearer token is a ServiceAccount token (projected
//! for the `istio-ca` audience) the API server vouches for (TokenReview). A trusted node proxy account
//! (`--node-proxy-account`, istiod's `CA_TRUSTED_NODE_ACCOUNTS`) whose token is bound to a pod is the node proxy of
//! that pod's node: it may hold an xDS stream and ask certificates for the workloads of its node. A token bound to a
//! pod some Gateway selects is that pod's `keel gateway`: it holds an xDS stream with the pod's view and may ask a
//! certificate for the pod's identity. Any other ServiceAccount is a workload, which may ask a certificate for its
//! own identity only. Anything else, including an API server that does not answer, is a refusal.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{
    api::{Api, PostParams},
    Client,
};
use tokio::sync::{watch, Semaphore};
use tonic::Status;
use tracing::warn;

use crate::{ca_service::NodeIdentities, client_auth::Caller};

/// The token audience istiod's CA and ztunnel use.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// A token the API server vouched for is trusted this long without asking again. A token revoked meanwhile (its
/// pod deleted) is still accepted that long; istiod caches reviews likewise.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Tokens remembered at most (one per node proxy in a healthy cluster).
const CACHE_ENTRIES: usize = 8192;
/// TokenReviews in flight at most: a flood of bogus tokens waits for a slot rather than flooding the API server.
const CONCURRENT_REVIEWS: usize = 16;
/// A TokenReview not answered by then fails the call (UNAVAILABLE: the caller retries).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    /// `namespace/name` of the ServiceAccounts node proxies run as.
    node_proxy_accounts: Vec<String>,
    /// Where pods run, for tokens that are bound to a pod but do not name its node (API servers before 1.32).
    pods: watch::Receiver<Arc<NodeIdentities>>,
    /// The API server's answers (authenticated ones), not the callers derived from them: whether a pod-bound
    /// token is a gateway depends on the Gateways of the moment (a Gateway created after its gateway pod started
    /// must not leave that pod refused for the cache's lifetime).
    cache: Mutex<HashMap<String, (TokenReviewStatus, Instant)>>,
    reviews: Semaphore,
}

impl TokenReviewer {
    pub fn new(client: Client, audiences: Vec<String>, node_proxy_accounts: Vec<String>, pods: watch::Receiver<Arc<NodeIdentities>>) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audiences,
            node_proxy_accounts,
            pods,
            cache: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// Who the token belongs to.
    pub async fn caller(&self, token: &str) -> Result<Caller, Status> {
        if token.is_empty() {
            return Err(Status::unauthenticated("empty bearer token"));
        }
        let status = match self.cached(token) {
            Some(status) => status,
            None => {
                let status = self.review(token).await?;
                if status.authenticated == Some(true) {
                    self.remember(token, &status);
                }
                status
            }
        };
        caller_of(&status, &self.node_proxy_accounts, &self.pods.borrow()).map_err(|refusal| {
            warn!(%refusal, "caller refused");
            refusal.status()
        })
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, Status> {
        let _slot = self.reviews.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(self.audiences.clone()) },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, self.api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Status::unavailable("the Kubernetes API did not answer the TokenReview in time"))?
            .map_err(|e| {
                warn!(error = %e, "TokenReview failed");
                Status::unavailable(format!("the Kubernetes API could not review the token: {e}"))
            })?;
        answer.status.ok_or_else(|| Status::unavailable("the TokenReview came back without a status"))
    }

    fn cached(&self, token: &str) -> Option<TokenReviewStatus> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(token).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(status, _)| status.clone())
    }

    fn remember(&self, token: &str, status: &TokenReviewStatus) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (status.clone(), Instant::now()));
    }
}

/// Why a reviewed token is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("the token is not valid for audience(s) {audiences:?}: {reason}")]
    NotAuthenticated { audiences: Vec<String>, reason: String },
    #[error("user {0:?} is not a ServiceAccount")]
    NotAServiceAccount(String),
    #[error("the token of {0} is not bound to a pod, so it names no node")]
    NotBoundToAPod(String),
    #[error("the token of {account} is bound to pod {pod}, which is on no node keel-control knows")]
    UnknownPod { account: String, pod: String },
}

impl Refusal {
    fn status(&self) -> Status {
        match self {
            Refusal::NotAuthenticated { .. } | Refusal::NotAServiceAccount(_) => Status::unauthenticated(self.to_string()),
            _ => Status::permission_denied(self.to_string()),
        }
    }
}

/// The caller from a TokenReview's answer: the pure half of [`TokenReviewer::caller`].
fn caller_of(status: &TokenReviewStatus, accounts: &[String], pods: &NodeIdentities) -> Result<Caller, Refusal> {
    if status.authenticated != Some(true) {
        return Err(Refusal::NotAuthenticated {
            audiences: status.audiences.clone().unwrap_or_default(),
            reason: status.error.clone().unwrap_or_else(|| "not authenticated".into()),
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let account = username.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|rest| rest.split_once(':'));
    let Some((namespace, name)) = account else { return Err(Refusal::NotAServiceAccount(username)) };
    let account = format!("{namespace}/{name}");
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|values| values.first()).filter(|v| !v.is_empty()).cloned();
    if !accounts.contains(&account) {
        let bound_gateway = first(POD_NAME_EXTRA).map(|pod| format!("{namespace}/{pod}")).filter(|pod| pods.is_gateway(pod));
        return Ok(match bound_gateway {
            Some(pod) => Caller::Gateway { pod },
            None => Caller::Workload { namespace: namespace.to_owned(), service_account: name.to_owned() },
        });
    }
    if let Some(node) = first(NODE_NAME_EXTRA) {
        return Ok(Caller::NodeProxy { node });
    }
    let Some(pod) = first(POD_NAME_EXTRA) else { return Err(Refusal::NotBoundToAPod(account)) };
    let node = pods.node_of_pod(namespace, &pod).ok_or(Refusal::UnknownPod { account, pod: format!("{namespace}/{pod}") })?;
    Ok(Caller::NodeProxy { node: node.to_owned() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use keel_mesh::objects::Object;

    use super::*;

    fn answer(authenticated: bool, username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(vec![DEFAULT_AUDIENCE.into()]),
            error: (!authenticated).then(|| "token expired".into()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect::<BTreeMap<_, _>>()),
                ..UserInfo::default()
            }),
        }
    }

    fn pods() -> NodeIdentities {
        let pod = |json| Object::Pod(serde_json::from_value(json).unwrap());
        let keel = pod(serde_json::json!(
            {"metadata": {"name": "keel-x7", "namespace": "istio-system"}, "spec": {"nodeName": "node-b", "containers": [{"name": "keel", "image": "keel"}]}}
        ));
        let ingress = pod(serde_json::json!(
            {"metadata": {"name": "ingress-0", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}}, "spec": {"nodeName": "node-a", "serviceAccountName": "ingress"}}
        ));
        let gateway: keel_mesh::objects::Gateway = serde_json::from_value(serde_json::json!(
            {"metadata": {"name": "public", "namespace": "istio-system"}, "spec": {"selector": {"istio": "ingressgateway"}}}
        ))
        .unwrap();
        NodeIdentities::from_objects("cluster.local", &[keel, ingress, Object::Gateway(gateway)])
    }

    const KEEL: &str = "system:serviceaccount:istio-system:keel";

    #[test]
    fn a_node_proxy_token_names_the_node_of_its_pod_and_any_other_account_is_a_workload() {
        let accounts = vec!["istio-system/keel".to_owned()];
        let bound = answer(true, KEEL, &[(POD_NAME_EXTRA, "keel-x7"), (NODE_NAME_EXTRA, "node-a")]);
        let node = |node: &str| Caller::NodeProxy { node: node.into() };
        assert_eq!(caller_of(&bound, &accounts, &pods()).unwrap(), node("node-a"), "the node the API server names wins");
        let older = answer(true, KEEL, &[(POD_NAME_EXTRA, "keel-x7")]);
        assert_eq!(caller_of(&older, &accounts, &pods()).unwrap(), node("node-b"), "else the bound pod's node");
        let workload = answer(true, "system:serviceaccount:default:sleep", &[(NODE_NAME_EXTRA, "node-a")]);
        assert_eq!(
            caller_of(&workload, &accounts, &pods()).unwrap(),
            Caller::Workload { namespace: "default".into(), service_account: "sleep".into() },
            "any other ServiceAccount is a workload, wherever it runs"
        );
        let gateway = answer(true, "system:serviceaccount:istio-system:ingress", &[(POD_NAME_EXTRA, "ingress-0")]);
        assert_eq!(caller_of(&gateway, &accounts, &pods()).unwrap(), Caller::Gateway { pod: "istio-system/ingress-0".into() });
        let unbound = answer(true, "system:serviceaccount:istio-system:ingress", &[]);
        assert!(matches!(caller_of(&unbound, &accounts, &pods()).unwrap(), Caller::Workload { .. }), "a gateway pod's token must be bound to it");
    }

    #[test]
    fn every_other_token_is_refused_for_its_reason() {
        let accounts = vec!["istio-system/keel".to_owned()];
        let refusal = |status| caller_of(&status, &accounts, &pods()).unwrap_err();
        assert!(matches!(refusal(answer(false, KEEL, &[])), Refusal::NotAuthenticated { reason, .. } if reason == "token expired"));
        assert_eq!(refusal(answer(true, "alice", &[])), Refusal::NotAServiceAccount("alice".into()));
        assert_eq!(refusal(answer(true, KEEL, &[])), Refusal::NotBoundToAPod("istio-system/keel".into()));
        assert_eq!(
            refusal(answer(true, KEEL, &[(POD_NAME_EXTRA, "gone")])),
            Refusal::UnknownPod { account: "istio-system/keel".into(), pod: "istio-system/gone".into() }
        );
        assert_eq!(refusal(answer(true, "alice", &[])).status().code(), tonic::Code::Unauthenticated);
        assert_eq!(refusal(answer(true, KEEL, &[])).status().code(), tonic::Code::PermissionDenied);
    }
}
