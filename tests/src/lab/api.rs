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
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{req}\n").as_bytes())
        .context("writing request")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .with_context(|| format!("reading answer to {req}"))?;
    parse_response(&line).with_context(|| format!("request {req}"))
}

pub fn parse_response(line: &str) -> Result<Value> {
    if line.trim().is_empty() {
        bail!("keel closed the connection without answering");
    }
    let mut v: Value =
        serde_json::from_str(line.trim()).with_context(|| format!("bad answer {line:?}"))?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!(
            "keel error: {}",
            e.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string())
        ));
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

/// A counter from a `"stats"` answer by JSON pointer (e.g. `/ebpf/sk_msg/redirected`); 0 when absent or null
/// (the `ebpf` object is null under iptables capture).
pub fn counter(stats: &Value, pointer: &str) -> u64 {
    stats.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
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
        let stats = json!({"ebpf": null, "connections": {"outbound": {"opened": 3}}});
        assert_eq!(counter(&stats, "/connections/outbound/opened"), 3);
        assert_eq!(counter(&stats, "/ebpf/sk_msg/redirected"), 0);
    }
}
