//! keel's local API: JSON lines over a Unix socket (docs/keel-api.md). The CNI plugin or node agent enrolls pods
//! through it; the `keel` CLI subcommands are thin clients of it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    app::Daemon,
    cni_requests::{CniPod, CniPodRef},
    pods::{EnrollRequest, PodName},
};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Enroll a pod named by its cgroup, or by its Kubernetes UID (keel finds the cgroup, and the netns if not given).
    Enroll(EnrollRequest),
    Unenroll(PodName),
    /// keel-cni's ADD: capture the pod if it is ambient; answered once it is captured.
    CniAdd(CniPod),
    /// keel-cni's CHECK: whether the pod is captured with this sandbox.
    CniCheck(CniPod),
    /// keel-cni's DEL: release the pod if enrolled; no error for a pod keel does not know.
    CniDel(CniPodRef),
    Pods,
    Stats,
    Connections,
    /// The workload state from the control plane and the xDS connection's state.
    ConfigDump,
    FastPath(bool),
    /// What keel would do with a connection (or request) from an enrolled pod, and why (`keel explain`).
    Explain(crate::explain::ExplainQuery),
    /// Release every pod, drain, detach and unpin all capture, forget the persisted pods and config, and exit.
    Uninstall,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Value),
    Error(String),
}

/// The largest request line keel reads (an enrollment is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// API connections served at once (the CNI plugin and the CLI open one per call); beyond it a caller is told to
/// retry and disconnected.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why an API connection was refused or cut.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiRefusal {
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("{MAX_CONNECTIONS} API connections are open; retry")]
    TooManyConnections,
    #[error("uid {0} may not use keel's API (only root or keel's own user)")]
    Forbidden(u32),
}

/// Binds the API socket, usable by its owner only from the moment it exists: it is created under a umask that
/// leaves no group or other bits (a chmod after bind would leave a window), in a directory created 0700 when
/// keel creates it.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale API socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale API socket {}", path.display())),
    }
    // SAFETY: umask only swaps the process's file-creation mask; restored right after the bind.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("binding API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                let slot = slots.clone().try_acquire_owned();
                tokio::spawn(async move {
                    let result = match slot {
                        Ok(_slot) => serve_connection(stream, &daemon).await,
                        Err(_) => refuse(stream, ApiRefusal::TooManyConnections).await,
                    };
                    if let Err(e) = result {
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

/// Root and keel's own user may drive keel; the socket's mode already says so, this checks the caller itself.
fn check_peer(uid: u32) -> Result<(), ApiRefusal> {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if uid == 0 || uid == own {
        Ok(())
    } else {
        Err(ApiRefusal::Forbidden(uid))
    }
}

async fn refuse(mut stream: UnixStream, refusal: ApiRefusal) -> std::io::Result<()> {
    warn!(%refusal, "API connection refused");
    let mut out = serde_json::to_vec(&Response::Error(refusal.to_string())).expect("responses serialize");
    out.push(b'\n');
    stream.write_all(&out).await
}

/// The next request line, at most [`MAX_REQUEST_BYTES`]; `None` at the end of the connection or after
/// [`IDLE_TIMEOUT`] of silence.
async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Result<Option<String>, ApiRefusal>> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(IDLE_TIMEOUT, (&mut *reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line)).await;
    let n = match read {
        Ok(n) => n?,
        Err(_) => return Ok(Ok(None)),
    };
    if n == 0 {
        return Ok(Ok(None));
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Ok(Err(ApiRefusal::TooLarge));
    }
    Ok(Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned())))
}

async fn serve_connection(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    if let Err(refusal) = stream.peer_cred().map_err(|_| ApiRefusal::Forbidden(u32::MAX)).and_then(|cred| check_peer(cred.uid())) {
        return refuse(stream, refusal).await;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read);
    loop {
        let line = match read_request(&mut reader).await? {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(refusal) => {
                let mut out = serde_json::to_vec(&Response::Error(refusal.to_string())).expect("responses serialize");
                out.push(b'\n');
                return write.write_all(&out).await;
            }
        };
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

    #[tokio::test]
    async fn requests_are_read_one_line_at_a_time_and_bounded() {
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let mut input: &[u8] = &[b"\"pods\"\n".as_slice(), &big, b"\n"].concat();
        assert_eq!(read_request(&mut input).await.unwrap(), Ok(Some("\"pods\"".into())));
        assert_eq!(read_request(&mut input).await.unwrap(), Err(ApiRefusal::TooLarge), "an oversized line is refused");
        let mut empty: &[u8] = b"";
        assert_eq!(read_request(&mut empty).await.unwrap(), Ok(None));
    }

    #[test]
    fn only_root_or_keel_itself_may_call() {
        assert!(check_peer(0).is_ok());
        assert!(check_peer(unsafe { libc::geteuid() }).is_ok());
        assert_eq!(check_peer(4242), Err(ApiRefusal::Forbidden(4242)));
    }

    #[test]
    fn the_socket_is_owner_only_from_the_start() {
        let dir = std::env::temp_dir().join(format!("keel-api-{}", std::process::id()));
        let path = dir.join("sub").join("keel.sock");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _listener = runtime.block_on(async { bind(&path) }).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "a directory keel creates for its socket is keel's only");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_enroll_request_missing_a_field_is_rejected_naming_it() {
        let err = serde_json::from_str::<Request>(r#"{"enroll": {"namespace": "default", "name": "a"}}"#).unwrap_err();
        assert!(err.to_string().contains("ips"), "{err}");
        let Request::Enroll(no_netns) =
            serde_json::from_str::<Request>(r#"{"enroll": {"namespace": "d", "name": "a", "cgroup": "/c", "ips": []}}"#).unwrap()
        else {
            panic!("an enroll request")
        };
        let err = no_netns.resolve(Path::new("/c"), Path::new("/proc")).unwrap_err();
        assert!(err.to_string().starts_with("field `netns`"), "{err}");
    }

    #[test]
    fn an_enroll_request_may_name_the_pod_by_uid() {
        let line = r#"{"enroll": {"namespace": "default", "name": "a", "uid": "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11", "ips": ["10.244.0.5"]}}"#;
        let Request::Enroll(request) = serde_json::from_str::<Request>(line).unwrap() else { panic!("an enroll request") };
        assert_eq!((request.uid.as_deref(), request.cgroup, request.netns), (Some("0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11"), None, None));
    }

    #[test]
    fn cni_requests_have_the_documented_wire_shape() {
        let add = r#"{"cni_add": {"namespace": "default", "name": "a", "uid": "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11",
            "netns": "/var/run/netns/cni-1", "ips": ["10.244.0.5"], "container_id": "f00d"}}"#;
        assert!(matches!(serde_json::from_str::<Request>(add).unwrap(), Request::CniAdd(CniPod { container_id: Some(_), .. })));
        let del = r#"{"cni_del": {"namespace": "default", "name": "a"}}"#;
        assert_eq!(
            serde_json::from_str::<Request>(del).unwrap(),
            Request::CniDel(CniPodRef { namespace: "default".into(), name: "a".into(), uid: None })
        );
    }
}
