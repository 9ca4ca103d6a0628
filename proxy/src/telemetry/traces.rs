//! Trace export: one SERVER span (the request keel received) and one CLIENT span (the request it sent on, a child
//! of the first) per request through the L7 engine, exported over OTLP (gRPC or HTTP/protobuf) by the OpenTelemetry
//! SDK's batching processor: a bounded queue (spans beyond it are dropped, never buffered without end), batches
//! sent every second, each export bounded in time, so a collector that is down or slow costs keel nothing but the
//! spans. Sampling has Istio's meaning (`meshConfig.defaultConfig.tracing.sampling`, a percentage): a request that
//! arrives with a sampling decision (W3C `traceparent` flags, B3 `x-b3-sampled`) keeps it, a new trace is sampled
//! at that rate, and the decision travels on in the headers keel sets (`trace_headers`). Attribute names are
//! Envoy's in Istio (`http.method`, `http.url`, `http.status_code`, `upstream_cluster`, `istio.canonical_service`,
//! `peer.address`, `response_flags`, ...).
use std::{net::SocketAddr, time::Duration};

use opentelemetry::{
    trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState, Tracer as _},
    Context, KeyValue,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};

/// How keel exports spans (`--tracing-*` flags).
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// `http://collector:4317` (gRPC) or `http://collector:4318/v1/traces` (HTTP/protobuf).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Percentage of new traces sampled (Istio's default is 1).
    pub sampling_percent: f64,
    /// At most this many finished spans wait for export; more are dropped.
    pub max_queued_spans: usize,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Also a span per closed L4 connection (keel's relays, HBONE streams, refusals).
    pub l4_connections: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Each export gives up after this (the batch is dropped; the next one is tried afresh).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BATCH: usize = 512;

/// The exporter and its tracer. Dropping it flushes what is queued (bounded by the export timeout).
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    l4_connections: bool,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Traces")
    }
}

impl Traces {
    /// Builds the exporter. For gRPC this must run inside keel's tokio runtime (the exporter's channel lives there).
    pub fn start(settings: &TraceSettings) -> anyhow::Result<Traces> {
        use anyhow::Context as _;
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&settings.endpoint).with_timeout(EXPORT_TIMEOUT).build()
            }
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&settings.endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .with_context(|| format!("--tracing-otlp-endpoint {}", settings.endpoint))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queued_spans.max(1))
            .with_max_export_batch_size(MAX_BATCH.min(settings.max_queued_spans.max(1)))
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
        let ratio = (settings.sampling_percent / 100.0).clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(Resource::builder().with_service_name(settings.service_name.clone()).build())
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "keel");
        Ok(Traces { provider, tracer, l4_connections: settings.l4_connections })
    }

    /// Whether closed L4 connections become spans too.
    pub fn l4_connections(&self) -> bool {
        self.l4_connections
    }

    /// One closed connection as a span of its own trace (sampled at the configured rate: a byte stream carries
    /// no caller's context): CLIENT for an outbound connection, SERVER for an inbound one, from when it was
    /// accepted to now, with the facts its access-log line has.
    pub fn connection(&self, c: &ConnectionSpanFacts<'_>) {
        let kind = if c.outbound { SpanKind::Client } else { SpanKind::Server };
        let (service, revision, namespace) = c.canonical;
        let peer = c.peer.to_string();
        let mut attributes = vec![
            KeyValue::new("net.peer.address", peer.clone()),
            KeyValue::new("peer.address", peer),
            KeyValue::new("downstream_local_address", c.original_destination.to_string()),
            KeyValue::new("keel.path", c.path.to_owned()),
            KeyValue::new("connection_security_policy", if c.mutual_tls { "mutual_tls" } else { "none" }),
            KeyValue::new("bytes_sent", c.bytes_sent as i64),
            KeyValue::new("bytes_received", c.bytes_received as i64),
            KeyValue::new("response_flags", c.response_flags.to_owned()),
            KeyValue::new("istio.canonical_service", service.to_owned()),
            KeyValue::new("istio.canonical_revision", revision.to_owned()),
            KeyValue::new("istio.namespace", namespace.to_owned()),
            KeyValue::new("component", "proxy"),
        ];
        if !c.policy.is_empty() {
            attributes.push(KeyValue::new("keel.policy", c.policy.to_owned()));
        }
        let mut span = self
            .tracer
            .span_builder(format!("tcp {}", c.destination))
            .with_kind(kind)
            .with_start_time(c.started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        if !c.error.is_empty() {
            span.set_status(Status::error(c.error.to_owned()));
        }
        span.end();
    }

    /// Starts a request's two spans under the caller's context (`parent`: its trace id, span id and sampling
    /// decision, from the headers it sent).
    pub fn start_request(&self, parent: Option<RemoteParent>) -> RequestSpans {
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(p.trace_id),
                opentelemetry::trace::SpanId::from_bytes(p.span_id),
                if p.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let server = self.tracer.span_builder("request").with_kind(SpanKind::Server).start_with_context(&self.tracer, &parent_cx);
        let server = parent_cx.with_span(server);
        let client = self.tracer.span_builder("request").with_kind(SpanKind::Client).start_with_context(&self.tracer, &server);
        RequestSpans { client: server.with_span(client), server }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
    }
}

/// The caller's span, read from the request's trace headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// One request's spans, ended when the request is reported.
#[derive(Clone, Debug)]
pub struct RequestSpans {
    server: Context,
    client: Context,
}

/// What a connection's span says about it.
pub struct ConnectionSpanFacts<'a> {
    pub outbound: bool,
    /// The service it was for, else the address dialled: the span is named `tcp <destination>`.
    pub destination: &'a str,
    pub original_destination: SocketAddr,
    /// The other end: the upstream keel connected to (outbound), the client (inbound).
    pub peer: SocketAddr,
    pub path: &'a str,
    pub mutual_tls: bool,
    pub policy: &'a str,
    pub response_flags: &'a str,
    pub error: &'a str,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The reporting side's workload: its canonical service, revision and namespace.
    pub canonical: (&'a str, &'a str, &'a str),
    pub started: std::time::SystemTime,
}

/// What the spans say about a finished request.
pub struct SpanFacts<'a> {
    pub name: &'a str,
    pub method: &'a str,
    pub url: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub upstream_cluster: &'a str,
    pub response_flags: &'a str,
    pub downstream: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    /// The reporting side's workload: its canonical service, revision and namespace.
    pub canonical: (&'a str, &'a str, &'a str),
    pub request_size: u64,
    pub response_size: u64,
}

impl RequestSpans {
    /// The trace id, the span id the next hop sees as its parent (the CLIENT span's), and whether the trace is
    /// sampled: what `trace_headers` writes on the request sent on.
    pub fn outgoing(&self) -> ([u8; 16], [u8; 8], [u8; 8], bool) {
        let client = self.client.span().span_context().clone();
        let server = self.server.span().span_context().span_id();
        (client.trace_id().to_bytes(), client.span_id().to_bytes(), server.to_bytes(), client.is_sampled())
    }

    /// Ends both spans with what the request came to.
    pub fn end(&self, facts: &SpanFacts<'_>) {
        let (service, revision, namespace) = facts.canonical;
        let common = |peer: Option<SocketAddr>| {
            let mut attributes = vec![
                KeyValue::new("http.method", facts.method.to_owned()),
                KeyValue::new("http.url", facts.url.to_owned()),
                KeyValue::new("http.protocol", facts.protocol.to_owned()),
                KeyValue::new("http.status_code", i64::from(facts.status)),
                KeyValue::new("upstream_cluster", facts.upstream_cluster.to_owned()),
                KeyValue::new("response_flags", facts.response_flags.to_owned()),
                KeyValue::new("guid:x-request-id", facts.request_id.to_owned()),
                KeyValue::new("istio.canonical_service", service.to_owned()),
                KeyValue::new("istio.canonical_revision", revision.to_owned()),
                KeyValue::new("istio.namespace", namespace.to_owned()),
                KeyValue::new("request_size", facts.request_size as i64),
                KeyValue::new("response_size", facts.response_size as i64),
                KeyValue::new("component", "proxy"),
            ];
            if let Some(peer) = peer {
                attributes.push(KeyValue::new("peer.address", peer.to_string()));
            }
            attributes
        };
        let now = std::time::SystemTime::now();
        for (cx, peer) in [(&self.client, facts.upstream), (&self.server, facts.downstream)] {
            let span = cx.span();
            span.update_name(facts.name.to_owned());
            span.set_attributes(common(peer));
            if facts.status >= 500 || facts.status == 0 {
                span.set_status(Status::error(format!("{} {}", facts.status, facts.response_flags)));
            }
            span.end_with_timestamp(now);
        }
    }
}
