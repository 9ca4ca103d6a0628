//! `cargo xtask bench`: eBPF capture against iptables redirection (and no proxy at all), side by side, with the
//! whole cost counted; and across two nodes, keel's plaintext relay against HBONE (mTLS) against no keel. Each
//! repetition runs every arm once, in a rotating order; each arm gets a fresh lab (new namespaces: no TIME_WAIT,
//! conntrack or socket left from the previous arm; one node or two, see [`arms::Arm::nodes`]) and must leave
//! nothing behind. The L7 arms (keel's L7 engine against keel L4 and nginx as a reverse proxy) are in [`l7`].
pub mod arms;
pub mod chart;
pub mod control_plane;
pub mod ingress;
pub mod l7;
pub mod measure;
pub mod model;
pub mod node_scale;
pub mod noisy_neighbour;
pub mod report;
pub mod upgrade;
pub mod workloads;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use self::{
    arms::{Arm, Mesh},
    measure::Probes,
    model::{Results, RunInfo, Sample},
    workloads::{Tool, Workload},
};
use crate::lab::{mesh_config, Binaries, ChildGuard, Connection, Keel, Lab, Pod, ServeMode};

pub struct BenchOptions {
    pub binaries: Binaries,
    pub out_dir: PathBuf,
    pub repetitions: u32,
    pub seconds: u32,
    pub quick: bool,
    pub arms: Vec<&'static Arm>,
    pub workloads: Vec<&'static Workload>,
    pub command: String,
}

pub fn run(options: &BenchOptions) -> Result<Results> {
    crate::lab::require_root_and_prereqs();
    let l7 = options.arms.iter().any(|a| a.l7.is_some());
    for tool in ["wrk", "iperf3", "nginx", "bpftool", "nsenter"].into_iter().chain(l7.then_some("h2load")) {
        if !crate::lab::sys::on_path(tool) {
            bail!("{tool} is missing: `cargo xtask setup` installs it");
        }
    }
    std::fs::create_dir_all(&options.out_dir)?;
    let _bpf_stats = measure::BpfStats::enable()?;
    let mut results = Results { info: run_info(options), samples: Vec::new() };
    let started = Instant::now();
    let total = options.repetitions as usize * options.arms.len();
    let mut done = 0usize;
    for rep in 0..options.repetitions {
        for (order, arm) in arms::rotated(&options.arms, rep).into_iter().enumerate() {
            let eta = eta(started.elapsed(), done, total);
            println!("[bench] repetition {}/{} · arm {} ({}/{}) · {eta}", rep + 1, options.repetitions, arm.name, order + 1, options.arms.len());
            let samples = if arm.l7.is_some() { l7::run_arm(options, arm, rep, order as u32) } else { run_arm(options, arm, rep, order as u32) }
                .with_context(|| format!("repetition {rep}, arm {}", arm.name))?;
            for s in &samples {
                println!("          {:<15} {}", s.workload, headline(s));
            }
            results.samples.extend(samples);
            done += 1;
            // Keep every sample measured so far, should a later arm fail.
            std::fs::write(options.out_dir.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
        }
    }
    Ok(results)
}

/// The median of `values` (the upper one of an even count; 0 for none): the comparison families' summaries.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn eta(elapsed: Duration, done: usize, total: usize) -> String {
    if done == 0 {
        return "time left: estimating".into();
    }
    let left = elapsed.as_secs_f64() / done as f64 * (total - done) as f64;
    format!("about {:.0} min {:02.0} s left", (left / 60.0).floor(), left % 60.0)
}

fn headline(s: &Sample) -> String {
    if !s.note.is_empty() && s.requests == 0 && s.bytes == 0 {
        return s.note.clone();
    }
    match &s.latency {
        Some(l) => format!("{:>10.0} req/s  p50 {:.3} ms  p99 {:.3} ms  failures {}", s.requests_per_s, l.p50_ms, l.p99_ms, s.failures.total()),
        None if !s.keel_path.is_empty() => {
            format!("{:>10.2} Gbit/s  ok {}  failures {}  keel: {}", s.gbit_per_s, s.ok, s.failures.total(), s.keel_path)
        }
        None => format!("{:>10.2} Gbit/s  ok {}  failures {}", s.gbit_per_s, s.ok, s.failures.total()),
    }
}

/// The servers every arm's server pod runs.
struct Servers {
    _nginx: ChildGuard,
    _iperf: ChildGuard,
    _echo: ChildGuard,
}

fn start_servers(lab: &Lab, server: &Pod) -> Result<Servers> {
    let conf = lab.dir().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&lab.dir().join("nginx")))?;
    std::fs::create_dir_all(lab.dir().join("nginx"))?;
    let nginx = server.spawn(&["nginx", "-c", conf.to_str().context("path")?, "-e", "stderr"])?;
    let iperf = server.spawn(&["iperf3", "-s", "-p", &workloads::IPERF_PORT.to_string()])?;
    let echo = server.serve(workloads::ECHO_PORT, ServeMode::Echo, &[])?;
    wait_listening(server, &[workloads::HTTP_PORT, workloads::H2C_PORT, workloads::IPERF_PORT])?;
    Ok(Servers { _nginx: nginx, _iperf: iperf, _echo: echo })
}

/// One worker, keep-alive without a request cap, a fixed tiny body: the server is cheap and the same for every arm.
/// It also answers h2c (prior knowledge) on [`workloads::H2C_PORT`], the L7 comparison's no-proxy HTTP/2 baseline.
fn nginx_conf(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{ listen {port} backlog=4096; listen {h2c} http2 backlog=4096; location / {{ return 200 \"ok\"; }} }}\n}}\n",
        port = workloads::HTTP_PORT,
        h2c = workloads::H2C_PORT
    )
}

fn wait_listening(pod: &Pod, ports: &[u16]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if listening(pod, ports)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            let out = pod.run(&["ss", "-Hltn"])?;
            bail!("servers did not listen on {ports:?}: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something in `pod` listens on every one of `ports` (TCP).
fn listening(pod: &Pod, ports: &[u16]) -> Result<bool> {
    let out = pod.run(&["ss", "-Hltn"])?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(ports.iter().all(|p| listing.contains(&format!(":{p} "))))
}

fn run_arm(options: &BenchOptions, arm: &Arm, rep: u32, order: u32) -> Result<Vec<Sample>> {
    let lab = Lab::with_nodes_and_binaries(&format!("b{rep}{order}"), arm.nodes, options.binaries.clone())?;
    // One node: both pods on it. Two: the client on node 0, the server on node 1, across the wire.
    let client = lab.node(0).add_pod("client")?;
    let server = lab.node(arm.nodes - 1).add_pod("server")?;
    let _servers = start_servers(&lab, &server)?;
    let probes = Probes {
        keel_cgroups: match arm.keel {
            Some(_) => (0..arm.nodes).map(|k| lab.node(k).keel_cgroup()).collect(),
            None => Vec::new(),
        },
        client_cgroup: client.cgroup_path.clone(),
        server_cgroup: server.cgroup_path.clone(),
        pod_netns: vec![client.netns_path.clone(), server.netns_path.clone()],
    };
    let pods = Pods { client: &client, server: &server };
    let mut keels = start_arm_keels(&lab, arm, pods, false)?;
    let idle_rss = idle_rss_by_node(&keels);
    if arm.cross_node() {
        warm_up(pods)?;
    }
    let bypass = arm.keel.is_some_and(|k| k.bypass);
    if bypass {
        grant_bypasses(pods)?;
    }
    let mut samples = Vec::new();
    let mut path_checked = false;
    for workload in options.workloads.iter().filter(|w| !w.responder && !w.l7()) {
        let mut sample = measured(options, arm, rep, order, workload, &probes, &keels, pods)?;
        sample.keel_idle_rss_by_node_kib = idle_rss.clone();
        if arm.cross_node() && matches!(workload.tool, Tool::Integrity) && sample.ok {
            sample.keel_path = verify_path(arm, &keels, pods, workloads::INTEGRITY_BYTES)?;
            path_checked = true;
        }
        samples.push(sample);
    }
    if bypass {
        verify_bypassed(&keels[0], &samples)?;
    }
    if arm.cross_node() && !path_checked {
        // The integrity workload was not selected (or failed, and is counted as such): check the path with a
        // transfer of our own, so no cross-node keel arm goes unchecked.
        let report = client.send(server.addr(workloads::ECHO_PORT), PATH_PROBE_BYTES, ServeMode::Echo, Duration::from_secs(30))?;
        if report["ok"] != serde_json::Value::Bool(true) {
            bail!("the path check's {PATH_PROBE_BYTES}-byte echo failed: {report}");
        }
        verify_path(arm, &keels, pods, PATH_PROBE_BYTES)?;
    }
    stop_keels(&mut keels, &lab)?;
    for workload in options.workloads.iter().filter(|w| w.responder && !w.l7()) {
        if !arm.runs_responder() {
            continue; // no keel to answer, or nothing of the cross-node path to measure
        }
        let mut responder = start_arm_keels(&lab, arm, pods, true)?;
        let idle_rss = idle_rss_by_node(&responder);
        let mut sample = measured(options, arm, rep, order, workload, &probes, &responder, pods)?;
        sample.keel_idle_rss_by_node_kib = idle_rss;
        samples.push(sample);
        stop_keels(&mut responder, &lab)?;
    }
    Ok(samples)
}

/// The two pods every arm runs between.
#[derive(Clone, Copy)]
struct Pods<'a> {
    client: &'a Pod,
    server: &'a Pod,
}

impl<'a> Pods<'a> {
    fn on_node(self, node: usize) -> impl Iterator<Item = &'a Pod> {
        [self.client, self.server].into_iter().filter(move |p| p.node == node)
    }
}

/// Service accounts of the two pods in local mode (their SPIFFE identities).
const CLIENT_SA: &str = "bench-client";
const SERVER_SA: &str = "bench-server";
/// The path check's own transfer, when the integrity workload did not run.
const PATH_PROBE_BYTES: u64 = 1024 * 1024;
/// How long keel may take to list a closed connection.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// One keel per node of the arm (none for a no-keel arm), each enrolling its node's pods; in order of nodes.
/// Started one after the other: in HBONE mode node 0's keel generates the shared CA, the next ones load it.
fn start_arm_keels(lab: &Lab, arm: &Arm, pods: Pods, responder: bool) -> Result<Vec<Keel>> {
    let Some(setup) = arm.keel else { return Ok(Vec::new()) };
    let mut args = setup.args();
    if responder {
        args.push("--responder".into());
    }
    if setup.mesh == Mesh::Hbone {
        let (config_dir, ca_dir) = (lab.dir().join("mesh"), lab.dir().join("ca"));
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(pods.client, CLIENT_SA, &[("app", CLIENT_SA)]),
                mesh_config::pod_object(pods.server, SERVER_SA, &[("app", SERVER_SA)]),
            ],
        )?;
        std::fs::create_dir_all(&ca_dir)?;
        for (flag, dir) in [("--config-dir", &config_dir), ("--ca-dir", &ca_dir)] {
            args.extend([flag.to_owned(), dir.to_str().context("non-UTF-8 lab dir")?.to_owned()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut keels = Vec::new();
    for k in 0..arm.nodes {
        let keel = lab.start_keel_on(k, setup.backend, &args)?;
        if setup.mesh == Mesh::Hbone {
            wait_ready(&keel)?;
        }
        for pod in pods.on_node(k) {
            keel.enroll(pod)?;
        }
        keels.push(keel);
    }
    Ok(keels)
}

/// Each keel's resident set now, node by node: called once its pods are enrolled and before any traffic, it is the
/// idle footprint (what stays after start-up, not its peak).
fn idle_rss_by_node(keels: &[Keel]) -> Vec<u64> {
    // Enrollment returns when keel answered; a moment lets its start-up work (and any trim after it) finish.
    std::thread::sleep(Duration::from_millis(500));
    keels.iter().map(|k| measure::rss_kib(k.pid())).collect()
}

/// keel's `/healthz/ready` answers 200 once its workload source (here the local config dir) is loaded.
fn wait_ready(keel: &Keel) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = keel.admin_get("/healthz/ready")?;
        if status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("keel not ready within 20 s: {status} {body}; log tail:\n{}", keel.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One small echo before measuring a cross-node arm, out of every sample: neighbours across the wire resolved
/// and, in HBONE mode, both workload certificates issued and the pooled mTLS connection dialled — one-time
/// setup, not per-request cost. It also fails the arm early if its path does not work at all.
fn warm_up(pods: Pods) -> Result<()> {
    let target = pods.server.addr(workloads::ECHO_PORT);
    let report = pods.client.send(target, 64 * 1024, ServeMode::Echo, Duration::from_secs(20))?;
    if report["ok"] != serde_json::Value::Bool(true) {
        bail!("warm-up echo {} -> {target} failed: {report}", pods.client.name);
    }
    Ok(())
}

/// The bypass arm measures connections of pairs keel has already admitted: one connection to each server port
/// goes through keel first (its policy engine grants the pair), out of every sample.
fn grant_bypasses(pods: Pods) -> Result<()> {
    for port in [workloads::HTTP_PORT, workloads::H2C_PORT, workloads::IPERF_PORT, workloads::ECHO_PORT] {
        // Whatever the server makes of one byte, the connection was admitted by then: only the grant matters.
        let _ = pods.client.send(pods.server.addr(port), 1, ServeMode::Sink, Duration::from_secs(5))?;
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// The bypass arm must have measured the kernel's path: connect4 let at least one connection per sample past
/// keel (a keel that never granted would measure its own relay under the arm's name).
fn verify_bypassed(keel: &Keel, samples: &[Sample]) -> Result<()> {
    let bypassed = crate::lab::counter(&keel.stats()?, "/ebpf/connect4/bypassed")?;
    if bypassed < samples.len() as u64 {
        bail!("arm bypass: connect4 bypassed {bypassed} connections over {} workloads; keel carried them instead", samples.len());
    }
    Ok(())
}

/// A cross-node keel arm must measure the path it is named after. keel's own records of an echo of `bytes` from
/// the client to the server's echo port say how it went: the client node's keel's outbound record and the server
/// node's keel's inbound one. HBONE: both "hbone" with mutual TLS, carrying the two pods' identities; plain: a
/// "direct" plaintext relay on both nodes. Beyond that one transfer, every inbound record from the client still
/// listed by the server's keel (its last 1024 connections) must be of the arm's kind, so a fallback that hit
/// only some connections shows too. Returns a one-line description for the sample.
fn verify_path(arm: &Arm, keels: &[Keel], pods: Pods, bytes: u64) -> Result<String> {
    let Some(setup) = arm.keel else { return Ok(String::new()) };
    let (client_keel, server_keel) = (&keels[pods.client.node], &keels[pods.server.node]);
    let target = pods.server.addr(workloads::ECHO_PORT).to_string();
    let client_ip = pods.client.ip.to_string();
    let from_client = |c: &Connection| c.source.rsplit_once(':').is_some_and(|(ip, _)| ip == client_ip);
    let the_transfer = |direction: &'static str| {
        let (target, from_client) = (&target, &from_client);
        move |c: &Connection| c.direction == direction && &c.original_destination == target && c.bytes_sent == bytes && from_client(c)
    };
    let outbound = client_keel
        .wait_connection(RECORD_TIMEOUT, the_transfer("outbound"))
        .with_context(|| format!("node {}'s keel has no record of the {bytes}-byte echo", pods.client.node))?;
    let inbound = server_keel
        .wait_connection(RECORD_TIMEOUT, the_transfer("inbound"))
        .with_context(|| format!("node {}'s keel has no record of the {bytes}-byte echo", pods.server.node))?;
    let hbone = setup.mesh == Mesh::Hbone;
    let expected_path = if hbone { "hbone" } else { "direct" };
    if outbound.path.as_deref() != Some(expected_path) || outbound.mutual_tls != hbone || outbound.error.is_some() {
        bail!("arm {}: the client node's keel did not carry the echo as {expected_path}: {outbound:?}", arm.name);
    }
    let inbound_ok = if hbone {
        inbound.path.as_deref() == Some("hbone")
            && inbound.mutual_tls
            && inbound.source_peer.identity.as_deref() == Some(identity(CLIENT_SA).as_str())
            && inbound.destination_peer.identity.as_deref() == Some(identity(SERVER_SA).as_str())
    } else {
        inbound.path.as_deref() != Some("hbone") && !inbound.mutual_tls
    };
    if !inbound_ok || inbound.error.is_some() {
        bail!("arm {}: the server node's keel did not receive the echo as {expected_path}: {inbound:?}", arm.name);
    }
    let records: Vec<Connection> = server_keel.connections()?.into_iter().filter(|c| c.direction == "inbound" && from_client(c)).collect();
    let odd: Vec<&Connection> = records.iter().filter(|c| c.mutual_tls != hbone || (c.path.as_deref() == Some("hbone")) != hbone).collect();
    if !odd.is_empty() {
        bail!(
            "arm {}: {} of the server node's keel's last {} inbound connections from the client are not {expected_path}, e.g. {:?}",
            arm.name,
            odd.len(),
            records.len(),
            odd[0]
        );
    }
    // The same words every repetition: the report lists each distinct description once.
    Ok(if hbone {
        format!("hbone, mutual TLS ({CLIENT_SA} → {SERVER_SA}); every inbound record mTLS")
    } else {
        "direct, plaintext on both nodes; no inbound record mTLS".to_owned()
    })
}

/// SIGTERM must leave no pin behind: the next arm starts from a clean slate. `keels[k]` runs on node k.
fn stop_keels(keels: &mut [Keel], lab: &Lab) -> Result<()> {
    for (k, keel) in keels.iter_mut().enumerate() {
        let status = keel.terminate()?;
        if !status.success() {
            bail!("node {k}'s keel exited with {status} on SIGTERM:\n{}", keel.log_tail(30));
        }
        let pins = lab.node(k).bpffs_dir();
        if pins.exists() {
            bail!("node {k}'s keel left {} behind", pins.display());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measured(
    options: &BenchOptions,
    arm: &Arm,
    rep: u32,
    order: u32,
    workload: &Workload,
    probes: &Probes,
    keels: &[Keel],
    pods: Pods,
) -> Result<Sample> {
    let before = probes.snapshot()?;
    let mut sample = workloads::run(workload, pods.client, pods.server, options.seconds).with_context(|| format!("workload {}", workload.name))?;
    let after = probes.snapshot()?;
    stamp(&mut sample, arm, workload, arm.nodes as u32, (rep, order), measure::delta(&before, &after));
    sample.keel_rss_by_node_kib = keels.iter().map(|k| measure::peak_rss_kib(k.pid())).collect();
    sample.keel_rss_kib = sample.keel_rss_by_node_kib.iter().sum();
    Ok(sample)
}

/// Names a sample after its arm, workload and place in the run, with the machine-wide deltas measured around it.
fn stamp(sample: &mut Sample, arm: &Arm, workload: &Workload, nodes: u32, (rep, order): (u32, u32), delta: measure::Delta) {
    sample.arm = arm.name.to_owned();
    sample.workload = workload.name.to_owned();
    sample.nodes = nodes;
    sample.rep = rep;
    sample.order = order;
    sample.cpu = delta.cpu;
    sample.failures.syn_retransmits = delta.syn_retransmits;
    sample.failures.listen_drops = delta.listen_drops;
}

fn run_info(options: &BenchOptions) -> RunInfo {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())))
        .unwrap_or_default();
    let iptables_backend = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    RunInfo {
        started: chrono_like_now(),
        command: options.command.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(0),
        cpu_model,
        iptables_backend,
        repetitions: options.repetitions,
        workload_seconds: options.seconds as f64,
        quick: options.quick,
    }
}

/// UTC time as `YYYY-MM-DD HH:MM:SS` from `date` (keeps a date-time crate out of the build).
fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
