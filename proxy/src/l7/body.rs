//! Bodies the engine hands out: a local answer, a buffered request body (what makes a request retriable and
//! mirrorable), and the response body that reports its request when it ends.
use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};

use crate::telemetry::http::{HttpMetrics, RequestRecord};

pub type HttpBody = BoxBody<Bytes, hyper::Error>;

/// A body that is all here already.
pub fn full(bytes: impl Into<Bytes>) -> HttpBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Request bodies up to this size are kept in memory so a retry or a mirror can send them again; larger or
/// unbounded ones (streams) are sent once, without retries.
pub const MAX_BUFFERED_REQUEST: u64 = 64 * 1024;

/// Reads the whole body if its declared size allows buffering; otherwise gives it back untouched.
pub async fn buffer_if_small(body: HttpBody) -> Result<Result<Bytes, HttpBody>, hyper::Error> {
    if body.is_end_stream() {
        // No body (most GETs): nothing to read or keep.
        return Ok(Ok(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(upper) if upper <= MAX_BUFFERED_REQUEST => Ok(Ok(body.collect().await?.to_bytes())),
        _ => Ok(Err(body)),
    }
}

/// The response body given to the client: counts bytes, notes a gRPC status from trailers, and reports the
/// request (metrics and access log) when it ends or is dropped.
pub struct ReportingBody {
    inner: HttpBody,
    report: Option<(RequestRecord, Arc<HttpMetrics>, Instant)>,
}

impl ReportingBody {
    pub fn new(inner: HttpBody, record: RequestRecord, metrics: Arc<HttpMetrics>, started: Instant) -> ReportingBody {
        ReportingBody { inner, report: Some((record, metrics, started)) }
    }

    fn finish(&mut self) {
        if let Some((mut record, metrics, started)) = self.report.take() {
            record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
            metrics.record(&record);
        }
    }
}

impl Body for ReportingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some((record, ..))) = (f.data_ref(), self.report.as_mut()) {
                    record.response_bytes += data.len() as u64;
                }
                if let (Some(trailers), Some((record, ..))) = (f.trailers_ref(), self.report.as_mut()) {
                    if let Some(status) = trailers.get("grpc-status").and_then(|v| v.to_str().ok()) {
                        record.grpc_status = Some(status.to_owned());
                    }
                }
            }
            Some(Err(_)) => {
                if let Some((record, ..)) = self.report.as_mut() {
                    record.flag("UPE");
                }
                self.finish();
            }
            None => self.finish(),
        }
        if self.inner.is_end_stream() {
            self.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReportingBody {
    fn drop(&mut self) {
        if let Some((record, ..)) = self.report.as_mut() {
            if !self.inner.is_end_stream() {
                // The client went away before the response ended (Envoy's DC).
                record.flag("DC");
            }
        }
        self.finish();
    }
}
