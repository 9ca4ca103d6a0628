//! The HTTP access log: one line per request, written straight into the log's buffer.
//!
//! These are the only lines keel writes at request rate. Going through `tracing`'s formatter cost about 7 % of keel's
//! CPU per request under load (a visitor call, a dynamic write and JSON escaping per field, a timestamp built through
//! `fmt`); here a line is one `serde_json` serialisation of a borrowed struct (or one `write!` for text) into a
//! per-thread buffer. The lines keep the shape `tracing` gave them (`KEEL_LOG` still filters them by the target
//! `keel::access`; `--log-format json` is one object per line with `timestamp`, `level`, `message`, the fields and
//! `target`), so nothing reading keel's log has to change.
use std::{
    cell::RefCell,
    fmt::Write as _,
    io::Write as _,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// Where finished lines go (the buffered access log of `crate::logging`), and their format.
pub struct Sink {
    pub json: bool,
    pub write: Box<dyn Fn(&[u8]) + Send + Sync>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the access log's destination, once per process (later calls are ignored, as a second global
/// subscriber would be).
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// The target `KEEL_LOG` filters access-log lines by.
pub const TARGET: &str = "keel::access";

/// One request's access-log line. Borrowed: nothing is copied to write it.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub pod: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub grpc_status: &'a str,
    pub flags: &'a str,
    pub route: &'a str,
    pub cluster: &'a str,
    #[serde(serialize_with = "serialize_upstream")]
    pub upstream: Option<std::net::SocketAddr>,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    pub request_id: &'a str,
    /// `(namespace, name)`, written `namespace/name`.
    #[serde(serialize_with = "serialize_workload")]
    pub src_workload: Option<(&'a str, &'a str)>,
    #[serde(serialize_with = "serialize_workload")]
    pub dst_workload: Option<(&'a str, &'a str)>,
}

#[allow(clippy::ref_option)] // serde's `serialize_with` passes a reference to the field.
fn serialize_upstream<S: serde::Serializer>(upstream: &Option<std::net::SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match upstream {
        Some(address) => s.collect_str(address),
        None => s.serialize_str("-"),
    }
}

/// The JSON object as `tracing`'s flattened JSON format wrote it: timestamp, level, message, fields, target.
#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: Timestamp,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    line: &'a AccessLine<'a>,
    target: &'static str,
}

#[allow(clippy::ref_option, clippy::trivially_copy_pass_by_ref)] // serde's `serialize_with` passes a reference.
fn serialize_workload<S: serde::Serializer>(workload: &Option<(&str, &str)>, s: S) -> Result<S::Ok, S::Error> {
    match workload {
        Some((namespace, name)) => s.collect_str(&format_args!("{namespace}/{name}")),
        None => s.serialize_str("-"),
    }
}

thread_local! {
    /// Each worker thread formats into its own buffer, kept between lines.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether `KEEL_LOG` lets `keel::access` lines through. It is read once, at start, so this is asked once (asking
/// `tracing` per line cost a filter evaluation per request).
static ENABLED: OnceLock<bool> = OnceLock::new();

/// Writes `line` when the access log is installed and `KEEL_LOG` lets `keel::access` lines through.
pub fn write(line: &AccessLine<'_>) {
    let Some(sink) = SINK.get() else { return };
    if !*ENABLED.get_or_init(|| tracing::enabled!(target: "keel::access", tracing::Level::INFO)) {
        return;
    }
    LINE.with_borrow_mut(|buffer| {
        buffer.clear();
        format(buffer, line, sink.json, Timestamp(SystemTime::now()));
        (sink.write)(buffer);
    });
}

fn format(buffer: &mut Vec<u8>, line: &AccessLine<'_>, json: bool, now: Timestamp) {
    if json {
        let object = JsonLine { timestamp: now, level: "INFO", message: "request", line, target: TARGET };
        // Writing into a Vec cannot fail, and every field serialises.
        let _ = serde_json::to_writer(&mut *buffer, &object);
    } else {
        let workload = |w: Option<(&str, &str)>| w.map_or_else(|| "-".to_owned(), |(namespace, name)| format!("{namespace}/{name}"));
        let upstream = line.upstream.map_or_else(|| "-".to_owned(), |u| u.to_string());
        // What the client chose (authority, path, request id) is quoted and escaped, so it cannot forge fields.
        let _ = write!(
            buffer,
            "{now}  INFO {TARGET}: request pod={} method={} authority={:?} path={:?} protocol={} status={} grpc_status={} flags={} \
             route={} cluster={} upstream={upstream} attempts={} request_bytes={} response_bytes={} duration_ms={:.3} \
             request_id={:?} src_workload={} dst_workload={}",
            line.pod,
            line.method,
            line.authority,
            line.path,
            line.protocol,
            line.status,
            line.grpc_status,
            line.flags,
            line.route,
            line.cluster,
            line.attempts,
            line.request_bytes,
            line.response_bytes,
            line.duration_ms,
            line.request_id,
            workload(line.src_workload),
            workload(line.dst_workload),
        );
    }
    buffer.push(b'\n');
}

/// RFC 3339 in UTC with microseconds (`2026-12-06T23:41:02.123456Z`), as `tracing`'s timestamps read.
#[derive(Clone, Copy)]
struct Timestamp(SystemTime);

thread_local! {
    /// The last second formatted on this thread (`2026-12-06T23:41:02`): a line in the same second only adds
    /// its microseconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since_epoch = self.0.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != since_epoch.as_secs() {
                let at = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
                *second = since_epoch.as_secs();
                text.clear();
                let _ = write!(
                    text,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    at.year(),
                    u8::from(at.month()),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second()
                );
            }
            write!(f, "{text}.{:06}Z", since_epoch.subsec_micros())
        })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> AccessLine<'static> {
        AccessLine {
            pod: "default/sleep",
            method: "GET",
            authority: "catalog",
            path: "/items?\"x\"",
            protocol: "http",
            status: 200,
            grpc_status: "-",
            flags: "-",
            route: "default",
            cluster: "outbound|80||catalog.default.svc.cluster.local",
            upstream: Some("10.0.1.5:8080".parse().unwrap()),
            attempts: 1,
            request_bytes: 0,
            response_bytes: 120,
            duration_ms: 1.234_56,
            request_id: "abc",
            src_workload: Some(("default", "sleep")),
            dst_workload: None,
        }
    }

    const AT: Duration = Duration::from_micros(1_796_600_462_123_456);

    #[test]
    fn a_json_line_has_tracing_shape_and_every_field() {
        let mut buffer = Vec::new();
        format(&mut buffer, &line(), true, Timestamp(SystemTime::UNIX_EPOCH + AT));
        assert_eq!(buffer.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
        assert_eq!(value["timestamp"], "2026-12-06T23:41:02.123456Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["message"], "request");
        assert_eq!(value["target"], "keel::access");
        assert_eq!(value["path"], "/items?\"x\"");
        assert_eq!(value["status"], 200);
        assert_eq!(value["upstream"], "10.0.1.5:8080");
        assert_eq!(value["src_workload"], "default/sleep");
        assert_eq!(value["dst_workload"], "-");
        assert_eq!(value["cluster"], "outbound|80||catalog.default.svc.cluster.local");
        assert!((value["duration_ms"].as_f64().unwrap() - 1.234_56).abs() < 1e-9);
        assert_eq!(value.as_object().unwrap().len(), 22, "{value}");
    }

    #[test]
    fn a_text_line_quotes_what_the_client_chose() {
        let mut buffer = Vec::new();
        let mut forged = line();
        forged.authority = "a status=500";
        format(&mut buffer, &forged, false, Timestamp(SystemTime::UNIX_EPOCH + AT));
        let text = String::from_utf8(buffer).unwrap();
        assert!(text.starts_with("2026-12-06T23:41:02.123456Z  INFO keel::access: request pod=default/sleep method=GET "), "{text}");
        assert!(text.contains(r#"authority="a status=500" path="/items?\"x\"""#), "{text}");
        assert!(text.contains(" status=200 ") && text.contains(" duration_ms=1.235 ") && text.ends_with("dst_workload=-\n"), "{text}");
    }

    #[test]
    fn timestamps_in_one_second_and_the_next_are_both_right() {
        let at = |micros: u64| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)).to_string();
        assert_eq!(at(1_796_600_462_123_456), "2026-12-06T23:41:02.123456Z");
        assert_eq!(at(1_796_600_462_999_999), "2026-12-06T23:41:02.999999Z");
        assert_eq!(at(1_796_600_463_000_001), "2026-12-06T23:41:03.000001Z");
        assert_eq!(at(1_796_601_600_000_000), "2026-12-07T00:00:00.000000Z");
    }
}
