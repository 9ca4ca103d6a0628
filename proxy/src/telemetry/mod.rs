//! What keel tells about the traffic it carries: counters per direction (Prometheus and the `stats` API), the
//! last closed connections (the `connections` API, which the demo prints), and one log line per connection.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_proto::workload::Workload;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use crate::{
    hashing::stable_hash,
    identity::Identity,
    plan::{Direction, Path},
};

pub mod access_log;
pub mod http;
mod series_cache;
pub mod traces;

use access_log::ConnectionLine;
use series_cache::SeriesCache;

/// How many closed connections the `connections` API keeps.
const RECENT_CONNECTIONS: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: DirectionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum DirectionLabel {
    outbound,
    inbound,
}

/// The counters of one direction, held directly so the connection path never looks them up.
#[derive(Clone, Default)]
struct DirectionMetrics {
    opened: Counter,
    closed: Counter,
    errors: Counter,
    bytes_sent: Counter,
    bytes_received: Counter,
    active: Gauge,
}

/// Why keel refused a connection before carrying a byte of it: counted as
/// `keel_connections_refused_total{reason=...}` and shown by `keel stats`, so an operator sees which bound or
/// check a peer ran into.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The pod has `--max-connections-per-pod` (or its own budget of) captured connections open.
    PodConnectionLimit,
    /// The pod opened more new connections per second than its `keel.dev/connections-per-second` budget.
    PodConnectionRate,
    /// The pod's 15008 has `--max-hbone-connections-per-pod` connections.
    PodHboneLimit,
    /// The node has `--max-hbone-connections` HBONE connections.
    NodeHboneLimit,
    /// The source address has `handshakes_per_source` HBONE handshakes in progress.
    SourceHandshakeLimit,
    /// TLS handshake and HTTP/2 preface not done within the handshake timeout.
    HboneHandshakeTimeout,
    /// TLS, the client's identity or trust domain, or HTTP/2 refused.
    HboneHandshakeFailed,
    /// An HBONE or plaintext connection to a pod whose Workload keel does not know.
    UnknownDestinationWorkload,
    /// An outbound connection from a pod whose Workload keel does not know.
    UnknownSourceWorkload,
    /// CONNECT to one of keel's own ports.
    KeelPort,
    /// Authorization denied it.
    Policy,
    /// Authorization denied an HTTP request on the destination side (answered 403).
    RequestPolicy,
    /// An HTTP request's JWT did not verify (answered 401, or 403 for its audience).
    RequestAuthentication,
    /// The pod's namespace thread has too many socket requests queued.
    NamespaceQueueFull,
    /// A gateway's TLS server: no filter chain for the client's SNI, its certificate not there, or the
    /// handshake failed or timed out (a MUTUAL server's client without a valid certificate).
    GatewayTlsHandshake,
    /// `--outbound-traffic-policy registry-only`: a connection to an address the mesh does not know.
    RegistryOnly,
}

impl Refusal {
    pub const ALL: [Refusal; 16] = [
        Refusal::PodConnectionLimit,
        Refusal::PodConnectionRate,
        Refusal::PodHboneLimit,
        Refusal::NodeHboneLimit,
        Refusal::SourceHandshakeLimit,
        Refusal::HboneHandshakeTimeout,
        Refusal::HboneHandshakeFailed,
        Refusal::UnknownDestinationWorkload,
        Refusal::UnknownSourceWorkload,
        Refusal::KeelPort,
        Refusal::Policy,
        Refusal::RequestPolicy,
        Refusal::RequestAuthentication,
        Refusal::NamespaceQueueFull,
        Refusal::GatewayTlsHandshake,
        Refusal::RegistryOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PodConnectionLimit => "pod_connection_limit",
            Refusal::PodConnectionRate => "pod_connection_rate",
            Refusal::PodHboneLimit => "pod_hbone_limit",
            Refusal::NodeHboneLimit => "node_hbone_limit",
            Refusal::SourceHandshakeLimit => "source_handshake_limit",
            Refusal::HboneHandshakeTimeout => "hbone_handshake_timeout",
            Refusal::HboneHandshakeFailed => "hbone_handshake_failed",
            Refusal::UnknownDestinationWorkload => "unknown_destination_workload",
            Refusal::UnknownSourceWorkload => "unknown_source_workload",
            Refusal::KeelPort => "keel_port",
            Refusal::Policy => "policy",
            Refusal::RequestPolicy => "request_policy",
            Refusal::RequestAuthentication => "request_authentication",
            Refusal::NamespaceQueueFull => "namespace_queue_full",
            Refusal::GatewayTlsHandshake => "gateway_tls_handshake",
            Refusal::RegistryOnly => "registry_only",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
}

/// One end of a connection as the mesh knows it; empty when its address is no known workload.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Peer {
    /// `<namespace>/<name>`.
    pub workload: Option<String>,
    pub identity: Option<Identity>,
    /// The workload's canonical service and revision (Istio's `service.istio.io/canonical-*`, else `app` and
    /// `version`), and its cluster: what Istio's dashboards and Kiali group by.
    #[serde(skip)]
    pub canonical: Option<Canonical>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Canonical {
    pub service: String,
    pub revision: String,
    pub cluster: String,
}

/// Istio's labels for one end of a request or connection, `unknown` where the mesh does not know it.
pub struct IstioPeerLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// `app`/`version`: keel is sent the canonical service and revision, which are made from those labels
    /// first, so they stand for them (a revision not set is `unknown` here, `latest` as a canonical revision).
    pub app: String,
    pub version: String,
    pub cluster: String,
}

impl Peer {
    pub fn of(workload: Option<&Arc<Workload>>) -> Peer {
        match workload {
            None => Peer::default(),
            Some(w) => Peer {
                workload: Some(format!("{}/{}", w.namespace, w.name)),
                identity: Some(Identity::of_workload(w)),
                canonical: Some(Canonical {
                    service: w.canonical_name.clone(),
                    revision: w.canonical_revision.clone(),
                    cluster: w.cluster_id.clone(),
                }),
            },
        }
    }

    /// Istio's metric labels for this end ("unknown" where not known, "latest" for a revision not set, as
    /// Istio's telemetry writes them).
    pub fn istio_labels(&self) -> IstioPeerLabels {
        let unknown = || "unknown".to_owned();
        let (workload, namespace) = match self.workload.as_deref().and_then(|w| w.split_once('/')) {
            Some((ns, name)) => (name.to_owned(), ns.to_owned()),
            None => (unknown(), unknown()),
        };
        let known = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        let canonical = self.canonical.as_ref();
        let revision = canonical.and_then(|c| known(&c.revision));
        let canonical_service = canonical.and_then(|c| known(&c.service)).unwrap_or_else(|| workload.clone());
        IstioPeerLabels {
            app: canonical_service.clone(),
            canonical_service,
            canonical_revision: match canonical {
                Some(_) => revision.clone().unwrap_or_else(|| "latest".to_owned()),
                None => unknown(),
            },
            version: revision.unwrap_or_else(unknown),
            cluster: canonical.and_then(|c| known(&c.cluster)).unwrap_or_else(unknown),
            principal: self.identity.as_ref().map_or_else(unknown, ToString::to_string),
            workload,
            namespace,
        }
    }
}

/// One closed connection, as the API and the demo show it. `bytes_sent` is client→server.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionRecord {
    pub direction: Direction,
    pub pod: String,
    pub source: SocketAddr,
    /// How keel carried it (outbound: direct, same-node or HBONE; inbound over HBONE: hbone).
    pub path: Option<Path>,
    /// Carried inside mutual TLS (HBONE) on this hop.
    pub mutual_tls: bool,
    /// The authorization decision (inbound), e.g. "denied by DENY policy shop/deny-sleep".
    pub policy: Option<String>,
    /// The HBONE status keel answered or received, when the connection was a CONNECT stream.
    pub response_status: Option<u16>,
    /// What the client dialled (a service VIP, or a workload address).
    pub original_destination: SocketAddr,
    /// What keel connected to: the chosen endpoint when the client dialled a VIP.
    pub upstream: Option<SocketAddr>,
    pub source_peer: Peer,
    pub destination_peer: Peer,
    /// The service hostname, when the client dialled a service VIP.
    pub destination_service: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: f64,
    pub error: Option<String>,
    /// Envoy's response flag for the failure (see `connection_error`); `None` when it did not fail.
    pub response_flags: Option<&'static str>,
}

impl ConnectionRecord {
    /// A record for a connection just accepted; the handlers fill in the rest as they learn it.
    pub fn new(direction: Direction, pod: &str, source: SocketAddr) -> ConnectionRecord {
        ConnectionRecord {
            direction,
            pod: pod.to_owned(),
            source,
            path: None,
            mutual_tls: false,
            policy: None,
            response_status: None,
            original_destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            upstream: None,
            source_peer: Peer::default(),
            destination_peer: Peer::default(),
            destination_service: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0.0,
            error: None,
            response_flags: None,
        }
    }
}

/// Istio's standard TCP metric labels (a subset keel can fill; "unknown" where it cannot, as Istio does).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IstioTcpLabels {
    reporter: &'static str,
    #[prometheus(flatten)]
    peers: IstioPeersLabels,
    request_protocol: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
}

/// The labels Istio's request and TCP metrics share: both ends, and the destination service (`_name` and
/// `_namespace` split from its host as Istio's telemetry splits it; `unknown` without one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IstioPeersLabels {
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_cluster: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
}

impl IstioPeersLabels {
    pub(crate) fn of(source: &Peer, destination: &Peer, service_host: Option<&str>) -> IstioPeersLabels {
        let (source, destination) = (source.istio_labels(), destination.istio_labels());
        let unknown = || "unknown".to_owned();
        let (destination_service, destination_service_name, destination_service_namespace) = match service_host {
            None => (unknown(), unknown(), unknown()),
            Some(host) => {
                let mut labels = host.split('.');
                let name = labels.next().unwrap_or(host).to_owned();
                (host.to_owned(), name, labels.next().map_or_else(unknown, str::to_owned))
            }
        };
        IstioPeersLabels {
            source_workload: source.workload,
            source_workload_namespace: source.namespace,
            source_principal: source.principal,
            source_app: source.app,
            source_version: source.version,
            source_canonical_service: source.canonical_service,
            source_canonical_revision: source.canonical_revision,
            source_cluster: source.cluster,
            destination_workload: destination.workload,
            destination_workload_namespace: destination.namespace,
            destination_principal: destination.principal,
            destination_app: destination.app,
            destination_version: destination.version,
            destination_canonical_service: destination.canonical_service,
            destination_canonical_revision: destination.canonical_revision,
            destination_cluster: destination.cluster,
            destination_service,
            destination_service_name,
            destination_service_namespace,
        }
    }
}

impl IstioTcpLabels {
    fn of(record: &ConnectionRecord) -> IstioTcpLabels {
        IstioTcpLabels {
            reporter: match record.direction {
                Direction::Outbound => "source",
                Direction::Inbound => "destination",
            },
            peers: IstioPeersLabels::of(&record.source_peer, &record.destination_peer, record.destination_service.as_deref()),
            request_protocol: "tcp",
            response_flags: Self::response_flags(record),
            connection_security_policy: if record.mutual_tls { "mutual_tls" } else { "none" },
        }
    }

    fn response_flags(record: &ConnectionRecord) -> &'static str {
        match (record.response_flags, &record.error) {
            (Some(flags), _) => flags,
            // A failure not typed yet: an upstream connection failure, as before.
            (None, Some(_)) => "UF",
            (None, None) => "-",
        }
    }
}

#[derive(Default)]
struct IstioTcpMetrics {
    opened: Family<IstioTcpLabels, Counter>,
    closed: Family<IstioTcpLabels, Counter>,
    sent: Family<IstioTcpLabels, Counter>,
    received: Family<IstioTcpLabels, Counter>,
    /// Keyed by a hash of what the labels are made from (both ends, service, flags, mTLS).
    series: SeriesCache<TcpSeries>,
}

/// One label set's four series, held so a connection whose labels were seen before (the usual case) is counted
/// without building a dozen label strings and hashing them into four families, twice per connection.
#[derive(Clone)]
struct TcpSeries {
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl IstioTcpMetrics {
    fn series(&self, record: &ConnectionRecord) -> TcpSeries {
        fn peer(p: &Peer) -> (Option<&str>, Option<&Identity>) {
            (p.workload.as_deref(), p.identity.as_ref())
        }
        let key = stable_hash((
            record.direction,
            peer(&record.source_peer),
            peer(&record.destination_peer),
            record.destination_service.as_deref(),
            IstioTcpLabels::response_flags(record),
            record.mutual_tls,
        ));
        self.series.get_or_make(key, || {
            let labels = IstioTcpLabels::of(record);
            TcpSeries {
                opened: self.opened.get_or_create(&labels).clone(),
                closed: self.closed.get_or_create(&labels).clone(),
                sent: self.sent.get_or_create(&labels).clone(),
                received: self.received.get_or_create(&labels).clone(),
            }
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DirectionStats {
    pub opened: u64,
    pub closed: u64,
    pub active: i64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionStats {
    pub outbound: DirectionStats,
    pub inbound: DirectionStats,
}

pub struct Telemetry {
    registry: Registry,
    /// Istio's HTTP metrics, counted by the L7 engine.
    pub http: Arc<http::HttpMetrics>,
    istio: IstioTcpMetrics,
    hbone_handshake_failures: Counter,
    refused: Family<RefusalLabels, Counter>,
    outbound: DirectionMetrics,
    inbound: DirectionMetrics,
    recent: Mutex<VecDeque<ConnectionRecord>>,
    /// Span export, when `--tracing-otlp-endpoint` is set.
    traces: Option<traces::Traces>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut root = Registry::default();
        let istio = IstioTcpMetrics::default();
        root.register("istio_tcp_connections_opened", "TCP connections opened (Istio standard)", istio.opened.clone());
        root.register("istio_tcp_connections_closed", "TCP connections closed (Istio standard)", istio.closed.clone());
        root.register("istio_tcp_sent_bytes", "Bytes sent by the client over TCP (Istio standard)", istio.sent.clone());
        root.register("istio_tcp_received_bytes", "Bytes the client received over TCP (Istio standard)", istio.received.clone());
        let http = Arc::new(http::HttpMetrics::register(&mut root));
        let hbone_handshake_failures = Counter::default();
        let registry = root.sub_registry_with_prefix("keel");
        registry.register(
            "hbone_handshake_failures",
            "HBONE connections refused before any stream (TLS, identity, trust domain, HTTP/2)",
            hbone_handshake_failures.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register("connections_refused", "Connections keel refused before carrying them, by reason", refused.clone());
        let opened = Family::<DirectionLabels, Counter>::default();
        let closed = Family::<DirectionLabels, Counter>::default();
        let errors = Family::<DirectionLabels, Counter>::default();
        let sent = Family::<DirectionLabels, Counter>::default();
        let received = Family::<DirectionLabels, Counter>::default();
        let active = Family::<DirectionLabels, Gauge>::default();
        registry.register("connections_opened", "TCP connections keel accepted from capture", opened.clone());
        registry.register("connections_closed", "TCP connections keel finished relaying", closed.clone());
        registry.register("connection_errors", "Connections that ended in an error", errors.clone());
        registry.register("sent_bytes", "Bytes relayed from client to server", sent.clone());
        registry.register("received_bytes", "Bytes relayed from server to client", received.clone());
        registry.register("connections_active", "Connections being relayed now", active.clone());
        let metrics_for = |direction: DirectionLabel| {
            let labels = DirectionLabels { direction };
            DirectionMetrics {
                opened: opened.get_or_create_owned(&labels),
                closed: closed.get_or_create_owned(&labels),
                errors: errors.get_or_create_owned(&labels),
                bytes_sent: sent.get_or_create_owned(&labels),
                bytes_received: received.get_or_create_owned(&labels),
                active: active.get_or_create_owned(&labels),
            }
        };
        Telemetry {
            outbound: metrics_for(DirectionLabel::outbound),
            inbound: metrics_for(DirectionLabel::inbound),
            registry: root,
            http,
            istio,
            hbone_handshake_failures,
            refused,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CONNECTIONS)),
            traces: None,
        }
    }

    /// The same, exporting the L7 engine's spans with `traces`.
    pub fn with_traces(self, traces: Option<traces::Traces>) -> Telemetry {
        Telemetry { traces, ..self }
    }

    pub fn traces(&self) -> Option<&traces::Traces> {
        self.traces.as_ref()
    }

    fn metrics(&self, direction: Direction) -> &DirectionMetrics {
        match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    pub fn connection_opened(&self, direction: Direction) {
        let m = self.metrics(direction);
        m.opened.inc();
        m.active.inc();
    }

    /// Istio's "opened" count, once keel knows both ends of the connection.
    pub fn connection_identified(&self, record: &ConnectionRecord) {
        self.istio.series(record).opened.inc();
    }

    pub fn hbone_handshake_failed(&self) {
        self.hbone_handshake_failures.inc();
    }

    pub fn refused(&self, reason: Refusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Refusals so far by reason (only reasons that happened).
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        Refusal::ALL
            .iter()
            .filter_map(|&reason| {
                let n = self.refused.get(&RefusalLabels { reason }).map(|c| c.get()).unwrap_or(0);
                (n > 0).then_some((reason.as_str(), n))
            })
            .collect()
    }

    /// Counts the connection's end, logs its line and keeps it for the `connections` API.
    pub fn connection_closed(&self, record: ConnectionRecord, elapsed: Duration) {
        let series = self.istio.series(&record);
        series.closed.inc();
        series.sent.inc_by(record.bytes_sent);
        series.received.inc_by(record.bytes_received);
        let m = self.metrics(record.direction);
        m.closed.inc();
        m.active.dec();
        m.bytes_sent.inc_by(record.bytes_sent);
        m.bytes_received.inc_by(record.bytes_received);
        if record.error.is_some() {
            m.errors.inc();
        }
        access_log::write(&ConnectionLine {
            direction: match record.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            },
            pod: &record.pod,
            downstream_remote_address: record.source,
            downstream_local_address: record.original_destination,
            upstream_host: record.upstream,
            src_workload: record.source_peer.workload.as_deref(),
            src_identity: record.source_peer.identity.as_ref(),
            dst_workload: record.destination_peer.workload.as_deref(),
            dst_identity: record.destination_peer.identity.as_ref(),
            dst_service: record.destination_service.as_deref(),
            path: record.path.map_or("-", Path::as_str),
            mtls: record.mutual_tls,
            policy: record.policy.as_deref().unwrap_or("-"),
            response_flags: record.response_flags.unwrap_or("-"),
            bytes_sent: record.bytes_sent,
            bytes_received: record.bytes_received,
            duration: elapsed.as_millis() as u64,
            connection_termination_details: record.error.as_deref().unwrap_or(""),
        });
        if let Some(traces) = self.traces.as_ref().filter(|t| t.l4_connections()) {
            connection_span(traces, &record, elapsed);
        }
        let mut recent = self.recent.lock().expect("recent connections poisoned");
        if recent.len() == RECENT_CONNECTIONS {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    pub fn recent_connections(&self) -> Vec<ConnectionRecord> {
        self.recent.lock().expect("recent connections poisoned").iter().cloned().collect()
    }

    pub fn connection_stats(&self) -> ConnectionStats {
        let read = |m: &DirectionMetrics| DirectionStats {
            opened: m.opened.get(),
            closed: m.closed.get(),
            active: m.active.get(),
            bytes_sent: m.bytes_sent.get(),
            bytes_received: m.bytes_received.get(),
            errors: m.errors.get(),
        };
        ConnectionStats { outbound: read(&self.outbound), inbound: read(&self.inbound) }
    }

    /// Prometheus text exposition.
    /// The traffic metrics and `more` (the daemon's health, read at scrape time) in one OpenMetrics exposition.
    pub fn encode_metrics(&self, more: &Registry) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry).expect("writing to a String");
        encode_registry(&mut out, more).expect("writing to a String");
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

/// A closed connection's span (`--tracing-l4-connections`), reported as the workload whose side keel was on.
fn connection_span(traces: &traces::Traces, record: &ConnectionRecord, elapsed: Duration) {
    let outbound = record.direction == Direction::Outbound;
    let own = if outbound { &record.source_peer } else { &record.destination_peer }.istio_labels();
    let dialled = record.original_destination.to_string();
    traces.connection(&traces::ConnectionSpanFacts {
        outbound,
        destination: record.destination_service.as_deref().unwrap_or(&dialled),
        original_destination: record.original_destination,
        peer: if outbound { record.upstream.unwrap_or(record.original_destination) } else { record.source },
        path: record.path.map_or("-", Path::as_str),
        mutual_tls: record.mutual_tls,
        policy: record.policy.as_deref().unwrap_or(""),
        response_flags: record.response_flags.unwrap_or("-"),
        error: record.error.as_deref().unwrap_or(""),
        bytes_sent: record.bytes_sent,
        bytes_received: record.bytes_received,
        canonical: (&own.canonical_service, &own.canonical_revision, &own.namespace),
        started: std::time::SystemTime::now() - elapsed,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: Direction, sent: u64, error: Option<&str>) -> ConnectionRecord {
        ConnectionRecord {
            original_destination: "10.244.0.12:8080".parse().unwrap(),
            bytes_sent: sent,
            bytes_received: 2 * sent,
            duration_ms: 1.0,
            error: error.map(Into::into),
            ..ConnectionRecord::new(direction, "default/a", "10.244.0.11:40000".parse().unwrap())
        }
    }

    #[test]
    fn counts_per_direction_and_keeps_recent_connections() {
        let t = Telemetry::new();
        t.connection_opened(Direction::Outbound);
        t.connection_opened(Direction::Outbound);
        t.connection_closed(record(Direction::Outbound, 10, None), Duration::from_millis(1));
        t.connection_opened(Direction::Inbound);
        t.connection_closed(record(Direction::Inbound, 5, Some("reset")), Duration::from_millis(1));
        let stats = t.connection_stats();
        assert_eq!(stats.outbound, DirectionStats { opened: 2, closed: 1, active: 1, bytes_sent: 10, bytes_received: 20, errors: 0 });
        assert_eq!(stats.inbound.errors, 1);
        assert_eq!(t.recent_connections().len(), 2);
        let text = t.encode_metrics(&Registry::default());
        assert!(text.contains("keel_sent_bytes_total{direction=\"outbound\"} 10"), "{text}");
    }

    #[test]
    fn recent_connections_are_bounded() {
        let t = Telemetry::new();
        for i in 0..(RECENT_CONNECTIONS as u64 + 10) {
            t.connection_opened(Direction::Outbound);
            t.connection_closed(record(Direction::Outbound, i, None), Duration::ZERO);
        }
        let recent = t.recent_connections();
        assert_eq!(recent.len(), RECENT_CONNECTIONS);
        assert_eq!(recent[0].bytes_sent, 10, "the oldest ones are dropped first");
    }
}
