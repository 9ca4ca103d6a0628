//! Gateway (networking.istio.io/v1): the ports, protocols and hosts a gateway proxy (`keel gateway`) serves, for
//! the gateway pods its `selector` matches. VirtualServices bind to it by name (`spec.gateways`).
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{schema, Metadata};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The gateway pods (labels); in any namespace, as Istio does by default.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    /// `host`, `*.suffix`, `*`, optionally `<namespace>/` (or `./`, `*/`) first: which VirtualServices' hosts it
    /// exposes.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio's `ServerTLSSettings`, every field, so a misspelt one is refused rather than ignored.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// On an HTTP server: answer every request with a 301 to its `https://` form.
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[schemars(schema_with = "schema::any_values")]
    #[serde(default)]
    pub tls_certificates: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub server_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

impl ServerTlsSettings {
    /// Whether anything but `httpsRedirect` is set (what keel gateway does not serve yet).
    pub fn terminates(&self) -> bool {
        *self != ServerTlsSettings { https_redirect: self.https_redirect, ..Default::default() }
    }
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    pub number: u32,
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS (case-insensitive).
    pub protocol: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}
