//! The real `keel` daemon, run as a process in the lab's node namespace and `keel/` cgroup, and driven through its
//! Unix-socket API (docs/keel-api.md) and admin HTTP port.

use super::api::{self, Connection};
use super::process::{self, ChildGuard};
use super::sys::{self, Placement};
use super::Backend;
use super::Pod;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long `start` waits for the API socket to answer `"pods"`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stop (uninstall or SIGTERM) may take before we call it a failure (and SIGKILL).
pub const TERM_TIMEOUT: Duration = Duration::from_secs(10);
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything needed to start keel; the lab fills it so a restarted keel gets the same state dir, pins and socket.
#[derive(Debug, Clone)]
pub struct KeelSpec {
    pub bin: PathBuf,
    pub backend: Backend,
    pub cgroup_root: PathBuf,
    /// The cgroup keel itself runs in (below `cgroup_root`: the sock_ops fast path needs keel's sockets there too).
    pub own_cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub admin_addr: SocketAddr,
    pub node_netns: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
}

/// A running keel. Dropping it uninstalls it (`keel uninstall`; SIGTERM, then SIGKILL, when it does not answer).
/// (When a test fails, the lab prints the tail of every keel log it started: usually the explanation.)
pub struct Keel {
    child: ChildGuard,
    spec: KeelSpec,
    /// A successor took over: the API socket is the successor's, so this keel is never told to uninstall.
    handed_over: bool,
}

impl Keel {
    pub(super) fn start(spec: KeelSpec) -> Result<Keel> {
        let mut keel = Self::spawn(spec)?;
        keel.wait_ready()?;
        Ok(keel)
    }

    /// Starts `keel run --takeover` with this keel's spec (state dir, pins, sockets, admin address) and `extra`
    /// flags, and returns once it logged that it is ready (this keel answered the API until then). This keel is
    /// marked handed over: it drains on its own, see [`Keel::wait_exit_within`].
    pub fn start_successor(&mut self, extra: &[&str]) -> Result<Keel> {
        self.handed_over = true;
        let mut next = self.spawn_successor(extra)?;
        next.child
            .wait_for_line(READY_TIMEOUT, |l| l.contains("\"keel ready\""))
            .with_context(|| format!("the successor keel did not become ready; its log:\n{}", next.log_tail(40)))?;
        Ok(next)
    }

    /// Starts `keel run --takeover` with this keel's spec and `extra` flags, and returns at once (this keel is not
    /// marked handed over: the successor may never complete).
    pub fn spawn_successor(&self, extra: &[&str]) -> Result<Keel> {
        let mut spec = self.spec.clone();
        spec.extra_args.retain(|a| a != "--takeover");
        spec.extra_args.push("--takeover".into());
        spec.extra_args.extend(extra.iter().map(|s| s.to_string()));
        let stem = spec.log.file_stem().and_then(|s| s.to_str()).unwrap_or("keel").to_owned();
        spec.log = spec.log.with_file_name(format!("{stem}-next.log"));
        Self::spawn(spec)
    }

    /// Waits up to `timeout` for a line of this keel's log that `matches`.
    pub fn wait_for_log(&mut self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Result<String> {
        self.child.wait_for_line(timeout, matches)
    }

    /// Waits up to `timeout` for this keel to exit by itself (after handing over); its exit status.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.child.wait_timeout(timeout).with_context(|| format!("keel (pid {}) still runs after {timeout:?}", self.pid()))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }

    fn spawn(spec: KeelSpec) -> Result<Keel> {
        if !spec.bin.is_file() {
            bail!("keel binary not found at {} (build it, or set KEEL_BIN)", spec.bin.display());
        }
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("run")
            .args(["--capture", spec.backend.as_arg()])
            .arg("--cgroup")
            .arg(&spec.cgroup_root)
            .arg("--bpffs")
            .arg(&spec.bpffs)
            .arg("--state-dir")
            .arg(&spec.state_dir)
            .arg("--api-socket")
            .arg(&spec.api_socket)
            .args(["--admin-addr", &spec.admin_addr.to_string(), "--log-format", "json"])
            .args(&spec.extra_args)
            .env("RUST_BACKTRACE", "1");
        let has_source = spec.extra_args.iter().any(|a| a == "--xds-address" || a == "--config-dir");
        if !has_source {
            // A keel with no workload source must be told so explicitly (it refuses to start otherwise).
            cmd.arg("--capture-only");
        }
        let _fds = sys::place(&mut cmd, &Placement { netns: Some(&spec.node_netns), cgroup: Some(&spec.own_cgroup) })?;
        let child = process::spawn_logged("keel", &mut cmd, &spec.log)?;
        Ok(Keel { child, spec, handed_over: false })
    }

    /// keel creates its API socket only once it is fully ready, so "ready" = `"pods"` answers.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait() {
                bail!("keel exited ({status}) before it was ready; log tail:\n{}", self.log_tail(60));
            }
            let err = match api::request(&self.spec.api_socket, &json!("pods"), Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("keel's API did not answer \"pods\" within {READY_TIMEOUT:?} (last error: {err:#}); log tail:\n{}", self.log_tail(60));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn backend(&self) -> Backend {
        self.spec.backend
    }

    pub fn spec(&self) -> &KeelSpec {
        &self.spec
    }

    /// keel's stdout+stderr so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log(), lines)
    }

    // ---- API -------------------------------------------------------------------------------------------------

    /// One request; `{"error": ..}` becomes `Err` carrying keel's message.
    pub fn api(&self, request: Value) -> Result<Value> {
        api::request(&self.spec.api_socket, &request, API_TIMEOUT)
    }

    /// The enroll object keel expects for a lab pod.
    pub fn enroll_request(pod: &Pod) -> Value {
        json!({"enroll": {
            "namespace": pod.namespace,
            "name": pod.name,
            "service_account": "default",
            "netns": pod.netns_path,
            "cgroup": pod.cgroup_path,
            "ips": [pod.ip.to_string()],
        }})
    }

    pub fn enroll(&self, pod: &Pod) -> Result<()> {
        self.api(Self::enroll_request(pod)).map(drop).with_context(|| format!("enrolling {}", pod.qualified()))
    }

    pub fn unenroll(&self, pod: &Pod) -> Result<()> {
        self.api(json!({"unenroll": {"namespace": pod.namespace, "name": pod.name}}))
            .map(drop)
            .with_context(|| format!("unenrolling {}", pod.qualified()))
    }

    pub fn pods(&self) -> Result<Value> {
        self.api(json!("pods"))
    }

    pub fn stats(&self) -> Result<Value> {
        self.api(json!("stats"))
    }

    /// The last 1024 closed connections, oldest first.
    pub fn connections(&self) -> Result<Vec<Connection>> {
        let v = self.api(json!("connections"))?;
        serde_json::from_value(v.clone()).with_context(|| format!("unexpected \"connections\" answer: {v}"))
    }

    pub fn set_fast_path(&self, on: bool) -> Result<()> {
        self.api(json!({ "fast_path": on })).map(drop)
    }

    /// Polls `"connections"` until an entry satisfies `pred` (entries appear when a connection closes).
    pub fn wait_connection(&self, timeout: Duration, pred: impl Fn(&Connection) -> bool) -> Result<Connection> {
        let deadline = Instant::now() + timeout;
        loop {
            let conns = self.connections()?;
            if let Some(c) = conns.iter().find(|c| pred(c)) {
                return Ok(c.clone());
            }
            if Instant::now() >= deadline {
                let last: Vec<String> = conns.iter().rev().take(8).map(|c| format!("{c:?}")).collect();
                bail!("no matching connection within {timeout:?}; most recent entries:\n{}", last.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `keel` CLI against this keel's API (`keel pc services`, ...), as an operator would; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.spec.bin).arg("--api-socket").arg(&self.spec.api_socket).args(args).output()?;
        if !out.status.success() {
            bail!("keel {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `GET path` on the admin server (plain HTTP/1.1 from a thread inside the node namespace).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.spec.admin_addr;
        let path = path.to_string();
        sys::in_netns(&self.spec.node_netns, move || super::http::get(addr, &path, Duration::from_secs(10)))
    }

    // ---- lifecycle -------------------------------------------------------------------------------------------

    /// SIGKILL (no cleanup by keel: pins, attachments and the socket file stay, as after a crash) and reap.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.child.kill()
    }

    /// `keel uninstall` (release every pod, detach and unpin everything, forget the persisted state) and wait
    /// ≤ 10 s for a clean exit; SIGKILL and fail if it does not come.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.cli(&["uninstall"]).with_context(|| format!("keel uninstall; log tail:\n{}", self.log_tail(40)))?;
        self.wait_exit("keel uninstall")
    }

    /// SIGTERM (a stop before a restart: the pods stay captured) and wait ≤ 10 s for a clean exit; SIGKILL and
    /// fail if it does not come.
    pub fn sigterm(&mut self) -> Result<ExitStatus> {
        self.child.signal(libc::SIGTERM)?;
        self.wait_exit("SIGTERM")
    }

    fn wait_exit(&mut self, after: &str) -> Result<ExitStatus> {
        match self.child.wait_timeout(TERM_TIMEOUT) {
            Some(s) => Ok(s),
            None => {
                self.child.kill();
                bail!("keel did not exit within {TERM_TIMEOUT:?} of {after}; log tail:\n{}", self.log_tail(40))
            }
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.spec.state_dir
    }

    pub fn api_socket(&self) -> &Path {
        &self.spec.api_socket
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        // Uninstalled, so the next keel of the lab (or of the benchmark's next arm) starts from a clean slate; a
        // keel that does not answer gets SIGTERM, then SIGKILL (the lab removes what it leaves).
        if self.child.try_wait().is_none() {
            if !self.handed_over && self.cli(&["uninstall"]).is_ok() && self.child.wait_timeout(TERM_TIMEOUT).is_some() {
                return;
            }
            let _ = self.child.signal(libc::SIGTERM);
            if self.child.wait_timeout(TERM_TIMEOUT).is_none() {
                eprintln!("keel lab: keel (pid {}) exited neither on uninstall nor on SIGTERM within {TERM_TIMEOUT:?}; SIGKILL", self.pid());
                self.child.kill();
            }
        }
    }
}
