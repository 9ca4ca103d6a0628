//! One node at scale (the second half of `cargo xtask bench -- --control-plane`): a real keel `--kubernetes` in a
//! lab node, following keel-control `--kubernetes` over delta ADS (TokenReview-authenticated node token) while the
//! API stand-in fills with a whole cluster, then enrolling the node's own pods, up to the kubelet's default maximum
//! of 110 per node, in two halves (two namespaces labelled ambient one after the other), so the report says how
//! each figure grows.
//!
//! Reported: keel's memory without and with the cluster's view (and the time it took to hold all of it), and per
//! half of the node's pods: namespace labelled → every pod captured, keel's threads and memory, memory per pod.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::control_plane::{objects, seed, Scale};
use super::measure::{peak_rss_kib, rss_kib, threads};
use crate::kube_api::{KubeApi, ServiceAccountToken};
use crate::lab::port_forward::PortForward;
use crate::lab::{Backend, Binaries, Keel, Lab};
use crate::scenarios::kubernetes_mesh::{node_token, start_control};
use crate::scenarios::node_agent::{enrolled_uids, kube_pod_on, namespace, KubePod};
use crate::scenarios::wait_ready;

/// The kubelet's default `maxPods`.
pub const KUBELET_MAX_PODS: usize = 110;
/// How long keel may take to hold the whole view, or to enroll one half of the node's pods.
const PATIENCE: Duration = Duration::from_secs(300);
/// After a change settles, before memory is read: allocations of the burst freed, caches warm.
const SETTLE: Duration = Duration::from_secs(2);
/// After enrolling, before threads are counted: tokio's blocking pool lets its idle threads go after 10 s, so the
/// count is what stays, not the burst's helpers.
const BLOCKING_THREADS_IDLE: Duration = Duration::from_secs(11);

#[derive(Debug)]
pub struct NodeOutcome {
    pub view: Scale,
    pub keel_rss_empty_mib: f64,
    /// Last API write of the cluster → keel holds every workload of it.
    pub view_sync_s: f64,
    pub keel_rss_view_mib: f64,
    /// Before any pod of the node is enrolled (the view held).
    pub threads_before: u64,
    pub halves: Vec<Half>,
    pub keel_peak_rss_mib: f64,
}

/// The node after one more namespace of its pods joined the mesh.
#[derive(Debug)]
pub struct Half {
    /// Enrolled pods in all, after this half.
    pub enrolled: usize,
    /// Namespace labelled ambient → keel has captured each of its pods.
    pub enroll_s: f64,
    pub threads: u64,
    pub rss_mib: f64,
}

/// How many workloads keel holds (its config dump).
fn workloads_held(keel: &Keel) -> Result<usize> {
    let (status, body) = keel.admin_get("/config_dump")?;
    if status != 200 {
        bail!("keel's /config_dump answered {status}: {body}");
    }
    let dump: Value = serde_json::from_str(&body).context("keel's /config_dump is not JSON")?;
    dump["workloads"].as_array().map(Vec::len).context("keel's /config_dump has no workloads list")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One run: the cluster `view` in the API, `pods` pods on keel's node (in two halves).
pub fn run(binaries: &Binaries, view: Scale, pods: usize) -> Result<NodeOutcome> {
    let lab = Lab::with_binaries("nodescale", binaries.clone())?;
    let result = run_in(&lab, view, pods);
    if result.is_err() {
        lab.mark_failed();
    }
    result
}

fn run_in(lab: &Lab, view: Scale, pods: usize) -> Result<NodeOutcome> {
    let mut api = KubeApi::start(&lab.dir().join("kube-api"))?;
    api.register_token(ServiceAccountToken::new("control-token", "istio-system", "keel-control"))?;
    api.register_token(ServiceAccountToken::new("keel-token", "istio-system", "keel"))?;
    let (control_kubeconfig, keel_kubeconfig) = (lab.dir().join("control.kubeconfig"), lab.dir().join("keel.kubeconfig"));
    api.write_kubeconfig("control-token", &control_kubeconfig)?;
    api.write_kubeconfig("keel-token", &keel_kubeconfig)?;
    // The kubeconfigs name 127.0.0.1:<port>: the same address inside the node leads to the stand-in.
    let _forward = PortForward::start(&lab.node_netns_path(), api.addr(), api.addr())?;
    api.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}))?;
    // The lab keel's pod is keel-0 on the lab node (the view's keel pods are keel-node-<n>).
    let token = node_token(lab, &mut api, 0)?;

    let ca_dir = lab.dir().join("ca");
    let mut control = start_control(lab, &control_kubeconfig, &ca_dir, 1)?;
    let root = ca_dir.join("root-cert.pem").display().to_string();
    let (token, kubeconfig) = (token.display().to_string(), keel_kubeconfig.display().to_string());
    let args = [
        "--xds-address",
        "https://127.0.0.1:15012",
        "--xds-root",
        &root,
        "--xds-token-file",
        &token,
        "--node-name",
        lab.node_name(0),
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig,
    ];
    let keel = lab.start_keel(Backend::Ebpf, &args)?;
    wait_ready(&keel)?;
    std::thread::sleep(SETTLE);
    let keel_rss_empty_mib = mib(rss_kib(keel.pid()));

    // The cluster arrives through the API (keel-control follows its watches, keel its delta ADS).
    seed(&api, &objects(&view))?;
    let seeded = Instant::now();
    loop {
        let held = workloads_held(&keel)?;
        if held >= view.pods {
            break;
        }
        if seeded.elapsed() > PATIENCE {
            bail!("keel holds {held} of the cluster's {} workloads {} s after the last API write", view.pods, PATIENCE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let view_sync_s = seeded.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let keel_rss_view_mib = mib(rss_kib(keel.pid()));
    let threads_before = threads(keel.pid());

    // The node's own pods, in two namespaces not yet in the mesh.
    let mut halves = Vec::new();
    let mut node_pods: Vec<KubePod> = Vec::with_capacity(pods);
    for (h, count) in [pods / 2, pods - pods / 2].into_iter().enumerate() {
        let ns = format!("node-pods-{h}");
        api.apply(&namespace(&ns, json!({})))?;
        for i in 0..count {
            node_pods.push(kube_pod_on(lab, 0, &api, &format!("p{h}-{i}"), &ns, json!({"app": format!("p{h}-{i}")}), "default")?);
        }
        let joined = Instant::now();
        api.apply(&namespace(&ns, json!({"istio.io/dataplane-mode": "ambient"})))?;
        loop {
            let enrolled = enrolled_uids(&keel)?.len();
            if enrolled == node_pods.len() {
                break;
            }
            if joined.elapsed() > PATIENCE {
                bail!(
                    "keel enrolled {enrolled} of {} pods {} s after {ns} joined the mesh; log tail:\n{}",
                    node_pods.len(),
                    PATIENCE.as_secs(),
                    keel.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let enroll_s = joined.elapsed().as_secs_f64();
        std::thread::sleep(BLOCKING_THREADS_IDLE);
        halves.push(Half { enrolled: node_pods.len(), enroll_s, threads: threads(keel.pid()), rss_mib: mib(rss_kib(keel.pid())) });
    }
    let outcome = NodeOutcome {
        view,
        keel_rss_empty_mib,
        view_sync_s,
        keel_rss_view_mib,
        threads_before,
        halves,
        keel_peak_rss_mib: mib(peak_rss_kib(keel.pid())),
    };
    control.kill();
    Ok(outcome)
}

/// The report's section for one node.
pub fn markdown(outcome: &NodeOutcome) -> String {
    let o = outcome;
    let mut out = String::from("\n## One node\n\n");
    let _ = writeln!(
        out,
        "A real keel (eBPF capture, `--kubernetes`, delta ADS from keel-control `--kubernetes` with a TokenReview-authenticated node token) in a lab node; the cluster of {} pods, {} Services, {} AuthorizationPolicies and {} VirtualServices is written to the API while keel runs; then the node's own pods (each a network namespace and cgroup with a server process), their namespaces labelled ambient one after the other.\n",
        o.view.pods, o.view.services, o.view.policies, o.view.virtual_services
    );
    let per_workload_kib = (o.keel_rss_view_mib - o.keel_rss_empty_mib) * 1024.0 / o.view.pods as f64;
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| keel RSS, empty cluster (MiB) | {:.1} |", o.keel_rss_empty_mib);
    let _ = writeln!(out, "| last API write → keel holds all {} workloads (s) | {:.2} |", o.view.pods, o.view_sync_s);
    let _ = writeln!(out, "| keel RSS with the whole view (MiB) | {:.1} ({per_workload_kib:.2} KiB per workload) |", o.keel_rss_view_mib);
    let _ = writeln!(out, "| keel threads before enrolling | {} |", o.threads_before);
    let mut previous = (0usize, o.keel_rss_view_mib);
    for h in &o.halves {
        let added = h.enrolled - previous.0;
        let per_pod_kib = (h.rss_mib - previous.1) * 1024.0 / added as f64;
        let _ = writeln!(
            out,
            "| {added} more pods enrolled ({} in all): namespace labelled → all captured (s) | {:.2} ({:.1} ms per pod) |",
            h.enrolled,
            h.enroll_s,
            h.enroll_s * 1000.0 / added as f64
        );
        let _ = writeln!(out, "| … keel threads / RSS (MiB) | {} / {:.1} ({per_pod_kib:.0} KiB per pod) |", h.threads, h.rss_mib);
        previous = (h.enrolled, h.rss_mib);
    }
    let _ = writeln!(out, "| keel peak RSS (MiB) | {:.1} |", o.keel_peak_rss_mib);
    out
}
