//! The `keel` command line: `keel run` is the daemon; the other subcommands are clients of its local API.
use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

use crate::{
    api::{self, Request},
    config::{cgroup2_mount, CaptureMode, Config, Exclusions},
    config_dump::ConfigDump,
    pods::{EnrollRequest, PodName},
    proxy_config::{Filters, Output, View},
    xds::{local::LocalSettings, setup::WorkloadSource},
};

#[derive(Parser, Debug)]
#[command(name = "keel", version, about = "keel: eBPF-accelerated ambient service-mesh node proxy")]
pub struct Cli {
    /// keel's local API socket.
    #[arg(long, global = true, env = "KEEL_API_SOCKET", default_value = "/run/keel/keel.sock")]
    pub api_socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon.
    Run(Box<RunArgs>),
    /// Run as an ingress gateway in this pod: serve the listeners of the Gateways that select it (keel-control
    /// sends them to a gateway token), reaching mesh pods over HBONE.
    Gateway(Box<GatewayArgs>),
    /// Enroll a pod: capture its traffic from now on.
    Enroll(EnrollArgs),
    /// Stop capturing a pod.
    Unenroll(PodArgs),
    /// List enrolled pods.
    Pods,
    /// Connection counters and eBPF program counters.
    Stats,
    /// The last closed connections keel proxied.
    Connections,
    /// Workloads, services and policies from the control plane, and the xDS connection's state.
    ConfigDump,
    /// What keel holds (workloads, services, policies, certificates, listeners, routes, clusters, endpoints,
    /// secrets, the workload source's status, or all of it), as tables, JSON or YAML.
    #[command(name = "pc", visible_alias = "proxy-config")]
    ProxyConfig {
        #[arg(value_enum)]
        view: View,
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        filters: Filters,
        /// Read the config dump from this admin address (a remote keel's or `keel gateway`'s, e.g.
        /// 127.0.0.1:15000) instead of the node daemon's API socket.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// What keel would do right now with a connection (or an HTTP request) from an enrolled pod, and why: capture,
    /// the service and endpoints, the path, the route, the policies with the one that decides, the identities.
    /// Nothing is sent.
    Explain(ExplainArgs),
    /// Turn the same-node sockmap fast path on or off.
    FastPath {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Remove keel from this node: the running keel releases every pod (they talk directly from then on), drains,
    /// detaches and unpins its programs, forgets its persisted pods and config, and exits. (SIGTERM, by contrast,
    /// leaves the pods captured: refused until the next keel starts.)
    Uninstall,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The source pod: `namespace/name` or its IP.
    #[arg(long)]
    pub from: String,
    /// Where it connects: `host:port` (an IP, a service name as the pod would write it, or a ServiceEntry host).
    #[arg(long)]
    pub to: String,
    /// An HTTP request on the connection: `'GET /path'`.
    #[arg(long)]
    pub http: Option<String>,
    /// A request header, `name:value` (repeatable; with --http).
    #[arg(short = 'H', long = "header", requires = "http")]
    pub headers: Vec<String>,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "ebpf")]
    pub capture: CaptureMode,
    /// cgroup v2 directory to attach the connect/sock_ops hooks to (default: the cgroup v2 mount's root).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// keel's directory on bpffs for pinned maps.
    #[arg(long, default_value = "/sys/fs/bpf/keel")]
    pub bpffs: PathBuf,
    /// Where keel persists enrolled pods.
    #[arg(long, default_value = "/run/keel")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: std::net::SocketAddr,
    /// Destination CIDR an enrolled pod reaches without keel (repeatable).
    #[arg(long = "exclude-outbound-cidr")]
    pub exclude_outbound_cidrs: Vec<Ipv4Net>,
    /// Destination port an enrolled pod reaches without keel (repeatable).
    #[arg(long = "exclude-outbound-port")]
    pub exclude_outbound_ports: Vec<u16>,
    /// Pod port inbound traffic reaches without keel (repeatable; default: 15020 and 15021).
    #[arg(long = "exclude-inbound-port", default_values_t = [15020u16, 15021])]
    pub exclude_inbound_ports: Vec<u16>,
    /// Same-node sockmap fast path (eBPF only); switchable at run time with `keel fast-path`.
    #[arg(long, value_enum, default_value = "on")]
    pub fast_path: OnOff,
    /// Same-node bypass (eBPF only, with a workload source): once keel's policy allowed a (source pod, destination
    /// pod, port) on plain L4, later connections of it go pod to pod in the kernel, keel accounting for them.
    /// `keel fast-path off` stops it at run time.
    #[arg(long, value_enum, default_value = "off")]
    pub same_node_bypass: OnOff,
    /// Istio's `meshConfig.outboundTrafficPolicy.mode`: `registry-only` refuses (and counts) connections from
    /// enrolled pods to addresses that are no service, workload or ServiceEntry host.
    #[arg(long, value_enum, default_value = "allow-any")]
    pub outbound_traffic_policy: crate::plan::OutboundTrafficPolicy,
    /// The DNS server (`ip:port`) ServiceEntry hosts with resolution DNS are resolved with; default: the system's.
    #[arg(long)]
    pub dns_server: Option<std::net::SocketAddr>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Connect timeout towards original destinations, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// How long SIGTERM waits for connections to finish, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub drain_timeout_ms: u64,
    /// Take over from the keel running on this node, if one is: its listening sockets, pods and admin ports pass
    /// to this keel without a connection refused, and the old keel serves what it carries to its end (at most
    /// --drain-max-ms) before it exits. Without a running keel, start as usual.
    #[arg(long)]
    pub takeover: bool,
    /// After handing over to a successor, how long this keel goes on serving its connections, in milliseconds
    /// (Envoy's hot restart drains for the same purpose).
    #[arg(long, default_value_t = 3_600_000)]
    pub drain_max_ms: u64,
    /// The handover protocol version to speak (tests of version mismatch only).
    #[arg(long, hide = true, default_value_t = crate::handover::VERSION)]
    pub handover_version: u32,
    /// Wait this long between receiving the running keel's sockets and serving them (tests of a successor that
    /// dies mid-handover only).
    #[arg(long, hide = true, default_value_t = 0)]
    pub handover_pause_ms: u64,
    /// Async worker threads for the data path.
    #[arg(long, env = "KEEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Benchmark mode: answer every captured outbound HTTP request with 200 in keel, never relaying (isolates
    /// the cost of capture from the cost of relaying). Not for real traffic.
    #[arg(long)]
    pub responder: bool,
    /// Follow a control plane over delta ADS (e.g. https://keel-control:15012). Without it (and without
    /// --config-dir) keel captures and proxies with no workload state.
    #[arg(long, conflicts_with = "config_dir")]
    pub xds_address: Option<String>,
    /// Local mode: read workloads, services and policies from this directory of Kubernetes-style YAML (what
    /// keel-control reads), in-process, with no control plane.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Local mode's certificate authority: istiod's plugged-in layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem), generated there when empty (default: <state-dir>/ca). Nodes of one mesh share it.
    #[arg(long, requires = "config_dir")]
    pub ca_dir: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Validity keel asks for its workload certificates, in seconds (renewed at half-life).
    #[arg(long, default_value_t = 86_400)]
    pub certificate_validity_secs: u64,
    /// Run with no workload source (no --xds-address, no --config-dir): keel captures and relays bytes with no
    /// identities, no mTLS and no policy. For benchmarks and capture tests only; without this flag keel refuses
    /// to start without a workload source rather than carry a mesh's traffic unauthenticated.
    #[arg(long, conflicts_with_all = ["xds_address", "config_dir"])]
    pub capture_only: bool,
    /// While keel is down (crashed, restarting), let enrolled pods' connections flow directly, in plaintext and
    /// without policy, instead of refusing them (the default: capture is pinned and outlives keel).
    #[arg(long)]
    pub fail_open: bool,
    /// A relayed connection with no byte in either direction for this long is closed.
    #[arg(long, default_value_t = 3600)]
    pub idle_timeout_secs: u64,
    /// Once one direction of a relayed connection has ended, the other may be silent this long.
    #[arg(long, default_value_t = 300)]
    pub half_closed_timeout_secs: u64,
    /// Share keel's worker time between pods by weight: a relay yields after each slice of bytes, so one pod's
    /// bulk transfer cannot hold a worker while another pod's connections wait (`off`: relays run as the
    /// runtime schedules them; per-pod bandwidth budgets hold either way).
    #[arg(long, default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub fair_share: bool,
    /// Captured connections one pod may have open through keel at once; beyond it new ones are reset.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections_per_pod: usize,
    /// HBONE connections one pod's 15008 accepts at once.
    #[arg(long, default_value_t = 1_024)]
    pub max_hbone_connections_per_pod: usize,
    /// HBONE connections the node accepts at once, all pods together.
    #[arg(long, default_value_t = 16_384)]
    pub max_hbone_connections: usize,
    /// HBONE handshakes one source address may have in progress at once (unauthenticated peers hold only these).
    #[arg(long, default_value_t = 32)]
    pub max_hbone_handshakes_per_source: usize,
    /// Time an HBONE client has for the mTLS handshake and the HTTP/2 preface, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub hbone_handshake_timeout_ms: u64,
    /// An HBONE connection with no stream for this long is closed with a GOAWAY.
    #[arg(long, default_value_t = 600)]
    pub hbone_idle_timeout_secs: u64,
    /// An HTTP/1.1 client of the L7 engine must send each request head within this time (slowloris bound).
    #[arg(long, default_value_t = 30_000)]
    pub http_header_read_timeout_ms: u64,
    /// An HTTP connection to the L7 engine that starts no request for this long is closed gracefully (HTTP/2
    /// GOAWAY; requests in flight finish), as Envoy's `idle_timeout` (default 1 hour).
    #[arg(long, default_value_t = 3600)]
    pub http_idle_timeout_secs: u64,
    /// Leave open connections alone when a policy change would deny them (by default keel closes them).
    #[arg(long)]
    pub keep_denied_connections: bool,
    /// PEM root the control plane's certificate chains to (its CA's root-cert.pem).
    #[arg(long, requires = "xds_address")]
    pub xds_root: Option<PathBuf>,
    /// File holding the bearer token keel presents to the control plane.
    #[arg(long, requires = "xds_address")]
    pub xds_token_file: Option<PathBuf>,
    /// Allow a plaintext `http://` --xds-address (the token, the config and the CSRs then cross unencrypted).
    #[arg(long, requires = "xds_address")]
    pub insecure_control_plane: bool,
    /// The name the control plane's certificate must carry.
    #[arg(long, default_value = "keel-control")]
    pub xds_server_name: String,
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// keel's own pod, namespace, IP and node, as the control plane identifies node proxies (Downward API env).
    #[arg(long, env = "POD_NAME", default_value = "keel")]
    pub pod_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub pod_namespace: String,
    #[arg(long, env = "INSTANCE_IP", default_value = "127.0.0.1")]
    pub instance_ip: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Namespace whose pods a CNI ADD (keel-cni) leaves alone (repeatable). Without --kubernetes every other pod a
    /// CNI ADD names is captured; with it, Istio's ambient labels decide.
    #[arg(long = "cni-exclude-namespace", default_values_t = ["kube-system".to_owned(), "istio-system".to_owned()])]
    pub cni_excluded_namespaces: Vec<String>,
    /// Node agent: follow the Kubernetes API for the pods of --node-name and capture exactly the ambient ones
    /// (namespace or pod label istio.io/dataplane-mode=ambient, not opted out), marking them
    /// ambient.istio.io/redirection=enabled.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: the API server of this kubeconfig, instead of the cluster keel runs in.
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve only `/healthz/ready` here too (the kubelet's probe on the pod's address; the admin server stays
    /// on --admin-addr).
    #[arg(long)]
    pub readiness_addr: Option<std::net::SocketAddr>,
    /// Serve only the Prometheus metrics (`/metrics`, `/stats/prometheus`) here too: the pod's address for
    /// Prometheus, as Istio's 15020 (the stats and config dump stay on --admin-addr).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

/// Trace export (both `keel run` and `keel gateway`).
#[derive(Args, Debug, Clone)]
pub struct TracingArgs {
    /// Export the L7 engine's spans over OTLP to this collector: `http://host:4317` (gRPC) or
    /// `http://host:4318/v1/traces` (with --tracing-otlp-protocol http-protobuf). Unset: no spans (trace headers are
    /// still continued).
    #[arg(long)]
    pub tracing_otlp_endpoint: Option<String>,
    #[arg(long, value_enum, default_value = "grpc")]
    pub tracing_otlp_protocol: crate::telemetry::traces::OtlpProtocol,
    /// Percentage of new traces sampled (Istio's `meshConfig.defaultConfig.tracing.sampling`, default 1); a request
    /// that arrives with a sampling decision keeps it.
    #[arg(long, default_value_t = 1.0)]
    pub tracing_sampling: f64,
    /// Finished spans waiting for export, at most (more are dropped while the collector is slow or down).
    #[arg(long, default_value_t = 2048)]
    pub tracing_max_queued_spans: usize,
    /// Also export a span per closed L4 connection (each its own trace, sampled at --tracing-sampling).
    #[arg(long)]
    pub tracing_l4_connections: bool,
}

impl TracingArgs {
    /// The settings, when an endpoint is given; `service` names the exporting process.
    pub fn settings(&self, service: &str) -> anyhow::Result<Option<crate::telemetry::traces::TraceSettings>> {
        let Some(endpoint) = self.tracing_otlp_endpoint.clone() else { return Ok(None) };
        if !(0.0..=100.0).contains(&self.tracing_sampling) {
            anyhow::bail!("--tracing-sampling {}: a percentage from 0 to 100", self.tracing_sampling);
        }
        Ok(Some(crate::telemetry::traces::TraceSettings {
            endpoint,
            protocol: self.tracing_otlp_protocol,
            sampling_percent: self.tracing_sampling,
            max_queued_spans: self.tracing_max_queued_spans,
            service_name: service.to_owned(),
            l4_connections: self.tracing_l4_connections,
        }))
    }
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The pod's network namespace file (keel finds it from the pod's processes when only --uid is given).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The pod's cgroup v2 directory.
    #[arg(long, required_unless_present = "uid")]
    pub cgroup: Option<PathBuf>,
    /// The pod's Kubernetes UID: keel finds its cgroup (kubelet's systemd or cgroupfs layout) and, without
    /// --netns, its network namespace.
    #[arg(long)]
    pub uid: Option<String>,
    /// The pod's IP (repeatable).
    #[arg(long = "ip", required = true)]
    pub ips: Vec<IpAddr>,
    /// Captured connections the pod may have open at once (its `keel.dev/max-connections` annotation).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// New captured connections per second (its `keel.dev/connections-per-second` annotation).
    #[arg(long)]
    pub connections_per_second: Option<u32>,
    /// Bytes per second keel relays for the pod, both directions together (its `keel.dev/bytes-per-second`).
    #[arg(long)]
    pub bytes_per_second: Option<u64>,
    /// The pod's weight in keel's worker time (its `keel.dev/weight`; default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
}

#[derive(Args, Debug)]
pub struct PodArgs {
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub name: String,
}

pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run_daemon(cli.api_socket, *args),
        Command::Gateway(args) => run_gateway(*args),
        Command::Enroll(a) => client(
            &cli.api_socket,
            Request::Enroll(EnrollRequest {
                namespace: a.namespace,
                name: a.name,
                service_account: a.service_account,
                netns: a.netns,
                cgroup: a.cgroup,
                uid: a.uid,
                ips: a.ips,
                budgets: crate::pods::PodBudgets {
                    max_connections: a.max_connections,
                    connections_per_second: a.connections_per_second,
                    bytes_per_second: a.bytes_per_second,
                    weight: a.weight,
                },
            }),
        ),
        Command::Unenroll(a) => client(&cli.api_socket, Request::Unenroll(PodName { namespace: a.namespace, name: a.name })),
        Command::Pods => client(&cli.api_socket, Request::Pods),
        Command::Stats => client(&cli.api_socket, Request::Stats),
        Command::Connections => client(&cli.api_socket, Request::Connections),
        Command::ConfigDump => client(&cli.api_socket, Request::ConfigDump),
        Command::ProxyConfig { view, output, filters, admin } => proxy_config(&cli.api_socket, admin, view, output, &filters),
        Command::Explain(args) => explain(&cli.api_socket, args),
        Command::FastPath { state } => client(&cli.api_socket, Request::FastPath(matches!(state, OnOff::On))),
        Command::Uninstall => client(&cli.api_socket, Request::Uninstall),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(socket: &std::path::Path, request: Request) -> anyhow::Result<()> {
    let answer = api::call(socket, &request)?;
    if !answer.is_null() {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}

fn proxy_config(socket: &std::path::Path, admin: Option<std::net::SocketAddr>, view: View, output: Output, filters: &Filters) -> anyhow::Result<()> {
    let dump: ConfigDump = match admin {
        Some(addr) => serde_json::from_slice(&admin_get(addr, "/config_dump")?)?,
        None => serde_json::from_value(api::call(socket, &Request::ConfigDump)?)?,
    };
    print!("{}", crate::proxy_config::render(view, output, filters, dump)?);
    Ok(())
}

fn explain(socket: &std::path::Path, args: ExplainArgs) -> anyhow::Result<()> {
    use crate::explain::{ExplainError, ExplainQuery, Explanation, HttpQuery};
    let http = match &args.http {
        None => None,
        Some(line) => {
            let (method, path) = crate::explain::split_request_line(line)?;
            let headers = args
                .headers
                .iter()
                .map(|h| h.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).ok_or_else(|| ExplainError::BadHeader(h.clone())))
                .collect::<Result<_, _>>()?;
            Some(HttpQuery { method, path, headers })
        }
    };
    let answer = api::call(socket, &Request::Explain(ExplainQuery { from: args.from, to: args.to, http }))?;
    match args.output {
        Output::Table => print!("{}", crate::explain::render::text(&serde_json::from_value::<Explanation>(answer)?)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(&answer)?),
    }
    Ok(())
}

/// GET `path` from an admin server (HTTP/1.0: the response ends with the connection), bounded in time and size.
fn admin_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(64 << 20).read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{addr}{path}: not an HTTP response"))?;
    let status = String::from_utf8_lossy(&response[..split]).lines().next().unwrap_or_default().to_owned();
    if !status.contains(" 200 ") {
        anyhow::bail!("{addr}{path}: {status}");
    }
    Ok(response[split + 4..].to_vec())
}

/// `keel gateway`'s flags: the control plane and the pod it runs in.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// keel-control (e.g. https://keel-control.istio-system:15012).
    #[arg(long)]
    pub xds_address: String,
    /// PEM root the control plane's certificate chains to.
    #[arg(long)]
    pub xds_root: PathBuf,
    /// File holding the gateway's bearer token (a tokens-file line `<token> <node> gateway=<namespace>/<pod>`).
    #[arg(long)]
    pub xds_token_file: PathBuf,
    #[arg(long, default_value = "keel-control")]
    pub xds_server_name: String,
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The gateway's pod, namespace, IP and node (Downward API env).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: String,
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: std::net::Ipv4Addr,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Where the last good config is kept across restarts.
    #[arg(long, default_value = "/var/lib/keel-gateway")]
    pub state_dir: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    pub drain_timeout_ms: u64,
    #[arg(long, default_value_t = 86_400)]
    pub certificate_validity_secs: u64,
    #[arg(long, default_value_t = 30_000)]
    pub http_header_read_timeout_ms: u64,
    #[arg(long, default_value_t = 3600)]
    pub http_idle_timeout_secs: u64,
    #[arg(long, env = "KEEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// The admin server: stats, Prometheus metrics, the config dump (`keel pc --admin <addr> listeners`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: std::net::SocketAddr,
    /// Serve only `/healthz/ready` here too (the pod's address, for the kubelet's readiness probe).
    #[arg(long)]
    pub readiness_addr: Option<std::net::SocketAddr>,
    /// Serve only the Prometheus metrics here too (the pod's address, for Prometheus).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let access_log = crate::logging::init(args.log_format);
    let limits = crate::limits::Limits {
        http_header_read_timeout: Duration::from_millis(args.http_header_read_timeout_ms.max(1)),
        http_idle_timeout: Duration::from_secs(args.http_idle_timeout_secs.max(1)),
        ..Default::default()
    };
    let settings = crate::gateway::GatewaySettings {
        source: WorkloadSource::ControlPlane(crate::xds::setup::XdsSettings {
            address: args.xds_address,
            root_pem: args.xds_root,
            token_file: args.xds_token_file,
            server_name: args.xds_server_name,
            cluster_id: args.cluster_id,
            pod_name: args.pod_name.clone(),
            pod_namespace: args.pod_namespace.clone(),
            instance_ip: args.instance_ip.to_string(),
            node_name: args.node_name,
            insecure: false,
        }),
        pod_name: format!("{}/{}", args.pod_namespace, args.pod_name),
        pod_ip: args.instance_ip,
        state_dir: args.state_dir,
        limits,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        certificate_validity: Duration::from_secs(args.certificate_validity_secs.max(1)),
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        admin_addr: args.admin_addr,
        readiness_addr: args.readiness_addr,
        metrics_addr: args.metrics_addr,
        tracing: args.tracing.settings(&format!("keel-gateway.{}", args.pod_namespace))?,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.worker_threads.max(1)).thread_name("keel-worker").enable_all().build()?;
    let result = runtime.block_on(crate::gateway::run(settings));
    access_log.flush();
    result
}

fn run_daemon(api_socket: PathBuf, args: RunArgs) -> anyhow::Result<()> {
    let access_log = crate::logging::init(args.log_format);
    let cgroup_root = match args.cgroup {
        Some(path) => path,
        None => cgroup2_mount()?,
    };
    if args.xds_address.is_none() && args.config_dir.is_none() && !args.capture_only {
        anyhow::bail!(
            "no workload source: give --xds-address (a control plane) or --config-dir (local mode); \
             --capture-only runs keel without identities, mTLS or policy (benchmarks and tests only)"
        );
    }
    let limits = crate::limits::Limits {
        relay: crate::limits::RelayTimeouts {
            idle: Duration::from_secs(args.idle_timeout_secs.max(1)),
            half_closed: Duration::from_secs(args.half_closed_timeout_secs.max(1)),
        },
        connections_per_pod: args.max_connections_per_pod.max(1),
        hbone: crate::limits::HboneServerLimits {
            handshake_timeout: Duration::from_millis(args.hbone_handshake_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(args.hbone_idle_timeout_secs.max(1)),
            connections_per_pod: args.max_hbone_connections_per_pod.max(1),
            connections_per_node: args.max_hbone_connections.max(1),
            handshakes_per_source: args.max_hbone_handshakes_per_source.max(1),
        },
        http_header_read_timeout: Duration::from_millis(args.http_header_read_timeout_ms.max(1)),
        http_idle_timeout: Duration::from_secs(args.http_idle_timeout_secs.max(1)),
        fair_share: args.fair_share,
    };
    let config = Config {
        limits,
        cni_excluded_namespaces: args.cni_excluded_namespaces,
        kubernetes: args
            .kubernetes
            .then(|| crate::config::KubernetesSettings { kubeconfig: args.kubeconfig.clone(), node_name: args.node_name.clone() }),
        readiness_addr: args.readiness_addr,
        metrics_addr: args.metrics_addr,
        tracing: args.tracing.settings("keel")?,
        fail_open: args.fail_open,
        capture: args.capture,
        cgroup_root,
        bpffs_dir: args.bpffs,
        state_dir: args.state_dir.clone(),
        api_socket,
        admin_addr: args.admin_addr,
        exclusions: Exclusions {
            outbound_cidrs: args.exclude_outbound_cidrs,
            outbound_ports: args.exclude_outbound_ports,
            inbound_ports: args.exclude_inbound_ports,
        },
        outbound_policy: args.outbound_traffic_policy,
        dns_server: args.dns_server,
        fast_path: matches!(args.fast_path, OnOff::On) && args.capture == CaptureMode::Ebpf,
        same_node_bypass: matches!(args.same_node_bypass, OnOff::On) && args.capture == CaptureMode::Ebpf,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        takeover: args
            .takeover
            .then_some(crate::config::Takeover { version: args.handover_version, pause: Duration::from_millis(args.handover_pause_ms) }),
        drain_max: Duration::from_millis(args.drain_max_ms),
        responder: args.responder,
        certificate_validity: Duration::from_secs(args.certificate_validity_secs.max(1)),
        close_denied_connections: !args.keep_denied_connections,
        workload_source: match (args.xds_address, args.config_dir) {
            (None, None) => None,
            (None, Some(config_dir)) => Some(WorkloadSource::LocalDir(LocalSettings {
                config_dir,
                cluster_id: args.cluster_id,
                ca_dir: args.ca_dir.clone().unwrap_or_else(|| args.state_dir.join("ca")),
                trust_domain: args.trust_domain.clone(),
            })),
            (Some(address), _) => Some(WorkloadSource::ControlPlane(crate::xds::setup::XdsSettings {
                address,
                root_pem: args.xds_root.ok_or_else(|| anyhow::anyhow!("--xds-address needs --xds-root"))?,
                token_file: args.xds_token_file.ok_or_else(|| anyhow::anyhow!("--xds-address needs --xds-token-file"))?,
                server_name: args.xds_server_name,
                cluster_id: args.cluster_id,
                pod_name: args.pod_name,
                pod_namespace: args.pod_namespace,
                instance_ip: args.instance_ip,
                node_name: args.node_name,
                insecure: args.insecure_control_plane,
            })),
        },
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.worker_threads.max(1)).thread_name("keel-worker").enable_all().build()?;
    let result = runtime.block_on(crate::app::run(config));
    access_log.flush();
    result
}
