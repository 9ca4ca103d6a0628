//! The daemon's life: start capture, take over persisted pods, serve the API and admin; on SIGTERM stop serving and
//! drain but leave the pods captured (fail closed until the next keel), on `keel uninstall` remove everything keel
//! attached, installed, pinned or persisted.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    admin, api,
    api::Request,
    capture::{Capture, EbpfCounters},
    cni_requests,
    config::{CaptureMode, Config},
    config_dump::ConfigDump,
    data_path::DataPath,
    dial::{Dialer, NodePods},
    enrollment::Enrollment,
    hbone::client::{HboneClient, HbonePoolStats},
    identity::{CertificateManager, Identity},
    kubernetes::NodeAgent,
    limits::Slots,
    pods::PodSpec,
    policy::open_connections::OpenConnections,
    telemetry::{ConnectionStats, Refusal, Telemetry},
};

pub struct Daemon {
    config: Config,
    data_path: Arc<DataPath>,
    enrollment: Arc<Enrollment>,
    /// Which pods a CNI ADD captures.
    ambient: cni_requests::AmbientPolicy,
    ready: AtomicBool,
    open_files_limit: u64,
    /// Present when keel follows a control plane.
    xds: Option<crate::xds::setup::Xds>,
    /// Notified by `keel uninstall`.
    uninstall: tokio::sync::Notify,
    /// Set when a successor keel asks this one to stop (it took over, or cannot and wants the old way).
    stop_request: tokio::sync::watch::Sender<Option<Stop>>,
    /// Set once this keel stopped serving its pods (its listeners closed): a successor waits for it.
    stopped_serving: tokio::sync::watch::Sender<bool>,
    /// Copies of keel's own listeners (admin, readiness, metrics), for a successor.
    own_listeners: std::sync::Mutex<Vec<(String, std::net::TcpListener)>>,
}

/// How a running keel stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT, as before a restart or upgrade: the pods stay captured (pinned programs, iptables rules,
    /// the persisted pods and config), so until the next keel takes over their connections are refused, never
    /// carried in plaintext, exactly as after a crash. Under `--fail-open` the pods are released instead.
    Restart,
    /// `keel uninstall`: the pods are released and everything keel attached, pinned or persisted is removed.
    Uninstall,
    /// A successor keel took the listening sockets over (`keel run --takeover`): stop accepting, serve what is
    /// open to its end (at most `--drain-max-ms`), leave everything else to the successor.
    HandedOver,
    /// A successor of another handover version asked for the old way: a restart, with keel's own listeners
    /// closed as soon as it stops serving so the successor can open them.
    SuccessorRestart,
}

/// A pod as `keel pods` lists it: the enrollment request, and the Workload keel tied it to (none until the
/// workload source lists the pod's address).
#[derive(Serialize)]
pub struct EnrolledPodView {
    #[serde(flatten)]
    pub spec: PodSpec,
    pub workload: Option<String>,
    pub identity: Option<String>,
    /// Its connection budgets: held, limit, refused (throttled).
    pub budgets: Vec<crate::health_metrics::PodThrottling>,
    /// Its bandwidth budget and weight, throttled bytes and time, fair-share yields.
    pub share: Option<crate::fair_share::ShareStats>,
}

#[derive(Serialize)]
pub struct Stats {
    pub capture: CaptureMode,
    pub fast_path: bool,
    pub connections: ConnectionStats,
    pub ebpf: Option<EbpfCounters>,
    pub hbone: HbonePoolStats,
    /// Inbound connections tracked for re-authorization when policies change.
    pub tracked_connections: usize,
    /// Connections refused before they were carried, by reason (see `Refusal`).
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    /// HBONE connections open on this node, and the node's limit.
    pub hbone_server_connections: usize,
    pub hbone_server_connection_limit: usize,
    /// keel's RLIMIT_NOFILE after raising it at start.
    pub open_files_limit: u64,
}

impl crate::admin::Admin for Daemon {
    fn is_ready(&self) -> bool {
        Daemon::is_ready(self)
    }

    fn stats_json(&self) -> String {
        serde_json::to_string_pretty(&self.stats()).expect("stats serialize")
    }

    fn metrics(&self) -> impl std::future::Future<Output = String> + Send {
        Daemon::metrics(self)
    }

    fn config_dump(&self) -> impl std::future::Future<Output = ConfigDump> + Send {
        Daemon::config_dump(self)
    }
}

impl crate::handover::Handover for Daemon {
    async fn offer(&self) -> anyhow::Result<crate::handover::Offer> {
        let pods = self.enrollment.handover_offer().await?;
        let own = self.own_listeners.lock().expect("own listeners poisoned");
        let node = own.iter().map(|(name, l)| Ok((name.clone(), l.try_clone()?))).collect::<std::io::Result<_>>()?;
        Ok(crate::handover::Offer { pods, node })
    }

    fn handed_over(&self) {
        self.stop_request.send_replace(Some(Stop::HandedOver));
    }

    fn stop_for_restart(&self) -> impl std::future::Future<Output = ()> + Send {
        self.stop_request.send_replace(Some(Stop::SuccessorRestart));
        let mut stopped = self.stopped_serving.subscribe();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    }

    async fn surrender_relays(&self) -> Vec<crate::handover::relays::Surrendered> {
        self.data_path.mover.surrender_all().await
    }
}

impl Daemon {
    /// Ready: capture up, persisted pods restored, (with a control plane) one response of each xDS type, and
    /// (under `--kubernetes`) the node's pods listed and reconciled.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.xds.as_ref().is_none_or(|x| *x.ready.borrow())
            && self.ambient.agent.as_ref().is_none_or(|agent| agent.synced())
    }

    /// `/config_dump`: the workload state keel holds and the state of its source.
    pub async fn config_dump(&self) -> ConfigDump {
        let captured: BTreeSet<IpAddr> = self.enrollment.specs().await.into_iter().flat_map(|p| p.ips).collect();
        let certificates = self.data_path.dialer.certificates.as_ref().map(|c| c.snapshot()).unwrap_or_default();
        ConfigDump::build(&self.data_path.workloads.snapshot(), &captured, certificates, self.xds.as_ref().map(|x| x.status.borrow().clone()))
    }

    /// `keel explain`: the live state, read once, handed to the pure explanation.
    pub async fn explain(&self, query: &crate::explain::ExplainQuery) -> anyhow::Result<crate::explain::Explanation> {
        let pods = self.enrollment.specs().await;
        let certificates = self.data_path.dialer.certificates.as_ref().map(|c| c.snapshot()).unwrap_or_default();
        let snapshot = self.data_path.workloads.snapshot();
        let dp = &self.data_path;
        let on_node = |ip: IpAddr| dp.dialer.node_pods.contains(ip);
        let inputs = crate::explain::Inputs {
            plan: dp.plan_inputs(&snapshot, &on_node),
            pods: &pods,
            capture: self.config.capture,
            exclusions: &self.config.exclusions,
            certificates: &certificates,
        };
        Ok(crate::explain::explain(&inputs, query)?)
    }

    /// Enrolled pods, each with the Workload its address belongs to (where its identity comes from).
    pub async fn pods(&self) -> Vec<EnrolledPodView> {
        let snapshot = self.data_path.workloads.snapshot();
        let budgets = self.enrollment.throttling().await;
        let shares = self.enrollment.shares().await;
        self.enrollment
            .specs()
            .await
            .into_iter()
            .map(|spec| {
                let workload = spec.ips.iter().find_map(|ip| snapshot.workloads_by_ip.get(ip));
                let name = spec.pod_name().to_string();
                EnrolledPodView {
                    workload: workload.map(|w| w.uid.clone()),
                    identity: workload.map(|w| Identity::of_workload(w).to_string()),
                    budgets: budgets.iter().filter(|b| b.pod == name).cloned().collect(),
                    share: shares.iter().find(|s| s.pod == name).map(|s| s.stats.clone()),
                    spec,
                }
            })
            .collect()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            capture: self.config.capture,
            fast_path: self.data_path.capture.fast_path(),
            connections: self.data_path.telemetry.connection_stats(),
            ebpf: self.data_path.capture.counters(),
            hbone: self.data_path.dialer.hbone.stats(),
            tracked_connections: self.data_path.open_connections.len(),
            refused: self.data_path.telemetry.refusals(),
            hbone_server_connections: self.data_path.hbone_node_slots.in_use(),
            hbone_server_connection_limit: self.data_path.hbone_node_slots.limit(),
            open_files_limit: self.open_files_limit,
        }
    }

    /// The traffic metrics and keel's own health, read now.
    pub async fn metrics(&self) -> String {
        let health = crate::health_metrics::Health {
            xds: self.xds.as_ref().map(|x| x.status.borrow().clone()),
            certificates: self.data_path.dialer.certificates.as_ref().map(|c| c.expiries()).unwrap_or_default(),
            pods_enrolled: Some(self.enrollment.specs().await.len()),
            ebpf: self.data_path.capture.counters(),
            hbone_pool: self.data_path.dialer.hbone.stats(),
            hbone_server: Some((self.data_path.hbone_node_slots.in_use(), self.data_path.hbone_node_slots.limit())),
            process: crate::health_metrics::process_stats(),
            pods: self.enrollment.throttling().await,
            shares: self.enrollment.shares().await,
        };
        self.data_path.telemetry.encode_metrics(&health.registry())
    }

    pub async fn handle(&self, request: Request) -> anyhow::Result<Value> {
        Ok(match request {
            Request::Enroll(request) => {
                self.enrollment.enroll_request(request).await?;
                Value::Null
            }
            Request::CniAdd(pod) => serde_json::to_value(cni_requests::add(&self.enrollment, &self.ambient, pod).await?)?,
            Request::CniCheck(pod) => serde_json::to_value(cni_requests::check(&self.enrollment, &self.ambient, pod).await)?,
            Request::CniDel(pod) => serde_json::to_value(cni_requests::del(&self.enrollment, &self.ambient, pod).await?)?,
            Request::Unenroll(name) => {
                self.enrollment.unenroll(&name).await?;
                Value::Null
            }
            Request::Pods => serde_json::to_value(self.pods().await)?,
            Request::Stats => serde_json::to_value(self.stats())?,
            Request::Connections => serde_json::to_value(self.data_path.telemetry.recent_connections())?,
            Request::ConfigDump => serde_json::to_value(self.config_dump().await)?,
            Request::Explain(query) => serde_json::to_value(self.explain(&query).await?)?,
            Request::FastPath(on) => {
                self.data_path.capture.set_fast_path(on)?;
                if !on {
                    // Off means off for the bypass too: no verdict survives, every connection goes through keel.
                    self.data_path.bypass.revoke_all(&self.data_path.capture);
                }
                Value::Null
            }
            Request::Uninstall => {
                let pods = self.enrollment.specs().await.len();
                info!(pods, "uninstall requested");
                self.uninstall.notify_one();
                serde_json::json!({ "releasing_pods": pods })
            }
        })
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let open_files_limit = crate::limits::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    info!(open_files_limit, "open files limit");
    // 0700 from the first moment: the state dir holds the pod list, the last good config and (local mode) the CA.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("creating the state directory {}", config.state_dir.display()))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting the state directory {}", config.state_dir.display()))?;
    let capture = {
        let config = config.clone();
        // Loading and attaching programs are blocking syscalls; the kernel logger task needs the runtime.
        tokio::task::block_in_place(move || Capture::start(&config))?
    };
    let xds = config.workload_source.as_ref().map(|source| source.start(&config.state_dir)).transpose()?;
    let certificates = match &config.workload_source {
        Some(source) => Some(CertificateManager::new(source.certificate_provider()?, config.certificate_validity)),
        None => None,
    };
    let data_path = Arc::new(DataPath {
        capture,
        bypass: Default::default(),
        telemetry: Telemetry::new().with_traces(config.tracing.as_ref().map(crate::telemetry::traces::Traces::start).transpose()?),
        workloads: xds.as_ref().map(|x| x.store.clone()).unwrap_or_default(),
        dialer: Dialer {
            hbone: HboneClient::new(),
            certificates,
            node_pods: NodePods::default(),
            local_peers: Arc::default(),
            cluster_id: config.workload_source.as_ref().map_or_else(|| "Kubernetes".to_owned(), |s| s.cluster_id().to_owned()),
            connect_timeout: config.connect_timeout,
        },
        upstreams: Default::default(),
        open_connections: OpenConnections::new(config.close_denied_connections),
        limits: config.limits,
        hbone_node_slots: Slots::new(config.limits.hbone.connections_per_node, Refusal::NodeHboneLimit),
        hbone_handshakes: crate::limits::PerSourceSlots::new(config.limits.hbone.handshakes_per_source),
        mesh: config.workload_source.is_some(),
        responder: config.responder,
        outbound_policy: config.outbound_policy,
        dns: Arc::new(crate::dns::DnsResolver::new(config.dns_server)),
        mover: Default::default(),
    });
    tokio::spawn(data_path.dns.clone().run(data_path.workloads.clone()));
    tokio::spawn(reauthorize_on_change(data_path.clone()));
    let bypass_task = tokio::spawn(bypass_heartbeat(data_path.clone()));
    let enrollment = Arc::new(Enrollment::new(data_path.clone(), &config.cgroup_root, &config.state_dir));
    let agent = match &config.kubernetes {
        Some(kubernetes) => Some(NodeAgent::connect(kubernetes.kubeconfig.as_deref(), &kubernetes.node_name).await?),
        None => None,
    };
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        data_path,
        enrollment,
        ambient: cni_requests::AmbientPolicy { excluded_namespaces: config.cni_excluded_namespaces.iter().cloned().collect(), agent: agent.clone() },
        ready: AtomicBool::new(false),
        open_files_limit,
        xds,
        uninstall: Default::default(),
        stop_request: tokio::sync::watch::Sender::new(None),
        stopped_serving: tokio::sync::watch::Sender::new(false),
        own_listeners: Default::default(),
    });

    // `--takeover`: once this keel could serve (its config in hand), the running keel's sockets pass to it.
    let mut received = match config.takeover {
        Some(takeover) => take_over(&daemon, takeover).await?,
        None => None,
    };
    let admin_listener = daemon.own_listener("admin", config.admin_addr, received.as_mut()).await?;
    let mut admin_task = tokio::spawn(admin::serve(admin_listener, daemon.clone(), admin::Paths::All));
    let mut probe_tasks = Vec::new();
    for (name, addr, paths) in
        [("readiness", config.readiness_addr, admin::Paths::Readiness), ("metrics", config.metrics_addr, admin::Paths::Metrics)]
    {
        if let Some(addr) = addr {
            probe_tasks.push(tokio::spawn(admin::serve(daemon.own_listener(name, addr, received.as_mut()).await?, daemon.clone(), paths)));
        }
    }
    let restored = match received.as_mut() {
        Some(received) => daemon.enrollment.adopt(std::mem::take(&mut received.pods)).await?,
        None => daemon.enrollment.restore().await?,
    };
    // The agent starts from the restored pods: what it finds captured already it keeps, by UID.
    let agent_task = agent.map(|agent| tokio::spawn(agent.run(daemon.enrollment.clone())));
    // The API socket appears only now: a caller that can talk to it talks to a ready keel.
    let api_listener = api::bind(&config.api_socket)?;
    let api_task = tokio::spawn(api::serve(api_listener, daemon.clone()));
    daemon.ready.store(true, Ordering::Relaxed);
    if let Some(received) = received {
        let relays = match tokio::task::spawn_blocking(move || received.took_over()).await? {
            Ok(relays) => relays,
            // This keel holds the sockets and serves the pods already: without the previous keel it serves alone.
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the previous keel went away during the handover: this keel serves everything now");
                Vec::new()
            }
        };
        crate::l4::moving::resume_all(relays, &daemon.enrollment.contexts().await, &daemon.data_path);
        info!(pods = restored, "took over from the previous keel: it stopped accepting and drains what it carries");
    }
    let handover = crate::handover::listen(&config.state_dir)?;
    crate::handover::serve(handover.socket.try_clone()?, daemon.clone(), tokio::runtime::Handle::current())?;
    info!(capture = ?config.capture, restored_pods = restored, startup_ms = started.elapsed().as_millis() as u64,
          api = %config.api_socket.display(), admin = %config.admin_addr, "keel ready");

    let stop = wait_for_stop(&daemon).await?;
    let handed_over = stop == Stop::HandedOver;
    // A successor waits for this keel's listeners (pods' and its own) to be closed, or serves them already.
    let for_successor = handed_over || stop == Stop::SuccessorRestart;
    let release = stop == Stop::Uninstall || config.fail_open;
    info!(?stop, release_pods = release, "terminating: draining connections");
    daemon.ready.store(false, Ordering::Relaxed);
    // No heartbeat from here on, and no verdict left: the pods' next connections are keel's again (refused while it
    // is down) rather than the kernel's.
    bypass_task.abort();
    daemon.data_path.bypass.revoke_all(&daemon.data_path.capture);
    api_task.abort();
    agent_task.iter().for_each(tokio::task::JoinHandle::abort);
    if !for_successor {
        // (Otherwise the paths are, or are about to be, the successor's.)
        let _ = std::fs::remove_file(&config.api_socket);
    }
    handover.remove_if_ours();
    if release {
        daemon.enrollment.release_all().await;
    } else {
        daemon.enrollment.stop_serving_all().await;
    }
    if for_successor {
        // The successor answers the kubelet and Prometheus from now on: this keel's copies close now.
        admin_task.abort();
        probe_tasks.iter().for_each(tokio::task::JoinHandle::abort);
        let _ = (&mut admin_task).await;
        for task in &mut probe_tasks {
            let _ = task.await;
        }
        daemon.own_listeners.lock().expect("own listeners poisoned").clear();
    }
    daemon.stopped_serving.send_replace(true);
    drain(&daemon, if handed_over { config.drain_max } else { config.drain_timeout }).await;
    admin_task.abort();
    probe_tasks.iter().for_each(tokio::task::JoinHandle::abort);
    // Connections still running past the drain deadline are closed when the process exits.
    if release {
        // Attachments and pins are removed now (iptables rules went with each released pod).
        daemon.data_path.capture.shutdown()?;
    }
    if stop == Stop::Uninstall {
        daemon.enrollment.forget_all()?;
        crate::xds::persisted::forget(&config.state_dir)?;
        info!("keel uninstalled: pods released, capture detached, persisted state removed");
    } else if handed_over {
        info!("keel stopped after handing over; its successor serves the pods");
    } else if release {
        info!("keel stopped; pods released (--fail-open)");
    } else {
        info!("keel stopped; pods stay captured and are refused until keel is back");
    }
    Ok(())
}

/// The same-node bypass's heartbeat and accounting, every [`crate::bypass::TICK`], for as long as keel runs.
async fn bypass_heartbeat(dp: Arc<DataPath>) {
    let Some(ebpf) = crate::bypass::configured(&dp.capture) else { return };
    let mut ticks = tokio::time::interval(crate::bypass::TICK);
    loop {
        ticks.tick().await;
        dp.bypass.tick(ebpf, &dp.telemetry);
    }
}

/// Re-decides open connections whenever a new workload/policy snapshot is published.
async fn reauthorize_on_change(data_path: Arc<DataPath>) {
    let mut changes = data_path.workloads.subscribe();
    while changes.changed().await.is_ok() {
        let snapshot = data_path.workloads.snapshot();
        let closed = data_path.open_connections.reauthorize(&snapshot) + data_path.bypass.reauthorize(&data_path.capture, &snapshot).await;
        if closed > 0 {
            info!(closed, "policy change closed open connections");
        }
    }
}

/// How long a keel taking over waits for its config before it gives up (the running keel goes on serving); within
/// the running keel's patience for the hello.
const TAKEOVER_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const _: () = assert!(TAKEOVER_READY_TIMEOUT.as_secs() < crate::handover::HELLO_TIMEOUT.as_secs());

/// `--takeover`: when a keel runs here, waits until this one could serve (the control plane's first answer of every
/// type, so a connection it takes is not refused for want of config), then receives its pods and sockets.
async fn take_over(daemon: &Daemon, takeover: crate::config::Takeover) -> anyhow::Result<Option<crate::handover::Received>> {
    let state_dir = daemon.config.state_dir.clone();
    let Some(pending) = tokio::task::spawn_blocking(move || crate::handover::connect(&state_dir)).await?? else { return Ok(None) };
    if let Some(xds) = &daemon.xds {
        let mut ready = xds.ready.clone();
        tokio::time::timeout(TAKEOVER_READY_TIMEOUT, ready.wait_for(|ready| *ready))
            .await
            .map_err(|_| anyhow::anyhow!("no config from the control plane within {TAKEOVER_READY_TIMEOUT:?}: not taking over"))??;
    }
    let received = tokio::task::spawn_blocking(move || pending.exchange(takeover.version)).await?.context("taking over from the running keel")?;
    if let Some(received) = &received {
        info!(pods = received.pods.len(), "received the running keel's sockets");
        tokio::time::sleep(takeover.pause).await;
    }
    Ok(received)
}

impl Daemon {
    /// keel's own listener `name` (admin, readiness, metrics): the one the previous keel handed over, else bound
    /// on `addr`; a copy is kept for a successor.
    async fn own_listener(
        &self,
        name: &str,
        addr: std::net::SocketAddr,
        received: Option<&mut crate::handover::Received>,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        let listener = match received.and_then(|r| r.node_listener(name)) {
            Some(handed_over) => handed_over,
            None => admin::bind(addr).await?.into_std()?,
        };
        listener.set_nonblocking(true)?;
        self.own_listeners.lock().expect("own listeners poisoned").push((name.to_owned(), listener.try_clone()?));
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }
}

/// Waits for active connections to finish, up to `limit`.
async fn drain(daemon: &Daemon, limit: std::time::Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = daemon.data_path.telemetry.connection_stats();
        let active = stats.outbound.active + stats.inbound.active;
        if active <= 0 {
            return;
        }
        if Instant::now() >= deadline {
            warn!(active, "drain deadline reached");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a successor keel asked of this one.
async fn stop_requested(daemon: &Daemon) -> Stop {
    let mut requests = daemon.stop_request.subscribe();
    let requested = requests.wait_for(Option::is_some).await.map(|request| request.unwrap_or(Stop::Restart));
    match requested {
        Ok(stop) => stop,
        // The sender lives in the daemon: never dropped while this runs.
        Err(_) => std::future::pending().await,
    }
}

async fn wait_for_stop(daemon: &Daemon) -> anyhow::Result<Stop> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => Stop::Restart,
        _ = int.recv() => Stop::Restart,
        _ = daemon.uninstall.notified() => Stop::Uninstall,
        requested = stop_requested(daemon) => requested,
    })
}
