//! A lab pod: a network namespace on its node's bridge plus its own cgroup, and the ways to run things inside it.

use super::process::{self, ChildGuard};
use super::sys::{self, Placement};
use anyhow::{Context, Result};
use serde_json::Value;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long `spawn_server` waits for a server's `{"listening": ..}` line.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for `run`/`run_json` and the podapp helpers.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod. Plain data (cheap to clone, no borrow of the lab): processes it starts are also tracked through its
/// cgroup, which the lab empties on drop.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    /// Kubernetes-style namespace keel reports the pod under (`<namespace>/<name>`).
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// `ip netns` name.
    pub netns: String,
    /// `/var/run/netns/<netns>`: what keel's enroll API and setns take.
    pub netns_path: PathBuf,
    pub cgroup_path: PathBuf,
    /// Index of the lab node the pod hangs off (0 in a single-node lab).
    pub node: usize,
    /// That node's name: the Pod object's `nodeName` (see `mesh_config::pod_object`).
    pub node_name: String,
    pub(super) podapp: PathBuf,
    pub(super) log_dir: PathBuf,
    pub(super) spawned: Arc<AtomicU32>,
}

/// podapp server modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMode {
    Echo,
    Sink,
}

impl ServeMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            ServeMode::Echo => "echo",
            ServeMode::Sink => "sink",
        }
    }
}

impl Pod {
    /// `namespace/name`, as keel's `"connections"` entries name pods.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// The podapp binary the lab uses.
    pub fn podapp_path(&self) -> &std::path::Path {
        &self.podapp
    }

    /// A `Command` for `argv` that will start inside this pod (its netns and cgroup).
    fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<(Command, sys::PlacementFds)> {
        let (prog, args) = argv.split_first().context("empty argv")?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        let fds = sys::place(&mut cmd, &Placement { netns: Some(&self.netns_path), cgroup: Some(&self.cgroup_path) })?;
        Ok((cmd, fds))
    }

    /// Starts `argv` (program first) in the pod; output goes to a log file in the lab directory.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<ChildGuard> {
        let (mut cmd, _fds) = self.command(argv)?;
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}#{n} {}", self.name, program_name(argv));
        let log = self.log_dir.join(format!("{}-{n}.log", self.name));
        process::spawn_logged(&name, &mut cmd, &log)
    }

    /// Starts a server and returns once it printed `{"listening": ..}` (or fails with its output).
    pub fn spawn_server<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<ChildGuard> {
        let mut child = self.spawn(argv)?;
        child.wait_for_line(SERVER_READY_TIMEOUT, |l| serde_json::from_str::<Value>(l).map(|v| v.get("listening").is_some()).unwrap_or(false))?;
        Ok(child)
    }

    /// Runs `argv` in the pod to completion (killed and failed after `timeout`). A non-zero exit is returned, not
    /// an error.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output> {
        let (mut cmd, _fds) = self.command(argv)?;
        let name = format!("{}: {}", self.name, program_name(argv));
        process::run_with_timeout(&name, &mut cmd, timeout)
    }

    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        self.run_timeout(argv, RUN_TIMEOUT)
    }

    /// Runs `argv` and parses its last stdout line as JSON (whatever the exit status: podapp reports failures as
    /// JSON with `"ok": false`).
    pub fn run_json_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Value> {
        let out = self.run_timeout(argv, timeout)?;
        process::last_json_line(&format!("{}: {}", self.name, program_name(argv)), &out)
    }

    pub fn run_json<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Value> {
        self.run_json_timeout(argv, RUN_TIMEOUT)
    }

    // ---- podapp conveniences -------------------------------------------------------------------------------

    fn podapp_argv(&self, args: &[String]) -> Vec<String> {
        std::iter::once(self.podapp.to_string_lossy().into_owned()).chain(args.iter().cloned()).collect()
    }

    /// `podapp serve --port P --mode M [extra...]`, running until the guard drops.
    pub fn serve(&self, port: u16, mode: ServeMode, extra: &[&str]) -> Result<ChildGuard> {
        let mut args = vec!["serve".into(), "--port".into(), port.to_string(), "--mode".into(), mode.as_arg().into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn_server(&self.podapp_argv(&args))
    }

    /// `podapp send`: the parsed result line (check `"ok"`).
    pub fn send(&self, to: SocketAddr, bytes: u64, mode: ServeMode, timeout: Duration) -> Result<Value> {
        let args = vec![
            "send".into(),
            "--to".into(),
            to.to_string(),
            "--bytes".into(),
            bytes.to_string(),
            "--mode".into(),
            mode.as_arg().into(),
            "--timeout-ms".into(),
            timeout.as_millis().to_string(),
        ];
        // The process deadline leaves room for podapp's own (idle) timeouts to fire and report first.
        self.run_json_timeout(&self.podapp_argv(&args), timeout * 2 + Duration::from_secs(5))
    }

    /// `podapp connect-loop`: the parsed result line.
    pub fn connect_loop(&self, to: SocketAddr, count: u32, bytes: usize, timeout: Duration) -> Result<Value> {
        let args =
            vec!["connect-loop".into(), "--to".into(), to.to_string(), "--count".into(), count.to_string(), "--bytes".into(), bytes.to_string()];
        self.run_json_timeout(&self.podapp_argv(&args), timeout)
    }

    // ---- podapp HTTP / gRPC ------------------------------------------------------------------------------------

    /// `podapp http-serve --port P --name NAME [extra...]` (HTTP/1.1 + h2c + gRPC echo; `extra` e.g.
    /// `["--fail-percent", "50", "--delay-ms", "100"]`), running until the guard drops.
    pub fn http_serve(&self, port: u16, name: &str, extra: &[&str]) -> Result<ChildGuard> {
        let mut args = vec!["http-serve".into(), "--port".into(), port.to_string(), "--name".into(), name.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn_server(&self.podapp_argv(&args))
    }

    /// `podapp dns-serve`: a DNS responder on UDP `port` answering A queries from `answers` (`name ip ttl`
    /// lines, re-read on every query), running until the guard drops.
    pub fn dns_serve(&self, port: u16, answers: &std::path::Path) -> Result<ChildGuard> {
        let args = ["dns-serve".to_owned(), "--port".into(), port.to_string(), "--answers".into(), answers.display().to_string()];
        self.spawn_server(&self.podapp_argv(&args))
    }

    /// `podapp http-load ARGS`: the parsed result line (`statuses`, `served_by`, `errors`, `latency_ms`, ...).
    pub fn http_load(&self, args: &[&str]) -> Result<Value> {
        self.podapp_json("http-load", args, HTTP_RUN_TIMEOUT)
    }

    /// `podapp grpc-call ARGS`: the parsed result line (`replies`, `grpc_status`, `trailers`, ...).
    pub fn grpc_call(&self, args: &[&str]) -> Result<Value> {
        self.podapp_json("grpc-call", args, HTTP_RUN_TIMEOUT)
    }

    fn podapp_json(&self, sub: &str, args: &[&str], timeout: Duration) -> Result<Value> {
        let args: Vec<String> = std::iter::once(sub).chain(args.iter().copied()).map(String::from).collect();
        self.run_json_timeout(&self.podapp_argv(&args), timeout)
    }
}

/// Process deadline of `http_load`/`grpc_call`: generous, so podapp's own per-request timeouts report first.
pub const HTTP_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The program's file name and first argument, for messages ("podapp send").
fn program_name<S: AsRef<OsStr>>(argv: &[S]) -> String {
    let prog = argv.first().map(|p| std::path::Path::new(p.as_ref()).file_name().unwrap_or(p.as_ref()).to_string_lossy().into_owned());
    let sub = argv.get(1).map(|a| a.as_ref().to_string_lossy().into_owned());
    [prog, sub].into_iter().flatten().collect::<Vec<_>>().join(" ")
}
