//! A kubeconfig for the stand-in: one cluster (its URL and CA), one user (a bearer token), one current context.
//! kubectl's `--kubeconfig` and kube-rs's `Kubeconfig::read_from` read it unmodified.

use base64::Engine;
use serde_json::json;

pub fn render(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "stand-in", "cluster": { "server": server, "certificate-authority-data": ca } }],
        "users": [{ "name": "stand-in-user", "user": { "token": token } }],
        "contexts": [{ "name": "stand-in", "context": { "cluster": "stand-in", "user": "stand-in-user", "namespace": "default" } }],
        "current-context": "stand-in",
        "preferences": {},
    });
    serde_yaml_ng::to_string(&config).expect("a JSON value renders as YAML")
}
