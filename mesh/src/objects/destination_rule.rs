//! DestinationRule (networking.istio.io/v1): what happens to traffic for a host after routing — its subsets
//! (label-selected groups of its workloads), load balancing, connection limits and outlier ejection. Field names
//! and meanings are Istio's; types follow Istio's proto (int32 limits stay signed so `check` can name a negative
//! one, `0` or unset means Envoy's default).
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{duration::ProtoDuration, virtual_service::PortSelector, LabelSelector, Metadata};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    pub metadata: Metadata,
    pub spec: DestinationRuleSpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    /// Boxed: a policy is large, and every Object is as large as its largest kind.
    #[serde(default)]
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Limits the rule to the selected client workloads (Istio's `matchLabels`).
    #[serde(default)]
    pub workload_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    /// Selects the subset's workloads among the host's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's policy for this subset, field by field.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Client TLS: origination (SIMPLE, MUTUAL) towards ServiceEntry hosts; mesh traffic is always keel's mTLS.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

/// A policy for one port of the host, overriding the rule's for that port.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    pub port: PortSelector,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

// ---- Client TLS -----------------------------------------------------------------------------------------------

/// Istio's ClientTLSSettings: how the proxy speaks TLS to the host's endpoints. File paths are on the proxy's
/// filesystem, as for a sidecar.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// Unset means DISABLE.
    #[serde(default)]
    pub mode: Option<ClientTlsMode>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    /// TLS to the endpoint, verifying its certificate.
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// The mesh's own mTLS: what keel always does between mesh workloads.
    IstioMutual,
}

impl ClientTlsSettings {
    /// Whether these settings ask the proxy to originate TLS itself.
    pub fn originates(&self) -> bool {
        matches!(self.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
    }
}

// ---- Load balancing -------------------------------------------------------------------------------------------

/// One of `simple` or `consistentHash` (Istio's one-of, checked by `translate::check`).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default: LEAST_REQUEST.
    Unspecified,
    /// Deprecated in Istio for LEAST_REQUEST, which it means.
    LeastConn,
    LeastRequest,
    RoundRobin,
    Random,
    /// Forward to the address the client asked for, without balancing.
    Passthrough,
}

/// Hashes one request attribute to pick an endpoint, so equal values stick to one endpoint. Exactly one key
/// (`httpHeaderName`, `httpCookie`, `useSourceIp`, `httpQueryParameterName`) and at most one algorithm.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: bool,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    /// Deprecated in Istio for `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// What a consistent hash hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKey<'a> {
    Header(&'a str),
    Cookie(&'a HttpCookie),
    SourceIp,
    QueryParameter(&'a str),
}

impl ConsistentHashLb {
    /// The one hash key, or which keys are missing or clash.
    pub fn key(&self) -> Result<HashKey<'_>, String> {
        let mut set = Vec::new();
        if let Some(name) = &self.http_header_name {
            set.push(("httpHeaderName", HashKey::Header(name)));
        }
        if let Some(cookie) = &self.http_cookie {
            set.push(("httpCookie", HashKey::Cookie(cookie)));
        }
        if self.use_source_ip {
            set.push(("useSourceIp", HashKey::SourceIp));
        }
        if let Some(name) = &self.http_query_parameter_name {
            set.push(("httpQueryParameterName", HashKey::QueryParameter(name)));
        }
        match set.as_slice() {
            [(_, key)] => Ok(*key),
            [] => Err("one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required".into()),
            several => {
                let names: Vec<&str> = several.iter().map(|(name, _)| *name).collect();
                Err(format!(
                    "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set, found {}",
                    names.join(" and ")
                ))
            }
        }
    }
}

/// A cookie to hash; with a `ttl`, the proxy sets it when the request lacks it.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<ProtoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Must be prime (Envoy's rule); Envoy's default is 65537.
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// Locality-aware balancing, read minimally: `enabled` is honoured, the explicit distribution and failover
/// settings are accepted and reported as not applied.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[schemars(schema_with = "super::schema::any_values")]
    #[serde(default)]
    pub distribute: Vec<serde_yaml_ng::Value>,
    #[schemars(schema_with = "super::schema::any_values")]
    #[serde(default)]
    pub failover: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

// ---- Connection pool and outlier detection --------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<i32>,
    #[serde(default)]
    pub connect_timeout: Option<ProtoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default)]
    pub http2_max_requests: Option<i32>,
    /// 0 means unlimited, 1 disables keep-alive.
    #[serde(default)]
    pub max_requests_per_connection: Option<i32>,
    /// Retries outstanding at once across the cluster.
    #[serde(default)]
    pub max_retries: Option<i32>,
    #[serde(default)]
    pub idle_timeout: Option<ProtoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Time between ejection sweeps.
    #[serde(default)]
    pub interval: Option<ProtoDuration>,
    /// Ejection lasts this long times the number of times the endpoint was ejected.
    #[serde(default)]
    pub base_ejection_time: Option<ProtoDuration>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    /// Below this share of healthy endpoints, ejection stops.
    #[serde(default)]
    pub min_health_percent: Option<i32>,
}
