//! The whole of keel on Kubernetes, two nodes: keel-control `--kubernetes` and two keels `--kubernetes` (node agent,
//! xDS and certificates authenticated by TokenReview) against the Kubernetes API stand-in, reached from the node
//! namespaces through port forwards. Nothing is configured but API objects: a namespace labelled ambient brings its
//! pods into the mesh on both nodes, and their traffic crosses between the nodes as HBONE with both identities; an
//! opted-out pod stays out; a pod being deleted (a rollout) takes no new connection while its open ones finish, and no
//! connection fails; a watch history compacted away (410 Gone) and keel-control restarted change nothing
//! for the traffic; a pod deleted is released.

use super::node_agent::{enrolled_uids, expect_enrolled, kube_pod_on, namespace, KubePod};
use super::*;
use crate::kube_api::{KubeApi, ServiceAccountToken};
use crate::lab::port_forward::PortForward;
use crate::lab::process::{self, ChildGuard};
use crate::lab::sys::{self, Placement};
use crate::lab::{Backend, Keel, Lab};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/sleep";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/echo";
const VIP: &str = "10.96.0.20";
/// The Service `web`: HTTP on 80 (the echo pods' 9080), routed by keel's L7 engine.
const WEB_VIP: &str = "10.96.0.21";
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the mesh may take to follow the API (watch, settle, enroll, certificate): generous for loaded CI
/// machines; the time it took is printed.
const FOLLOW: Duration = Duration::from_secs(10);

/// keel-control `--kubernetes` in node 0's namespace, on its wire address (127.0.0.1 in a single-node lab).
pub(crate) fn start_control(lab: &Lab, kubeconfig: &Path, ca_dir: &Path, run: usize) -> Result<ChildGuard> {
    let node = lab.node(0);
    let listen = format!("{}:15012", node.wire_ip().unwrap_or(std::net::Ipv4Addr::LOCALHOST));
    let mut cmd = Command::new(&lab.binaries().keel_control);
    cmd.args(["serve", "--kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--listen", &listen, "--pod-name", "keel-control-0", "--pod-namespace", "istio-system", "--ca-dir"])
        .arg(ca_dir);
    let netns = node.netns_path();
    let _fds = sys::place(&mut cmd, &Placement { netns: Some(&netns), cgroup: None })?;
    let mut child = process::spawn_logged("keel-control", &mut cmd, &lab.dir().join(format!("keel-control-{run}.log")))?;
    child.wait_for_line(Duration::from_secs(30), |line| line.contains("serving delta ADS"))?;
    Ok(child)
}

/// The node proxy token of node `k`'s keel: ServiceAccount istio-system/keel, audience istio-ca, bound to keel's pod
/// on that node (as the kubelet projects it), written where keel reads it.
pub(crate) fn node_token(lab: &Lab, api: &mut KubeApi, k: usize) -> Result<PathBuf> {
    let node = lab.node_name(k).to_owned();
    let pod = format!("keel-{k}");
    api.apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "istio-system", "labels": {"app": "keel"}},
                      "spec": {"nodeName": node, "serviceAccountName": "keel", "containers": [{"name": "keel", "image": "keel"}]},
                      "status": {"phase": "Running"}}))?;
    let token = format!("keel-node-{k}-xds-token");
    api.register_token(ServiceAccountToken::new(&token, "istio-system", "keel").bound_to_pod(&pod, None, Some(&node)).with_audiences(&["istio-ca"]))?;
    let file = lab.dir().join(format!("node{k}-istio-token"));
    std::fs::write(&file, &token)?;
    Ok(file)
}

/// One echo connection from `client` (node 0) to `server` (node 1), and both keels' records of it: HBONE, mTLS, and
/// the peer identities verified. Each call sends a different byte count, which finds its inbound record (HBONE
/// does not carry the client's source port).
fn send_over_hbone(keels: &[Keel], client: &KubePod, server: &KubePod) -> Result<()> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let bytes = 64 * KIB + CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sent = send_ok(&client.pod, server.pod.addr(8080), bytes, ServeMode::Echo)?;
    let outbound = keels[0].wait_connection(RECORD_TIMEOUT, |c| c.direction == "outbound" && c.source_port() == sent.local_port())?;
    if outbound.path.as_deref() != Some("hbone") || !outbound.mutual_tls || outbound.destination_peer.identity.as_deref() != Some(SERVER_ID) {
        bail!("node 0's keel did not carry the connection over HBONE to {SERVER_ID}: {outbound:?}");
    }
    let from = format!("{}:", client.pod.ip);
    let inbound = keels[1].wait_connection(RECORD_TIMEOUT, |c| {
        c.direction == "inbound" && c.path.as_deref() == Some("hbone") && c.source.starts_with(&from) && c.bytes_sent == bytes
    })?;
    if inbound.source_peer.identity.as_deref() != Some(CLIENT_ID) || !inbound.mutual_tls {
        bail!("node 1's keel did not verify the client's identity {CLIENT_ID}: {inbound:?}");
    }
    Ok(())
}

/// `requests` HTTP requests from `client` to the Service `web`: how many each server (`a`, `b`) answered.
fn web_requests(client: &KubePod, requests: u32) -> Result<(u64, u64)> {
    let connect = format!("{WEB_VIP}:80");
    let v = client.pod.http_load(&["--url", "http://web.demo.svc.cluster.local/", "--connect", &connect, "--requests", &requests.to_string()])?;
    let count = |pointer: &str| v.pointer(pointer).and_then(serde_json::Value::as_u64).unwrap_or(0);
    if count("/statuses/200") != u64::from(requests) {
        bail!("not every request to web succeeded: {v}");
    }
    Ok((count("/served_by/a"), count("/served_by/b")))
}

/// A VirtualService and DestinationRule created through the API send every request to `web` to subset `b`;
/// deleting the VirtualService gives both servers their share again.
fn routing_follows_virtual_services(api: &KubeApi, client: &KubePod, server: &KubePod, replica: &KubePod) -> Result<()> {
    let _servers = [server.pod.http_serve(9080, "a", &[])?, replica.pod.http_serve(9080, "b", &[])?];
    let (a, b) = web_requests(client, 40)?;
    if a == 0 || b == 0 {
        bail!("without a VirtualService both servers should answer: a {a}, b {b}");
    }
    api.apply_yaml(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: demo}\nspec:\n  host: web\n  subsets:\n  - {name: a, labels: {version: a}}\n  - {name: b, labels: {version: b}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: demo}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {host: web, subset: b}\n",
    )?;
    let changed = Instant::now();
    loop {
        match web_requests(client, 20)? {
            (0, 20) => break,
            (a, b) if changed.elapsed() > FOLLOW => bail!("the VirtualService did not take effect: a {a}, b {b}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("VirtualService created through the API → routing changed within {} ms", changed.elapsed().as_millis());
    api.delete("networking.istio.io/v1", "VirtualService", Some("demo"), "web")?;
    let deleted = Instant::now();
    loop {
        match web_requests(client, 40)? {
            (a, b) if a > 0 && b > 0 => return Ok(()),
            (a, b) if deleted.elapsed() > FOLLOW => bail!("the deleted VirtualService still routes: a {a}, b {b}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A rollout step: `leaving` is deleted gracefully (deletionTimestamp now, gone after its grace period). From the
/// moment the API says so, connections to the Service go to `staying` only, none fails, and a transfer already open
/// to `leaving` finishes whole.
fn rollout(api: &KubeApi, keels: &[Keel], client: &KubePod, leaving: &KubePod, staying: &KubePod) -> Result<()> {
    let vip: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    let _sink = leaving.pod.serve(8081, ServeMode::Sink, &["--read-delay-ms", "5", "--read-chunk", "16384"])?;
    let bytes = 8 * MIB;
    let podapp = client.pod.podapp_path().display().to_string();
    let mut open = client.pod.spawn(&[
        podapp,
        "send".into(),
        "--to".into(),
        leaving.pod.addr(8081).to_string(),
        "--bytes".into(),
        bytes.to_string(),
        "--mode".into(),
        "sink".into(),
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    api.delete_gracefully("v1", "Pod", Some("demo"), &leaving.pod.name, Duration::from_secs(15))?;
    // The deletion reaches keel-control, then node 0's keel: a moment, during which the leaving pod still serves.
    std::thread::sleep(Duration::from_secs(2));
    let staying_at = staying.pod.addr(8080).to_string();
    for i in 0..20 {
        let sent = send_ok(&client.pod, vip, KIB, ServeMode::Echo).with_context(|| format!("connection {i} to the Service during the rollout"))?;
        let record = keels[0].wait_connection(RECORD_TIMEOUT, |c| c.direction == "outbound" && c.source_port() == sent.local_port())?;
        if record.upstream.as_deref() != Some(staying_at.as_str()) {
            bail!("connection {i} to the Service went to {:?}, not to {staying_at}: the leaving pod still takes new connections", record.upstream);
        }
    }
    match open.wait_timeout(Duration::from_secs(20)) {
        Some(status) if status.success() => Ok(()),
        Some(_) => bail!("the transfer open to the leaving pod was cut: {}", open.log()),
        None => bail!("the transfer open to the leaving pod did not finish"),
    }
}

/// Two lab nodes run as Kubernetes would: the API stand-in with the pods (client and an opted-out pod on node 0, two
/// echo replicas on node 1) in namespace `demo` (not yet ambient), the Service `echo` (VIP 10.96.0.20:80), node
/// proxy tokens; keel-control `--kubernetes` on node 0 and a keel `--kubernetes` on each node, ready.
pub struct KubernetesMesh {
    pub api: KubeApi,
    pub control: ChildGuard,
    pub keels: Vec<Keel>,
    pub client: KubePod,
    pub outsider: KubePod,
    pub server: KubePod,
    pub replica: KubePod,
    pub control_kubeconfig: PathBuf,
    pub ca_dir: PathBuf,
    _forwards: Vec<PortForward>,
}

pub const VIP_ADDR: &str = "10.96.0.20:80";

impl KubernetesMesh {
    pub fn start(lab: &Lab) -> Result<KubernetesMesh> {
        let mut api = KubeApi::start(&lab.dir().join("kube-api"))?;
        // A cluster without Istio: keel's own CRDs, so every Istio object below is checked against their schemas.
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/istio.yaml");
        api.apply_yaml(&std::fs::read_to_string(&crds).with_context(|| format!("reading {}", crds.display()))?)?;
        api.register_token(ServiceAccountToken::new("control-token", "istio-system", "keel-control"))?;
        api.register_token(ServiceAccountToken::new("keel-token", "istio-system", "keel"))?;
        let (control_kubeconfig, keel_kubeconfig) = (lab.dir().join("control.kubeconfig"), lab.dir().join("keel.kubeconfig"));
        api.write_kubeconfig("control-token", &control_kubeconfig)?;
        api.write_kubeconfig("keel-token", &keel_kubeconfig)?;
        let _forwards = (0..2).map(|k| PortForward::start(&lab.node(k).netns_path(), api.addr(), api.addr())).collect::<Result<Vec<_>>>()?;

        api.apply(&namespace("demo", json!({})))?;
        let client = kube_pod_on(lab, 0, &api, "client", "demo", json!({"app": "sleep"}), "sleep")?;
        let outsider = kube_pod_on(lab, 0, &api, "outsider", "demo", json!({"app": "outsider", "istio.io/dataplane-mode": "none"}), "outsider")?;
        let server = kube_pod_on(lab, 1, &api, "server", "demo", json!({"app": "echo", "version": "a"}), "echo")?;
        let replica = kube_pod_on(lab, 1, &api, "server-b", "demo", json!({"app": "echo", "version": "b"}), "echo")?;
        api.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"},
                          "spec": {"clusterIP": VIP, "selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}}))?;
        api.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
                          "spec": {"clusterIP": WEB_VIP, "selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 9080}]}}))?;
        let tokens = [node_token(lab, &mut api, 0)?, node_token(lab, &mut api, 1)?];

        let ca_dir = lab.dir().join("k8s-ca");
        let control = start_control(lab, &control_kubeconfig, &ca_dir, 1)?;
        let xds = format!("https://{}:15012", lab.node(0).wire_ip().context("wire")?);
        let root = ca_dir.join("root-cert.pem").display().to_string();
        let keel_kubeconfig_arg = keel_kubeconfig.display().to_string();
        let keels = (0..2)
            .map(|k| {
                let token = tokens[k].display().to_string();
                let args = ["--xds-address", &xds, "--xds-root", &root, "--xds-token-file", &token, "--node-name", lab.node_name(k)];
                let args: Vec<&str> = args.into_iter().chain(["--kubernetes", "--kubeconfig", &keel_kubeconfig_arg]).collect();
                lab.node(k).start_keel(Backend::Ebpf, &args)
            })
            .collect::<Result<Vec<_>>>()?;
        keels.iter().try_for_each(wait_ready)?;
        Ok(KubernetesMesh { api, control, keels, client, outsider, server, replica, control_kubeconfig, ca_dir, _forwards })
    }

    /// keel-control again (after [`ChildGuard::kill`] of `control`), as run `run` of the lab.
    pub fn restart_control(&mut self, lab: &Lab, run: usize) -> Result<()> {
        self.control = start_control(lab, &self.control_kubeconfig, &self.ca_dir, run)?;
        Ok(())
    }
}

pub fn two_nodes_follow_the_api_alone() {
    with_nodes("k8smesh", 2, |lab| {
        // Every field bound (none left to a temporary): the port forwards must live as long as the scenario.
        let KubernetesMesh { api, mut control, keels, client, outsider, server, replica, control_kubeconfig, ca_dir, _forwards: _keep } =
            KubernetesMesh::start(lab)?;

        if !enrolled_uids(&keels[0])?.is_empty() || !enrolled_uids(&keels[1])?.is_empty() {
            bail!("pods captured before their namespace joined the mesh");
        }

        // The namespace joins: both nodes capture their pods (not the opted-out one) and traffic between them is
        // HBONE with both identities verified.
        let joined = Instant::now();
        api.apply(&namespace("demo", json!({"istio.io/dataplane-mode": "ambient"})))?;
        expect_enrolled(&keels[0], &[&client], "node 0 after demo joined the mesh")?;
        expect_enrolled(&keels[1], &[&server, &replica], "node 1 after demo joined the mesh")?;
        eprintln!("namespace labelled ambient → pods on both nodes captured in {} ms", joined.elapsed().as_millis());
        let start = Instant::now();
        loop {
            match send_over_hbone(&keels, &client, &server) {
                Ok(()) => break,
                // The Workloads and certificates follow the API too; give them their moment.
                Err(e) if start.elapsed() < FOLLOW => eprintln!("not yet: {e:#}"),
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("namespace labelled ambient → cross-node HBONE with identities in {} ms", joined.elapsed().as_millis());
        send_ok(&client.pod, format!("{VIP}:80").parse()?, KIB, ServeMode::Echo).context("the Service VIP from the API")?;
        if enrolled_uids(&keels[0])?.contains(&outsider.uid) {
            bail!("the opted-out pod was captured");
        }

        routing_follows_virtual_services(&api, &client, &server, &replica)?;
        rollout(&api, &keels, &client, &server, &replica)?;

        // The watch history compacted away: every watch relists (410 Gone); the traffic does not notice.
        api.compact()?;
        std::thread::sleep(Duration::from_secs(1));
        send_over_hbone(&keels, &client, &server).context("after a compaction (410 Gone and relists)")?;

        // keel-control restarted: it rebuilds its state from the API; the keels keep theirs meanwhile and follow
        // the new one.
        control.kill();
        send_over_hbone(&keels, &client, &server).context("while keel-control is down")?;
        let _control = start_control(lab, &control_kubeconfig, &ca_dir, 2)?;
        send_over_hbone(&keels, &client, &server).context("after keel-control restarted")?;

        // A pod deleted from the API is released by its node.
        api.delete("v1", "Pod", Some("demo"), "client")?;
        expect_enrolled(&keels[0], &[], "node 0 after its pod was deleted")?;
        Ok(())
    });
}
