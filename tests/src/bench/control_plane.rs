//! The control plane at cluster scale (`cargo xtask bench -- --control-plane`): keel-control `--kubernetes` reading
//! a large cluster from the API stand-in and serving it to one delta-ADS subscriber per node, each subscribing to
//! the types a keel subscribes to and ACKing every response as keel does; then pod churn (half deletions, half new
//! pods) at a fixed rate. Reported: the initial sync (time, bytes per node), the time from each API write to every
//! node having received (and ACKed) the change, p50/p99, bytes pushed per change, keel-control's CPU and memory.
//! Run at two sizes, so the report says how each grows.
//!
//! The subscribers are this process's tasks, not keels: what is measured is keel-control and the wire. One real
//! keel with the whole view and a node of 110 enrolled pods are [`super::node_scale`].

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use keel_proto::discovery::{aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest};
use prost::Message as _;
use serde_json::{json, Value};

use super::measure::{peak_rss_kib, processes_cpu_s, rss_kib};
use crate::kube_api::{KubeApi, ServiceAccountToken};
use crate::lab::process::{self, ChildGuard};

/// The size of one run.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub pods: usize,
    pub nodes: usize,
    pub services: usize,
    pub policies: usize,
    pub virtual_services: usize,
    /// Pod changes per second during the churn, and for how long.
    pub churn_per_second: u32,
    pub churn_seconds: u32,
}

/// The cluster, and one a quarter of its size (for the growth).
pub const FULL: Scale =
    Scale { pods: 10_000, nodes: 50, services: 2_000, policies: 500, virtual_services: 200, churn_per_second: 50, churn_seconds: 20 };
pub const QUARTER: Scale =
    Scale { pods: 2_500, nodes: 50, services: 500, policies: 125, virtual_services: 50, churn_per_second: 50, churn_seconds: 20 };
/// `--quick`: a smoke run.
pub const SMOKE: Scale = Scale { pods: 500, nodes: 10, services: 100, policies: 25, virtual_services: 10, churn_per_second: 20, churn_seconds: 3 };

const NAMESPACES: usize = 20;
/// What a keel subscribes to (proxy/src/xds/client.rs TYPE_URLS).
const TYPE_URLS: [&str; 6] = [
    keel_proto::ADDRESS_TYPE_URL,
    keel_proto::AUTHORIZATION_TYPE_URL,
    keel_proto::CLUSTER_TYPE_URL,
    keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
    keel_proto::LISTENER_TYPE_URL,
    keel_proto::ROUTE_CONFIGURATION_TYPE_URL,
];

#[derive(Debug)]
pub struct Outcome {
    pub scale: Scale,
    pub objects: usize,
    pub seed_s: f64,
    /// keel-control start → serving (the whole cluster listed and translated).
    pub ready_s: f64,
    /// Subscriber connect → Address and Authorization received, slowest node.
    pub initial_sync_s: f64,
    pub initial_bytes_per_node: u64,
    pub changes: usize,
    /// API write → received by one node, over every (change, node).
    pub per_node_ms: (f64, f64),
    /// API write → received by every node, over every change.
    pub all_nodes_ms: (f64, f64),
    /// (change, node) pairs never received within the wait after the churn.
    pub missed: usize,
    pub bytes_per_change_per_node: f64,
    pub control_cpu_s_per_change: f64,
    pub control_rss_ready_mib: f64,
    pub control_peak_rss_mib: f64,
}

/// One response as a subscriber saw it.
struct Arrival {
    node: usize,
    at: Instant,
    bytes: usize,
    /// Resource names added, changed or removed (recorded during the churn only).
    names: Vec<String>,
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

fn pod(namespace: &str, name: &str, node: usize, ip: String, app: &str, account: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": {"app": app}},
           "spec": {"nodeName": format!("node-{node}"), "serviceAccountName": format!("sa-{account}"), "containers": [{"name": "app", "image": "app:1"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256)
}

/// The cluster: ambient namespaces, nodes, pods spread over nodes and namespaces, Services selecting 5 pods each
/// (at full size), AuthorizationPolicies and VirtualServices on some of them; and keel's pods with node tokens.
pub(super) fn objects(scale: &Scale) -> Vec<Value> {
    let mut objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})];
    for n in 0..NAMESPACES {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("scale-{n}"), "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    }
    for node in 0..scale.nodes {
        let zone = format!("zone-{}", node % 3);
        objects.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{node}"), "labels": {"topology.kubernetes.io/zone": zone}}}));
        objects.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("keel-node-{node}"), "namespace": "istio-system", "labels": {"app": "keel"}},
                            "spec": {"nodeName": format!("node-{node}"), "serviceAccountName": "keel", "containers": [{"name": "keel", "image": "keel"}]},
                            "status": {"phase": "Running"}}));
    }
    for i in 0..scale.pods {
        let service = i % scale.services;
        objects.push(pod(
            &format!("scale-{}", service % NAMESPACES),
            &format!("app-{i}"),
            i % scale.nodes,
            pod_ip(i),
            &format!("svc-{service}"),
            i % 100,
        ));
    }
    for s in 0..scale.services {
        let namespace = format!("scale-{}", s % NAMESPACES);
        objects.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{s}"), "namespace": namespace},
                            "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1), "selector": {"app": format!("svc-{s}")},
                                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
    }
    for p in 0..scale.policies {
        let namespace = format!("scale-{}", p % NAMESPACES);
        let from = format!("cluster.local/ns/scale-{}/sa/sa-{}", (p + 1) % NAMESPACES, p % 100);
        objects.push(json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": format!("allow-{p}"), "namespace": namespace},
                            "spec": {"selector": {"matchLabels": {"app": format!("svc-{p}")}}, "action": "ALLOW",
                                     "rules": [{"from": [{"source": {"principals": [from]}}], "to": [{"operation": {"ports": ["8080"]}}]}]}}));
    }
    for v in 0..scale.virtual_services {
        let namespace = format!("scale-{}", v % NAMESPACES);
        objects.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": format!("svc-{v}"), "namespace": namespace},
                            "spec": {"hosts": [format!("svc-{v}")], "http": [{"timeout": "5s", "retries": {"attempts": 2},
                                     "route": [{"destination": {"host": format!("svc-{v}")}}]}]}}),
        );
    }
    objects
}

/// Applies `objects` over a few connections at once.
pub(super) fn seed(api: &KubeApi, objects: &[Value]) -> Result<()> {
    // Namespaces and nodes first: pods refer to them.
    let (first, rest) = objects.split_at(1 + NAMESPACES);
    first.iter().try_for_each(|o| api.apply(o).map(drop))?;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                scope.spawn(move || rest.iter().skip(w).step_by(4).try_for_each(|o| api.apply(o).map(drop).with_context(|| format!("applying {o}"))))
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a seeding thread panicked"))?)
    })
}

/// One node's subscription, for as long as the runtime lives: every response recorded (with its names while
/// `recording`) and ACKed.
async fn subscribe(node: usize, address: String, token: String, root: String, arrivals: Arrivals, recording: Arc<AtomicBool>) -> Result<()> {
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(root)).domain_name("keel-control");
    let channel = tonic::transport::Endpoint::from_shared(address)?.tls_config(tls)?.connect().await?;
    let (requests, rx) = tokio::sync::mpsc::channel(16);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let mut responses =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20).delta_aggregated_resources(request).await?.into_inner();
    for type_url in TYPE_URLS {
        requests.send(DeltaDiscoveryRequest { type_url: type_url.into(), ..Default::default() }).await?;
    }
    while let Some(response) = responses.message().await? {
        let at = Instant::now();
        let names = if recording.load(Ordering::Relaxed) {
            response.resources.iter().map(|r| r.name.clone()).chain(response.removed_resources.iter().cloned()).collect()
        } else {
            Vec::new()
        };
        let ack = DeltaDiscoveryRequest { type_url: response.type_url.clone(), response_nonce: response.nonce.clone(), ..Default::default() };
        requests.send(ack).await?;
        arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Arrival { node, at, bytes: response.encoded_len(), names });
    }
    Ok(())
}

fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least q of the values at or below it.
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    (at(0.5), at(0.99))
}

/// One run at `scale`, in `dir`.
pub fn run(keel_control: &Path, dir: &Path, scale: Scale) -> Result<Outcome> {
    let mut api = KubeApi::start(&dir.join("kube-api"))?;
    api.register_token(ServiceAccountToken::new("control-token", "istio-system", "keel-control"))?;
    for node in 0..scale.nodes {
        let token = ServiceAccountToken::new(&format!("node-{node}-token"), "istio-system", "keel")
            .bound_to_pod(&format!("keel-node-{node}"), None, Some(&format!("node-{node}")))
            .with_audiences(&["istio-ca"]);
        api.register_token(token)?;
    }
    let kubeconfig = dir.join("control.kubeconfig");
    api.write_kubeconfig("control-token", &kubeconfig)?;
    let objects = objects(&scale);
    let seeding = Instant::now();
    seed(&api, &objects)?;
    let seed_s = seeding.elapsed().as_secs_f64();

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let xds = listener.local_addr()?;
    drop(listener);
    let ca_dir = dir.join("ca");
    let mut command = Command::new(keel_control);
    command
        .args(["serve", "--kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--pod-name", "keel-control-0", "--pod-namespace", "istio-system", "--listen", &xds.to_string(), "--ca-dir"])
        .arg(&ca_dir)
        .env("KEEL_LOG", "warn,keel_control=info");
    let started = Instant::now();
    let mut control: ChildGuard = process::spawn_logged("keel-control", &mut command, &dir.join("keel-control.log"))?;
    control.wait_for_line(Duration::from_secs(300), |line| line.contains("serving delta ADS"))?;
    let ready_s = started.elapsed().as_secs_f64();
    let control_rss_ready_mib = rss_mib(control.pid());
    let root = std::fs::read_to_string(ca_dir.join("root-cert.pem"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let arrivals: Arrivals = Arc::default();
    let recording = Arc::new(AtomicBool::new(false));
    let connecting = Instant::now();
    for node in 0..scale.nodes {
        let task = subscribe(node, format!("https://{xds}"), format!("node-{node}-token"), root.clone(), arrivals.clone(), recording.clone());
        runtime.spawn(async move {
            if let Err(e) = task.await {
                eprintln!("control-plane bench: node-{node}'s subscription ended: {e:#}");
            }
        });
    }
    // The initial sync: every node has its first response of each type (in the order keel subscribes).
    let deadline = Instant::now() + Duration::from_secs(300);
    let initial_bytes_per_node = loop {
        std::thread::sleep(Duration::from_millis(100));
        let seen = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut per_node = vec![(0usize, 0u64); scale.nodes];
        for a in seen.iter() {
            per_node[a.node].0 += 1;
            per_node[a.node].1 += a.bytes as u64;
        }
        if per_node.iter().all(|(responses, _)| *responses >= TYPE_URLS.len()) {
            break per_node.iter().map(|(_, bytes)| bytes).sum::<u64>() / scale.nodes as u64;
        }
        if Instant::now() > deadline {
            bail!("not every node had its initial configuration after 300 s: {} responses", seen.len());
        }
    };
    let initial_sync_s = connecting.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));

    // Churn: at a fixed rate, delete a seeded pod or create a new one; each write timed from just before it.
    arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clear();
    recording.store(true, Ordering::SeqCst);
    let cpu_before = processes_cpu_s(&[control.pid()])?;
    let total = (scale.churn_per_second * scale.churn_seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(scale.churn_per_second));
    let churn_start = Instant::now();
    let mut written: Vec<(String, Instant)> = Vec::with_capacity(total);
    for k in 0..total {
        let due = churn_start + interval * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = k / 2;
        let service = i % scale.services;
        let namespace = format!("scale-{}", service % NAMESPACES);
        let name = if k % 2 == 0 { format!("app-{i}") } else { format!("churn-{i}") };
        let at = Instant::now();
        if k % 2 == 0 {
            api.delete("v1", "Pod", Some(&namespace), &name)?;
        } else {
            api.apply(&pod(&namespace, &name, i % scale.nodes, pod_ip(scale.pods + i), &format!("svc-{service}"), i % 100))?;
        }
        written.push((format!("Kubernetes//Pod/{namespace}/{name}"), at));
    }
    let behind_s = churn_start.elapsed().as_secs_f64() - f64::from(scale.churn_seconds);
    std::thread::sleep(Duration::from_secs(5));
    let cpu_after = processes_cpu_s(&[control.pid()])?;
    recording.store(false, Ordering::SeqCst);

    let seen = std::mem::take(&mut *arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    // First arrival of each resource name per node.
    let mut first: HashMap<(&str, usize), Instant> = HashMap::new();
    for a in &seen {
        for name in &a.names {
            first.entry((name.as_str(), a.node)).or_insert(a.at);
        }
    }
    let (mut per_node, mut all_nodes, mut missed) = (Vec::new(), Vec::new(), 0);
    for (name, at) in &written {
        let mut slowest: Option<f64> = Some(0.0);
        for node in 0..scale.nodes {
            match first.get(&(name.as_str(), node)) {
                Some(arrived) => {
                    let ms = arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0;
                    per_node.push(ms);
                    slowest = slowest.map(|s| s.max(ms));
                }
                None => {
                    missed += 1;
                    slowest = None;
                }
            }
        }
        all_nodes.extend(slowest);
    }
    let pushed: u64 = seen.iter().map(|a| a.bytes as u64).sum();
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    if behind_s > 1.0 {
        eprintln!("control-plane bench: the churn fell {behind_s:.1} s behind its rate (the API writes themselves were slow)");
    }
    let outcome = Outcome {
        scale,
        objects: objects.len(),
        seed_s,
        ready_s,
        initial_sync_s,
        initial_bytes_per_node,
        changes: written.len(),
        per_node_ms: percentiles(per_node),
        all_nodes_ms: percentiles(all_nodes),
        missed,
        bytes_per_change_per_node: pushed as f64 / written.len() as f64 / scale.nodes as f64,
        control_cpu_s_per_change: (user + system) / written.len() as f64,
        control_rss_ready_mib,
        control_peak_rss_mib: peak_rss_kib(control.pid()) as f64 / 1024.0,
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    control.kill();
    Ok(outcome)
}

fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// The report: one column per size, and the growth from the first to the last.
pub fn markdown(outcomes: &[Outcome], command: &str) -> String {
    let mut out = String::from("# keel-control at cluster scale\n\n");
    let _ = writeln!(out, "Reproduce: `{command}`. The API stand-in (tests/src/kube_api) serves the cluster; one delta-ADS subscriber per node (tasks of the bench, ACKing every response, subscribed to keel's six types) stands in for the keels.\n");
    let header: Vec<String> = outcomes.iter().map(|o| format!("{} pods / {} nodes", o.scale.pods, o.scale.nodes)).collect();
    let _ = writeln!(out, "| | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(outcomes.len()));
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Outcome) -> String| {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    };
    row(&mut out, "objects (pods, Services, APs, VSs, namespaces, nodes)", &|o| {
        format!("{} ({}, {}, {}, {})", o.objects, o.scale.pods, o.scale.services, o.scale.policies, o.scale.virtual_services)
    });
    row(&mut out, "keel-control start → serving (s)", &|o| format!("{:.2}", o.ready_s));
    row(&mut out, "initial sync of every node (s)", &|o| format!("{:.2}", o.initial_sync_s));
    row(&mut out, "initial configuration per node (KiB)", &|o| format!("{:.0}", o.initial_bytes_per_node as f64 / 1024.0));
    row(&mut out, "churn: changes (rate)", &|o| format!("{} ({}/s)", o.changes, o.scale.churn_per_second));
    row(&mut out, "API write → one node has it, p50 / p99 (ms)", &|o| format!("{:.1} / {:.1}", o.per_node_ms.0, o.per_node_ms.1));
    row(&mut out, "API write → every node has it, p50 / p99 (ms)", &|o| format!("{:.1} / {:.1}", o.all_nodes_ms.0, o.all_nodes_ms.1));
    row(&mut out, "(change, node) never received", &|o| o.missed.to_string());
    row(&mut out, "bytes pushed per change per node", &|o| format!("{:.0}", o.bytes_per_change_per_node));
    row(&mut out, "keel-control CPU per change (ms, user+sys)", &|o| format!("{:.2}", o.control_cpu_s_per_change * 1000.0));
    row(&mut out, "keel-control RSS when serving / peak (MiB)", &|o| format!("{:.0} / {:.0}", o.control_rss_ready_mib, o.control_peak_rss_mib));
    if let [small, .., large] = outcomes {
        let growth = large.scale.pods as f64 / small.scale.pods as f64;
        let _ = writeln!(
            out,
            "\nGrowth for {growth:.1}× the cluster: initial configuration {:.2}×, keel-control RSS {:.2}×, push p99 to every node {:.2}×, bytes per change {:.2}× (a delta push is the changed resource, not the snapshot: it should stay flat).",
            large.initial_bytes_per_node as f64 / small.initial_bytes_per_node as f64,
            large.control_peak_rss_mib / small.control_peak_rss_mib,
            large.all_nodes_ms.1 / small.all_nodes_ms.1,
            large.bytes_per_change_per_node / small.bytes_per_change_per_node,
        );
    }
    out
}
