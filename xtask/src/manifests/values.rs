//! What an installer may change, with its defaults (the chart's values.yaml), and how the builders receive it.
//!
//! Strings reach the builders as [`Params`]: the default values for the plain manifest, Helm expressions for the
//! chart. Values that are not strings (a replica count, resource requirements, tolerations) are built with their
//! defaults and replaced by Helm expressions after serialization, at the places [`helm_slots`] names.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, Toleration},
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Deserialize, Serialize};

use super::{
    names::{CONTROL, GATEWAY, KEEL},
    render::{Segment, Slot, SlotStyle},
};

/// The chart's values. Field names are the values.yaml keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    pub image: Image,
    /// keel's, keel-control's and the gateway's log filter (`KEEL_LOG`: a tracing filter such as `info` or `info,keel::xds=debug`).
    pub log_level: String,
    pub keel: NodeAgent,
    pub control: ControlPlane,
    pub gateway: Gateway,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    /// Registry and path of the images: `<hub>/keel:<tag>` and `<hub>/keel-control:<tag>`.
    pub hub: String,
    pub tag: String,
    pub pull_policy: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAgent {
    pub resources: ResourceRequirements,
    pub tolerations: Vec<Toleration>,
    /// Istio's `meshConfig.outboundTrafficPolicy.mode`: one of [`OUTBOUND_TRAFFIC_POLICIES`]' value spellings.
    pub outbound_traffic_policy: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    pub replicas: i32,
    pub resources: ResourceRequirements,
}

/// The ingress gateway (`keel gateway`, Deployment keel-ingressgateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// false: the chart renders none of the gateway's objects.
    pub enabled: bool,
    pub replicas: i32,
    pub resources: ResourceRequirements,
}

/// `keel.outboundTrafficPolicy` as a values.yaml spells it (Istio's meshConfig spelling) and as keel's
/// `--outbound-traffic-policy` does.
pub const OUTBOUND_TRAFFIC_POLICIES: [(&str, &str); 2] = [("ALLOW_ANY", "allow-any"), ("REGISTRY_ONLY", "registry-only")];

/// The keel flag value of a values.yaml `keel.outboundTrafficPolicy`; `None` for any other spelling.
pub fn outbound_traffic_policy_flag(value: &str) -> Option<&'static str> {
    OUTBOUND_TRAFFIC_POLICIES.iter().find(|(helm, _)| *helm == value).map(|(_, flag)| *flag)
}

/// The chart's form of [`outbound_traffic_policy_flag`]: Istio's spelling lower-cased, `_` → `-`.
const OUTBOUND_TRAFFIC_POLICY_EXPR: &str = r#"{{ .Values.keel.outboundTrafficPolicy | lower | replace "_" "-" }}"#;

impl Default for Values {
    fn default() -> Values {
        Values {
            image: Image {
                // `cargo xtask image` builds OCI layouts; `localhost/<name>` is how podman and CRI-O name a locally
                // loaded image. Point `hub` at the registry the images were pushed to.
                hub: "localhost".to_owned(),
                tag: env!("CARGO_PKG_VERSION").to_owned(),
                pull_policy: "IfNotPresent".to_owned(),
            },
            log_level: "info".to_owned(),
            keel: NodeAgent {
                // Requests only: a memory limit would let the kernel OOM-kill the node's proxy, which drops every
                // pod's connections at once; system-node-critical priority protects it instead. keel measured
                // about 33 MiB PSS with 1,000 hosts in the L7 benchmark.
                resources: requests("200m", "128Mi"),
                // Every taint: a node without keel has no mesh, so pods there would be refused or unprotected.
                tolerations: vec![Toleration { operator: Some("Exists".to_owned()), ..Toleration::default() }],
                // Istio's default: the mesh does not stand between a pod and an address it does not know.
                outbound_traffic_policy: "ALLOW_ANY".to_owned(),
            },
            control: ControlPlane { replicas: 2, resources: requests("100m", "256Mi") },
            // Requests only, as keel's: the gateway holds every client connection of the cluster's ingress.
            gateway: Gateway { enabled: true, replicas: 1, resources: requests("100m", "128Mi") },
        }
    }
}

fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    let requests = BTreeMap::from([("cpu".to_owned(), Quantity(cpu.to_owned())), ("memory".to_owned(), Quantity(memory.to_owned()))]);
    ResourceRequirements { requests: Some(requests), ..ResourceRequirements::default() }
}

/// The string inputs of the builders.
#[derive(Debug, Clone)]
pub struct Params {
    pub values: Values,
    pub namespace: String,
    pub keel_image: String,
    pub control_image: String,
    pub pull_policy: String,
    pub log_level: String,
    /// keel's `--outbound-traffic-policy` value.
    pub outbound_traffic_policy: String,
}

impl Params {
    /// The plain manifest: every value at its default, in the default namespace.
    pub fn plain(values: &Values) -> Params {
        Params {
            values: values.clone(),
            namespace: super::names::NAMESPACE.to_owned(),
            keel_image: format!("{}/{KEEL}:{}", values.image.hub, values.image.tag),
            control_image: format!("{}/{CONTROL}:{}", values.image.hub, values.image.tag),
            pull_policy: values.image.pull_policy.clone(),
            log_level: values.log_level.clone(),
            outbound_traffic_policy: outbound_traffic_policy_flag(&values.keel.outbound_traffic_policy)
                .unwrap_or_else(|| {
                    panic!("keel.outboundTrafficPolicy {:?} is none of {OUTBOUND_TRAFFIC_POLICIES:?}", values.keel.outbound_traffic_policy)
                })
                .to_owned(),
        }
    }

    /// The chart: Helm expressions for every string value; the release namespace for the namespace.
    pub fn helm(values: &Values) -> Params {
        Params {
            values: values.clone(),
            namespace: "{{ .Release.Namespace }}".to_owned(),
            keel_image: format!("{{{{ .Values.image.hub }}}}/{KEEL}:{{{{ .Values.image.tag }}}}"),
            control_image: format!("{{{{ .Values.image.hub }}}}/{CONTROL}:{{{{ .Values.image.tag }}}}"),
            pull_policy: "{{ .Values.image.pullPolicy }}".to_owned(),
            log_level: "{{ .Values.logLevel }}".to_owned(),
            outbound_traffic_policy: OUTBOUND_TRAFFIC_POLICY_EXPR.to_owned(),
        }
    }
}

/// Template lines that fail rendering on a value the chart cannot map (written at the top of the node agent's
/// template): `helm install` and `helm template` stop with the message instead of installing a crash-looping keel.
pub fn helm_checks() -> Vec<String> {
    let allowed: Vec<String> = OUTBOUND_TRAFFIC_POLICIES.iter().map(|(helm, _)| format!("{helm:?}")).collect();
    vec![format!(
        "{{{{- if not (has .Values.keel.outboundTrafficPolicy (list {})) }}}}{{{{ fail \"keel.outboundTrafficPolicy must be {} (Istio's \
         meshConfig.outboundTrafficPolicy.mode)\" }}}}{{{{- end }}}}",
        allowed.join(" "),
        OUTBOUND_TRAFFIC_POLICIES.iter().map(|(helm, _)| *helm).collect::<Vec<_>>().join(" or "),
    )]
}

/// Where the chart's non-string values go.
pub fn helm_slots() -> Vec<Slot> {
    let container =
        |name: &str| -> Vec<Segment> { vec!["spec".into(), "template".into(), "spec".into(), "containers".into(), Segment::Named(name.to_owned())] };
    let at = |mut base: Vec<Segment>, rest: &[&str]| -> Vec<Segment> {
        base.extend(rest.iter().map(|s| Segment::from(*s)));
        base
    };
    vec![
        Slot { kind: "DaemonSet", name: KEEL, path: at(container(KEEL), &["resources"]), expr: ".Values.keel.resources", style: SlotStyle::Block },
        Slot {
            kind: "DaemonSet",
            name: KEEL,
            path: at(Vec::new(), &["spec", "template", "spec", "tolerations"]),
            expr: ".Values.keel.tolerations",
            style: SlotStyle::Block,
        },
        Slot {
            kind: "Deployment",
            name: CONTROL,
            path: at(Vec::new(), &["spec", "replicas"]),
            expr: ".Values.control.replicas",
            style: SlotStyle::Inline,
        },
        Slot {
            kind: "Deployment",
            name: CONTROL,
            path: at(container(CONTROL), &["resources"]),
            expr: ".Values.control.resources",
            style: SlotStyle::Block,
        },
        Slot {
            kind: "Deployment",
            name: GATEWAY,
            path: at(Vec::new(), &["spec", "replicas"]),
            expr: ".Values.gateway.replicas",
            style: SlotStyle::Inline,
        },
        Slot {
            kind: "Deployment",
            name: GATEWAY,
            path: at(container(GATEWAY), &["resources"]),
            expr: ".Values.gateway.resources",
            style: SlotStyle::Block,
        },
    ]
}
