//! keel's JSON-lines Unix-socket API (docs/keel-api.md), client side, plus typed views of its answers.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request on a fresh connection and returns the `"ok"` value; `{"error": msg}` becomes `Err(msg)`.
pub fn request(socket: &Path, req: &Value, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{req}\n").as_bytes()).context("writing request")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).with_context(|| format!("reading answer to {req}"))?;
    parse_response(&line).with_context(|| format!("request {req}"))
}

pub fn parse_response(line: &str) -> Result<Value> {
    if line.trim().is_empty() {
        bail!("keel closed the connection without answering");
    }
    let mut v: Value = serde_json::from_str(line.trim()).with_context(|| format!("bad answer {line:?}"))?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("keel error: {}", e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string())));
    }
    match v.get_mut("ok") {
        Some(ok) => Ok(ok.take()),
        None => bail!("answer has neither \"ok\" nor \"error\": {line:?}"),
    }
}

/// One closed connection as keel reports it in `"connections"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Connection {
    pub direction: String,
    pub pod: String,
    pub source: String,
    pub original_destination: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: f64,
    #[serde(default)]
    pub error: Option<String>,
    /// What keel connected to (the chosen endpoint when the client dialled a service VIP).
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub source_peer: Peer,
    #[serde(default)]
    pub destination_peer: Peer,
    #[serde(default)]
    pub destination_service: Option<String>,
    /// direct, same-node or hbone.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub mutual_tls: bool,
    /// The authorization decision (inbound).
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub response_status: Option<u16>,
}

/// One end of a connection as keel's workload state knows it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Peer {
    pub workload: Option<String>,
    pub identity: Option<String>,
}

impl Connection {
    /// The port of `source` (the client's port, whatever address keel reports it with).
    pub fn source_port(&self) -> Option<u16> {
        port_of(&self.source)
    }
}

pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// A counter from a `"stats"` answer by JSON pointer (e.g. `/connections/outbound/opened`). A field that is absent,
/// null or not a count is an error naming the pointer and showing the stats: a renamed field must fail as "no such
/// field", not read as 0 (which would fail every "grew" check for the wrong reason and pass every "unchanged" one).
/// The `/ebpf/...` counters exist only under eBPF capture (`"ebpf"` is null under iptables): a caller that may
/// run on either backend reads them only for [`super::Backend::Ebpf`] and says what it expects otherwise.
pub fn counter(stats: &Value, pointer: &str) -> Result<u64> {
    match stats.pointer(pointer) {
        Some(v) => v.as_u64().ok_or_else(|| anyhow!("stats {pointer} is {v}, not a count; stats: {stats}")),
        None => bail!("stats have no {pointer}; stats: {stats}"),
    }
}

/// The reasons keel counts a refused connection under (`"refused": {"<reason>": n}` in `"stats"`; keel's
/// `telemetry::Refusal`).
pub const REFUSAL_REASONS: [&str; 11] = [
    "pod_connection_limit",
    "pod_connection_rate",
    "pod_hbone_limit",
    "node_hbone_limit",
    "hbone_handshake_timeout",
    "hbone_handshake_failed",
    "unknown_destination_workload",
    "unknown_source_workload",
    "keel_port",
    "policy",
    "namespace_queue_full",
];

/// How many connections keel refused for `reason`. keel lists only the reasons that counted something, so an
/// absent reason is 0 — but the `"refused"` object itself must be there and `reason` must be one keel has.
pub fn refused(stats: &Value, reason: &str) -> Result<u64> {
    if !REFUSAL_REASONS.contains(&reason) {
        bail!("{reason:?} is not a refusal reason keel counts ({REFUSAL_REASONS:?})");
    }
    let map = stats.get("refused").and_then(Value::as_object).ok_or_else(|| anyhow!("stats have no \"refused\" object; stats: {stats}"))?;
    if let Some(unknown) = map.keys().find(|k| !REFUSAL_REASONS.contains(&k.as_str())) {
        bail!("stats count refusals for {unknown:?}, a reason this test does not know (update REFUSAL_REASONS); stats: {stats}");
    }
    match map.get(reason) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| anyhow!("stats /refused/{reason} is {v}, not a count")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses() {
        assert_eq!(parse_response("{\"ok\": null}\n").unwrap(), Value::Null);
        assert_eq!(parse_response("{\"ok\": [1]}").unwrap(), json!([1]));
        let e = parse_response("{\"error\": \"enroll.netns: missing\"}").unwrap_err();
        assert!(e.to_string().contains("enroll.netns: missing"));
        assert!(parse_response("").is_err());
        assert!(parse_response("{}").is_err());
    }

    #[test]
    fn connection_entries() {
        let c: Connection = serde_json::from_value(json!({
            "direction": "outbound", "pod": "default/client", "source": "10.244.0.11:40000",
            "original_destination": "10.244.0.12:8080", "bytes_sent": 5, "bytes_received": 5,
            "duration_ms": 1.5, "error": null
        }))
        .unwrap();
        assert_eq!(c.source_port(), Some(40000));
        assert_eq!(c.error, None);
    }

    #[test]
    fn counters_must_exist() {
        let stats = json!({"ebpf": null, "connections": {"outbound": {"opened": 3, "gone": null}}, "refused": {"policy": 2}});
        assert_eq!(counter(&stats, "/connections/outbound/opened").unwrap(), 3);
        for missing in ["/ebpf/sk_msg/redirected", "/connections/outbound/renamed", "/connections/outbound/gone"] {
            let e = counter(&stats, missing).unwrap_err().to_string();
            assert!(e.contains(missing) && e.contains("\"opened\":3"), "{e}");
        }
        assert_eq!(refused(&stats, "policy").unwrap(), 2);
        assert_eq!(refused(&stats, "keel_port").unwrap(), 0, "keel omits reasons that counted nothing");
        assert!(refused(&stats, "polcy").is_err(), "a misspelt reason is an error, not 0");
        assert!(refused(&json!({"ebpf": null}), "policy").is_err(), "no refused object");
        assert!(refused(&json!({"refused": {"renamed": 1}}), "policy").is_err(), "a reason keel renamed");
    }
}
