//! keel's local API: JSON lines over a Unix socket (docs/keel-api.md). The CNI plugin or node agent enrolls pods
//! through it; the `keel` CLI subcommands are thin clients of it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    app::Daemon,
    pods::{PodName, PodSpec},
};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Enroll(PodSpec),
    Unenroll(PodName),
    Pods,
    Stats,
    Connections,
    /// The workload state from the control plane and the xDS connection's state.
    ConfigDump,
    FastPath(bool),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Value),
    Error(String),
}

/// Binds the API socket (only the owner may use it) and serves it until the task is dropped.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale API socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale API socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, &daemon).await {
                        debug!(error = %e, "API connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => match daemon.handle(request).await {
                Ok(value) => Response::Ok(value),
                Err(e) => Response::Error(format!("{e:#}")),
            },
            Err(e) => Response::Error(format!("invalid request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize");
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Blocking client for the CLI: one request, one answer.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Value> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to keel's API at {} (is `keel run` up?)", socket.display()))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    match serde_json::from_str::<Response>(&answer).with_context(|| format!("unreadable answer {answer:?}"))? {
        Response::Ok(value) => Ok(value),
        Response::Error(message) => anyhow::bail!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_shape() {
        assert_eq!(serde_json::from_str::<Request>(r#""pods""#).unwrap(), Request::Pods);
        assert_eq!(serde_json::from_str::<Request>(r#"{"fast_path": true}"#).unwrap(), Request::FastPath(true));
        let unenroll: Request = serde_json::from_str(r#"{"unenroll": {"namespace": "default", "name": "a"}}"#).unwrap();
        assert_eq!(unenroll, Request::Unenroll(PodName { namespace: "default".into(), name: "a".into() }));
        let ok = serde_json::to_string(&Response::Ok(Value::Null)).unwrap();
        assert_eq!(ok, r#"{"ok":null}"#);
        let err = serde_json::to_string(&Response::Error("field `ips`: empty".into())).unwrap();
        assert_eq!(err, r#"{"error":"field `ips`: empty"}"#);
    }

    #[test]
    fn an_enroll_request_missing_a_field_is_rejected_naming_it() {
        let err = serde_json::from_str::<Request>(r#"{"enroll": {"namespace": "default", "name": "a"}}"#).unwrap_err();
        assert!(err.to_string().contains("netns"), "{err}");
    }
}
