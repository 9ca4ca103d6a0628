//! keel-cni driven exactly as a container runtime drives a CNI plugin (see `lab::cni_runtime`): installed with
//! `keel-cni install` into a CNI bin dir and chained into a configuration list after Debian's reference plugins
//! (bridge + host-local give the pod its interface and address), then ADD, CHECK, STATUS and DEL with the
//! environment, stdin configuration and prevResult a runtime passes. And the enrollment API's pod lookup by
//! Kubernetes UID, on real cgroups in kubelet's systemd and cgroupfs layouts holding real processes.

use super::*;
use crate::lab::cni_runtime::{ChainOutcome, CniRuntime, Sandbox};
use crate::lab::{Backend, Keel, Lab, Pod, ServeMode};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

const PORT: u16 = 8080;
/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// keel-cni's CNI error codes the scenarios expect (cni/src/error.rs).
const TRY_AGAIN_LATER: u64 = 11;
const NOT_AVAILABLE: u64 = 50;
const KEEL_REFUSED: u64 = 100;
const KEEL_TIMEOUT: u64 = 101;
const NOT_CAPTURED: u64 = 102;

/// The node's CNI setup: bin and conf dirs in the lab dir, and the runtime stand-in using them.
struct CniNode {
    runtime: CniRuntime,
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    /// The configuration list as the "primary CNI" wrote it, before keel-cni was chained into it.
    original: Value,
}

/// The primary CNI's configuration list: bridge on the node's br0 (the pods' gateway 10.244.0.1) with host-local
/// addresses from 10.244.0.100..150, its state in the lab dir.
fn primary_conflist(ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "lab-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": "br0",
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.100", "rangeEnd": "10.244.0.150", "gateway": "10.244.0.1"}]]
            }
        }]
    })
}

/// Fails (never skips) without the reference plugins: `cargo xtask setup` installs them.
fn require_reference_plugins() -> Result<()> {
    for plugin in ["bridge", "host-local"] {
        let path = Path::new(REFERENCE_PLUGINS).join(plugin);
        if !path.is_file() {
            bail!("keel lab prerequisite missing: {} (apt-get install containernetworking-plugins; `cargo xtask setup` does)", path.display());
        }
    }
    Ok(())
}

/// Lays out the node's CNI dirs with the primary CNI, then runs `keel-cni install` as the DaemonSet's install step
/// does, pointing the plugin at `api_socket` with `enroll_timeout_ms`.
fn install_cni(lab: &Lab, api_socket: &Path, enroll_timeout_ms: u64) -> Result<CniNode> {
    require_reference_plugins()?;
    let keel_cni = &lab.binaries().keel_cni;
    if !keel_cni.is_file() {
        bail!("keel-cni not found at {} (build it: cargo build -p keel-cni, or set KEEL_CNI_BIN)", keel_cni.display());
    }
    let root = lab.dir().join("cni");
    let (bin_dir, conf_dir, ipam_dir) = (root.join("bin"), root.join("net.d"), root.join("ipam"));
    for dir in [&bin_dir, &conf_dir, &ipam_dir] {
        std::fs::create_dir_all(dir)?;
    }
    for plugin in ["bridge", "host-local"] {
        let link = bin_dir.join(plugin);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(REFERENCE_PLUGINS).join(plugin), &link)?;
        }
    }
    let original = primary_conflist(&ipam_dir);
    let conflist = conf_dir.join("10-lab-pods.conflist");
    if !conflist.exists() {
        std::fs::write(&conflist, serde_json::to_vec_pretty(&original)?)?;
    }
    keel_cni_admin(
        lab,
        &[
            "install",
            "--cni-bin-dir",
            path_str(&bin_dir)?,
            "--cni-conf-dir",
            path_str(&conf_dir)?,
            "--api-socket",
            path_str(api_socket)?,
            "--enroll-timeout-ms",
            &enroll_timeout_ms.to_string(),
        ],
    )?;
    Ok(CniNode { runtime: CniRuntime::new(&bin_dir, &conf_dir, &lab.node_netns_path()), bin_dir, conf_dir, original })
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `keel-cni <args>` (install/uninstall); its JSON report.
fn keel_cni_admin(lab: &Lab, args: &[&str]) -> Result<Value> {
    let out = std::process::Command::new(&lab.binaries().keel_cni).args(args).output()?;
    if !out.status.success() {
        bail!("keel-cni {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("keel-cni {} printed {:?}", args[0], String::from_utf8_lossy(&out.stdout)))
}

/// A fresh Kubernetes-style pod UID (a v4 UUID's shape), unique within the run.
fn new_uid() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", nanos, std::process::id() & 0xffff, seq & 0xfff, seq >> 12 & 0xfff, u64::from(nanos) << 8 | 0x5a)
}

/// Where kubelet's systemd driver puts a BestEffort pod: the pod slice, and a container scope below it.
fn systemd_besteffort(lab: &Lab, uid: &str, container: &str) -> (PathBuf, PathBuf) {
    let uid_ = uid.replace('-', "_");
    let pod = lab.node_cgroup(&format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"));
    let scope = pod.join(format!("cri-containerd-{container}.scope"));
    (pod, scope)
}

/// A sandbox the runtime is about to network: a bare netns, its pod cgroup in kubelet's systemd layout (the app's
/// processes go to a container scope below it), and the CNI parameters naming it.
fn kubelet_sandbox(lab: &Lab, name: &str, namespace: &str) -> Result<(Pod, Sandbox, PathBuf)> {
    let uid = new_uid();
    let container_id = format!("{}{}", name, uid.replace('-', ""));
    let (pod_cgroup, scope) = systemd_besteffort(lab, &uid, &container_id);
    let mut pod = lab.add_sandbox(name, &scope)?;
    pod.namespace = namespace.to_string();
    let sandbox = Sandbox { container_id, netns: pod.netns_path.clone(), ifname: "eth0".into(), namespace: namespace.into(), name: name.into(), uid };
    Ok((pod, sandbox, pod_cgroup))
}

/// The pod's IPv4 address in a chain's final result.
fn address_of(result: &Value) -> Result<Ipv4Addr> {
    let address = result["ips"][0]["address"].as_str().with_context(|| format!("no address in {result}"))?;
    address.split('/').next().unwrap_or_default().parse().with_context(|| format!("bad address in {result}"))
}

/// keel's `pods` entry for `namespace/name`, if enrolled.
fn enrolled(keel: &Keel, namespace: &str, name: &str) -> Result<Option<Value>> {
    let pods = keel.pods()?;
    let list = pods.as_array().with_context(|| format!("\"pods\" is not a list: {pods}"))?;
    Ok(list.iter().find(|p| p["namespace"] == namespace && p["name"] == name).cloned())
}

/// The error object keel-cni printed when `outcome` failed, checked to be keel-cni's and to carry `code`.
fn keel_cni_failure(outcome: &ChainOutcome, code: u64) -> Result<Value> {
    let failed = outcome.failed().context("the chain succeeded; keel-cni had to fail it")?;
    if failed.plugin != "keel-cni" {
        bail!("{} failed instead of keel-cni: {} {}", failed.plugin, failed.stdout, failed.stderr);
    }
    let error = failed.error()?;
    if error["code"] != code {
        bail!("keel-cni failed with {error}, expected code {code}");
    }
    Ok(error)
}

/// ADD through bridge → host-local → keel-cni: keel-cni answers with bridge's result unchanged, and only once keel
/// has the pod — `pods` lists it (with the cgroup keel found from the pod UID in kubelet's systemd layout) the
/// moment ADD returns, and the first connection the pod makes is keel's. CHECK and STATUS pass, a pod keel stopped
/// capturing fails CHECK, a pod of an excluded namespace is left alone, DEL releases (twice is fine), and
/// uninstall leaves the configuration list exactly as the primary CNI wrote it.
pub fn chained_add_captures_before_returning() {
    with_lab("cniadd", |lab| {
        let keel = lab.start_keel(Backend::Ebpf, &[])?;
        let server = lab.add_pod("server")?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst: SocketAddr = server.addr(PORT);
        let node = install_cni(lab, &lab.api_socket(), 10_000)?;

        let chained = node.runtime.conflist()?;
        let types: Vec<&str> = chained["plugins"].as_array().context("plugins")?.iter().filter_map(|p| p["type"].as_str()).collect();
        if types != ["bridge", "keel-cni"] || chained["plugins"][1]["apiSocket"] != json!(lab.api_socket()) {
            bail!("keel-cni install did not chain keel-cni last with keel's socket: {chained}");
        }

        let (mut app, sandbox, pod_cgroup) = kubelet_sandbox(lab, "app", "default")?;
        let add = node.runtime.add(&sandbox)?;
        add.ok()?;
        let listed = enrolled(&keel, "default", "app")?;
        let bridge_result: Value = serde_json::from_str(add.call_of("bridge").context("bridge ran")?.stdout.trim())?;
        if add.result.as_ref() != Some(&bridge_result) {
            bail!("keel-cni changed the chain's result: bridge gave {bridge_result}, keel-cni answered {:?}", add.result);
        }
        app.ip = address_of(&bridge_result)?;
        let Some(listed) = listed else { bail!("ADD returned but keel does not list default/app: {}", keel.pods()?) };
        let expected = json!({"uid": sandbox.uid, "cgroup": pod_cgroup, "netns": sandbox.netns, "ips": [app.ip.to_string()]});
        for field in ["uid", "cgroup", "netns", "ips"] {
            if listed[field] != expected[field] {
                bail!("keel enrolled default/app with {field} {}, expected {}: {listed}", listed[field], expected[field]);
            }
        }
        // The application's first connection, right after ADD returned, goes through keel.
        let sent = send_ok(&app, dst, 1, ServeMode::Echo)?;
        expect_captured(
            &keel,
            &Expect {
                direction: "outbound",
                pod: &app,
                original_destination: dst,
                source_port: sent.local_port(),
                bytes_sent: 1,
                bytes_received: Some(1),
            },
        )
        .context("the pod's first connection after ADD")?;

        node.runtime.check(&sandbox)?.ok().context("CHECK of a captured pod")?;
        let status = node.runtime.call_plugin("keel-cni", "STATUS", None, "1.1.0")?;
        if !status.status.success() {
            bail!("STATUS with keel up failed: {} {}", status.stdout, status.stderr);
        }
        let version = node.runtime.call_plugin("keel-cni", "VERSION", None, "1.1.0")?;
        let versions: Value = serde_json::from_str(version.stdout.trim())?;
        if !versions["supportedVersions"].as_array().is_some_and(|v| v.contains(&json!("1.0.0")) && v.contains(&json!("1.1.0"))) {
            bail!("VERSION answered {versions}");
        }

        // CHECK reports a pod keel no longer captures.
        let (_app2, sandbox2, _) = kubelet_sandbox(lab, "app2", "default")?;
        node.runtime.add(&sandbox2)?.ok()?;
        keel.api(json!({"unenroll": {"namespace": "default", "name": "app2"}}))?;
        let check = node.runtime.check(&sandbox2)?;
        let error = keel_cni_failure(&check, NOT_CAPTURED)?;
        if !error["details"].as_str().is_some_and(|d| d.contains("default/app2") && d.contains("not enrolled")) {
            bail!("CHECK's error does not say which pod and why: {error}");
        }
        node.runtime.del(&sandbox2)?.ok().context("DEL of a pod keel does not have")?;

        // keel decides what is ambient: kube-system is excluded by default, so ADD succeeds and captures nothing.
        let (_sys, sandbox3, _) = kubelet_sandbox(lab, "sys", "kube-system")?;
        node.runtime.add(&sandbox3)?.ok().context("ADD of a pod keel leaves alone")?;
        if let Some(p) = enrolled(&keel, "kube-system", "sys")? {
            bail!("keel enrolled a kube-system pod: {p}");
        }
        node.runtime.check(&sandbox3)?.ok().context("CHECK of a pod keel leaves alone")?;
        node.runtime.del(&sandbox3)?.ok()?;

        // DEL releases the pod; a second DEL (runtimes repeat them) succeeds too.
        let del = node.runtime.del(&sandbox)?;
        del.ok()?;
        let order: Vec<&str> = del.calls.iter().map(|c| c.plugin.as_str()).collect();
        if order != ["keel-cni", "bridge"] {
            bail!("the runtime stand-in ran DEL in the wrong order: {order:?}");
        }
        if let Some(p) = enrolled(&keel, "default", "app")? {
            bail!("DEL returned but keel still has default/app: {p}");
        }
        node.runtime.del(&sandbox)?.ok().context("a second DEL")?;

        let report = keel_cni_admin(lab, &["uninstall", "--cni-bin-dir", path_str(&node.bin_dir)?, "--cni-conf-dir", path_str(&node.conf_dir)?])?;
        if report["binary_removed"] != true || node.bin_dir.join("keel-cni").exists() {
            bail!("uninstall left the binary: {report}");
        }
        let after = node.runtime.conflist()?;
        if after != node.original {
            bail!("uninstall did not restore the primary CNI's list:\n{after}\nvs\n{}", node.original);
        }
        Ok(())
    })
}

/// ADD fails with a CNI error object and a non-zero exit, and nothing is captured, whenever keel cannot capture:
/// keel not running (code 11, and STATUS says 50), keel not answering within `enrollTimeoutMs` (101, bounded),
/// keel refusing the pod because its UID names no pod cgroup on the node (100, naming the UID). DEL then succeeds
/// (keel gone, or the pod unknown), except with a hung keel, which must be retried.
pub fn add_fails_cleanly_when_keel_cannot_capture() {
    with_lab("cnifail", |lab| {
        let socket = lab.api_socket();
        let node = install_cni(lab, &socket, 10_000)?;
        let (_app, sandbox, _) = kubelet_sandbox(lab, "app", "default")?;

        // keel is not running.
        let add = node.runtime.add(&sandbox)?;
        let error = keel_cni_failure(&add, TRY_AGAIN_LATER)?;
        if !error["details"].as_str().is_some_and(|d| d.contains(path_str(&socket).unwrap_or("?"))) || add.result.is_some() {
            bail!("ADD with keel down: {error}, result {:?}", add.result);
        }
        let failed = add.failed().context("failed")?;
        if failed.stdout.trim().lines().count() != 1 {
            bail!("keel-cni printed more than its error object: {:?}", failed.stdout);
        }
        node.runtime.del(&sandbox)?.ok().context("DEL after a failed ADD, keel down")?;
        let status = node.runtime.call_plugin("keel-cni", "STATUS", None, "1.1.0")?;
        if status.error()?["code"] != NOT_AVAILABLE {
            bail!("STATUS with keel down: {}", status.stdout);
        }

        // A keel that accepts and never answers: ADD fails within its bound.
        let node = install_cni(lab, &socket, 500)?;
        let silent = std::os::unix::net::UnixListener::bind(&socket)?;
        let started = Instant::now();
        let add = node.runtime.add(&sandbox)?;
        keel_cni_failure(&add, KEEL_TIMEOUT)?;
        if started.elapsed() > Duration::from_secs(5) {
            bail!("ADD against a silent keel took {:?} with enrollTimeoutMs 500", started.elapsed());
        }
        let del = node.runtime.del(&sandbox)?;
        keel_cni_failure(&del, KEEL_TIMEOUT).context("DEL against a hung keel must fail so the runtime retries")?;
        drop(silent);
        std::fs::remove_file(&socket)?;
        node.runtime.del(&sandbox)?.ok().context("DEL retried, keel gone")?;

        // keel is up but the pod's UID names no pod on this node.
        let keel = lab.start_keel(Backend::Ebpf, &[])?;
        let stray = lab.add_sandbox("stray", &lab.node_cgroup("pods/stray"))?;
        let sandbox = Sandbox { netns: stray.netns_path.clone(), name: "stray".into(), uid: new_uid(), container_id: "stray1".into(), ..sandbox };
        let add = node.runtime.add(&sandbox)?;
        let error = keel_cni_failure(&add, KEEL_REFUSED)?;
        if !error["details"].as_str().is_some_and(|d| d.contains(&sandbox.uid) && d.contains("no cgroup")) {
            bail!("keel's refusal does not name the pod UID and the reason: {error}");
        }
        if keel.pods()?.as_array().is_some_and(|p| !p.is_empty()) {
            bail!("a refused ADD left a pod enrolled: {}", keel.pods()?);
        }
        node.runtime.del(&sandbox)?.ok().context("DEL after a refused ADD")?;
        Ok(())
    })
}

/// `keel enroll --uid` with neither cgroup nor netns: keel finds a Guaranteed pod in the systemd layout and a
/// Burstable pod in the cgroupfs layout (real cgroups under the real cgroup2 mount), and each one's netns from the
/// real process running in its container cgroup; their traffic is captured; a restarted keel finds them again.
/// An unknown UID, and a pod with no process left, are refused naming the UID or the field.
pub fn enroll_by_uid_finds_cgroup_and_netns() {
    with_lab("cniuid", |lab| {
        let mut keel = lab.start_keel(Backend::Ebpf, &[])?;
        let server = lab.add_pod("server")?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);

        let (uid_a, uid_b) = (new_uid(), new_uid());
        let slice_a = lab.node_cgroup(&format!("kubepods.slice/kubepods-pod{}.slice", uid_a.replace('-', "_")));
        let dir_b = lab.node_cgroup(&format!("kubepods/burstable/pod{uid_b}"));
        let mut pods = Vec::new();
        for (name, uid, pod_cgroup, container) in [("a", &uid_a, &slice_a, "cri-containerd-aaa.scope"), ("b", &uid_b, &dir_b, "bbb")] {
            let mut pod = lab.add_pod(name)?;
            pod.cgroup_path = pod_cgroup.join(container);
            std::fs::create_dir_all(&pod.cgroup_path)?;
            // The pod's process (its "pause"): keel finds the netns through it.
            let process = pod.serve(9000, ServeMode::Sink, &[])?;
            let ip = pod.ip.to_string();
            keel.cli(&["enroll", "--uid", uid, "--ip", &ip, "--namespace", "default", "--name", name])
                .with_context(|| format!("keel enroll --uid for pod {name}"))?;
            pods.push((pod, uid.clone(), pod_cgroup.clone(), process));
        }
        let check_listed = |keel: &Keel| -> Result<()> {
            for (pod, uid, pod_cgroup, process) in &pods {
                let listed = enrolled(keel, "default", &pod.name)?.with_context(|| format!("keel does not list {}", pod.name))?;
                let netns = format!("/proc/{}/ns/net", process.pid());
                if listed["uid"] != json!(uid)
                    || listed["cgroup"] != json!(pod_cgroup)
                    || listed["netns"] != json!(netns)
                    || listed["netns_discovered"] != true
                {
                    bail!("pod {} enrolled as {listed}; expected uid {uid}, cgroup {}, netns {netns}", pod.name, pod_cgroup.display());
                }
            }
            Ok(())
        };
        check_listed(&keel)?;
        for (pod, ..) in &pods {
            let sent = send_ok(pod, dst, 64 * KIB, ServeMode::Echo)?;
            expect_captured(
                &keel,
                &Expect {
                    direction: "outbound",
                    pod,
                    original_destination: dst,
                    source_port: sent.local_port(),
                    bytes_sent: 64 * KIB,
                    bytes_received: Some(64 * KIB),
                },
            )?;
        }

        // A restarted keel finds the netns again from the UIDs (the PIDs it recorded are not trusted).
        keel.kill9();
        drop(keel);
        let keel = lab.start_keel(Backend::Ebpf, &[])?;
        check_listed(&keel).context("after a restart")?;

        let unknown = new_uid();
        let err = keel.cli(&["enroll", "--uid", &unknown, "--ip", "10.244.0.99", "--namespace", "default", "--name", "ghost"]).unwrap_err();
        if !format!("{err:#}").contains(&format!("pod uid {unknown}: no cgroup")) {
            bail!("enrolling an unknown uid: {err:#}");
        }
        let uid_c = new_uid();
        let (_, scope_c) = systemd_besteffort(lab, &uid_c, "ccc");
        std::fs::create_dir_all(&scope_c)?;
        let err = keel.cli(&["enroll", "--uid", &uid_c, "--ip", "10.244.0.98", "--namespace", "default", "--name", "idle"]).unwrap_err();
        if !format!("{err:#}").contains("field `netns`") {
            bail!("enrolling a pod with no process: {err:#}");
        }
        Ok(())
    })
}
