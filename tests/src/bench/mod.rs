//! `cargo xtask bench`: eBPF capture against iptables redirection (and no proxy at all), side by side, with the
//! whole cost counted. Each repetition runs every arm once, in a rotating order; each arm gets a fresh lab (new
//! namespaces: no TIME_WAIT, conntrack or socket left from the previous arm) and must leave nothing behind.
pub mod arms;
pub mod chart;
pub mod measure;
pub mod model;
pub mod report;
pub mod workloads;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use self::{
    arms::Arm,
    measure::Probes,
    model::{Results, RunInfo, Sample},
    workloads::Workload,
};
use crate::lab::{Binaries, ChildGuard, Keel, Lab, Pod, ServeMode};

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
    for tool in ["wrk", "iperf3", "nginx", "bpftool", "nsenter"] {
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
            let samples = run_arm(options, arm, rep, order as u32)
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
    wait_listening(server, &[workloads::HTTP_PORT, workloads::IPERF_PORT])?;
    Ok(Servers { _nginx: nginx, _iperf: iperf, _echo: echo })
}

/// One worker, keep-alive without a request cap, a fixed tiny body: the server is cheap and the same for every arm.
fn nginx_conf(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{ listen {port} backlog=4096; location / {{ return 200 \"ok\"; }} }}\n}}\n",
        port = workloads::HTTP_PORT
    )
}

fn wait_listening(pod: &Pod, ports: &[u16]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = pod.run(&["ss", "-Hltn"])?;
        let listing = String::from_utf8_lossy(&out.stdout);
        if ports.iter().all(|p| listing.contains(&format!(":{p} "))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("servers did not listen on {ports:?}: {listing}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_arm(options: &BenchOptions, arm: &Arm, rep: u32, order: u32) -> Result<Vec<Sample>> {
    let lab = Lab::with_binaries(&format!("b{rep}{order}"), options.binaries.clone())?;
    let client = lab.add_pod("client")?;
    let server = lab.add_pod("server")?;
    let _servers = start_servers(&lab, &server)?;
    let probes = Probes {
        keel_cgroup: arm.backend.map(|_| lab.cgroup_root().join("keel")),
        client_cgroup: client.cgroup_path.clone(),
        server_cgroup: server.cgroup_path.clone(),
        pod_netns: vec![client.netns_path.clone(), server.netns_path.clone()],
    };
    let mut keel = start_arm_keel(&lab, arm, &[&client, &server], false)?;
    let mut samples = Vec::new();
    for workload in options.workloads.iter().filter(|w| !w.responder) {
        samples.push(measured(options, arm, rep, order, workload, &probes, keel.as_ref(), &client, &server)?);
    }
    if let Some(keel) = keel.as_mut() {
        stop_keel(keel, &lab)?;
    }
    for workload in options.workloads.iter().filter(|w| w.responder) {
        if arm.backend.is_none() {
            continue; // no keel to answer: not applicable to the direct arm
        }
        let mut responder = start_arm_keel(&lab, arm, &[&client, &server], true)?;
        samples.push(measured(options, arm, rep, order, workload, &probes, responder.as_ref(), &client, &server)?);
        if let Some(keel) = responder.as_mut() {
            stop_keel(keel, &lab)?;
        }
    }
    Ok(samples)
}

fn start_arm_keel(lab: &Lab, arm: &Arm, pods: &[&Pod], responder: bool) -> Result<Option<Keel>> {
    let Some(backend) = arm.backend else { return Ok(None) };
    let mut args: Vec<&str> = arm.keel_args.to_vec();
    if responder {
        args.push("--responder");
    }
    let keel = lab.start_keel(backend, &args)?;
    for pod in pods {
        keel.enroll(pod)?;
    }
    Ok(Some(keel))
}

/// SIGTERM must leave no pin behind: the next arm starts from a clean slate.
fn stop_keel(keel: &mut Keel, lab: &Lab) -> Result<()> {
    let status = keel.terminate()?;
    if !status.success() {
        bail!("keel exited with {status} on SIGTERM:\n{}", keel.log_tail(30));
    }
    if lab.bpffs_dir().exists() {
        bail!("keel left {} behind", lab.bpffs_dir().display());
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
    keel: Option<&Keel>,
    client: &Pod,
    server: &Pod,
) -> Result<Sample> {
    let before = probes.snapshot()?;
    let mut sample = workloads::run(workload, client, server, options.seconds)
        .with_context(|| format!("workload {}", workload.name))?;
    let after = probes.snapshot()?;
    let delta = measure::delta(&before, &after);
    sample.arm = arm.name.to_owned();
    sample.workload = workload.name.to_owned();
    sample.rep = rep;
    sample.order = order;
    sample.cpu = delta.cpu;
    sample.failures.syn_retransmits = delta.syn_retransmits;
    sample.failures.listen_drops = delta.listen_drops;
    sample.keel_rss_kib = keel.map(|k| measure::peak_rss_kib(k.pid())).unwrap_or(0);
    Ok(sample)
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
