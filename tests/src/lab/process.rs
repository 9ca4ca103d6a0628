//! Processes started by a lab: a guard that kills its child on drop, and run-to-completion with a deadline.
//!
//! No lab call may hang a test: every wait has a deadline, after which the process is killed and the call fails
//! with whatever output it produced.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A running process we started. Dropping it kills it (SIGKILL, by the pid it owns) and reaps it.
///
/// Holding the `std::process::Child` until the reap means the pid cannot be reused by another process while we
/// might still signal it.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child, log: Option<PathBuf>) -> Self {
        Self { name: name.into(), child, log, exited: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The combined stdout/stderr log, when the process was started with one.
    pub fn log(&self) -> String {
        self.log.as_deref().map(read_lossy).unwrap_or_default()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` unless the process has already been reaped.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        super::sys::signal(self.pid(), sig)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Polls the log until a line satisfies `ready` (returning that line), failing early if the process exits.
    pub fn wait_for_line(&mut self, timeout: Duration, ready: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| ready(l)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.try_wait() {
                bail!("{} exited ({status}) before it was ready; output:\n{}", self.name, tail(&self.log(), 40));
            }
            if Instant::now() >= deadline {
                bail!("{} not ready after {timeout:?}; output:\n{}", self.name, tail(&self.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<ChildGuard> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening log {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
    Ok(ChildGuard::new(name, child, Some(log.to_path_buf())))
}

/// Runs `cmd` to completion, capturing stdout and stderr; kills it and fails if it runs past `timeout`.
/// A non-zero exit is NOT an error here (callers such as `podapp send` report failures as JSON).
pub fn run_with_timeout(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
    let mut guard = ChildGuard::new(name, child, None);
    // Pipes are drained on threads so a chatty child never blocks on a full pipe while we poll for its exit.
    let stdout = drain(guard.child.stdout.take());
    let stderr = drain(guard.child.stderr.take());
    let status = guard.wait_timeout(timeout);
    let status = match status {
        Some(s) => s,
        None => {
            guard.kill();
            let (o, e) = (join(stdout), join(stderr));
            bail!(
                "{name} did not finish within {timeout:?} (killed); stdout: {} stderr: {}",
                String::from_utf8_lossy(&o).trim(),
                tail(&String::from_utf8_lossy(&e), 20)
            );
        }
    };
    Ok(Output { status, stdout: join(stdout), stderr: join(stderr) })
}

type Drain = Option<std::thread::JoinHandle<Vec<u8>>>;

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Drain {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
}

fn join(d: Drain) -> Vec<u8> {
    d.and_then(|h| h.join().ok()).unwrap_or_default()
}

pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses the last JSON line a program printed (podapp prints exactly one result line).
pub fn last_json_line(name: &str, out: &Output) -> Result<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "{name} ({}) printed no JSON result; stdout: {:?}; stderr: {}",
            out.status,
            stdout.trim(),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        )
    })
}
