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
    #[schemars(schema_with = "schema::any_value")]
    #[serde(default)]
    pub tls: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
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
