//! Which pods are in the ambient mesh, by Istio's conventions: decided here once, for keel-control (which makes a
//! pod's Workload HBONE or not) and for keel's node agent (which captures the pod's traffic or not), so the two can
//! never disagree about a pod.
use std::collections::BTreeMap;

/// On a namespace (every pod in it) or on a pod: `ambient` enrolls, `none` on a pod keeps it out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Set by Istio's sidecar injector: the pod runs its own proxy and must not be captured a second time.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Set by the node agent on a pod it captures (`enabled`), as istio-cni does; Istio tooling reads it.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

/// A pod's answer: in the mesh, or out and why (the reason is logged and shown by `keel pc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Ambient,
    Out(NotAmbient),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAmbient {
    #[error("neither the pod nor its namespace is labelled istio.io/dataplane-mode=ambient")]
    NotEnabled,
    #[error("the pod is labelled istio.io/dataplane-mode=none")]
    OptedOut,
    #[error("the pod uses the host's network")]
    HostNetwork,
    #[error("the pod runs an Istio sidecar (annotation sidecar.istio.io/status)")]
    Sidecar,
}

/// What the decision reads of a pod and of its namespace.
pub struct PodFacts<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub host_network: bool,
    /// `None` when the namespace is not known (yet): then only the pod's own label can enroll it.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

pub fn membership(pod: &PodFacts<'_>) -> Membership {
    fn mode(labels: &BTreeMap<String, String>) -> Option<&str> {
        labels.get(DATAPLANE_MODE_LABEL).map(String::as_str)
    }
    let out = match mode(pod.labels) {
        Some("none") => Some(NotAmbient::OptedOut),
        _ if pod.host_network => Some(NotAmbient::HostNetwork),
        _ if pod.annotations.contains_key(SIDECAR_STATUS_ANNOTATION) => Some(NotAmbient::Sidecar),
        Some("ambient") => None,
        _ if pod.namespace_labels.and_then(mode) == Some("ambient") => None,
        _ => Some(NotAmbient::NotEnabled),
    };
    out.map_or(Membership::Ambient, Membership::Out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn decide(pod: &[(&str, &str)], annotations: &[(&str, &str)], host_network: bool, namespace: Option<&[(&str, &str)]>) -> Membership {
        let (pod, annotations, namespace) = (labels(pod), labels(annotations), namespace.map(labels));
        membership(&PodFacts { labels: &pod, annotations: &annotations, host_network, namespace_labels: namespace.as_ref() })
    }

    const AMBIENT: &[(&str, &str)] = &[(DATAPLANE_MODE_LABEL, "ambient")];
    const NONE: &[(&str, &str)] = &[(DATAPLANE_MODE_LABEL, "none")];

    #[test]
    fn the_namespace_or_the_pod_label_enrolls() {
        assert_eq!(decide(&[], &[], false, Some(AMBIENT)), Membership::Ambient);
        assert_eq!(decide(AMBIENT, &[], false, Some(&[])), Membership::Ambient);
        assert_eq!(decide(AMBIENT, &[], false, None), Membership::Ambient, "the pod's own label needs no namespace");
        assert_eq!(decide(&[], &[], false, Some(&[])), Membership::Out(NotAmbient::NotEnabled));
        assert_eq!(decide(&[], &[], false, None), Membership::Out(NotAmbient::NotEnabled));
        assert_eq!(decide(&[("istio.io/dataplane-mode", "sidecar")], &[], false, Some(&[])), Membership::Out(NotAmbient::NotEnabled));
    }

    #[test]
    fn opt_outs_win_over_an_ambient_namespace_and_pod_label() {
        assert_eq!(decide(NONE, &[], false, Some(AMBIENT)), Membership::Out(NotAmbient::OptedOut));
        assert_eq!(decide(AMBIENT, &[], true, Some(AMBIENT)), Membership::Out(NotAmbient::HostNetwork));
        assert_eq!(decide(&[], &[(SIDECAR_STATUS_ANNOTATION, "{}")], false, Some(AMBIENT)), Membership::Out(NotAmbient::Sidecar));
    }
}
