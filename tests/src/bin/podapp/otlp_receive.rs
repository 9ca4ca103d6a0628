//! `podapp otlp-receive`: an OTLP trace receiver, gRPC (`TraceService/Export`, the OpenTelemetry project's own
//! generated service) and HTTP/protobuf (`POST /v1/traces`) on two ports. Every span received is printed as one
//! JSON line (`{"span": {...}}`) with its ids in hex, kind, name, attributes, resource `service.name` and the
//! protocol it came by, for the test to read from the log.
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value as AnyValue,
};
use prost::Message as _;
use serde_json::json;

use crate::{emit, runtime};

/// Largest HTTP export accepted.
const MAX_BODY: usize = 16 << 20;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 4317)]
    grpc_port: u16,
    #[arg(long, default_value_t = 4318)]
    http_port: u16,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_spans(request: &ExportTraceServiceRequest, via: &str) {
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let attributes: BTreeMap<&str, serde_json::Value> = span
                .attributes
                .iter()
                .filter_map(|a| {
                    let value = match a.value.as_ref()?.value.as_ref()? {
                        AnyValue::StringValue(s) => json!(s),
                        AnyValue::IntValue(i) => json!(i),
                        AnyValue::BoolValue(b) => json!(b),
                        AnyValue::DoubleValue(d) => json!(d),
                        _ => return None,
                    };
                    Some((a.key.as_str(), value))
                })
                .collect();
            emit(&json!({"span": {
                "via": via,
                "service": service,
                "trace_id": hex(&span.trace_id),
                "span_id": hex(&span.span_id),
                "parent_span_id": hex(&span.parent_span_id),
                "name": span.name,
                "kind": span.kind,
                "status_code": span.status.as_ref().map(|s| s.code).unwrap_or_default(),
                "duration_ns": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano),
                "attributes": attributes,
            }}));
        }
    }
}

struct Receiver;

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        print_spans(request.get_ref(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn http_export(request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert("content-type", "application/x-protobuf".parse().expect("static"));
        Ok(r)
    };
    if request.method() != hyper::Method::POST || request.uri().path() != "/v1/traces" {
        return reply(StatusCode::NOT_FOUND, Vec::new());
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, Vec::new()),
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(export) => {
            print_spans(&export, "http");
            reply(StatusCode::OK, ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
        }
        Err(_) => reply(StatusCode::BAD_REQUEST, Vec::new()),
    }
}

pub fn run(args: Args) -> bool {
    let Some(rt) = runtime() else { return false };
    rt.block_on(async move {
        let grpc_addr = SocketAddr::from(([0, 0, 0, 0], args.grpc_port));
        let http = match tokio::net::TcpListener::bind(("0.0.0.0", args.http_port)).await {
            Ok(l) => l,
            Err(e) => {
                emit(&json!({"error": format!("bind 0.0.0.0:{}: {e}", args.http_port)}));
                return false;
            }
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http.accept().await else { continue };
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(http_export)));
            }
        });
        let grpc = match tokio::net::TcpListener::bind(grpc_addr).await {
            Ok(l) => l,
            Err(e) => {
                emit(&json!({"error": format!("bind {grpc_addr}: {e}")}));
                return false;
            }
        };
        emit(&json!({"listening": {"grpc": args.grpc_port, "http": args.http_port}}));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        match tonic::transport::Server::builder().add_service(TraceServiceServer::new(Receiver)).serve_with_incoming(incoming).await {
            Ok(()) => true,
            Err(e) => {
                emit(&json!({"error": format!("gRPC server: {e}")}));
                false
            }
        }
    })
}
