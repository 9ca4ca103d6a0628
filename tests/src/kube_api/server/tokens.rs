//! Bearer tokens: the ServiceAccount tokens the harness registers (what a projected, pod-bound token carries), how
//! they authenticate API requests, and TokenReview answered from them as the real server does.

use super::status::ApiError;
use super::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The audience of tokens the API server accepts for itself (a TokenReview without `spec.audiences` checks this).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A ServiceAccount token, as registered by the harness (`PUT /stand-in/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    pub token: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to: it is valid only while that pod exists (with this uid, if given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The node of the bound pod (`authentication.kubernetes.io/node-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Empty: the API server's own audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

impl TokenSpec {
    /// A token of ServiceAccount `namespace/service_account`, for the API server's own audience, bound to no pod.
    pub fn new(token: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            token: token.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_name: None,
            pod_uid: None,
            node_name: None,
            audiences: Vec::new(),
        }
    }

    /// Bound to pod `name` (valid only while it exists; with `uid`, only while it is that pod) on `node`.
    pub fn bound_to_pod(mut self, name: &str, uid: Option<&str>, node: Option<&str>) -> Self {
        self.pod_name = Some(name.to_owned());
        self.pod_uid = uid.map(str::to_owned);
        self.node_name = node.map(str::to_owned);
        self
    }

    /// For these audiences (e.g. `istio-ca`) instead of the API server's.
    pub fn with_audiences(mut self, audiences: &[&str]) -> Self {
        self.audiences = audiences.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![API_AUDIENCE.to_owned()]
        } else {
            self.audiences.clone()
        }
    }
}

/// The user a valid token authenticates as (a TokenReview's `status.user`), or why it is not valid.
pub fn authenticate(store: &Store, token: &str) -> Result<(TokenSpec, Value), String> {
    let spec = store.tokens.get(token).ok_or("invalid bearer token")?.clone();
    let find = |plural: &str, name: &str| {
        let rt = store.registry.find("", "v1", plural)?;
        store.get(&rt, &spec.namespace, name)
    };
    let sa = find("serviceaccounts", &spec.service_account)
        .ok_or_else(|| format!("[invalid bearer token, serviceaccounts \"{}\" not found]", spec.service_account))?;
    let mut extra = serde_json::Map::new();
    if let Some(pod_name) = &spec.pod_name {
        let pod = find("pods", pod_name).ok_or("[invalid bearer token, token has been invalidated]")?;
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        if spec.pod_uid.as_ref().is_some_and(|want| *want != uid) {
            return Err("[invalid bearer token, token has been invalidated]".to_owned());
        }
        extra.insert("authentication.kubernetes.io/pod-name".to_owned(), json!([pod_name]));
        extra.insert("authentication.kubernetes.io/pod-uid".to_owned(), json!([uid]));
    }
    if let Some(node) = &spec.node_name {
        extra.insert("authentication.kubernetes.io/node-name".to_owned(), json!([node]));
    }
    let mut user = json!({
        "username": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
        "uid": sa["metadata"]["uid"],
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", spec.namespace), "system:authenticated"],
    });
    if !extra.is_empty() {
        user["extra"] = Value::Object(extra);
    }
    Ok((spec, user))
}

/// Answers a TokenReview (already strictly decoded): the request echoed with its `status` filled in.
pub fn review(store: &Store, mut request: Value) -> Result<Value, ApiError> {
    let token = request.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default().to_owned();
    if token.is_empty() {
        return Err(ApiError::invalid("authentication.k8s.io", "TokenReview", "", "spec.token", "FieldValueRequired", "Required value"));
    }
    let wanted: Vec<String> =
        request.pointer("/spec/audiences").and_then(Value::as_array).into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();
    let wanted = if wanted.is_empty() { vec![API_AUDIENCE.to_owned()] } else { wanted };
    let status = match authenticate(store, &token) {
        Err(error) => json!({ "user": {}, "error": error }),
        Ok((spec, user)) => {
            let has = spec.audiences();
            let both: Vec<&String> = wanted.iter().filter(|a| has.contains(a)).collect();
            if both.is_empty() {
                json!({ "user": {}, "error": format!("[invalid bearer token, token audiences {has:?} is invalid for the target audiences {wanted:?}]") })
            } else {
                json!({ "authenticated": true, "user": user, "audiences": both })
            }
        }
    };
    request["status"] = status;
    if request["metadata"].is_null() {
        request["metadata"] = json!({ "creationTimestamp": null });
    }
    Ok(request)
}
