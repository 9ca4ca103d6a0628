//! `keel run --kubernetes`: the node agent against the Kubernetes API stand-in (tests/src/kube_api), reached from
//! the node's namespace through a port forward. Pods are real lab pods whose processes live in kubelet's systemd
//! cgroup layout, so keel finds each pod's cgroup and network namespace from its UID alone, as on a node.
//!
//! Exactly the ambient pods of keel's node are captured and marked `ambient.istio.io/redirection: enabled`; a pod
//! opting out, a namespace joining, a pod deleted, all follow within seconds; the API going away releases nothing;
//! a keel restarted after missing changes reconciles its restored pods with the API.

use super::*;
use crate::kube_api::{KubeApi, ServiceAccountToken};
use crate::lab::port_forward::PortForward;
use crate::lab::{Backend, Keel, Lab, Pod};
use serde_json::json;
use std::time::Instant;

const PORT: u16 = 8080;
const REDIRECTION: &str = "ambient.istio.io/redirection";
/// How long a change in the API may take to show in keel (watch latency plus the agent's settling).
const FOLLOW: Duration = Duration::from_secs(10);

/// A lab pod whose processes run in kubelet's cgroup for `uid`, serving echo on `PORT`.
pub struct KubePod {
    pub pod: Pod,
    pub uid: String,
    _server: crate::lab::process::ChildGuard,
}

/// A lab pod and its Pod object: the API server gives the object its UID, and the pod's processes then run in
/// kubelet's cgroup for that UID.
fn kube_pod(lab: &Lab, api: &KubeApi, name: &str, namespace: &str, labels: Value) -> Result<KubePod> {
    kube_pod_on(lab, 0, api, name, namespace, labels, "default")
}

/// [`kube_pod`] on node `node`, running as `service_account`.
pub(crate) fn kube_pod_on(
    lab: &Lab,
    node: usize,
    api: &KubeApi,
    name: &str,
    namespace: &str,
    labels: Value,
    service_account: &str,
) -> Result<KubePod> {
    let mut pod = lab.node(node).add_pod(name)?;
    pod.namespace = namespace.to_owned();
    let mut object = pod_object(&pod, None, labels);
    object["spec"]["serviceAccountName"] = json!(service_account);
    let stored = api.apply(&object)?;
    let uid = stored["metadata"]["uid"].as_str().with_context(|| format!("the API gave pod {name} no uid: {stored}"))?.to_owned();
    // kubelet's systemd driver, BestEffort: the pod slice, the container's scope below it.
    let slice = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let scope = lab.node(node).cgroup_root().join(slice).join(format!("cri-containerd-{name}{}.scope", uid.replace('-', "")));
    std::fs::create_dir_all(&scope).with_context(|| format!("creating {}", scope.display()))?;
    pod.cgroup_path = scope;
    let server = pod.serve(PORT, ServeMode::Echo, &[])?;
    Ok(KubePod { pod, uid, _server: server })
}

fn pod_object(pod: &Pod, uid: Option<&str>, labels: Value) -> Value {
    let mut object = json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
           "spec": {"nodeName": pod.node_name, "serviceAccountName": "default", "containers": [{"name": "app", "image": "podapp"}]},
           "status": {"phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}]}});
    if let Some(uid) = uid {
        object["metadata"]["uid"] = json!(uid);
    }
    object
}

/// The pod's object with new labels (same UID).
fn relabelled(p: &KubePod, labels: Value) -> Value {
    pod_object(&p.pod, Some(&p.uid), labels)
}

pub(crate) fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// The UIDs keel has enrolled.
pub fn enrolled_uids(keel: &Keel) -> Result<Vec<String>> {
    let pods = keel.pods()?;
    let mut uids: Vec<String> = pods.as_array().context("pods is a list")?.iter().filter_map(|p| p["uid"].as_str().map(str::to_owned)).collect();
    uids.sort();
    Ok(uids)
}

fn sorted(uids: &[&KubePod]) -> Vec<String> {
    let mut uids: Vec<String> = uids.iter().map(|p| p.uid.clone()).collect();
    uids.sort();
    uids
}

/// Waits until keel has enrolled exactly `want`.
pub fn expect_enrolled(keel: &Keel, want: &[&KubePod], what: &str) -> Result<()> {
    let want = sorted(want);
    let start = Instant::now();
    loop {
        let have = enrolled_uids(keel)?;
        if have == want {
            return Ok(());
        }
        if start.elapsed() > FOLLOW {
            bail!("{what}: keel enrolled {have:?}, expected {want:?}; log tail:\n{}", keel.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pod's redirection annotation in the API.
fn marked(api: &KubeApi, p: &KubePod) -> Result<Option<String>> {
    let object = api.get("v1", "Pod", Some(&p.pod.namespace), &p.pod.name)?.with_context(|| format!("pod {} gone", p.pod.name))?;
    Ok(object["metadata"]["annotations"][REDIRECTION].as_str().map(str::to_owned))
}

fn expect_marked(api: &KubeApi, p: &KubePod, want: bool) -> Result<()> {
    let start = Instant::now();
    loop {
        let mark = marked(api, p)?;
        if mark.as_deref() == want.then_some("enabled") {
            return Ok(());
        }
        if start.elapsed() > FOLLOW {
            bail!(
                "pod {}/{}: annotation {REDIRECTION} is {mark:?}, expected it {}",
                p.pod.namespace,
                p.pod.name,
                if want { "enabled" } else { "absent" }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn captures_exactly_the_ambient_pods_of_its_node() {
    with_lab("agent", |lab| {
        let mut api = KubeApi::start(&lab.dir().join("kube-api"))?;
        api.register_token(ServiceAccountToken::new("keel-token", "istio-system", "keel"))?;
        let kubeconfig = lab.dir().join("kubeconfig");
        api.write_kubeconfig("keel-token", &kubeconfig)?;
        // The kubeconfig names 127.0.0.1:<port>: the same address inside the node leads to the stand-in.
        let _forward = PortForward::start(&lab.node_netns_path(), api.addr(), api.addr())?;

        api.apply(&namespace("apps", json!({"istio.io/dataplane-mode": "ambient"})))?;
        api.apply(&namespace("other", json!({})))?;
        let in_mesh = kube_pod(lab, &api, "in-mesh", "apps", json!({"app": "a"}))?;
        let opted_out = kube_pod(lab, &api, "opted-out", "apps", json!({"istio.io/dataplane-mode": "none"}))?;
        let plain = kube_pod(lab, &api, "plain", "other", json!({}))?;
        let by_label = kube_pod(lab, &api, "by-label", "other", json!({"istio.io/dataplane-mode": "ambient"}))?;
        // On another node: keel's field selector never brings it.
        api.apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere", "namespace": "apps"},
                          "spec": {"nodeName": "another-node", "containers": [{"name": "app", "image": "podapp"}]},
                          "status": {"phase": "Running", "podIP": "10.244.9.9"}}))?;

        let kubeconfig_arg = kubeconfig.display().to_string();
        let args = ["--kubernetes", "--kubeconfig", kubeconfig_arg.as_str(), "--node-name", in_mesh.pod.node_name.as_str()];
        let mut keel = lab.start_keel(Backend::Ebpf, &args)?;
        // Ready only once the node's pods are listed and reconciled.
        wait_ready(&keel)?;
        expect_enrolled(&keel, &[&in_mesh, &by_label], "the ambient pods of the node (not opted-out, plain, elsewhere)")?;
        expect_marked(&api, &in_mesh, true)?;
        expect_marked(&api, &by_label, true)?;
        expect_marked(&api, &opted_out, false)?;
        // Captured means captured: the pod's connection goes through keel.
        let sent = send_ok(&in_mesh.pod, plain.pod.addr(PORT), KIB, ServeMode::Echo)?;
        expect_captured(
            &keel,
            &Expect {
                direction: "outbound",
                pod: &in_mesh.pod,
                original_destination: plain.pod.addr(PORT),
                source_port: sent.local_port(),
                bytes_sent: KIB,
                bytes_received: Some(KIB),
            },
        )?;

        // A pod opting out is released and unmarked; a namespace joining brings its pods.
        api.apply(&relabelled(&in_mesh, json!({"app": "a", "istio.io/dataplane-mode": "none"})))?;
        api.apply(&namespace("other", json!({"istio.io/dataplane-mode": "ambient"})))?;
        expect_enrolled(&keel, &[&plain, &by_label], "after in-mesh opted out and namespace other joined")?;
        expect_marked(&api, &in_mesh, false)?;
        expect_marked(&api, &plain, true)?;

        // The API server going away releases nothing (the last complete view stays)...
        api.stop()?;
        std::thread::sleep(Duration::from_secs(2));
        expect_enrolled(&keel, &[&plain, &by_label], "with the API server down")?;
        // ...and once it is back, a pod deleted from it is released.
        api.resume()?;
        if !api.delete("v1", "Pod", Some("other"), "by-label")? {
            bail!("by-label was not in the API");
        }
        expect_enrolled(&keel, &[&plain], "after by-label was deleted")?;
        if !keel.log().contains("node agent: pod released") {
            bail!("keel did not log the releases");
        }

        // keel crashes; meanwhile its pod goes from the API and another pod joins the mesh. The restarted keel
        // restores what it had, then reconciles it with the API: the gone pod released, the new one captured.
        keel.kill9();
        api.delete("v1", "Pod", Some("other"), "plain")?;
        api.apply(&relabelled(&in_mesh, json!({"app": "a"})))?;
        let keel = lab.start_keel(Backend::Ebpf, &args)?;
        wait_ready(&keel)?;
        expect_enrolled(&keel, &[&in_mesh], "after a restart that missed a deletion and a join")?;
        expect_marked(&api, &in_mesh, true)?;
        Ok(())
    });
}
