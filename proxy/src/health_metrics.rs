//! keel's own health as Prometheus metrics: read from the live state at each scrape (the xDS stream, the
//! certificates, the enrolled pods, the eBPF programs' counters, the HBONE pools, the process), so nothing on the
//! data path pays for them. The names are documented in the README ("Observability") and the dashboards in
//! `deploy/dashboards/` query them. A top-level module: it reads the data path's parts, none of which reads it.
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use crate::identity::manager::CertificateExpiry;
use crate::{capture::EbpfCounters, hbone::client::HbonePoolStats, xds::client::XdsStatus};

/// Labels given as pairs: the health families are built once per scrape, so a typed label struct per family
/// would add nothing.
type Labels = Vec<(&'static str, String)>;

/// The process, as Prometheus' client libraries report it (`process_*`), read from `/proc/self`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessStats {
    pub open_fds: u64,
    pub max_fds: u64,
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
}

/// What a scrape reports beyond the traffic metrics. `None` = not part of this daemon (a gateway enrolls no pods
/// and loads no eBPF programs).
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub xds: Option<XdsStatus>,
    pub certificates: Vec<CertificateExpiry>,
    pub pods_enrolled: Option<usize>,
    pub ebpf: Option<EbpfCounters>,
    pub hbone_pool: HbonePoolStats,
    /// Inbound HBONE connections open, and the node's limit (`--max-hbone-connections`).
    pub hbone_server: Option<(usize, usize)>,
    pub process: Option<ProcessStats>,
    /// Each enrolled pod's connection budgets (the node daemon's; none for a gateway).
    pub pods: Vec<PodThrottling>,
    /// Each enrolled pod's bandwidth budget and share of keel's worker time.
    pub shares: Vec<PodShareReport>,
}

/// One pod's bandwidth budget and weight, and what they did (see [`crate::fair_share`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PodShareReport {
    /// `namespace/name`.
    pub pod: String,
    #[serde(flatten)]
    pub stats: crate::fair_share::ShareStats,
}

/// One pod's use of one of its connection budgets: how many it holds, its limit, and how many were refused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PodThrottling {
    /// `namespace/name`.
    pub pod: String,
    /// `connections` (captured: outbound and plaintext inbound), `hbone` (accepted on the pod's 15008), or
    /// `connections_per_second` (its rate budget: `limit` per second, nothing held).
    pub kind: &'static str,
    pub in_use: usize,
    pub limit: usize,
    pub refused: u64,
}

fn gauge_f64(value: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    gauge.set(value);
    gauge
}

fn gauge_i64(value: usize) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Health {
    /// The health families, to be encoded next to the traffic registry.
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        self.register_process(&mut root);
        let registry = root.sub_registry_with_prefix("keel");
        self.register_xds(registry);
        self.register_certificates(registry);
        if let Some(pods) = self.pods_enrolled {
            registry.register("pods_enrolled", "Pods whose traffic this keel captures", gauge_i64(pods));
        }
        if let Some(ebpf) = &self.ebpf {
            register_ebpf(registry, ebpf);
        }
        registry.register("hbone_pool_connections", "Outbound HBONE connections open in the pools", gauge_i64(self.hbone_pool.open_connections));
        registry.register(
            "hbone_pool_dialled",
            "Outbound HBONE connections dialled (each pooled for many streams)",
            counter(self.hbone_pool.connections_dialled as u64),
        );
        self.register_pods(registry);
        if let Some((open, limit)) = self.hbone_server {
            registry.register("hbone_server_connections", "Inbound HBONE connections open on this node", gauge_i64(open));
            registry.register("hbone_server_connection_limit", "The node's limit of inbound HBONE connections", gauge_i64(limit));
        }
        root
    }

    fn register_process(&self, root: &mut Registry) {
        let Some(p) = self.process else { return };
        root.register("process_open_fds", "Open file descriptors", gauge_i64(p.open_fds as usize));
        root.register("process_max_fds", "The file descriptor limit (RLIMIT_NOFILE)", gauge_i64(p.max_fds as usize));
        root.register("process_resident_memory_bytes", "Resident memory", gauge_i64(p.resident_memory_bytes as usize));
        root.register("process_start_time_seconds", "Start time since the Unix epoch", gauge_f64(p.start_time_seconds));
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(p.cpu_seconds);
        root.register("process_cpu_seconds", "User and system CPU time", cpu);
    }

    fn register_pods(&self, registry: &mut Registry) {
        if self.pods.is_empty() {
            return;
        }
        let (open, limits, refused) = (Family::<Labels, Gauge>::default(), Family::<Labels, Gauge>::default(), Family::<Labels, Counter>::default());
        for p in &self.pods {
            let labels = vec![("pod", p.pod.clone()), ("kind", p.kind.to_owned())];
            open.get_or_create(&labels).set(i64::try_from(p.in_use).unwrap_or(i64::MAX));
            limits.get_or_create(&labels).set(i64::try_from(p.limit).unwrap_or(i64::MAX));
            refused.get_or_create(&labels).inc_by(p.refused);
        }
        registry.register("pod_connections", "Connections a pod holds, by budget (captured, HBONE)", open);
        registry.register("pod_connection_limit", "A pod's connection limit, by budget", limits);
        registry.register("pod_connections_refused", "Connections refused because the pod was at its limit (throttled)", refused);
        self.register_shares(registry);
    }

    fn register_shares(&self, registry: &mut Registry) {
        let bandwidth = Family::<Labels, Gauge>::default();
        let weight = Family::<Labels, Gauge>::default();
        let throttled_bytes = Family::<Labels, Counter>::default();
        let throttled_seconds = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let yields = Family::<Labels, Counter>::default();
        for share in &self.shares {
            let labels = vec![("pod", share.pod.clone())];
            let s = &share.stats;
            if let Some(limit) = s.bytes_per_second {
                bandwidth.get_or_create(&labels).set(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            weight.get_or_create(&labels).set(i64::from(s.weight));
            throttled_bytes.get_or_create(&labels).inc_by(s.throttled_bytes);
            throttled_seconds.get_or_create(&labels).inc_by(s.throttled_seconds);
            yields.get_or_create(&labels).inc_by(s.yields);
        }
        registry.register("pod_bandwidth_limit_bytes_per_second", "A pod's bandwidth budget (pods that have one)", bandwidth);
        registry.register("pod_fair_share_weight", "A pod's weight in keel's worker time", weight);
        registry.register("pod_throttled_bytes", "Bytes that waited for the pod's bandwidth budget", throttled_bytes);
        registry.register("pod_throttled_seconds", "Time the pod's relays waited for its bandwidth budget", throttled_seconds);
        registry.register("pod_relay_yields", "Times a relay of the pod gave its worker back after a slice (fair share)", yields);
    }

    fn register_xds(&self, registry: &mut Registry) {
        let Some(xds) = &self.xds else { return };
        registry.register("xds_connected", "1 while the xDS stream to the control plane is open", gauge_i64(usize::from(xds.connected)));
        let resources = Family::<Labels, Gauge>::default();
        for (type_url, count) in &xds.versions {
            resources.get_or_create(&vec![("type_url", type_url.clone())]).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        registry.register("xds_resources", "Resources held, by type", resources);
        let responses = Family::<Labels, Counter>::default();
        let last_ack = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let last_nack = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (type_url, r) in &xds.responses {
            let labels = |result: &str| vec![("type_url", type_url.clone()), ("result", result.to_owned())];
            responses.get_or_create(&labels("ack")).inc_by(r.acks);
            responses.get_or_create(&labels("nack")).inc_by(r.nacks);
            if let Some(at) = r.last_ack {
                last_ack.get_or_create(&vec![("type_url", type_url.clone())]).set(unix_seconds(at));
            }
            if let Some(at) = r.last_nack {
                last_nack.get_or_create(&vec![("type_url", type_url.clone())]).set(unix_seconds(at));
            }
        }
        registry.register("xds_responses", "xDS responses answered, by type and ACK or NACK", responses);
        registry.register("xds_last_ack_timestamp_seconds", "When keel last ACKed a response of the type", last_ack);
        registry.register("xds_last_nack_timestamp_seconds", "When keel last NACKed a response of the type", last_nack);
    }

    fn register_certificates(&self, registry: &mut Registry) {
        let expiry = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for c in &self.certificates {
            expiry.get_or_create(&vec![("identity", c.identity.clone())]).set(unix_seconds(c.not_after));
        }
        registry.register("certificate_expiry_timestamp_seconds", "When the certificate keel holds for an identity expires", expiry);
    }
}

fn register_ebpf(registry: &mut Registry, ebpf: &EbpfCounters) {
    let decisions = Family::<Labels, Counter>::default();
    for (program, counters) in ebpf.programs() {
        for (decision, value) in counters.decisions() {
            decisions.get_or_create(&vec![("program", program.to_owned()), ("decision", decision.to_owned())]).inc_by(value);
        }
    }
    registry.register(
        "ebpf_program_decisions",
        "Runs of keel's eBPF programs by outcome (error: the program could not decide and let the kernel go on)",
        decisions,
    );
}

/// `/proc/self`: open descriptors, their limit, resident memory, CPU time and start time. `None` when `/proc`
/// cannot be read (the metrics are then absent, not zero).
pub fn process_stats() -> Option<ProcessStats> {
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)?
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces), counted from field 3 (`state`).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let ticks = ticks as f64;
    let boot_time = std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    Some(ProcessStats {
        open_fds,
        max_fds,
        resident_memory_bytes: (field(24)? as u64).saturating_mul(page as u64),
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        start_time_seconds: boot_time + field(22)? / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::client::TypeResponses;
    use std::time::Duration;

    fn encode(health: &Health) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &health.registry()).unwrap();
        out
    }

    #[test]
    fn xds_state_certificates_and_pool_sizes_are_reported_with_their_labels() {
        let mut xds = XdsStatus { connected: true, ..Default::default() };
        xds.versions.insert("type.googleapis.com/istio.workload.Address".into(), 7);
        xds.responses.insert(
            "type.googleapis.com/istio.workload.Address".into(),
            TypeResponses { acks: 3, nacks: 1, last_ack: Some(UNIX_EPOCH + Duration::from_secs(1000)), last_nack: None },
        );
        let health = Health {
            xds: Some(xds),
            certificates: vec![CertificateExpiry {
                identity: "spiffe://cluster.local/ns/default/sa/web".into(),
                not_after: UNIX_EPOCH + Duration::from_secs(2000),
            }],
            pods_enrolled: Some(4),
            hbone_pool: HbonePoolStats { open_connections: 2, connections_dialled: 5 },
            hbone_server: Some((1, 1000)),
            pods: vec![PodThrottling { pod: "default/sleep".into(), kind: "connections", in_use: 3, limit: 1024, refused: 9 }],
            shares: vec![PodShareReport {
                pod: "default/sleep".into(),
                stats: crate::fair_share::ShareStats {
                    bytes_per_second: Some(1 << 20),
                    weight: 2,
                    throttled_bytes: 4096,
                    throttled_seconds: 1.5,
                    yields: 7,
                },
            }],
            ..Default::default()
        };
        let text = encode(&health);
        for line in [
            r#"keel_pod_connections{pod="default/sleep",kind="connections"} 3"#,
            r#"keel_pod_connection_limit{pod="default/sleep",kind="connections"} 1024"#,
            r#"keel_pod_connections_refused_total{pod="default/sleep",kind="connections"} 9"#,
            r#"keel_pod_bandwidth_limit_bytes_per_second{pod="default/sleep"} 1048576"#,
            r#"keel_pod_fair_share_weight{pod="default/sleep"} 2"#,
            r#"keel_pod_throttled_bytes_total{pod="default/sleep"} 4096"#,
            r#"keel_pod_throttled_seconds_total{pod="default/sleep"} 1.5"#,
            r#"keel_pod_relay_yields_total{pod="default/sleep"} 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        for line in [
            "keel_xds_connected 1",
            "keel_xds_resources{type_url=\"type.googleapis.com/istio.workload.Address\"} 7",
            "keel_xds_responses_total{type_url=\"type.googleapis.com/istio.workload.Address\",result=\"ack\"} 3",
            "keel_xds_responses_total{type_url=\"type.googleapis.com/istio.workload.Address\",result=\"nack\"} 1",
            "keel_xds_last_ack_timestamp_seconds{type_url=\"type.googleapis.com/istio.workload.Address\"} 1000.0",
            "keel_certificate_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/default/sa/web\"} 2000.0",
            "keel_pods_enrolled 4",
            "keel_hbone_pool_connections 2",
            "keel_hbone_pool_dialled_total 5",
            "keel_hbone_server_connection_limit 1000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("keel_xds_last_nack_timestamp_seconds{"), "no NACK, no timestamp:\n{text}");
    }

    #[test]
    fn a_gateway_reports_no_pods_and_no_ebpf() {
        let text = encode(&Health::default());
        assert!(!text.contains("keel_pods_enrolled") && !text.contains("keel_ebpf") && !text.contains("keel_xds_connected"), "{text}");
    }

    #[test]
    fn the_process_is_read_from_proc() {
        let p = process_stats().expect("/proc/self is readable in tests");
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        assert!(p.resident_memory_bytes > 1 << 20, "{p:?}");
        let now = unix_seconds(SystemTime::now());
        assert!(p.start_time_seconds > now - 3600.0 && p.start_time_seconds <= now + 1.0, "{p:?} at {now}");
    }
}
