//! Small system helpers: running `ip`, entering a network namespace and a cgroup.
//!
//! Why not `ip netns exec`: it remounts /sys for the child, which hides cgroup v2 — and keel and the pods' apps need
//! cgroups. So processes enter a namespace with `setns(CLONE_NEWNET)` in `pre_exec` (after fork, before exec), and
//! in-process work in a namespace happens on a short-lived thread (setns only changes the calling thread).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Runs a command to completion and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...` (`-n NETNS` is just another argument).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Where a process should live: a network namespace and/or a cgroup.
#[derive(Debug, Clone, Default)]
pub struct Placement<'a> {
    pub netns: Option<&'a Path>,
    pub cgroup: Option<&'a Path>,
}

/// Arranges for `cmd`'s child to join the cgroup and network namespace of `place` before it execs.
///
/// The files are opened here, in the parent (with O_CLOEXEC, so the child's copies vanish at exec), because
/// `pre_exec` runs between fork and exec where only async-signal-safe calls are allowed: the closure just does
/// `write(procs, "0")` (cgroup v2: PID 0 means "the writing process") and `setns`. The returned guard must live
/// until `spawn` returns.
pub fn place(cmd: &mut Command, place: &Placement<'_>) -> Result<PlacementFds> {
    let procs = match place.cgroup {
        Some(cg) => {
            Some(OpenOptions::new().write(true).open(cg.join("cgroup.procs")).with_context(|| format!("opening {}/cgroup.procs", cg.display()))?)
        }
        None => None,
    };
    let ns = match place.netns {
        Some(p) => Some(File::open(p).with_context(|| format!("opening netns {}", p.display()))?),
        None => None,
    };
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure only calls write(2) and setns(2) on fds that stay open until spawn returns (the
    // PlacementFds guard owns them), and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(PlacementFds { _fds: procs.into_iter().chain(ns).map(OwnedFd::from).collect() })
}

/// Keeps the fds used by a `place`d command's `pre_exec` open until after `spawn`.
pub struct PlacementFds {
    _fds: Vec<OwnedFd>,
}

/// Runs `f` on a fresh OS thread that has entered the network namespace at `netns`, and returns its result.
/// The thread exits afterwards, so no other code ever runs in the wrong namespace.
pub fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = File::open(netns).with_context(|| format!("opening netns {}", netns.display()))?;
    std::thread::spawn(move || {
        // SAFETY: plain syscall on an fd we own; affects only this (dedicated) thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns worker thread panicked"))?
}

/// Sets a per-network-namespace sysctl such as `net/ipv4/ip_forward`: /proc/sys/net resolves to the namespace of
/// the thread that opens it.
pub fn netns_sysctl(netns: &Path, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_string();
    in_netns(netns, move || std::fs::write(&path, &value).with_context(|| format!("writing {path}")))
}

/// Sends a signal to a pid we started (never to a process name).
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `prog` is an executable on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file())).unwrap_or(false)
}
