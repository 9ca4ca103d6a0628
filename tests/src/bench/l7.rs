//! The L7 comparison (issue 6): requests for `catalog`, routed by `Host`/`:authority` through a table of 1,000
//! virtual hosts, on one node, from the client pod to the same nginx server in the server pod, through
//!
//! * `l7-direct`: nothing (the client speaks to the server pod itself; the no-proxy baseline);
//! * `l7-nginx`: nginx as a reverse proxy in the client pod's network namespace (sidecar-like): 2 workers, 1,000
//!   `server` blocks (one per Service, `server_name` its short name, name.namespace, name.namespace.svc, FQDN and
//!   VIP), each proxying to its own `upstream` with keep-alive connections, and an access log line per request;
//! * `l7-keel-l4`, `l7-keel`, `l7-keel-meshed`: keel as it ships (eBPF capture, fast path on, 2 worker threads,
//!   its access log on) in local mode with 1,000 Services: `catalog` (port 80, selecting the server pod) and
//!   `svc-0001`…`svc-0999` (VIPs in 10.96.4.0/22, selecting nothing), all with their port named `http`, so keel's
//!   route table for port 80 has 1,000 virtual hosts. The client connects to catalog's VIP. In `l7-keel-l4`
//!   catalog's port 80 is named `tcp` instead (keel relays bytes; HTTP/2 goes to catalog's port 81, the server's
//!   h2c port); in `l7-keel-meshed` the server pod is in the mesh and enrolled too, so keel's same-node inbound
//!   path is a second hop.
//!
//! Before measuring, each arm's path is checked: 200 requests over HTTP/1.1 and over h2c must all answer 200, and
//! keel's own config (`keel pc listeners`, `keel pc routes`) must hold the 1,000 virtual hosts with catalog's
//! among them exactly when the arm is L7. During every workload the proxy's own count of requests to catalog
//! (keel: `istio_requests_total`; nginx: its access log) must match the client's, and keel L4 must count none:
//! an arm that does not do what it is named after fails the run.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    arms::{Arm, L7Proxy},
    measure::{self, Probes},
    model::Sample,
    workloads::{self, Workload, L7_HOST},
    BenchOptions, Pods, CLIENT_SA, SERVER_SA,
};
use crate::lab::{mesh_config, ChildGuard, Keel, Lab, Pod};

/// catalog's ClusterIP.
pub const CATALOG_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Services, hence virtual hosts in the route table of port 80: catalog and 999 others.
pub const VIRTUAL_HOSTS: usize = 1000;
/// The first of the other services' VIPs (10.96.4.0/22; svc-0001 is 10.96.4.1).
const OTHER_VIPS: Ipv4Addr = Ipv4Addr::new(10, 96, 4, 0);
/// nginx's listeners in the client pod: HTTP/1.1 and h2c (prior knowledge).
pub const NGINX_H1_PORT: u16 = 8080;
pub const NGINX_H2_PORT: u16 = 8081;
/// nginx's worker processes: keel's data path runs on 2 worker threads (`--worker-threads` default).
pub const NGINX_WORKERS: u32 = 2;
/// Requests per protocol of the pre-measurement check.
const CHECK_REQUESTS: u32 = 200;
/// The share of the client's requests the proxy must have counted itself (requests in flight when the client
/// stops are counted by neither or by one only).
const COUNTED_SHARE: f64 = 0.99;

/// The other services, `i` in 1..VIRTUAL_HOSTS: `svc-0001` at 10.96.4.1, and so on.
pub fn other_service(i: usize) -> (String, Ipv4Addr) {
    (format!("svc-{i:04}"), Ipv4Addr::from(u32::from(OTHER_VIPS) + i as u32))
}

/// A ClusterIP Service; `ports` are (name, port, targetPort).
fn service_object(name: &str, vip: Ipv4Addr, app: &str, ports: &[(&str, u16, u16)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports:\n"
    );
    for (port_name, port, target_port) in ports {
        yaml.push_str(&format!("  - {{name: {port_name}, port: {port}, targetPort: {target_port}}}\n"));
    }
    yaml
}

/// The config dir's objects for a keel arm: both pods, catalog selecting the server, and the 999 other services
/// with `http` ports selecting nothing. catalog's port 80 (the server's HTTP/1.1 port) is named `http`, or `tcp`
/// for L4; its port 81 (the server's h2c port) is `tcp-h2c` in every arm: keel L4 relays the HTTP/2 workloads'
/// bytes there, as nginx's server cannot speak both protocols on one cleartext port (the L7 arms send them to port
/// 80, where keel terminates h2c and speaks HTTP/1.1 upstream, as nginx does).
pub fn config_objects(client: &Pod, server: &Pod, http: bool, server_in_mesh: bool) -> Vec<String> {
    let mut server_labels = vec![("app", SERVER_SA)];
    if !server_in_mesh {
        server_labels.push(("istio.io/dataplane-mode", "none"));
    }
    let mut objects = vec![
        mesh_config::pod_object(client, CLIENT_SA, &[("app", CLIENT_SA)]),
        mesh_config::pod_object(server, SERVER_SA, &server_labels),
        service_object(
            L7_HOST,
            CATALOG_VIP,
            SERVER_SA,
            &[(if http { "http" } else { "tcp" }, workloads::HTTP_PORT, workloads::HTTP_PORT), ("tcp-h2c", workloads::H2C_PORT, workloads::H2C_PORT)],
        ),
    ];
    objects.extend((1..VIRTUAL_HOSTS).map(|i| {
        let (name, vip) = other_service(i);
        service_object(&name, vip, &name, &[("http", 80, 8080)])
    }));
    objects
}

/// The names a request may use for a service, as keel's route table has them (less the `:port` forms, which
/// nginx's `server_name` does not take: it matches the host without its port).
fn server_names(name: &str, vip: Ipv4Addr) -> String {
    format!("{name} {name}.default {name}.default.svc {name}.default.svc.cluster.local {vip}")
}

/// nginx as the reverse proxy: one `server` block and one keep-alive `upstream` per Service (catalog's is the
/// server pod, the others' their VIP, never used), a default server answering 404 (keel's "no route"), and an
/// access log line per request (keel writes one too). Keep-alive without a request cap on both sides.
pub fn nginx_proxy_conf(dir: &Path, server: SocketAddr) -> String {
    let d = dir.display();
    let mut conf = [
        "daemon off;".to_owned(),
        "master_process on;".to_owned(),
        format!("worker_processes {NGINX_WORKERS};"),
        format!("pid {d}/nginx.pid;"),
        "error_log stderr warn;".to_owned(),
        "events { worker_connections 8192; }".to_owned(),
        "http {".to_owned(),
        format!("  access_log {d}/access.log;"),
        "  keepalive_requests 1000000;".to_owned(),
        "  keepalive_timeout 60s;".to_owned(),
        "  server_names_hash_max_size 16384;".to_owned(),
        "  server_names_hash_bucket_size 128;".to_owned(),
        format!("  client_body_temp_path {d}/body;"),
        format!("  proxy_temp_path {d}/proxy;"),
        format!("  fastcgi_temp_path {d}/fastcgi;"),
        format!("  uwsgi_temp_path {d}/uwsgi;"),
        format!("  scgi_temp_path {d}/scgi;"),
        "  proxy_http_version 1.1;".to_owned(),
        "  proxy_set_header Connection \"\";".to_owned(),
        "  proxy_set_header Host $host;".to_owned(),
        format!(
            "  server {{ listen 127.0.0.1:{NGINX_H1_PORT} default_server backlog=4096; \
             listen 127.0.0.1:{NGINX_H2_PORT} http2 default_server backlog=4096; return 404; }}"
        ),
    ]
    .join("\n")
        + "\n";
    let mut add = |name: &str, vip: Ipv4Addr, upstream: SocketAddr| {
        conf.push_str(&format!(
            "  upstream {name} {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
             \x20 server {{ listen 127.0.0.1:{NGINX_H1_PORT}; listen 127.0.0.1:{NGINX_H2_PORT} http2; server_name {}; location / {{ proxy_pass http://{name}; }} }}\n",
            server_names(name, vip)
        ));
    };
    add(L7_HOST, CATALOG_VIP, server);
    for i in 1..VIRTUAL_HOSTS {
        let (name, vip) = other_service(i);
        add(&name, vip, SocketAddr::V4(SocketAddrV4::new(vip, 80)));
    }
    conf.push_str("}\n");
    conf
}

/// nginx proxying in the client pod. Dropping it stops nginx (SIGTERM to the master, which stops its workers).
pub struct NginxProxy {
    master: ChildGuard,
    workers: Vec<u32>,
    access_log: PathBuf,
}

impl NginxProxy {
    pub fn start(lab: &Lab, client: &Pod, server: &Pod) -> Result<NginxProxy> {
        let dir = lab.dir().join("nginx-proxy");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_proxy_conf(&dir, server.addr(workloads::HTTP_PORT)))?;
        let mut master = client.spawn(&["nginx", "-c", conf.to_str().context("non-UTF-8 lab dir")?, "-e", "stderr"])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = master.try_wait() {
                bail!("nginx (the proxy) exited ({status}):\n{}", crate::lab::tail(&master.log(), 20));
            }
            let workers = measure::children_of(master.pid());
            if workers.len() == NGINX_WORKERS as usize && super::listening(client, &[NGINX_H1_PORT, NGINX_H2_PORT])? {
                return Ok(NginxProxy { master, workers, access_log: dir.join("access.log") });
            }
            if Instant::now() > deadline {
                bail!("nginx (the proxy) not up within 20 s (workers {workers:?}):\n{}", crate::lab::tail(&master.log(), 20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master and its workers: the processes whose CPU and memory are the proxy's.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.master.pid()).chain(self.workers.iter().copied()).collect()
    }

    /// Requests nginx has logged so far (one access-log line each).
    pub fn requests_logged(&self) -> Result<u64> {
        let log = std::fs::read(&self.access_log).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(Vec::new()) } else { Err(e) })?;
        Ok(log.iter().filter(|b| **b == b'\n').count() as u64)
    }
}

impl Drop for NginxProxy {
    fn drop(&mut self) {
        let _ = self.master.signal(libc::SIGTERM);
        if self.master.wait_timeout(Duration::from_secs(5)).is_none() {
            self.master.kill();
        }
    }
}

/// Where the client sends an arm's requests: to the server pod (HTTP/1.1 on 80, h2c on 81), to nginx in its own
/// pod, or to catalog's VIP, which keel captures (port 80; keel L4 relays h2c to port 81, see [`config_objects`]).
pub fn target(proxy: L7Proxy, http2: bool, server: &Pod) -> SocketAddr {
    let local = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    match (proxy, http2) {
        (L7Proxy::Direct, false) => server.addr(workloads::HTTP_PORT),
        (L7Proxy::Direct, true) => server.addr(workloads::H2C_PORT),
        (L7Proxy::Nginx, false) => local(NGINX_H1_PORT),
        (L7Proxy::Nginx, true) => local(NGINX_H2_PORT),
        (L7Proxy::Keel { http: false, .. }, true) => SocketAddr::V4(SocketAddrV4::new(CATALOG_VIP, workloads::H2C_PORT)),
        (L7Proxy::Keel { .. }, _) => SocketAddr::V4(SocketAddrV4::new(CATALOG_VIP, workloads::HTTP_PORT)),
    }
}

/// What keel's route configuration for port 80 holds, from `keel pc routes`: its virtual hosts (name, number of
/// domains, destination) in order.
#[derive(Debug, PartialEq)]
pub struct RouteRow {
    pub virtual_host: String,
    pub domains: usize,
    pub destination: String,
}

/// Rows of `keel pc routes` (ROUTE CONFIG, VIRTUAL HOST, DOMAINS, ROUTE, MATCH, DESTINATION) for route config `80`.
pub fn parse_routes(table: &str) -> Vec<RouteRow> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            if cells.first() != Some(&"80") || cells.len() < 4 {
                return None;
            }
            Some(RouteRow { virtual_host: cells[1].to_owned(), domains: cells[2].parse().ok()?, destination: cells[cells.len() - 1].to_owned() })
        })
        .collect()
}

/// keel must route port 80 with 1,000 virtual hosts, catalog's among them (to its cluster) exactly when the arm
/// is L7; for L4, the other 999 only. Returns a one-line description.
pub fn check_keel_routes(listeners: &str, routes: &str, http: bool) -> Result<String> {
    // Cells by the header's columns (the table is padded to them), so added columns do not shift what is read.
    let mut lines = listeners.lines();
    let header = lines.next().unwrap_or_default();
    let cell = |line: &'_ str, column: &str| -> Option<String> {
        let at = header.find(column)?;
        line.get(at..)?.split_whitespace().next().map(str::to_owned)
    };
    let listener = lines.any(|l| cell(l, "PORT").as_deref() == Some("80") && cell(l, "ROUTE CONFIG").as_deref() == Some("80"));
    if !listener {
        bail!("`keel pc listeners` has no listener on port 80 with route config 80:\n{listeners}");
    }
    let rows = parse_routes(routes);
    let mut hosts: Vec<&str> = rows.iter().map(|r| r.virtual_host.as_str()).collect();
    hosts.dedup();
    let catalog_host = format!("{L7_HOST}.default.svc.cluster.local:80");
    let catalog: Vec<&RouteRow> = rows.iter().filter(|r| r.virtual_host == catalog_host).collect();
    let want = if http { VIRTUAL_HOSTS } else { VIRTUAL_HOSTS - 1 };
    if hosts.len() != want {
        bail!("`keel pc routes` lists {} virtual hosts for port 80, want {want}", hosts.len());
    }
    match (http, catalog.as_slice()) {
        (true, [row]) if row.destination.contains(&format!("outbound|80||{L7_HOST}.default.svc.cluster.local")) && row.domains >= 5 => {
            Ok(format!("L7: {} virtual hosts on port 80, {catalog_host} with {} domains → {}", hosts.len(), row.domains, row.destination))
        }
        (false, []) => Ok(format!("L4: catalog's port is tcp; {} other virtual hosts on port 80", hosts.len())),
        _ => bail!("`keel pc routes`: catalog's virtual host is {catalog:?}, want {}", if http { "one route to its cluster" } else { "none (L4)" }),
    }
}

/// Sum of `istio_requests_total` series to `catalog` in keel's Prometheus text.
pub fn catalog_requests(metrics: &str) -> u64 {
    let label = format!("destination_service_name=\"{L7_HOST}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn keel_catalog_requests(keel: &Keel) -> Result<u64> {
    let (status, metrics) = keel.admin_get("/metrics")?;
    if status != 200 {
        bail!("keel's /metrics answered {status}");
    }
    Ok(catalog_requests(&metrics))
}

/// The proxy in front of the server in a running arm.
enum Front {
    None,
    Nginx(NginxProxy),
    Keel { keel: Box<Keel>, http: bool },
}

impl Front {
    fn pids(&self) -> Vec<u32> {
        match self {
            Front::None => Vec::new(),
            Front::Nginx(n) => n.pids(),
            Front::Keel { keel, .. } => vec![keel.pid()],
        }
    }

    /// The proxy's own count of requests to catalog so far (`None` without a proxy).
    fn counted(&self) -> Result<Option<u64>> {
        Ok(match self {
            Front::None => None,
            Front::Nginx(n) => Some(n.requests_logged()?),
            Front::Keel { keel, .. } => Some(keel_catalog_requests(keel)?),
        })
    }
}

/// 200 requests over HTTP/1.1 and 200 over h2c, through the arm, must all answer 200 (out of every sample: also
/// dials the proxy's upstream connections).
fn check_path(client: &Pod, proxy: L7Proxy, server: &Pod) -> Result<()> {
    for http2 in [false, true] {
        let connect = target(proxy, http2, server).to_string();
        let requests = CHECK_REQUESTS.to_string();
        let mut args = vec!["--url", "http://catalog/", "--connect", &connect, "--requests", &requests, "--concurrency", "4"];
        if http2 {
            args.push("--http2");
        }
        let v = client.http_load(&args)?;
        let ok = v.pointer("/statuses/200").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if ok != CHECK_REQUESTS as u64 {
            bail!(
                "{} requests for catalog via {connect} ({}): want {CHECK_REQUESTS} × 200, got {v}",
                CHECK_REQUESTS,
                if http2 { "h2c" } else { "HTTP/1.1" }
            );
        }
    }
    Ok(())
}

/// One L7 arm: a fresh one-node lab, the server, the arm's proxy, the checks, then every selected L7 workload.
pub(super) fn run_arm(options: &BenchOptions, arm: &Arm, rep: u32, order: u32) -> Result<Vec<Sample>> {
    let proxy = arm.l7.context("not an L7 arm")?;
    let lab = Lab::with_nodes_and_binaries(&format!("b{rep}{order}"), 1, options.binaries.clone())?;
    let client = lab.node(0).add_pod("client")?;
    let server = lab.node(0).add_pod("server")?;
    let _servers = super::start_servers(&lab, &server)?;
    let pods = Pods { client: &client, server: &server };
    let mut front = match proxy {
        L7Proxy::Direct => Front::None,
        L7Proxy::Nginx => Front::Nginx(NginxProxy::start(&lab, &client, &server)?),
        L7Proxy::Keel { http, server_in_mesh } => Front::Keel { keel: Box::new(start_keel(&lab, arm, pods, http, server_in_mesh)?), http },
    };
    let path = match &front {
        Front::Keel { keel, http } => {
            check_keel_routes(&keel.cli(&["pc", "listeners"])?, &keel.cli(&["pc", "routes"])?, *http).with_context(|| format!("arm {}", arm.name))?
        }
        Front::Nginx(_) => format!("nginx: {NGINX_WORKERS} workers, {VIRTUAL_HOSTS} server blocks"),
        Front::None => "no proxy".to_owned(),
    };
    check_path(&client, proxy, &server).with_context(|| format!("arm {}: the pre-measurement check", arm.name))?;
    let probes = Probes {
        keel_cgroups: if arm.keel.is_some() { vec![lab.node(0).keel_cgroup()] } else { Vec::new() },
        client_cgroup: client.cgroup_path.clone(),
        server_cgroup: server.cgroup_path.clone(),
        pod_netns: vec![client.netns_path.clone(), server.netns_path.clone()],
    };
    let mut samples = Vec::new();
    for workload in options.workloads.iter().filter(|w| w.l7()) {
        let mut sample = measured(options, arm, rep, order, workload, &probes, &front, pods, &lab)?;
        sample.keel_path = path.clone();
        samples.push(sample);
    }
    if let Front::Keel { keel, .. } = &mut front {
        super::stop_keels(std::slice::from_mut(keel), &lab)?;
    }
    Ok(samples)
}

fn start_keel(lab: &Lab, arm: &Arm, pods: Pods, http: bool, server_in_mesh: bool) -> Result<Keel> {
    let setup = arm.keel.context("a keel arm without keel")?;
    let (config_dir, ca_dir) = (lab.dir().join("mesh"), lab.dir().join("ca"));
    mesh_config::write(&config_dir, "mesh.yaml", &config_objects(pods.client, pods.server, http, server_in_mesh))?;
    std::fs::create_dir_all(&ca_dir)?;
    let mut args = setup.args();
    for (flag, dir) in [("--config-dir", &config_dir), ("--ca-dir", &ca_dir)] {
        args.extend([flag.to_owned(), dir.to_str().context("non-UTF-8 lab dir")?.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keel = lab.start_keel_on(0, setup.backend, &args)?;
    super::wait_ready(&keel)?;
    keel.enroll(pods.client)?;
    if server_in_mesh {
        keel.enroll(pods.server)?;
    }
    Ok(keel)
}

#[allow(clippy::too_many_arguments)]
fn measured(
    options: &BenchOptions,
    arm: &Arm,
    rep: u32,
    order: u32,
    workload: &Workload,
    probes: &Probes,
    front: &Front,
    pods: Pods,
    lab: &Lab,
) -> Result<Sample> {
    let http2 = matches!(workload.tool, workloads::Tool::L7 { http2: true, .. });
    let target = target(arm.l7.context("not an L7 arm")?, http2, pods.server);
    let pids = front.pids();
    let counted_before = front.counted()?;
    let before = probes.snapshot()?;
    let proxy_before = measure::processes_cpu_s(&pids)?;
    let mut sample =
        workloads::run_l7(workload, pods.client, target, lab.dir(), options.seconds).with_context(|| format!("workload {}", workload.name))?;
    let proxy_after = measure::processes_cpu_s(&pids)?;
    let after = probes.snapshot()?;
    let counted_after = front.counted()?;
    super::stamp(&mut sample, arm, workload, 1, (rep, order), measure::delta(&before, &after));
    sample.cpu.proxy_user_s = (proxy_after.0 - proxy_before.0).max(0.0);
    sample.cpu.proxy_s = sample.cpu.proxy_user_s + (proxy_after.1 - proxy_before.1).max(0.0);
    if matches!(front, Front::Nginx(_)) {
        // nginx runs in the client pod: its cgroup's CPU is the load generator's and the proxy's.
        sample.cpu.client_s = (sample.cpu.client_s - sample.cpu.proxy_s).max(0.0);
    }
    if let Front::Keel { keel, .. } = front {
        sample.keel_rss_kib = measure::peak_rss_kib(keel.pid());
        sample.keel_rss_by_node_kib = vec![sample.keel_rss_kib];
    }
    sample.proxy_rss_kib = pids.iter().map(|p| measure::peak_rss_kib(*p)).sum();
    sample.proxy_pss_kib = pids.iter().map(|p| measure::pss_kib(*p)).sum();
    sample.proxy_requests = counted_after.zip(counted_before).map(|(a, b)| a.saturating_sub(b));
    check_counted(arm, front, &sample)?;
    Ok(sample)
}

/// The proxy must have seen the client's requests as what the arm is named after: keel L7 and nginx counted
/// (nearly) all of them, keel L4 none.
fn check_counted(arm: &Arm, front: &Front, sample: &Sample) -> Result<()> {
    let Some(counted) = sample.proxy_requests else { return Ok(()) };
    let client = sample.requests;
    let expect_l7 = match front {
        Front::None => return Ok(()),
        Front::Nginx(_) => true,
        Front::Keel { http, .. } => *http,
    };
    let what = if matches!(front, Front::Nginx(_)) { "nginx's access log" } else { "keel's istio_requests_total for catalog" };
    if expect_l7 && (counted as f64) < client as f64 * COUNTED_SHARE {
        bail!("arm {} / {}: {what} grew by {counted}, the client completed {client} requests", arm.name, sample.workload);
    }
    if !expect_l7 && counted != 0 {
        bail!("arm {} / {}: keel L4 counted {counted} HTTP requests to catalog: the path is not L4", arm.name, sample.workload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_services_fill_their_range() {
        assert_eq!(other_service(1), ("svc-0001".to_owned(), Ipv4Addr::new(10, 96, 4, 1)));
        assert_eq!(other_service(999), ("svc-0999".to_owned(), Ipv4Addr::new(10, 96, 7, 231)));
        let catalog = service_object("catalog", CATALOG_VIP, "bench-server", &[("http", 80, 80), ("tcp-h2c", 81, 81)]);
        assert!(
            catalog.ends_with("  ports:\n  - {name: http, port: 80, targetPort: 80}\n  - {name: tcp-h2c, port: 81, targetPort: 81}\n"),
            "{catalog}"
        );
    }

    #[test]
    fn nginx_has_a_server_and_an_upstream_per_service() {
        let conf = nginx_proxy_conf(Path::new("/tmp/x"), "10.244.0.11:80".parse().unwrap());
        assert_eq!(conf.matches("server_name ").count(), VIRTUAL_HOSTS);
        assert_eq!(conf.matches("  upstream ").count(), VIRTUAL_HOSTS);
        assert!(conf.contains("upstream catalog { server 10.244.0.11:80; keepalive 64; keepalive_requests 1000000; }"));
        assert!(conf.contains("server_name catalog catalog.default catalog.default.svc catalog.default.svc.cluster.local 10.96.0.10;"));
        assert!(conf.contains("upstream svc-0999 { server 10.96.7.231:80;"));
        assert!(conf.contains("worker_processes 2;") && conf.contains("access_log /tmp/x/access.log;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    const ROUTES: &str = "\
ROUTE CONFIG  VIRTUAL HOST                               DOMAINS  ROUTE    MATCH  DESTINATION
80            catalog.default.svc.cluster.local:80       10       default  /      outbound|80||catalog.default.svc.cluster.local
80            svc-0001.default.svc.cluster.local:80      10       default  /      outbound|80||svc-0001.default.svc.cluster.local
9090          grpc.default.svc.cluster.local:9090        10       default  /      outbound|9090||grpc.default.svc.cluster.local
";
    /// What `keel pc listeners` prints for the mesh's port 80.
    const LISTENERS: &str = "NAME        PORT  SNI  TLS  ROUTE CONFIG  FAULT FILTER\n0.0.0.0_80  80    -    -    80            yes\n";

    #[test]
    fn reads_keel_routes() {
        let rows = parse_routes(ROUTES);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            RouteRow {
                virtual_host: "catalog.default.svc.cluster.local:80".into(),
                domains: 10,
                destination: "outbound|80||catalog.default.svc.cluster.local".into()
            }
        );
        // Two virtual hosts, not 1,000: refused either way.
        assert!(check_keel_routes(LISTENERS, ROUTES, true).unwrap_err().to_string().contains("lists 2 virtual hosts"));
        let mut full = ROUTES.lines().take(2).map(|l| format!("{l}\n")).collect::<String>();
        for i in 1..VIRTUAL_HOSTS {
            let (name, _) = other_service(i);
            full.push_str(&format!("80  {name}.default.svc.cluster.local:80  10  default  /  outbound|80||{name}.default.svc.cluster.local\n"));
        }
        assert!(check_keel_routes(LISTENERS, &full, true).unwrap().starts_with("L7: 1000 virtual hosts on port 80"));
        // The same table is not L4 (catalog is routed), and without catalog it is not L7.
        assert!(check_keel_routes(LISTENERS, &full, false).is_err());
        let without: String = full.lines().filter(|l| !l.contains("catalog")).map(|l| format!("{l}\n")).collect();
        assert!(check_keel_routes(LISTENERS, &without, false).unwrap().starts_with("L4:"));
        assert!(check_keel_routes(LISTENERS, &without, true).is_err());
        assert!(check_keel_routes("NAME PORT ROUTE CONFIG\n", &full, true).is_err());
    }

    #[test]
    fn counts_catalog_requests_in_metrics() {
        let metrics = "# TYPE istio_requests counter\n\
            istio_requests_total{reporter=\"source\",destination_service_name=\"catalog\",response_code=\"200\"} 1500\n\
            istio_requests_total{reporter=\"source\",destination_service_name=\"catalog\",response_code=\"503\"} 2\n\
            istio_requests_total{reporter=\"source\",destination_service_name=\"svc-0001\",response_code=\"200\"} 7\n\
            istio_request_duration_milliseconds_count{destination_service_name=\"catalog\"} 1502\n";
        assert_eq!(catalog_requests(metrics), 1502);
        assert_eq!(catalog_requests(""), 0);
    }
}
