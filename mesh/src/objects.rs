//! The objects keel-control reads, shaped as their Kubernetes/Istio YAML is: Pod (a workload), Service,
//! ServiceEntry, AuthorizationPolicy and PeerAuthentication here; the traffic-management kinds VirtualService and
//! DestinationRule in their own modules. Each document parses and validates on its own; an error says which field
//! of which object is wrong.
mod destination_rule;
mod duration;
mod gateway;
pub mod names;
mod schema;
mod secret;
mod virtual_service;

use std::{collections::BTreeMap, fmt, net::IpAddr};

use schemars::JsonSchema;
use serde::Deserialize;

pub use destination_rule::*;
pub use duration::ProtoDuration;
pub use gateway::*;
pub use secret::Secret;
pub use virtual_service::*;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Set by the API server; absent in a config directory.
    #[serde(default)]
    pub uid: Option<String>,
    /// Set once the object is being deleted (a pod then finishes its open connections and takes no new ones).
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// `kind namespace/name`, as errors and logs name an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(Pod),
    Service(Service),
    ServiceEntry(ServiceEntry),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    VirtualService(VirtualService),
    Gateway(Gateway),
    DestinationRule(DestinationRule),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
}

impl Object {
    pub fn metadata(&self) -> &Metadata {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::ServiceEntry(_) => "ServiceEntry",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            Object::RequestAuthentication(_) => "RequestAuthentication",
            Object::VirtualService(_) => "VirtualService",
            Object::Gateway(_) => "Gateway",
            Object::DestinationRule(_) => "DestinationRule",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Secret(_) => "Secret",
        }
    }

    pub fn reference(&self) -> ObjectRef {
        let m = self.metadata();
        ObjectRef { kind: self.kind().to_owned(), namespace: m.namespace.clone(), name: m.name.clone() }
    }
}

// ---- Pod ------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
    /// What other objects say about the pod, filled in by the source that has them (the Kubernetes API: the
    /// pod's Namespace and Node); a config directory leaves it empty.
    #[serde(skip)]
    pub context: PodContext,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodContext {
    /// The labels of the pod's namespace, `None` when the source has no Namespace objects.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// The labels of the node the pod runs on (its topology labels give the pod's locality).
    pub node_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub host_network: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    /// Pending, Running, Succeeded, Failed or Unknown; absent in a config directory.
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

/// Kubernetes' well-known topology labels: on a node (as Kubernetes sets them) or, in a config directory, on the pod.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PodIp {
    pub ip: IpAddr,
}

impl Pod {
    /// Every address of the pod, `podIPs` first, without duplicates.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.status.pod_ips.iter().map(|p| p.ip).collect();
        if let Some(ip) = self.status.pod_ip {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips
    }

    pub fn service_account(&self) -> &str {
        self.spec.service_account_name.as_deref().unwrap_or("default")
    }

    /// A pod that is a workload at all: it has an address and has not finished (Succeeded/Failed pods keep their
    /// object, and for a while their IP, which may already belong to another pod).
    pub fn is_workload(&self) -> bool {
        !self.ips().is_empty() && !matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Whether new connections may go to the pod: not being deleted, and Ready when its readiness is known. A
    /// terminating pod keeps its open connections; it only stops being chosen.
    pub fn is_serving(&self) -> bool {
        self.metadata.deletion_timestamp.is_none() && self.status.conditions.iter().find(|c| c.kind == "Ready").is_none_or(|c| c.status == "True")
    }

    /// `(region, zone, subzone)`: from the pod's own topology labels when it has any, else from its node's.
    pub fn locality(&self) -> (String, String, String) {
        let from = |labels: &BTreeMap<String, String>| {
            let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
            (label(REGION_LABEL), label(ZONE_LABEL), label(SUBZONE_LABEL))
        };
        let own = from(&self.metadata.labels);
        if own != Default::default() {
            return own;
        }
        from(&self.context.node_labels)
    }
}

// ---- Service --------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<PortRef>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Kubernetes' IntOrString for target ports: a number, or the name of a container port.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl Service {
    /// `clusterIPs`, or `clusterIP` when that is all there is; "None" (headless) gives none.
    pub fn vips(&self) -> Result<Vec<IpAddr>, String> {
        let mut raw: Vec<&str> = self.spec.cluster_ips.iter().map(String::as_str).collect();
        if raw.is_empty() {
            raw.extend(self.spec.cluster_ip.as_deref());
        }
        raw.into_iter()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| ip.parse().map_err(|_| format!("spec.clusterIPs: {ip:?} is not an IP address")))
            .collect()
    }
}

// ---- EndpointSlice --------------------------------------------------------------------------------------------

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `discovery.k8s.io/v1` EndpointSlice: what keel reads of it is which pods back a Service without a selector
/// (whose endpoints someone else manages); a Service with a selector is backed by the pods it selects.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: Metadata,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TargetRef {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl EndpointSlice {
    /// The Service this slice belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(SERVICE_NAME_LABEL).map(String::as_str)
    }

    /// Whether the slice lists `pod`: by a `targetRef` to it, or by one of its addresses.
    pub fn lists(&self, pod: &Pod) -> bool {
        let ips: Vec<String> = pod.ips().iter().map(ToString::to_string).collect();
        self.endpoints.iter().any(|endpoint| {
            let by_ref =
                endpoint.target_ref.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(&pod.metadata.name));
            by_ref || endpoint.addresses.iter().any(|address| ips.contains(address))
        })
    }
}

// ---- ServiceEntry ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    pub metadata: Metadata,
    pub spec: ServiceEntrySpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    pub number: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

// ---- AuthorizationPolicy --------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[schemars(schema_with = "schema::any_values")]
    #[serde(default)]
    pub target_refs: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub action: Option<String>,
    #[schemars(schema_with = "schema::any_value")]
    #[serde(default)]
    pub provider: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// `<namespace>/<name>` (or a name in the policy's namespace) of the peer's service account.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

// ---- RequestAuthentication ------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthentication {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[schemars(schema_with = "schema::any_values")]
    #[serde(default)]
    pub target_refs: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The key set as JSON text.
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// The JWKS fetch's timeout (Istio's default: 5 s).
    #[serde(default)]
    pub timeout: Option<duration::ProtoDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

// ---- PeerAuthentication ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub mtls: Option<MtlsSetting>,
    /// Keyed by port number (YAML keys are strings; a CRD cannot say "numeric keys").
    #[schemars(with = "BTreeMap<String, MtlsSetting>")]
    #[serde(default, deserialize_with = "by_port_number")]
    pub port_level_mtls: BTreeMap<u16, MtlsSetting>,
}

/// A map keyed by port number, written `8080:` in YAML or `"8080":` (as JSON, and so the Kubernetes API, always
/// writes keys).
fn by_port_number<'de, D: serde::Deserializer<'de>, V: Deserialize<'de>>(deserializer: D) -> Result<BTreeMap<u16, V>, D::Error> {
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(untagged)]
    enum Key {
        Number(u16),
        Text(String),
    }
    BTreeMap::<Key, V>::deserialize(deserializer)?
        .into_iter()
        .map(|(key, value)| match key {
            Key::Number(port) => Ok((port, value)),
            Key::Text(text) => {
                text.parse().map(|port| (port, value)).map_err(|_| serde::de::Error::custom(format!("{text:?} is not a port number (1-65535)")))
            }
        })
        .collect()
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSetting {
    #[serde(default)]
    pub mode: Option<String>,
}
