//! VirtualService (networking.istio.io/v1): how requests to a set of hosts are routed. Field names and meanings
//! are Istio's; types follow Istio's proto (int32 fields stay signed so `check` can name a negative one). Istio's
//! one-of fields whose members are all alternatives of one thing (a string match, a response body) are enums,
//! refused while parsing unless exactly one member is set; the ones mixed with other fields are checked by
//! `translate::check`.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{duration::ProtoDuration, Metadata};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

/// The gateway name that binds a VirtualService to mesh (sidecar, here node proxy) traffic.
pub const MESH_GATEWAY: &str = "mesh";

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Empty means `mesh` only.
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

impl VirtualServiceSpec {
    /// Whether the routes apply to traffic between workloads, the only traffic keel sees: as in Istio, when no
    /// gateway is listed, or when `mesh` is one of them.
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }
}

// ---- HTTP routes ----------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these (each an AND of its conditions); none matches every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<ProtoDuration>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// The share of requests `mirror` receives; Istio's default is all of them.
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Accepted so Istio configs load; not enforced (see `translate::check`'s warnings).
    #[schemars(schema_with = "super::schema::any_value")]
    #[serde(default)]
    pub cors_policy: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// What an HTTP route does with a request it matched: Istio's `route`/`redirect`/`directResponse`/`delegate`,
/// exactly one of which a route carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HttpAction<'a> {
    Route(&'a [HttpRouteDestination]),
    Redirect(&'a HttpRedirect),
    DirectResponse(&'a HttpDirectResponse),
    Delegate(&'a Delegate),
}

impl HttpRoute {
    /// The route's action, or which of the exclusive fields are missing or clash.
    pub fn action(&self) -> Result<HttpAction<'_>, String> {
        let mut set = Vec::new();
        if !self.route.is_empty() {
            set.push(("route", HttpAction::Route(&self.route)));
        }
        if let Some(redirect) = &self.redirect {
            set.push(("redirect", HttpAction::Redirect(redirect)));
        }
        if let Some(response) = &self.direct_response {
            set.push(("directResponse", HttpAction::DirectResponse(response)));
        }
        if let Some(delegate) = &self.delegate {
            set.push(("delegate", HttpAction::Delegate(delegate)));
        }
        match set.as_slice() {
            [(_, action)] => Ok(*action),
            [] => Err("one of route, redirect, directResponse or delegate is required".into()),
            several => {
                let names: Vec<&str> = several.iter().map(|(name, _)| *name).collect();
                Err(format!("only one of route, redirect, directResponse or delegate may be set, found {}", names.join(" and ")))
            }
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Istio matches query parameters by `exact` or `regex` only (`exact: ""` is presence).
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Matches when none of these headers matches (`{}`: when the header is absent).
    #[serde(default)]
    pub without_headers: BTreeMap<String, HeaderMatch>,
}

/// Istio's StringMatch: exactly one of `exact`, `prefix` or `regex` (RE2 syntax, matching the whole value).
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(try_from = "StringMatchFields")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A header condition. Istio writes "the header is present" as an empty match, `{}`.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(try_from = "StringMatchFields")]
pub enum HeaderMatch {
    Present,
    Value(StringMatch),
}

/// StringMatch as written, before the one-of rule is applied.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

impl StringMatchFields {
    /// The one member set, `None` when none is.
    fn single(self) -> Result<Option<StringMatch>, String> {
        let mut set: Vec<(&str, StringMatch)> = [
            self.exact.map(|v| ("exact", StringMatch::Exact(v))),
            self.prefix.map(|v| ("prefix", StringMatch::Prefix(v))),
            self.regex.map(|v| ("regex", StringMatch::Regex(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() > 1 {
            let names: Vec<&str> = set.iter().map(|(name, _)| *name).collect();
            return Err(format!("only one of exact, prefix or regex may be set, found {}", names.join(" and ")));
        }
        Ok(set.pop().map(|(_, m)| m))
    }
}

impl TryFrom<StringMatchFields> for StringMatch {
    type Error = String;

    fn try_from(fields: StringMatchFields) -> Result<Self, String> {
        fields.single()?.ok_or_else(|| "one of exact, prefix or regex is required".into())
    }
}

impl TryFrom<StringMatchFields> for HeaderMatch {
    type Error = String;

    fn try_from(fields: StringMatchFields) -> Result<Self, String> {
        Ok(fields.single()?.map_or(HeaderMatch::Present, HeaderMatch::Value))
    }
}

#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// A relative share of the route's traffic, 0-100; ignored when the route has a single destination.
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A service (by host, as VirtualService hosts name them) and optionally one of its DestinationRule subsets.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    /// Required only when the service has more than one port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// A share of requests, in percent (0-100, fractions allowed).
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replaces the header.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Appends a value, keeping those already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub scheme: Option<String>,
    /// 301 when unset, as in Istio.
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// A direct response's body: Istio's `{string: ...}` or `{bytes: <base64>}`, the latter decoded while parsing.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(try_from = "HttpBodyFields")]
pub enum HttpBody {
    String(String),
    Bytes(Vec<u8>),
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HttpBodyFields {
    #[serde(default)]
    string: Option<String>,
    #[serde(default)]
    bytes: Option<String>,
}

impl TryFrom<HttpBodyFields> for HttpBody {
    type Error = String;

    fn try_from(fields: HttpBodyFields) -> Result<Self, String> {
        use base64::Engine as _;
        match (fields.string, fields.bytes) {
            (Some(text), None) => Ok(HttpBody::String(text)),
            (None, Some(encoded)) => {
                base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map(HttpBody::Bytes).map_err(|e| format!("bytes: not base64 ({e})"))
            }
            (Some(_), Some(_)) => Err("only one of string or bytes may be set".into()),
            (None, None) => Err("one of string or bytes is required".into()),
        }
    }
}

/// Hands the route to another VirtualService. Parsed so it can be refused by name: keel does not delegate.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the matched path prefix (or the whole path for an exact match).
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    /// May refer to capture groups as `\1`.
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: i32,
    #[serde(default)]
    pub per_try_timeout: Option<ProtoDuration>,
    /// Comma-separated Envoy retry conditions and plain status codes, e.g. "5xx,connect-failure,503".
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

impl HttpRetry {
    /// The retry conditions of `retryOn`, trimmed, empty entries skipped.
    pub fn conditions(&self) -> impl Iterator<Item = &str> {
        self.retry_on.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|c| !c.is_empty())
    }
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Unset means no request is delayed (Istio).
    #[serde(default)]
    pub percentage: Option<Percent>,
    pub fixed_delay: ProtoDuration,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// Unset means no request is aborted (Istio).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// One of `httpStatus` and `grpcStatus` (a gRPC status name such as "UNAVAILABLE").
    #[serde(default)]
    pub http_status: Option<i32>,
    #[serde(default)]
    pub grpc_status: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    /// Unset means every request is mirrored.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

// ---- TCP and TLS routes ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// IPs or CIDRs of the destination.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: i32,
}

/// TLS routes (by SNI) are read so Istio configs load, and not applied.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
}
