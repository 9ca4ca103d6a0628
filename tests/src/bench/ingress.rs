//! The ingress comparison (`cargo xtask bench -- --ingress`, issue 14): HTTPS from a client pod to an ingress
//! proxy in its own pod, which terminates TLS and proxies to the bench's nginx server in a backend pod (out of
//! the mesh, plain HTTP/1.1 with keep-alive), all on one node:
//!
//! * `ingress-nginx`: nginx as a TLS-terminating reverse proxy (2 workers, keep-alive upstream, an access-log
//!   line per request);
//! * `ingress-keel`: `keel gateway` (2 worker threads, its access log on) with a Gateway HTTPS server (SIMPLE,
//!   the certificate from a Secret through keel-control) and a VirtualService to the backend's Service.
//!
//! Both present the same certificate (one ECDSA P-256 leaf) and negotiate TLS 1.3; the client sends no SNI (it
//! dials the ingress by IP), which both serve with their one server. Workloads: HTTP/1.1 keep-alive (h2load
//! `--h1`, 32 connections), HTTP/2 (h2load, 8 connections × 16 streams), and a new TLS connection per request
//! (wrk with `Connection: close`, 16 connections: a full handshake each, so requests/s there is handshakes/s).
//! Per sample: requests/s, p50/p99 latency, the proxy processes' CPU (user+sys) per 1,000 requests and their peak
//! RSS. Repetitions alternate which arm runs first; the report gives medians and keel/nginx ratios.
//!
//! Before measuring, each arm's path is checked with curl: 20 HTTPS requests answered 200 by the backend, with the
//! bench certificate verified.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    measure::{self, peak_rss_kib, processes_cpu_s},
    median,
    model::Sample,
    workloads::{self, HTTP_PORT},
};
use crate::lab::{mesh_config, Binaries, ChildGuard, Lab, Pod};

pub const ARMS: [&str; 2] = ["ingress-nginx", "ingress-keel"];
const HTTPS_PORT: u16 = 443;
/// The host the client asks for (`Host`/`:authority`).
const HOST: &str = "webapp.example.com";
const GATEWAY_POD: &str = "default/ingress";
/// nginx workers, keel gateway worker threads.
const WORKERS: u32 = 2;

#[derive(Clone, Copy, Debug)]
pub struct IngressWorkload {
    pub name: &'static str,
    /// Keep-alive HTTP/1.1 or HTTP/2 with h2load; `None`: a new TLS connection per request with wrk.
    h2load: Option<H2Shape>,
    connections: u32,
}

#[derive(Clone, Copy, Debug)]
struct H2Shape {
    http2: bool,
    streams: u32,
}

pub const WORKLOADS: [IngressWorkload; 3] = [
    IngressWorkload { name: "https-h1-keepalive", h2load: Some(H2Shape { http2: false, streams: 1 }), connections: 32 },
    IngressWorkload { name: "https-h2", h2load: Some(H2Shape { http2: true, streams: 16 }), connections: 8 },
    IngressWorkload { name: "https-new-connection", h2load: None, connections: 16 },
];

#[derive(Clone, Debug, Serialize)]
pub struct IngressSample {
    pub arm: String,
    pub workload: String,
    pub rep: u32,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failures: u64,
    /// The proxy processes' user+sys CPU per 1,000 requests, ms.
    pub cpu_ms_per_1k: f64,
    pub peak_rss_kib: u64,
}

/// One ingress proxy in its pod: its processes (whose CPU and memory are measured) and its log.
struct Proxy {
    main: ChildGuard,
    pids: Vec<u32>,
}

pub fn run(binaries: &Binaries, out: &Path, reps: u32, seconds: u32) -> Result<Vec<IngressSample>> {
    for tool in ["h2load", "wrk", "nginx", "curl"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
    }
    std::fs::create_dir_all(out)?;
    let mut samples = Vec::new();
    for rep in 0..reps {
        // Alternate which arm goes first.
        let order: Vec<&str> = if rep % 2 == 0 { ARMS.to_vec() } else { ARMS.iter().rev().copied().collect() };
        for arm in order {
            eprintln!("keel-bench: ingress rep {rep} arm {arm}");
            samples.extend(run_arm(binaries, arm, rep, seconds).with_context(|| format!("ingress arm {arm}, repetition {rep}"))?);
        }
    }
    std::fs::write(out.join("ingress.json"), serde_json::to_string_pretty(&samples)?)?;
    Ok(samples)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(tool)).find(|p| p.is_file()))
}

fn run_arm(binaries: &Binaries, arm: &str, rep: u32, seconds: u32) -> Result<Vec<IngressSample>> {
    // Two nodes so keel-control listens on a wire address the gateway pod reaches (a one-node lab's is the
    // node's loopback); every pod is on node 0.
    let lab = Lab::with_nodes_and_binaries(&format!("i{rep}{}", &arm[8..9]), 2, binaries.clone())?;
    let client = lab.node(0).add_pod("client")?;
    let ingress = lab.node(0).add_pod("ingress")?;
    let backend = lab.node(0).add_pod("backend")?;
    let _servers = super::start_servers(&lab, &backend)?;
    let (cert, key) = certificate()?;
    let ca = lab.dir().join("ingress-ca.crt");
    std::fs::write(&ca, &cert)?;
    // Kept alive for the arm: keel-control (ingress-keel only) and the proxy.
    let mut _control = None;
    let proxy = match arm {
        "ingress-nginx" => start_nginx(&lab, &ingress, &backend, &cert, &key)?,
        _ => {
            let (control, proxy) = start_keel(&lab, &ingress, &backend, &cert, &key)?;
            _control = Some(control);
            proxy
        }
    };
    check_path(&client, &ingress, &ca).with_context(|| format!("the path through {arm}"))?;
    let mut samples = Vec::new();
    for workload in WORKLOADS {
        let before = processes_cpu_s(&proxy.pids)?;
        let sample = drive(&client, &lab, ingress.addr(HTTPS_PORT), workload, seconds).with_context(|| format!("workload {}", workload.name))?;
        let after = processes_cpu_s(&proxy.pids)?;
        let cpu_s = (after.0 - before.0) + (after.1 - before.1);
        let latency = sample.latency.clone().unwrap_or_default();
        let requests = sample.requests.max(1) as f64;
        samples.push(IngressSample {
            arm: arm.to_owned(),
            workload: workload.name.to_owned(),
            rep,
            requests_per_s: sample.requests_per_s,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            failures: sample.failures.total(),
            cpu_ms_per_1k: cpu_s * 1e3 / requests * 1e3,
            peak_rss_kib: proxy.pids.iter().map(|p| peak_rss_kib(*p)).sum(),
        });
    }
    drop(proxy.main);
    Ok(samples)
}

/// One ECDSA P-256 certificate for [`HOST`], self-signed (the client trusts it directly), PEM.
fn certificate() -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![HOST.to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, HOST);
    Ok((params.self_signed(&key)?.pem(), key.serialize_pem()))
}

fn start_nginx(lab: &Lab, ingress: &Pod, backend: &Pod, cert: &str, key: &str) -> Result<Proxy> {
    let dir = lab.dir().join("nginx-ingress");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), cert)?;
    std::fs::write(dir.join("tls.key"), key)?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {WORKERS};\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log {d}/access.log;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n  proxy_set_header Host $host;\n\
           upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
           server {{\n    listen {HTTPS_PORT} ssl http2 default_server backlog=4096;\n    server_name _;\n\
             ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
             location / {{ proxy_pass http://backend; }}\n  }}\n}}\n",
        upstream = backend.addr(HTTP_PORT),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut master = ingress.spawn(&["nginx", "-c", conf_path.to_str().context("non-UTF-8 lab dir")?, "-e", "stderr"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = master.try_wait() {
            bail!("nginx (the ingress) exited ({status}):\n{}", crate::lab::tail(&master.log(), 20));
        }
        let workers = measure::children_of(master.pid());
        if workers.len() == WORKERS as usize && super::listening(ingress, &[HTTPS_PORT])? {
            let pids = std::iter::once(master.pid()).chain(workers).collect();
            return Ok(Proxy { main: master, pids });
        }
        if Instant::now() > deadline {
            bail!("nginx (the ingress) not up within 20 s:\n{}", crate::lab::tail(&master.log(), 20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_keel(lab: &Lab, ingress: &Pod, backend: &Pod, cert: &str, key: &str) -> Result<(crate::lab::ControlPlane, Proxy)> {
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let objects = vec![
        mesh_config::pod_object(ingress, "ingress", &[("istio", "ingressgateway")]),
        // Out of the mesh: the gateway reaches it directly, as nginx does.
        mesh_config::pod_object(backend, "backend", &[("app", "backend"), ("istio.io/dataplane-mode", "none")]),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: default}}\nspec:\n  clusterIP: 10.96.0.70\n  selector: {{app: backend}}\n  ports:\n  - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n"
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, credentialName: bench-cert}}\n"
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: webapp, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  gateways: [bench]\n  http:\n  - route: [{{destination: {{host: backend, port: {{number: 80}}}}}}]\n"
        ),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-cert, namespace: default}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}", indent(cert), indent(key)),
    ];
    let config_dir = lab.dir().join("mesh");
    mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
    let control = lab.start_control_with(0, &config_dir, &[], &[GATEWAY_POD])?;
    let gateway = lab.start_gateway(&control, ingress, GATEWAY_POD, HTTPS_PORT, &["--worker-threads", &WORKERS.to_string()])?;
    let pids = vec![gateway.pid()];
    Ok((control, Proxy { main: gateway, pids }))
}

/// 20 requests through the ingress, each answered 200 by the backend, the certificate verified against the bench's.
fn check_path(client: &Pod, ingress: &Pod, ca: &Path) -> Result<()> {
    let resolve = format!("{HOST}:{HTTPS_PORT}:{}", ingress.ip);
    let url = format!("https://{HOST}/");
    let ca = ca.display().to_string();
    for _ in 0..20 {
        let out = client.run(&["curl", "-sS", "--max-time", "5", "--resolve", &resolve, "--cacert", &ca, "-w", " %{http_code}", &url])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim() != "ok 200" {
            bail!("want the backend's \"ok\" with 200, got {text:?} {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

fn drive(client: &Pod, lab: &Lab, target: SocketAddr, workload: IngressWorkload, seconds: u32) -> Result<Sample> {
    let sample = match workload.h2load {
        Some(shape) => {
            let log = lab.dir().join("h2load-ingress.tsv");
            let _ = std::fs::remove_file(&log);
            let mut argv: Vec<String> = vec!["h2load".into()];
            if !shape.http2 {
                argv.push("--h1".into());
            }
            for (flag, value) in [("-t", WORKERS), ("-c", workload.connections), ("-m", shape.streams), ("-D", seconds)] {
                argv.extend([flag.to_owned(), value.to_string()]);
            }
            argv.extend(["-H".into(), format!(":authority: {HOST}"), format!("--log-file={}", log.display()), format!("https://{target}/")]);
            let out = client.run_timeout(&argv, Duration::from_secs(u64::from(seconds) + 30))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut sample = workloads::parse_h2load(&text)
                .with_context(|| format!("unreadable h2load output:\n{text}{}", String::from_utf8_lossy(&out.stderr)))?;
            let per_request = std::fs::read_to_string(&log).with_context(|| format!("h2load wrote no {}", log.display()))?;
            sample.latency = Some(workloads::latency_of_h2load_log(&per_request).context("h2load's log has no request")?);
            if !text.contains("TLSv1.3") {
                bail!("h2load did not negotiate TLS 1.3:\n{text}");
            }
            sample
        }
        None => {
            let argv = [
                "wrk".to_owned(),
                "--latency".into(),
                "-t".into(),
                WORKERS.to_string(),
                "-c".into(),
                workload.connections.to_string(),
                "-d".into(),
                format!("{seconds}s"),
                "--timeout".into(),
                "5s".into(),
                "-H".into(),
                format!("Host: {HOST}"),
                "-H".into(),
                "Connection: close".into(),
                format!("https://{target}/"),
            ];
            let out = client.run_timeout(&argv, Duration::from_secs(u64::from(seconds) + 30))?;
            let text = String::from_utf8_lossy(&out.stdout);
            workloads::parse_wrk(&text).with_context(|| format!("unreadable wrk output:\n{text}{}", String::from_utf8_lossy(&out.stderr)))?
        }
    };
    if sample.requests == 0 {
        bail!("no request completed");
    }
    Ok(sample)
}

/// The report: per workload, each arm's medians, and keel's ratio to nginx.
pub fn markdown(samples: &[IngressSample], command: &str, seconds: u32) -> String {
    let reps = samples.iter().map(|s| s.rep).max().map_or(0, |r| r + 1);
    let mut out = format!(
        "## Ingress: keel gateway vs nginx, TLS-terminating reverse proxies\n\n`{command}` — {reps} repetitions of {seconds} s per workload, \
         arms alternating; medians. Same backend (nginx, plain HTTP/1.1 keep-alive), same ECDSA P-256 certificate, TLS 1.3, \
         {WORKERS} nginx workers / {WORKERS} keel worker threads. CPU is the proxy processes' user+sys; RSS their peak resident set.\n\n\
         | workload | arm | requests/s | p50 ms | p99 ms | CPU ms / 1k req | peak RSS MiB | failures |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut ratios = String::new();
    for workload in WORKLOADS {
        let of = |arm: &str, f: &dyn Fn(&IngressSample) -> f64| {
            median(samples.iter().filter(|s| s.arm == arm && s.workload == workload.name).map(f).collect())
        };
        for arm in ARMS {
            let failures: u64 = samples.iter().filter(|s| s.arm == arm && s.workload == workload.name).map(|s| s.failures).sum();
            let _ = writeln!(
                out,
                "| {} | {arm} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {failures} |",
                workload.name,
                of(arm, &|s| s.requests_per_s),
                of(arm, &|s| s.p50_ms),
                of(arm, &|s| s.p99_ms),
                of(arm, &|s| s.cpu_ms_per_1k),
                of(arm, &|s| s.peak_rss_kib as f64) / 1024.0,
            );
        }
        let ratio = |f: &dyn Fn(&IngressSample) -> f64| {
            let nginx = of("ingress-nginx", f);
            if nginx > 0.0 {
                of("ingress-keel", f) / nginx
            } else {
                0.0
            }
        };
        let _ = writeln!(
            ratios,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            workload.name,
            ratio(&|s| s.requests_per_s),
            ratio(&|s| s.p50_ms),
            ratio(&|s| s.p99_ms),
            ratio(&|s| s.cpu_ms_per_1k)
        );
    }
    let _ = write!(
        out,
        "\nkeel / nginx (requests/s: higher is better; latency and CPU: lower is better). On `https-new-connection` every request \
         is a new TLS connection, so its requests/s is new TLS handshakes/s.\n\n| workload | requests/s | p50 | p99 | CPU / request |\n|---|---:|---:|---:|---:|\n{ratios}"
    );
    out
}
