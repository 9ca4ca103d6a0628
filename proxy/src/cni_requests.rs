//! What the CNI plugin (`keel-cni`) asks keel, and keel's answers: a pod's sandbox is being networked (ADD), is it
//! still captured (CHECK), it is going away (DEL). keel, not the plugin, decides whether a pod is ambient.
//!
//! Under `--kubernetes` the node agent decides, from the pod's and its namespace's labels in the API (Istio's ambient
//! rule). Without the API keel cannot see labels, so every pod is taken as ambient except those of the namespaces
//! `--cni-exclude-namespace` names (default: `kube-system`, `istio-system`, as istio-cni excludes them); those
//! namespaces are left alone under `--kubernetes` too.
use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{
    enrollment::Enrollment,
    kubernetes::NodeAgent,
    pods::{EnrollRequest, PodName},
};

/// A pod as a CNI ADD or CHECK describes it (from `CNI_NETNS`, `CNI_ARGS` and the chain's `prevResult`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPod {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`: keel finds the pod's cgroup from it.
    pub uid: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// `CNI_CONTAINERID` (the sandbox), for keel's log.
    #[serde(default)]
    pub container_id: Option<String>,
}

/// A pod as a CNI DEL names it. With a `uid`, only a pod enrolled with that uid is released: a DEL of an old
/// sandbox must not release a new pod of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
}

/// keel's answer to `cni_add` (`captured` or `not_ambient`) and to `cni_check` (any of the three).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CniPodState {
    /// The pod is enrolled with this netns: its traffic is captured from now on.
    Captured,
    /// keel leaves this pod alone; nothing to do, and nothing is wrong.
    NotAmbient { reason: String },
    /// The pod is ambient but not captured (CHECK only; an ADD that cannot capture is an error).
    NotCaptured { reason: String },
}

/// keel's answer to `cni_del`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReleased {
    /// Whether a pod was enrolled and is now released (false: there was nothing to release).
    pub released: bool,
}

/// Which pods are in the ambient mesh.
#[derive(Clone, Default)]
pub struct AmbientPolicy {
    pub excluded_namespaces: BTreeSet<String>,
    /// Under `--kubernetes`: the API's labels decide.
    pub agent: Option<Arc<NodeAgent>>,
}

/// Whether a pod is ambient, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ambient {
    Yes,
    No(String),
}

impl AmbientPolicy {
    /// Without the API: by namespace alone.
    pub fn decide(&self, pod: &PodName) -> Ambient {
        if self.excluded_namespaces.contains(&pod.namespace) {
            Ambient::No(format!("namespace {} is excluded (--cni-exclude-namespace)", pod.namespace))
        } else {
            Ambient::Yes
        }
    }

    /// For a CNI ADD: the namespace rule, then (under `--kubernetes`) the API's labels. An API that cannot tell is an
    /// error: the ADD fails and the kubelet retries it, rather than start the pod uncaptured or capture a pod that
    /// opted out.
    pub async fn decide_for_add(&self, pod: &CniPod) -> anyhow::Result<Ambient> {
        if let Ambient::No(reason) = self.decide(&pod.pod_name()) {
            return Ok(Ambient::No(reason));
        }
        let Some(agent) = &self.agent else { return Ok(Ambient::Yes) };
        Ok(match agent.admit(&pod.pod_name(), &pod.uid).await? {
            Ok(()) => Ambient::Yes,
            Err(release) => Ambient::No(release.to_string()),
        })
    }
}

impl CniPod {
    fn pod_name(&self) -> PodName {
        PodName { namespace: self.namespace.clone(), name: self.name.clone() }
    }

    fn enroll_request(&self, budgets: crate::pods::PodBudgets) -> EnrollRequest {
        EnrollRequest {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            // The CNI does not know the pod's service account; keel's identities come from the pod's Workload.
            service_account: "default".to_owned(),
            netns: Some(self.netns.clone()),
            cgroup: None,
            uid: Some(self.uid.clone()),
            ips: self.ips.clone(),
            budgets,
        }
    }
}

/// CNI ADD: captures the pod if it is ambient, and answers only once it is (the runtime starts the pod's
/// containers after the answer, so their first connection is already captured).
pub async fn add(enrollment: &Enrollment, policy: &AmbientPolicy, pod: CniPod) -> anyhow::Result<CniPodState> {
    let name = pod.pod_name();
    if let Ambient::No(reason) = policy.decide_for_add(&pod).await? {
        info!(pod = %name, %reason, "CNI ADD: not ambient, left alone");
        return Ok(CniPodState::NotAmbient { reason });
    }
    // The pod's budgets come from its annotations, which only the node agent (under --kubernetes) has read.
    let budgets = policy.agent.as_ref().map(|agent| agent.budgets(&pod.uid, &name)).unwrap_or_default();
    let spec = enrollment.resolve(pod.enroll_request(budgets)).await?;
    enrollment.enroll_replacing(spec).await?;
    info!(pod = %name, container = pod.container_id.as_deref().unwrap_or(""), "CNI ADD: captured");
    Ok(CniPodState::Captured)
}

/// CNI CHECK: is the pod still captured, with this sandbox's netns?
pub async fn check(enrollment: &Enrollment, policy: &AmbientPolicy, pod: CniPod) -> CniPodState {
    let name = pod.pod_name();
    if let Ambient::No(reason) = policy.decide(&name) {
        return CniPodState::NotAmbient { reason };
    }
    match enrollment.enrolled(&name).await {
        None => CniPodState::NotCaptured { reason: format!("pod {name} is not enrolled") },
        Some(spec) if spec.netns != pod.netns => {
            CniPodState::NotCaptured { reason: format!("pod {name} is enrolled with netns {}, not {}", spec.netns.display(), pod.netns.display()) }
        }
        // A pod enrolled without a UID (by cgroup) is this one if the netns matches; with one, the UIDs must agree.
        Some(spec) if spec.uid.as_ref().is_some_and(|uid| *uid != pod.uid) => {
            CniPodState::NotCaptured { reason: format!("pod {name} is enrolled with uid {:?}, not {}", spec.uid, pod.uid) }
        }
        Some(_) => CniPodState::Captured,
    }
}

/// CNI DEL: releases the pod if keel has it (with this uid, when given); a pod keel does not know is no error.
pub async fn del(enrollment: &Enrollment, policy: &AmbientPolicy, pod: CniPodRef) -> anyhow::Result<CniReleased> {
    if let (Some(agent), Some(uid)) = (&policy.agent, &pod.uid) {
        agent.released_by_cni(uid);
    }
    let name = PodName { namespace: pod.namespace, name: pod.name };
    let Some(spec) = enrollment.enrolled(&name).await else { return Ok(CniReleased { released: false }) };
    if let (Some(wanted), Some(enrolled)) = (&pod.uid, &spec.uid) {
        if wanted != enrolled {
            info!(pod = %name, del_uid = %wanted, enrolled_uid = %enrolled, "CNI DEL of another pod of the same name: kept");
            return Ok(CniReleased { released: false });
        }
    }
    enrollment.unenroll(&name).await?;
    info!(pod = %name, "CNI DEL: released");
    Ok(CniReleased { released: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_namespaces_are_not_ambient_and_say_why() {
        let policy = AmbientPolicy { excluded_namespaces: ["kube-system".to_owned()].into(), agent: None };
        let pod = |ns: &str| PodName { namespace: ns.into(), name: "p".into() };
        assert_eq!(policy.decide(&pod("default")), Ambient::Yes);
        assert!(matches!(policy.decide(&pod("kube-system")), Ambient::No(r) if r.contains("kube-system")));
    }

    #[test]
    fn answers_have_the_documented_wire_shape() {
        assert_eq!(serde_json::to_string(&CniPodState::Captured).unwrap(), r#"{"state":"captured"}"#);
        assert_eq!(serde_json::to_string(&CniPodState::NotAmbient { reason: "r".into() }).unwrap(), r#"{"state":"not_ambient","reason":"r"}"#);
        assert_eq!(serde_json::to_string(&CniPodState::NotCaptured { reason: "r".into() }).unwrap(), r#"{"state":"not_captured","reason":"r"}"#);
        assert_eq!(serde_json::to_string(&CniReleased { released: true }).unwrap(), r#"{"released":true}"#);
        let pod: CniPod = serde_json::from_str(
            r#"{"namespace":"default","name":"a","uid":"0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11","netns":"/var/run/netns/cni-1","ips":["10.244.0.5"]}"#,
        )
        .unwrap();
        assert_eq!(pod.container_id, None);
        let request = pod.enroll_request(Default::default());
        assert_eq!((request.cgroup, request.uid.as_deref()), (None, Some("0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11")));
    }
}
