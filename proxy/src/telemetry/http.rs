//! Istio's standard HTTP metrics and one access-log line per request. A request's record is filled in as it
//! goes and reported once, when its response body ends (so durations and sizes cover the whole exchange).
use std::{borrow::Cow, sync::Arc};

use super::{
    access_log::{self, AccessLine},
    series_cache::SeriesCache,
    IstioPeersLabels, Peer,
};
use crate::hashing::stable_hash;
use keel_proto::workload::Workload;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for request and response sizes.
const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// One request as keel saw it. Filled in on the request path, so it holds what keel already has (shared
/// workloads, the cluster's name) and the metric labels and the log line are made from it only when reported.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub pod: Arc<str>,
    pub method: ::http::Method,
    pub authority: String,
    pub path: String,
    /// Istio's `request_protocol`: `http` or `grpc`.
    pub protocol: &'static str,
    /// The HTTP version the client spoke (the access log's `protocol`, as Envoy's `%PROTOCOL%`).
    pub version: ::http::Version,
    pub request_id: String,
    /// The calling workload, when keel knows it.
    pub source: Option<Arc<Workload>>,
    /// The workload behind the endpoint of the last attempt.
    pub destination: Option<Arc<Workload>>,
    pub route: String,
    /// The Envoy cluster picked (`outbound|<port>|<subset>|<host>`), empty before routing.
    pub cluster: String,
    /// Whether `cluster` exists: its host is then the destination service.
    pub cluster_found: bool,
    pub upstream: Option<std::net::SocketAddr>,
    pub mutual_tls: bool,
    pub status: u16,
    pub grpc_status: Option<String>,
    /// Envoy response flags (`UH`, `UO`, `UT`, `URX`, `FI`, `DI`, ...), comma-separated; empty = `-`.
    pub flags: Vec<&'static str>,
    /// Envoy's `response_code_details`, where the code that answered said more than its flags do (an
    /// authorization or JWT denial); otherwise derived from the flags when reported ([`Self::details`]).
    pub details: Option<Cow<'static, str>>,
    /// Why each retried attempt was retried (`503`, `connect-failure`, `reset`, `per-try-timeout`, `grpc-14`),
    /// in order; empty (and unallocated) for a request keel did not retry.
    pub retried_on: Vec<String>,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    /// Which side reports: `source` (the client's keel, routing) or `destination` (the server's keel, which
    /// decides the request's authorization).
    pub reporter: &'static str,
    /// The authorization decision, on the destination side (`allowed by ALLOW policy demo/reads`, ...).
    pub policy: Option<String>,
    /// `<iss>/<sub>` of the request's verified JWT (destination side).
    pub request_principal: Option<String>,
    /// The request's spans, when keel exports traces (ended when the request is reported).
    pub spans: Option<super::traces::RequestSpans>,
}

impl RequestRecord {
    pub fn new(pod: Arc<str>, method: ::http::Method, protocol: &'static str, request_id: String, source: Option<Arc<Workload>>) -> RequestRecord {
        RequestRecord {
            pod,
            method,
            authority: String::new(),
            path: String::new(),
            protocol,
            version: ::http::Version::HTTP_11,
            request_id,
            source,
            destination: None,
            route: String::new(),
            cluster: String::new(),
            cluster_found: false,
            upstream: None,
            mutual_tls: false,
            status: 0,
            grpc_status: None,
            flags: Vec::new(),
            details: None,
            retried_on: Vec::new(),
            attempts: 0,
            request_bytes: 0,
            response_bytes: 0,
            duration_ms: 0.0,
            reporter: "source",
            policy: None,
            request_principal: None,
            spans: None,
        }
    }

    pub fn flag(&mut self, flag: &'static str) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    /// The flags as Envoy writes them: comma-separated, `-` when there are none (borrowed then: the usual case
    /// costs no allocation).
    pub fn flags_label(&self) -> Cow<'static, str> {
        if self.flags.is_empty() {
            Cow::Borrowed("-")
        } else {
            Cow::Owned(self.flags.join(","))
        }
    }

    /// Envoy's `response_code_details`: what the code that answered set, or what its flags mean in Envoy's
    /// words (`route_not_found`, `upstream_response_timeout`, ...), or `via_upstream` for an upstream's own
    /// answer and `direct_response` for keel's (a route's redirect or direct response).
    pub fn details(&self) -> &str {
        if let Some(details) = &self.details {
            return details;
        }
        // The flag that ended the request decides (the last one set: a retry's `URX` after the attempt's).
        let from_flags = self.flags.iter().rev().find_map(|flag| {
            Some(match *flag {
                "NR" => "route_not_found",
                "NC" => "cluster_not_found",
                "UH" => "no_healthy_upstream",
                "UT" => "upstream_response_timeout",
                "UO" => "upstream_reset_before_response_started{overflow}",
                "UF" => "upstream_reset_before_response_started{connection_failure}",
                "UC" => "upstream_reset_before_response_started{connection_termination}",
                "UR" => "upstream_reset_before_response_started{remote_refused_stream_reset}",
                "FI" => "fault_filter_abort",
                "DPE" => "downstream_protocol_error",
                "UPE" => "upstream_protocol_error",
                "DC" => "downstream_remote_disconnect",
                _ => return None,
            })
        });
        from_flags.unwrap_or(if self.upstream.is_some() { "via_upstream" } else { "direct_response" })
    }

    /// The destination service's host, read from the cluster's name as Istio's telemetry does (no lookup).
    pub fn service_host(&self) -> Option<&str> {
        if !self.cluster_found {
            return None;
        }
        self.cluster.rsplit('|').next()
    }
}

/// Envoy's `%PROTOCOL%`.
fn version_name(version: ::http::Version) -> &'static str {
    match version {
        ::http::Version::HTTP_10 => "HTTP/1.0",
        ::http::Version::HTTP_2 => "HTTP/2",
        ::http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IstioHttpLabels {
    reporter: &'static str,
    #[prometheus(flatten)]
    peers: IstioPeersLabels,
    request_protocol: &'static str,
    response_code: u16,
    grpc_response_status: String,
    response_flags: String,
    connection_security_policy: &'static str,
}

impl IstioHttpLabels {
    fn of(r: &RequestRecord) -> IstioHttpLabels {
        IstioHttpLabels {
            reporter: r.reporter,
            peers: IstioPeersLabels::of(&Peer::of(r.source.as_ref()), &Peer::of(r.destination.as_ref()), r.service_host()),
            request_protocol: r.protocol,
            response_code: r.status,
            grpc_response_status: r.grpc_status.clone().unwrap_or_default(),
            response_flags: r.flags_label().into_owned(),
            connection_security_policy: if r.mutual_tls { "mutual_tls" } else { "none" },
        }
    }
}

type HistogramFamily = Family<IstioHttpLabels, Histogram, fn() -> Histogram>;

/// One label set's four series, held so a request whose labels were seen before is counted without building
/// and hashing the label set again (16 labels, four families).
#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<IstioHttpLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    /// Keyed by a hash of what the labels are made from (source, destination, status, flags, ...).
    series: Arc<SeriesCache<Series>>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS_MS)),
            request_bytes: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
            response_bytes: Family::new_with_constructor(|| Histogram::new(SIZE_BUCKETS)),
            series: Arc::default(),
        };
        registry.register("istio_requests", "Requests (Istio standard)", m.requests.clone());
        registry.register("istio_request_duration_milliseconds", "Request duration (Istio standard)", m.duration.clone());
        registry.register("istio_request_bytes", "Request body sizes (Istio standard)", m.request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes (Istio standard)", m.response_bytes.clone());
        m
    }

    fn series(&self, r: &RequestRecord) -> Series {
        // Everything the labels are made of, hashed from where it already is (nothing built per request).
        fn workload(w: Option<&Arc<Workload>>) -> Option<[&str; 7]> {
            w.map(|w| {
                [
                    w.namespace.as_str(),
                    w.name.as_str(),
                    w.service_account.as_str(),
                    w.trust_domain.as_str(),
                    w.canonical_name.as_str(),
                    w.canonical_revision.as_str(),
                    w.cluster_id.as_str(),
                ]
            })
        }
        let key = stable_hash((
            (&*r.pod, workload(r.source.as_ref()), workload(r.destination.as_ref()), r.service_host()),
            (r.protocol, r.status, &r.grpc_status, &r.flags, r.mutual_tls, r.reporter),
        ));
        self.series.get_or_make(key, || {
            let labels = IstioHttpLabels::of(r);
            Series {
                requests: self.requests.get_or_create(&labels).clone(),
                duration: self.duration.get_or_create(&labels).clone(),
                request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            }
        })
    }

    /// Ends the request's spans (when traces are exported) with Envoy's attributes.
    fn end_spans(r: &RequestRecord) {
        let Some(spans) = &r.spans else { return };
        // Envoy's operation name in Istio: `<service host>:<port>/*`, from the cluster `outbound|<port>|<subset>|<host>`.
        let mut cluster = r.cluster.split('|');
        let name = match (cluster.next(), cluster.next(), cluster.nth(1)) {
            (Some(_), Some(port), Some(host)) if r.cluster_found => format!("{host}:{port}/*"),
            _ => format!("{}/*", r.authority),
        };
        let url = format!("http://{}{}", r.authority, r.path);
        let flags = r.flags_label();
        // The reporting side's workload: the caller at the source, the application at the destination.
        let own = Peer::of(if r.reporter == "destination" { r.destination.as_ref() } else { r.source.as_ref() }).istio_labels();
        spans.end(&super::traces::SpanFacts {
            name: &name,
            method: r.method.as_str(),
            url: &url,
            protocol: r.protocol,
            status: r.status,
            request_id: &r.request_id,
            upstream_cluster: &r.cluster,
            response_flags: &flags,
            downstream: None,
            upstream: r.upstream,
            canonical: (&own.canonical_service, &own.canonical_revision, &own.namespace),
            request_size: r.request_bytes,
            response_size: r.response_bytes,
        });
    }

    /// Counts the finished request, ends its spans and writes its access-log line.
    pub fn record(&self, r: &RequestRecord) {
        Self::end_spans(r);
        let series = self.series(r);
        series.requests.inc();
        series.duration.observe(r.duration_ms);
        series.request_bytes.observe(r.request_bytes as f64);
        series.response_bytes.observe(r.response_bytes as f64);
        let flags = r.flags_label();
        fn workload(w: Option<&Arc<Workload>>) -> Option<access_log::Workload<'_>> {
            w.map(|w| access_log::Workload { namespace: &w.namespace, name: &w.name })
        }
        let duration = std::time::Duration::from_secs_f64(r.duration_ms / 1e3);
        access_log::write(&AccessLine {
            start_time: access_log::Timestamp(std::time::SystemTime::now() - duration),
            method: r.method.as_str(),
            authority: &r.authority,
            path: &r.path,
            protocol: version_name(r.version),
            response_code: r.status,
            response_flags: &flags,
            response_code_details: r.details(),
            grpc_status: r.grpc_status.as_deref().unwrap_or("-"),
            route_name: if r.route.is_empty() { "-" } else { &r.route },
            upstream_cluster: if r.cluster.is_empty() { "-" } else { &r.cluster },
            upstream_host: r.upstream,
            upstream_request_attempt_count: r.attempts,
            retried_on: &r.retried_on,
            bytes_received: r.request_bytes,
            bytes_sent: r.response_bytes,
            duration: duration.as_millis() as u64,
            request_id: &r.request_id,
            pod: &r.pod,
            src_workload: workload(r.source.as_ref()),
            dst_workload: workload(r.destination.as_ref()),
            reporter: r.reporter,
            policy: r.policy.as_deref().unwrap_or("-"),
            request_principal: r.request_principal.as_deref().unwrap_or("-"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_code_details_say_why_in_envoys_words() {
        let mut r = RequestRecord::new("default/sleep".into(), ::http::Method::GET, "http", String::new(), None);
        assert_eq!(r.details(), "direct_response", "answered by keel without an upstream");
        r.upstream = Some("10.0.1.5:8080".parse().unwrap());
        assert_eq!(r.details(), "via_upstream");
        r.flag("UF");
        assert_eq!(r.details(), "upstream_reset_before_response_started{connection_failure}");
        r.flag("UT");
        assert_eq!(r.details(), "upstream_response_timeout", "the flag that ended the request decides");
        r.details = Some("rbac_access_denied_matched_policy[none]".into());
        assert_eq!(r.details(), "rbac_access_denied_matched_policy[none]");
        assert_eq!(version_name(::http::Version::HTTP_2), "HTTP/2");
    }
}
