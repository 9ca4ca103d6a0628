//! The access log: one line per HTTP request and one per closed connection, written straight into the log's
//! buffer (batched out by `crate::logging`, as Envoy and ztunnel flush their access logs).
//!
//! These are the only lines keel writes at request or connection rate. Going through `tracing`'s formatter cost
//! about 7 % of keel's CPU per request under load (a visitor call, a dynamic write and JSON escaping per field, a
//! timestamp built through `fmt`, a filter evaluation); here a line is one `serde_json` serialisation of a borrowed
//! struct (or one `write!` for text) into a per-thread buffer. The lines keep the shape `tracing` gave them
//! (`KEEL_LOG` still filters them by their targets, `keel::access` and `keel::telemetry`; `--log-format json` is one
//! object per line with `timestamp`, `level`, `message`, the fields and `target`), so nothing reading keel's log has
//! to change.
use std::{
    cell::RefCell,
    fmt::{self, Display, Write as _},
    io::Write as _,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use serde::{Serialize, Serializer};

/// Takes one finished line (newline included).
pub type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where finished lines go (the buffered access log of `crate::logging`), and their format.
pub struct Sink {
    pub json: bool,
    pub write: WriteLine,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the access log's destination, once per process (later calls are ignored, as a second global
/// subscriber would be).
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// The target `KEEL_LOG` filters request lines by.
pub const TARGET: &str = "keel::access";
/// The target of connection lines (the module that wrote them through `tracing` before).
pub const CONNECTION_TARGET: &str = "keel::telemetry";

/// A kind of access-log line: its message and target, its fields (serialised for JSON), and its text form.
pub trait LogLine: Serialize {
    const MESSAGE: &'static str;
    const TARGET: &'static str;
    /// The fields as `key=value` pairs after the message.
    fn write_fields(&self, out: &mut Vec<u8>);
    /// Whether `KEEL_LOG` lets these lines through (asked once: the filter is read at start).
    fn enabled() -> bool;
}

/// One request's line, its fields named as Istio's JSON access log names Envoy's (`%RESPONSE_CODE%` is
/// `response_code`, `%UPSTREAM_CLUSTER%` is `upstream_cluster`, ...), then what only keel knows (the pod, both
/// workloads, which side reported, the authorization decision and the request principal). Borrowed: nothing is
/// copied to write it.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    /// When the request arrived.
    pub start_time: Timestamp,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`: Envoy's `%PROTOCOL%`.
    pub protocol: &'a str,
    pub response_code: u16,
    /// Envoy's flags (`NR`, `UH`, `UT`, `URX`, ...), comma-separated, `-` for none.
    pub response_flags: &'a str,
    /// Why the response is what it is, in Envoy's words: `via_upstream`, `route_not_found`,
    /// `rbac_access_denied_matched_policy[...]`, `upstream_response_timeout`, ...
    pub response_code_details: &'a str,
    pub grpc_status: &'a str,
    pub route_name: &'a str,
    pub upstream_cluster: &'a str,
    #[serde(serialize_with = "or_dash")]
    pub upstream_host: Option<SocketAddr>,
    /// Attempts made: 1, or more when the route's retry policy retried.
    pub upstream_request_attempt_count: u32,
    /// Why each retried attempt was retried, comma-separated (`503,connect-failure`); `-` without retries.
    #[serde(serialize_with = "comma_or_dash")]
    pub retried_on: &'a [String],
    /// The request body's bytes (Envoy counts from the downstream's side).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Milliseconds, request start to the response's last byte.
    pub duration: u64,
    pub request_id: &'a str,
    pub pod: &'a str,
    /// `namespace/name`.
    #[serde(serialize_with = "or_dash")]
    pub src_workload: Option<Workload<'a>>,
    #[serde(serialize_with = "or_dash")]
    pub dst_workload: Option<Workload<'a>>,
    /// `source` or `destination`: which keel wrote the line.
    pub reporter: &'a str,
    /// The authorization decision on the destination side; `-` on the source side.
    pub policy: &'a str,
    /// `<iss>/<sub>` of the request's verified JWT; `-` without one.
    pub request_principal: &'a str,
}

/// A workload as `namespace/name`.
#[derive(Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Display for Workload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl LogLine for AccessLine<'_> {
    const MESSAGE: &'static str = "request";
    const TARGET: &'static str = TARGET;

    fn write_fields(&self, out: &mut Vec<u8>) {
        // What the client chose (authority, path, request id) is quoted and escaped, so it cannot forge fields.
        let _ = write!(
            out,
            "start_time={} method={} authority={:?} path={:?} protocol={} response_code={} response_flags={} \
             response_code_details={:?} grpc_status={} route_name={} upstream_cluster={} upstream_host={} \
             upstream_request_attempt_count={} retried_on={} bytes_received={} bytes_sent={} duration={} request_id={:?} pod={} \
             src_workload={} dst_workload={} reporter={} policy={:?} request_principal={:?}",
            self.start_time,
            self.method,
            self.authority,
            self.path,
            self.protocol,
            self.response_code,
            self.response_flags,
            self.response_code_details,
            self.grpc_status,
            self.route_name,
            self.upstream_cluster,
            OrDash(&self.upstream_host),
            self.upstream_request_attempt_count,
            CommaOrDash(self.retried_on),
            self.bytes_received,
            self.bytes_sent,
            self.duration,
            self.request_id,
            self.pod,
            OrDash(&self.src_workload),
            OrDash(&self.dst_workload),
            self.reporter,
            self.policy,
            self.request_principal,
        );
    }

    fn enabled() -> bool {
        static ENABLED: OnceLock<bool> = OnceLock::new();
        *ENABLED.get_or_init(|| tracing::enabled!(target: TARGET, tracing::Level::INFO))
    }
}

/// One closed connection's line (ztunnel's access log has one per connection too), with the names Envoy's TCP
/// access log gives the same facts (`downstream_remote_address`, `upstream_host`, `response_flags`,
/// `connection_termination_details`, ...).
#[derive(Serialize)]
pub struct ConnectionLine<'a> {
    pub direction: &'a str,
    pub pod: &'a str,
    /// The client.
    #[serde(serialize_with = "display")]
    pub downstream_remote_address: SocketAddr,
    /// What the client dialled.
    #[serde(serialize_with = "display")]
    pub downstream_local_address: SocketAddr,
    /// What keel connected to.
    #[serde(serialize_with = "or_dash")]
    pub upstream_host: Option<SocketAddr>,
    #[serde(serialize_with = "or_dash")]
    pub src_workload: Option<&'a str>,
    #[serde(serialize_with = "or_dash")]
    pub src_identity: Option<&'a crate::identity::Identity>,
    #[serde(serialize_with = "or_dash")]
    pub dst_workload: Option<&'a str>,
    #[serde(serialize_with = "or_dash")]
    pub dst_identity: Option<&'a crate::identity::Identity>,
    #[serde(serialize_with = "or_dash")]
    pub dst_service: Option<&'a str>,
    pub path: &'a str,
    pub mtls: bool,
    /// The authorization decision (inbound), naming the policy that made it.
    pub policy: &'a str,
    /// Envoy's flag for how it failed (`UAEX`, `UF`, `NR`, ...), `-` when it did not.
    pub response_flags: &'a str,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Milliseconds.
    pub duration: u64,
    /// Why it ended early, empty when it did not.
    pub connection_termination_details: &'a str,
}

impl LogLine for ConnectionLine<'_> {
    const MESSAGE: &'static str = "connection closed";
    const TARGET: &'static str = CONNECTION_TARGET;

    fn write_fields(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "direction={} pod={} downstream_remote_address={} downstream_local_address={} upstream_host={} src_workload={} \
             src_identity={} dst_workload={} dst_identity={} dst_service={} path={} mtls={} policy={:?} response_flags={} \
             bytes_sent={} bytes_received={} duration={} connection_termination_details={:?}",
            self.direction,
            self.pod,
            self.downstream_remote_address,
            self.downstream_local_address,
            OrDash(&self.upstream_host),
            OrDash(&self.src_workload),
            OrDash(&self.src_identity),
            OrDash(&self.dst_workload),
            OrDash(&self.dst_identity),
            OrDash(&self.dst_service),
            self.path,
            self.mtls,
            self.policy,
            self.response_flags,
            self.bytes_sent,
            self.bytes_received,
            self.duration,
            self.connection_termination_details,
        );
    }

    fn enabled() -> bool {
        static ENABLED: OnceLock<bool> = OnceLock::new();
        *ENABLED.get_or_init(|| tracing::enabled!(target: CONNECTION_TARGET, tracing::Level::INFO))
    }
}

/// A value, or `-` when there is none.
struct OrDash<'a, T>(&'a Option<T>);

impl<T: Display> Display for OrDash<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[allow(clippy::ref_option)] // serde's `serialize_with` passes a reference to the field.
fn or_dash<S: Serializer, T: Display>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&OrDash(value))
}

/// A list, comma-separated, or `-` when it is empty.
struct CommaOrDash<'a>(&'a [String]);

impl Display for CommaOrDash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        f.write_str(&self.0.join(","))
    }
}

fn comma_or_dash<S: Serializer>(value: &&[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&CommaOrDash(value))
}

fn display<S: Serializer, T: Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// The JSON object as `tracing`'s flattened JSON format wrote it: timestamp, level, message, fields, target.
#[derive(Serialize)]
struct JsonLine<'a, L> {
    timestamp: Timestamp,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    line: &'a L,
    target: &'static str,
}

thread_local! {
    /// Each worker thread formats into its own buffer, kept between lines.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `line` when the access log is installed and `KEEL_LOG` lets its target through.
pub fn write<L: LogLine>(line: &L) {
    let Some(sink) = SINK.get() else { return };
    if !L::enabled() {
        return;
    }
    LINE.with_borrow_mut(|buffer| {
        buffer.clear();
        format(buffer, line, sink.json, Timestamp(SystemTime::now()));
        (sink.write)(buffer);
    });
}

fn format<L: LogLine>(buffer: &mut Vec<u8>, line: &L, json: bool, now: Timestamp) {
    if json {
        let object = JsonLine { timestamp: now, level: "INFO", message: L::MESSAGE, line, target: L::TARGET };
        // Writing into a Vec cannot fail, and every field serialises.
        let _ = serde_json::to_writer(&mut *buffer, &object);
    } else {
        let _ = write!(buffer, "{now}  INFO {}: {} ", L::TARGET, L::MESSAGE);
        line.write_fields(buffer);
    }
    buffer.push(b'\n');
}

/// RFC 3339 in UTC with microseconds (`2026-12-06T23:41:02.123456Z`), as `tracing`'s timestamps read.
#[derive(Clone, Copy)]
pub struct Timestamp(pub SystemTime);

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
            start_time: Timestamp(SystemTime::UNIX_EPOCH + AT),
            method: "GET",
            authority: "catalog",
            path: "/items?\"x\"",
            protocol: "HTTP/1.1",
            response_code: 200,
            response_flags: "-",
            response_code_details: "via_upstream",
            grpc_status: "-",
            route_name: "default",
            upstream_cluster: "outbound|80||catalog.default.svc.cluster.local",
            upstream_host: Some("10.0.1.5:8080".parse().unwrap()),
            upstream_request_attempt_count: 1,
            retried_on: &[],
            bytes_received: 0,
            bytes_sent: 120,
            duration: 1,
            request_id: "abc",
            pod: "default/sleep",
            src_workload: Some(Workload { namespace: "default", name: "sleep" }),
            dst_workload: None,
            reporter: "source",
            policy: "-",
            request_principal: "-",
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
        // Istio's JSON access log names (Envoy's command operators, lowercased).
        assert_eq!(value["start_time"], "2026-12-06T23:41:02.123456Z");
        assert_eq!((&value["protocol"], &value["response_code"], &value["response_flags"]), (&"HTTP/1.1".into(), &200.into(), &"-".into()));
        assert_eq!(value["response_code_details"], "via_upstream");
        assert_eq!(value["upstream_host"], "10.0.1.5:8080");
        assert_eq!(value["upstream_cluster"], "outbound|80||catalog.default.svc.cluster.local");
        assert_eq!((&value["route_name"], &value["upstream_request_attempt_count"]), (&"default".into(), &1.into()));
        assert_eq!((&value["bytes_received"], &value["bytes_sent"], &value["duration"]), (&0.into(), &120.into(), &1.into()));
        assert_eq!(value["src_workload"], "default/sleep");
        assert_eq!(value["dst_workload"], "-");
        assert_eq!((&value["reporter"], &value["policy"]), (&"source".into(), &"-".into()));
        assert_eq!(value["retried_on"], "-");
        assert_eq!(value.as_object().unwrap().len(), 28, "{value}");
    }

    #[test]
    fn a_text_line_quotes_what_the_client_chose() {
        let mut buffer = Vec::new();
        let mut forged = line();
        forged.authority = "a status=500";
        format(&mut buffer, &forged, false, Timestamp(SystemTime::UNIX_EPOCH + AT));
        let text = String::from_utf8(buffer).unwrap();
        assert!(
            text.starts_with("2026-12-06T23:41:02.123456Z  INFO keel::access: request start_time=2026-12-06T23:41:02.123456Z method=GET "),
            "{text}"
        );
        assert!(text.contains(r#"authority="a status=500" path="/items?\"x\"""#), "{text}");
        assert!(
            text.contains(" response_code=200 response_flags=- response_code_details=\"via_upstream\" ")
                && text.contains(" duration=1 ")
                && text.ends_with("dst_workload=- reporter=source policy=\"-\" request_principal=\"-\"\n"),
            "{text}"
        );
    }

    #[test]
    fn a_connection_line_names_both_ends() {
        let identity: crate::identity::Identity = "spiffe://cluster.local/ns/default/sa/sleep".parse().unwrap();
        let line = ConnectionLine {
            direction: "outbound",
            pod: "default/sleep",
            downstream_remote_address: "10.0.0.5:40000".parse().unwrap(),
            downstream_local_address: "10.96.0.10:80".parse().unwrap(),
            upstream_host: None,
            src_workload: Some("default/sleep"),
            src_identity: Some(&identity),
            dst_workload: None,
            dst_identity: None,
            dst_service: Some("catalog.default.svc.cluster.local"),
            path: "hbone",
            mtls: true,
            policy: "",
            response_flags: "-",
            bytes_sent: 10,
            bytes_received: 20,
            duration: 3,
            connection_termination_details: "",
        };
        let mut buffer = Vec::new();
        format(&mut buffer, &line, true, Timestamp(SystemTime::UNIX_EPOCH + AT));
        let value: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
        assert_eq!(value["message"], "connection closed");
        assert_eq!(value["target"], "keel::telemetry");
        assert_eq!(value["downstream_remote_address"], "10.0.0.5:40000");
        assert_eq!(value["upstream_host"], "-");
        assert_eq!(value["src_identity"], "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(value["mtls"], true);
        buffer.clear();
        format(&mut buffer, &line, false, Timestamp(SystemTime::UNIX_EPOCH + AT));
        let text = String::from_utf8(buffer).unwrap();
        assert!(
            text.contains("keel::telemetry: connection closed direction=outbound pod=default/sleep downstream_remote_address=10.0.0.5:40000 "),
            "{text}"
        );
        assert!(text.contains(" dst_workload=- dst_identity=- dst_service=catalog.default.svc.cluster.local path=hbone mtls=true "), "{text}");
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
