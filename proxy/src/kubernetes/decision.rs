//! Whether keel captures a pod, from what the API says of it and of its namespace: a pure function, one place.
//!
//! In the mesh at all is Istio's rule, decided by `keel_mesh::ambient::membership` (shared with keel-control, so the
//! node and the control plane never disagree about a pod). On top of it, what only the node cares about: a pod is
//! captured once it has an address and until its phase is terminal. A pod being deleted (`deletionTimestamp`) stays
//! captured: its open connections finish under capture, as they started.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;
use keel_mesh::ambient::{self, Membership, NotAmbient, PodFacts, REDIRECTION_ANNOTATION};

use crate::pods::PodName;

/// The slim copy of a Pod the watch cache keeps: only what the decision, the enrollment and the annotation read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub name: PodName,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`), when the kubelet reported one.
    pub phase: Option<String>,
    /// `status.podIPs` (else `status.podIP`) that parse as addresses.
    pub ips: Vec<IpAddr>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
}

/// A Pod object the agent cannot use, naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadPod {
    #[error("a Pod without `metadata.{0}`")]
    Missing(&'static str),
    #[error("Pod {pod}: `status.podIPs` holds {value:?}, not an IP address")]
    BadIp { pod: PodName, value: String },
}

impl PodRecord {
    pub fn from_pod(pod: &Pod) -> Result<PodRecord, BadPod> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().ok_or(BadPod::Missing("uid"))?;
        let name = PodName {
            namespace: meta.namespace.clone().ok_or(BadPod::Missing("namespace"))?,
            name: meta.name.clone().ok_or(BadPod::Missing("name"))?,
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let listed: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()).filter(|ips| !ips.is_empty()) {
            Some(ips) => ips.iter().map(|ip| ip.ip.as_str()).collect(),
            None => status.and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty()).into_iter().collect(),
        };
        let ips = listed
            .into_iter()
            .map(|ip| ip.parse().map_err(|_| BadPod::BadIp { pod: name.clone(), value: ip.to_owned() }))
            .collect::<Result<Vec<IpAddr>, _>>()?;
        Ok(PodRecord {
            uid,
            service_account: spec.and_then(|s| s.service_account_name.clone()).filter(|sa| !sa.is_empty()).unwrap_or_else(|| "default".to_owned()),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()),
            ips,
            terminating: meta.deletion_timestamp.is_some(),
            name,
        })
    }

    /// The phase says the pod's containers are done for good: nothing of it will talk again.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// keel's mark (`ambient.istio.io/redirection: enabled`) is on the pod.
    pub fn marked_captured(&self) -> bool {
        self.annotations.get(REDIRECTION_ANNOTATION).is_some_and(|v| v == "enabled")
    }

    fn membership(&self, namespace_labels: Option<&BTreeMap<String, String>>) -> Membership {
        ambient::membership(&PodFacts { labels: &self.labels, annotations: &self.annotations, host_network: self.host_network, namespace_labels })
    }
}

/// Why keel does not capture a pod (logged, and `keel-cni`'s `not_ambient` reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Release {
    #[error(transparent)]
    NotAmbient(#[from] NotAmbient),
    #[error("the pod's phase is {0}")]
    Terminal(String),
    #[error("the pod has no IPv4 address (IPv6 pods are not captured yet)")]
    NoIpv4,
}

/// What keel does with a pod of its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Captured, with these (IPv4) addresses.
    Capture { ips: Vec<IpAddr> },
    /// In the mesh but without an address in the API yet (keel-cni's ADD runs before the kubelet reports one):
    /// an enrollment keel has stays, none is made from the API.
    Pending,
    /// Not captured: an enrollment keel has is released.
    Release(Release),
}

/// The verdict for `pod`, whose namespace has `namespace_labels` (`None`: keel has not seen the namespace).
pub fn verdict(pod: &PodRecord, namespace_labels: Option<&BTreeMap<String, String>>) -> Verdict {
    if let Err(release) = admissible(pod, namespace_labels) {
        return Verdict::Release(release);
    }
    if pod.ips.is_empty() {
        return Verdict::Pending;
    }
    let ips: Vec<IpAddr> = pod.ips.iter().copied().filter(IpAddr::is_ipv4).collect();
    if ips.is_empty() {
        return Verdict::Release(Release::NoIpv4);
    }
    Verdict::Capture { ips }
}

/// The decision for a CNI ADD, which runs before the pod has an address in the API: in the mesh and not done.
pub fn admissible(pod: &PodRecord, namespace_labels: Option<&BTreeMap<String, String>>) -> Result<(), Release> {
    if let Membership::Out(reason) = pod.membership(namespace_labels) {
        return Err(Release::NotAmbient(reason));
    }
    if pod.is_terminal() {
        return Err(Release::Terminal(pod.phase.clone().unwrap_or_default()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use keel_mesh::ambient::DATAPLANE_MODE_LABEL;
    use serde_json::json;

    pub(crate) fn record(uid: &str, name: &str, ip: Option<&str>) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            name: PodName { namespace: "apps".into(), name: name.into() },
            service_account: "default".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            host_network: false,
            phase: Some("Running".into()),
            ips: ip.iter().map(|ip| ip.parse().unwrap()).collect(),
            terminating: false,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_pod_object_reads_into_a_record() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "apps", "uid": "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11",
                         "labels": {"app": "web"}, "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "serviceAccountName": "web", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]}
        }))
        .unwrap();
        let record = PodRecord::from_pod(&pod).unwrap();
        assert_eq!(record.name.to_string(), "apps/web-1");
        assert_eq!(record.service_account, "web");
        assert_eq!(record.ips, ["10.244.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert!(record.terminating);
        assert_eq!(
            verdict(&record, Some(&labels(&[(DATAPLANE_MODE_LABEL, "ambient")]))),
            Verdict::Capture { ips: vec!["10.244.0.5".parse().unwrap()] }
        );

        let only_pod_ip: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "apps", "uid": "u1"}, "status": {"podIP": "10.244.0.6"}
        }))
        .unwrap();
        let record = PodRecord::from_pod(&only_pod_ip).unwrap();
        assert_eq!((record.ips.len(), record.service_account.as_str()), (1, "default"));
    }

    #[test]
    fn bad_pod_objects_name_the_field() {
        let no_uid: Pod = serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "apps"}})).unwrap();
        assert_eq!(PodRecord::from_pod(&no_uid), Err(BadPod::Missing("uid")));
        let bad_ip: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "apps", "uid": "u"}, "status": {"podIP": "10.244.0.300"}
        }))
        .unwrap();
        let err = PodRecord::from_pod(&bad_ip).unwrap_err();
        assert_eq!(err.to_string(), "Pod apps/a: `status.podIPs` holds \"10.244.0.300\", not an IP address");
    }

    #[test]
    fn capture_needs_the_mesh_an_address_and_a_live_phase() {
        let ambient_ns = labels(&[(DATAPLANE_MODE_LABEL, "ambient")]);
        let pod = record("u1", "a", Some("10.244.0.5"));
        assert_eq!(verdict(&pod, Some(&ambient_ns)), Verdict::Capture { ips: vec!["10.244.0.5".parse().unwrap()] });
        assert_eq!(verdict(&pod, Some(&BTreeMap::new())), Verdict::Release(Release::NotAmbient(NotAmbient::NotEnabled)));
        assert_eq!(verdict(&pod, None), Verdict::Release(Release::NotAmbient(NotAmbient::NotEnabled)), "an unknown namespace enrolls nothing");

        let opted_out = PodRecord { labels: labels(&[(DATAPLANE_MODE_LABEL, "none")]), ..pod.clone() };
        assert_eq!(verdict(&opted_out, Some(&ambient_ns)), Verdict::Release(Release::NotAmbient(NotAmbient::OptedOut)));
        let by_own_label = PodRecord { labels: labels(&[(DATAPLANE_MODE_LABEL, "ambient")]), ..pod.clone() };
        assert!(matches!(verdict(&by_own_label, None), Verdict::Capture { .. }));

        let no_ip = record("u1", "a", None);
        assert_eq!(verdict(&no_ip, Some(&ambient_ns)), Verdict::Pending, "the CNI ADD comes before the pod's IP is in the API");
        assert_eq!(admissible(&no_ip, Some(&ambient_ns)), Ok(()));
        let v6 = record("u1", "a", Some("fd00::5"));
        assert_eq!(verdict(&v6, Some(&ambient_ns)), Verdict::Release(Release::NoIpv4));

        for phase in ["Succeeded", "Failed"] {
            let done = PodRecord { phase: Some(phase.into()), ..pod.clone() };
            assert_eq!(verdict(&done, Some(&ambient_ns)), Verdict::Release(Release::Terminal(phase.into())));
            assert_eq!(admissible(&done, Some(&ambient_ns)), Err(Release::Terminal(phase.into())));
        }
        let terminating = PodRecord { terminating: true, ..pod.clone() };
        assert!(matches!(verdict(&terminating, Some(&ambient_ns)), Verdict::Capture { .. }), "a pod being deleted keeps its capture");
        let pending = PodRecord { phase: Some("Pending".into()), ..pod };
        assert!(matches!(verdict(&pending, Some(&ambient_ns)), Verdict::Capture { .. }));
    }
}
