//! keel's local API as keel-cni uses it (docs/keel-api.md): one JSON line out, one JSON line back, on a fresh
//! connection to the Unix socket, the whole exchange bounded in time.
//!
//! The wire types are written out here rather than shared with the keel crate: the plugin stays a small binary
//! without keel's dependencies, and the API document is the contract (the lab suite drives both ends of it).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::KeelError;

/// The largest answer read (`"pods"` on a node with 110 pods is some 50 KiB).
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// One request, one answer: the `"ok"` value, or keel's `"error"` message as [`KeelError::Refused`].
pub trait KeelApi {
    fn call(&self, request: &Value) -> Result<Value, KeelError>;
}

/// `cni_add` / `cni_check` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    pub container_id: String,
}

/// `cni_del` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniPodRef {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// keel's answer to `cni_add` and `cni_check`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PodState {
    Captured,
    NotAmbient { reason: String },
    NotCaptured { reason: String },
}

/// keel's answer to `cni_del`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Released {
    pub released: bool,
}

pub fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, KeelError> {
    serde_json::from_value(value.clone()).map_err(|e| KeelError::BadAnswer(format!("{value}: {e}")))
}

/// keel's API socket.
pub struct SocketClient {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl KeelApi for SocketClient {
    fn call(&self, request: &Value) -> Result<Value, KeelError> {
        // The exchange runs on its own thread so that everything, connect() included (it blocks while keel's
        // accept backlog is full), is bounded by one deadline; on timeout the thread is left to the process's end.
        let (tx, rx) = mpsc::channel();
        let (socket, timeout, line) = (self.socket.clone(), self.timeout, format!("{request}\n"));
        std::thread::spawn(move || {
            let _ = tx.send(exchange(&socket, timeout, &line));
        });
        let answer = rx.recv_timeout(self.timeout).map_err(|_| KeelError::Timeout(self.timeout))??;
        parse_answer(&answer)
    }
}

fn exchange(socket: &Path, timeout: Duration, line: &str) -> Result<String, KeelError> {
    let unreachable = |source| KeelError::Unreachable { socket: socket.display().to_string(), source };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let io_error = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => KeelError::Timeout(timeout),
        _ => KeelError::BadAnswer(format!("the connection failed: {e}")),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    stream.write_all(line.as_bytes()).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_ANSWER_BYTES)).read_line(&mut answer).map_err(io_error)?;
    Ok(answer)
}

/// `{"ok": value}` → value; `{"error": message}` → [`KeelError::Refused`]; anything else is a bad answer.
pub fn parse_answer(line: &str) -> Result<Value, KeelError> {
    if line.trim().is_empty() {
        return Err(KeelError::BadAnswer("keel closed the connection without answering".to_owned()));
    }
    let value: Value = serde_json::from_str(line.trim()).map_err(|e| KeelError::BadAnswer(format!("{line:?}: {e}")))?;
    match value {
        Value::Object(mut fields) if fields.len() == 1 => {
            if let Some(ok) = fields.remove("ok") {
                return Ok(ok);
            }
            match fields.remove("error") {
                Some(Value::String(message)) => Err(KeelError::Refused(message)),
                _ => Err(KeelError::BadAnswer(line.trim().to_owned())),
            }
        }
        _ => Err(KeelError::BadAnswer(line.trim().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_ok_or_error() {
        assert_eq!(parse_answer("{\"ok\":{\"state\":\"captured\"}}\n").unwrap(), json!({"state": "captured"}));
        assert!(matches!(parse_answer(r#"{"error":"field `uid`: no cgroup"}"#), Err(KeelError::Refused(m)) if m == "field `uid`: no cgroup"));
        for bad in ["", "not json", r#"{"ok":1,"error":"x"}"#, r#"[1]"#, r#"{"error":5}"#] {
            assert!(matches!(parse_answer(bad), Err(KeelError::BadAnswer(_))), "{bad:?}");
        }
        assert_eq!(decode::<PodState>(json!({"state": "not_ambient", "reason": "r"})).unwrap(), PodState::NotAmbient { reason: "r".into() });
        assert!(matches!(decode::<PodState>(json!({"state": "maybe"})), Err(KeelError::BadAnswer(_))));
    }

    #[test]
    fn requests_have_keels_wire_shape() {
        let pod = CniPod {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11".into(),
            netns: "/var/run/netns/cni-1".into(),
            ips: vec!["10.244.0.5".parse().unwrap()],
            container_id: "4f1e".into(),
        };
        assert_eq!(
            json!({"cni_add": pod}),
            json!({"cni_add": {"namespace": "default", "name": "web-0", "uid": "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11",
                "netns": "/var/run/netns/cni-1", "ips": ["10.244.0.5"], "container_id": "4f1e"}})
        );
        assert_eq!(json!(CniPodRef { namespace: "a".into(), name: "b".into(), uid: None }), json!({"namespace": "a", "name": "b"}));
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_a_silent_keel_times_out() {
        let dir = std::env::temp_dir().join(format!("keel-cni-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = SocketClient { socket: dir.join("none.sock"), timeout: Duration::from_secs(5) };
        assert!(matches!(missing.call(&json!("pods")), Err(KeelError::Unreachable { .. })));

        // A listener that accepts and never answers.
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let held = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(stream);
        });
        let silent = SocketClient { socket: path, timeout: Duration::from_millis(200) };
        let started = std::time::Instant::now();
        assert!(matches!(silent.call(&json!("pods")), Err(KeelError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2), "the wait is bounded: {:?}", started.elapsed());
        let _ = held.join();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
