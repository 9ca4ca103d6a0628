//! `keel gateway`: the same binary as an ingress gateway, run in its own pod (a Deployment, not the DaemonSet).
//! It captures nothing and enrolls no pod: it follows keel-control with a gateway token, which gets its pod's own
//! view of the config (the listeners and routes of the Gateways selecting the pod, see keel-control's
//! `snapshot::View`), listens on each listener's port in its own network namespace, and serves the requests with
//! the L7 engine that routes mesh traffic (routes, retries, timeouts, faults, mirrors, balancing, circuit
//! breaking, outlier detection, Istio metrics). Upstream it reaches mesh pods over HBONE with its own workload
//! identity (its pod's, the only one keel-control issues to a gateway token).
//!
//! Listeners follow the config: a port appears, it is bound; it goes, its listener stops accepting (connections
//! on it finish). A port that cannot be bound is logged and retried on the next config change.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{debug, info, warn};

mod client_hello;
mod file_secrets;
mod tcp_proxy;
mod tls_termination;

use client_hello::Opening;

use crate::{
    accept::{accept_loop, Budgets},
    bypass::Bypass,
    capture::Capture,
    config_dump::ConfigDump,
    data_path::{DataPath, PodContext},
    dial::Dialer,
    hbone::client::HboneClient,
    identity::CertificateManager,
    l7::{request::Downstream, server::serve_connection},
    l7_config::filter_chain::{ChainFilter, TcpProxyConfig},
    limits::{Limits, PerSourceSlots, Slots},
    netns::Netns,
    policy::open_connections::OpenConnections,
    telemetry::{Refusal, Telemetry},
    xds::setup::WorkloadSource,
};

pub struct GatewaySettings {
    /// keel-control, with the gateway's token (a tokens-file line `... gateway=<namespace>/<pod>`).
    pub source: WorkloadSource,
    /// The gateway's pod: `<namespace>/<name>` and its address (the source of its upstream connections).
    pub pod_name: String,
    pub pod_ip: Ipv4Addr,
    pub state_dir: std::path::PathBuf,
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub certificate_validity: Duration,
    pub drain_timeout: Duration,
    /// The admin server (stats, metrics, config dump for `keel pc --admin`), on loopback by default.
    pub admin_addr: SocketAddr,
    /// Only `/healthz/ready`, on the pod's address for the kubelet's probe.
    pub readiness_addr: Option<SocketAddr>,
    /// Only the Prometheus metrics, on the pod's address (Istio's 15020).
    pub metrics_addr: Option<SocketAddr>,
    /// Span export, if any.
    pub tracing: Option<crate::telemetry::traces::TraceSettings>,
}

/// What the gateway's admin server shows.
struct GatewayAdmin {
    dp: Arc<DataPath>,
    xds: crate::xds::setup::Xds,
}

impl crate::admin::Admin for GatewayAdmin {
    fn is_ready(&self) -> bool {
        *self.xds.ready.borrow()
    }

    fn stats_json(&self) -> String {
        let stats = serde_json::json!({
            "connections": self.dp.telemetry.connection_stats(),
            "refused": self.dp.telemetry.refusals(),
        });
        serde_json::to_string_pretty(&stats).expect("stats serialize")
    }

    async fn metrics(&self) -> String {
        let health = crate::health_metrics::Health {
            xds: Some(self.xds.status.borrow().clone()),
            certificates: self.dp.dialer.certificates.as_ref().map(|c| c.expiries()).unwrap_or_default(),
            hbone_pool: self.dp.dialer.hbone.stats(),
            process: crate::health_metrics::process_stats(),
            ..Default::default()
        };
        self.dp.telemetry.encode_metrics(&health.registry())
    }

    async fn config_dump(&self) -> ConfigDump {
        let certificates = self.dp.dialer.certificates.as_ref().map(|c| c.snapshot()).unwrap_or_default();
        ConfigDump::build(&self.dp.workloads.snapshot(), &Default::default(), certificates, Some(self.xds.status.borrow().clone()))
    }
}

pub async fn run(settings: GatewaySettings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir).with_context(|| format!("creating {}", settings.state_dir.display()))?;
    let xds = settings.source.start(&settings.state_dir)?;
    let certificates = CertificateManager::new(settings.source.certificate_provider()?, settings.certificate_validity);
    let limits = settings.limits;
    let data_path = Arc::new(DataPath {
        capture: Capture::none(),
        bypass: Bypass::default(),
        telemetry: Telemetry::new().with_traces(settings.tracing.as_ref().map(crate::telemetry::traces::Traces::start).transpose()?),
        workloads: xds.store.clone(),
        dialer: Dialer {
            hbone: HboneClient::new(),
            certificates: Some(certificates),
            node_pods: Default::default(),
            local_peers: Arc::default(),
            cluster_id: settings.source.cluster_id().to_owned(),
            connect_timeout: settings.connect_timeout,
        },
        upstreams: Default::default(),
        open_connections: OpenConnections::new(false),
        limits,
        hbone_node_slots: Slots::new(limits.hbone.connections_per_node, Refusal::NodeHboneLimit),
        hbone_handshakes: PerSourceSlots::new(limits.hbone.handshakes_per_source),
        mesh: true,
        responder: false,
        // What a gateway reaches is what its routes name: the policy is a node proxy's.
        outbound_policy: Default::default(),
        dns: Arc::new(crate::dns::DnsResolver::new(None)),
        mover: Default::default(),
    });
    let admin = Arc::new(GatewayAdmin { dp: data_path.clone(), xds });
    tokio::spawn(crate::admin::serve(crate::admin::bind(settings.admin_addr).await?, admin.clone(), crate::admin::Paths::All));
    if let Some(addr) = settings.metrics_addr {
        tokio::spawn(crate::admin::serve(crate::admin::bind(addr).await?, admin.clone(), crate::admin::Paths::Metrics));
    }
    if let Some(addr) = settings.readiness_addr {
        tokio::spawn(crate::admin::serve(crate::admin::bind(addr).await?, admin, crate::admin::Paths::Readiness));
    }
    let netns = Netns::own().context("opening the gateway's own network namespace")?;
    let pod = Arc::new(PodContext::new(settings.pod_name.clone(), netns, settings.pod_ip, &limits, Default::default()));
    let (stop, stopped) = watch::channel(false);
    let listeners = tokio::spawn(follow_listeners(data_path.clone(), pod.clone(), stopped.clone()));
    tokio::spawn(file_secrets::follow(data_path.workloads.clone(), stopped));
    info!(pod = %settings.pod_name, ip = %settings.pod_ip, "keel gateway running");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("keel gateway stopping: draining");
    stop.send_replace(true);
    let _ = listeners.await;
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    while data_path.telemetry.connection_stats().outbound.active > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Binds a listener per configured port and drops the ones no longer configured, on every config change; when
/// the gateway stops, every listener stops accepting (their connections drain).
async fn follow_listeners(dp: Arc<DataPath>, pod: Arc<PodContext>, mut stopped: watch::Receiver<bool>) {
    let mut changes = dp.workloads.subscribe();
    let mut open: BTreeMap<u16, watch::Sender<bool>> = BTreeMap::new();
    loop {
        let wanted: Vec<u16> = dp.workloads.snapshot().l7.listeners.values().map(|l| l.port).collect();
        open.retain(|port, stop| {
            let keep = wanted.contains(port);
            if !keep {
                info!(port, "gateway listener removed: it stops accepting");
                stop.send_replace(true);
            }
            keep
        });
        for port in wanted {
            if open.contains_key(&port) {
                continue;
            }
            match bind(port) {
                Ok(listener) => {
                    info!(port, "gateway listener bound");
                    let (stop, this_stopped) = watch::channel(false);
                    open.insert(port, stop);
                    tokio::spawn(serve(listener, port, dp.clone(), pod.clone(), this_stopped));
                }
                Err(e) => warn!(port, error = %format!("{e:#}"), "cannot bind a gateway listener; retried on the next config change"),
            }
        }
        let stop_all = tokio::select! {
            changed = changes.changed() => changed.is_err(),
            _ = stopped.wait_for(|s| *s) => true,
        };
        if stop_all {
            for stop in open.values() {
                stop.send_replace(true);
            }
            return;
        }
    }
}

fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    Ok(socket.listen(1024)?)
}

/// Accepts on one listener (bounded like a pod's captured connections) and serves each connection with the L7
/// engine; `port` selects the listener's routes. On a port whose listener terminates TLS (HTTPS servers) the
/// handshake comes first and picks the filter chain, hence the routes.
async fn serve(listener: TcpListener, port: u16, dp: Arc<DataPath>, pod: Arc<PodContext>, stop: watch::Receiver<bool>) {
    let slots = vec![pod.connection_slots.clone()];
    let telemetry_dp = dp.clone();
    let draining = stop.clone();
    accept_loop(listener, "gateway", pod.clone(), &telemetry_dp.telemetry, Budgets { slots, rate: None }, stop, move |stream, peer, slots| {
        let (dp, pod, draining) = (dp.clone(), pod.clone(), draining.clone());
        async move {
            let _ = stream.set_nodelay(true);
            dp.telemetry.connection_opened(crate::plan::Direction::Outbound);
            let started = std::time::Instant::now();
            let record = |path| {
                let mut record = crate::telemetry::ConnectionRecord::new(crate::plan::Direction::Outbound, &pod.name, peer);
                record.path = path;
                record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
                record
            };
            // The gateway's own Workload is the source of what it sends on (its identity, its locality).
            let source = dp.workloads.snapshot().workloads_by_ip.get(&IpAddr::V4(pod.ip)).cloned();
            let path = match open(stream, port, &dp).await {
                Err(why) => {
                    debug!(%peer, port, %why, "gateway connection refused");
                    dp.telemetry.refused(Refusal::GatewayTlsHandshake);
                    None
                }
                Ok(Opened::Tcp(io, proxy)) => {
                    let relayed = match io {
                        Connection::Plain(plain) => tcp_proxy::relay(plain, &proxy, &dp, &pod, source.as_ref()).await,
                        Connection::Tls(tls) => tcp_proxy::relay(tls, &proxy, &dp, &pod, source.as_ref()).await,
                    };
                    match relayed {
                        Ok(outcome) => debug!(%peer, port, sent = outcome.client_to_server, received = outcome.server_to_client, "gateway TCP connection relayed"),
                        Err(why) => debug!(%peer, port, %why, "gateway TCP connection not relayed"),
                    }
                    Some(crate::plan::Path::Direct)
                }
                Ok(Opened::Http(io, chain)) => {
                    let downstream = Arc::new(Downstream {
                        filter_chain: chain,
                        dp: dp.clone(),
                        pod: pod.clone(),
                        pod_name: Arc::from(pod.name.as_str()),
                        port,
                        client_ip: peer.ip(),
                        locality: source.as_ref().and_then(|w| w.locality.as_ref()).map(|l| (l.region.clone(), l.zone.clone(), l.subzone.clone())),
                        source,
                        metrics: dp.telemetry.http.clone(),
                    });
                    let served = match io {
                        Connection::Tls(tls) => serve_connection(tls, downstream, draining).await,
                        Connection::Plain(plain) => serve_connection(plain, downstream, draining).await,
                    };
                    if let Err(e) = served {
                        debug!(%peer, port, error = %e, "gateway connection ended with an error");
                    }
                    Some(crate::plan::Path::Http)
                }
            };
            dp.telemetry.connection_closed(record(path), started.elapsed());
            drop(slots);
        }
    })
    .await
}

/// A gateway connection, after the filter chain that takes it was chosen (and its TLS terminated, if it says so).
enum Opened {
    /// HTTP routes; the TLS chain's name (`None`: the port's plain chain).
    Http(Connection, Option<Arc<str>>),
    Tcp(Connection, Arc<TcpProxyConfig>),
}

/// Chooses the connection's filter chain (by its ClientHello's SNI where the listener has TLS chains, bounded
/// by the handshake timeout), and terminates its TLS when the chain does. `Err` says why it is refused.
async fn open(stream: tokio::net::TcpStream, port: u16, dp: &DataPath) -> Result<Opened, String> {
    let timeout = dp.limits.hbone.handshake_timeout;
    let listener = dp.workloads.snapshot().l7.listeners_by_port.get(&port).cloned().ok_or_else(|| format!("no listener on port {port} any more"))?;
    let opening = if listener.reads_client_hello() {
        tokio::time::timeout(timeout, client_hello::peek(&stream)).await.map_err(|_| format!("no ClientHello within {timeout:?}"))??
    } else {
        Opening::Plain
    };
    let chain = match &opening {
        Opening::Plain => listener.plain_chain().ok_or("not TLS, and the port serves TLS only")?,
        Opening::Tls { sni } => listener.tls_chain(sni.as_deref()).ok_or_else(|| format!("no filter chain for SNI {sni:?}"))?,
    };
    if matches!(opening, Opening::Tls { sni: None }) && chain.tls.as_ref().is_some_and(|t| t.require_sni) {
        return Err(format!("chain {} requires SNI; the client sent none", chain.name));
    }
    let io = match &chain.tls {
        Some(_) => {
            let config = dp.workloads.snapshot().l7.server_config(&listener, chain).map_err(|why| format!("chain {}: {why}", chain.name))?;
            Connection::Tls(Box::new(tls_termination::terminate(stream, config, timeout).await?))
        }
        None => Connection::Plain(stream),
    };
    Ok(match &chain.filter {
        ChainFilter::Http { .. } => Opened::Http(io, chain.tls_client_hello.then(|| Arc::from(chain.name.as_str()))),
        ChainFilter::Tcp(proxy) => Opened::Tcp(io, Arc::new(proxy.clone())),
    })
}

/// A gateway connection's bytes: as they came, or inside the TLS keel terminated.
enum Connection {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}
