//! Network namespaces: keel opens every socket of a pod *inside* that pod's namespace, from one daemon.
//!
//! `setns(CLONE_NEWNET)` only moves the calling thread, and a socket keeps the namespace it was created in for its
//! whole life. So each enrolled pod gets one small OS thread parked in its namespace; async code asks it to create
//! sockets and gets the file descriptors back. Async worker threads never change namespace.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use anyhow::{bail, Context as _};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Socket requests that may wait for a pod's namespace thread. Each takes microseconds, so a full queue means
/// the pod (or a peer flooding it) asks faster than the kernel can answer: further requests fail at once
/// instead of growing keel's memory without bound.
pub const QUEUE_LIMIT: usize = 4096;

/// The namespace thread's queue is full (see [`QUEUE_LIMIT`]).
#[derive(Debug, thiserror::Error)]
#[error("the namespace thread of {0} has {QUEUE_LIMIT} socket requests queued")]
pub struct QueueFull(String);

/// A handle on a pod's network namespace and the thread that creates sockets in it.
pub struct Netns {
    path: PathBuf,
    file: File,
    cookie: u64,
    /// A pod's: keel's sockets there carry keel's mark, so capture lets them pass. keel's own (`keel gateway`
    /// in its pod): nothing captures there, and marking would need CAP_NET_ADMIN the gateway does not have.
    marks_sockets: bool,
    jobs: mpsc::SyncSender<Job>,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`) and starts its thread.
    pub fn open(path: &Path) -> anyhow::Result<Netns> {
        Netns::enter(path, false)
    }

    /// keel's own namespace: `keel gateway` runs in its pod and its sockets are made there.
    pub fn own() -> anyhow::Result<Netns> {
        Netns::enter(Path::new("/proc/self/ns/net"), true)
    }

    fn enter(path: &Path, own_allowed: bool) -> anyhow::Result<Netns> {
        let file = File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
        let own = File::open("/proc/thread-self/ns/net").context("opening keel's own network namespace")?;
        let is_own = same_file(&file, &own)?;
        if !own_allowed && is_own {
            bail!("{} is keel's own network namespace, not a pod's", path.display());
        }
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_LIMIT);
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread_ns = file.try_clone()?;
        thread::Builder::new()
            .name(format!("netns-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("pod")))
            .spawn(move || {
                // keel's own namespace needs no setns (the thread starts in it), nor CAP_SYS_ADMIN, which a
                // gateway pod does not have.
                // SAFETY: setns on this thread only; the fd is a valid namespace file.
                let entered = if is_own { 0 } else { unsafe { libc::setns(thread_ns.as_raw_fd(), libc::CLONE_NEWNET) } };
                let _ = ready_tx.send(if entered == 0 { Ok(()) } else { Err(io::Error::last_os_error()) });
                if entered != 0 {
                    return;
                }
                // Runs until every sender (the Netns) is gone.
                for job in queue {
                    job();
                }
            })
            .context("spawning the namespace thread")?;
        ready_rx
            .recv()
            .context("namespace thread ended before entering the namespace")?
            .with_context(|| format!("entering network namespace {} (setns)", path.display()))?;
        let mut netns = Netns { path: path.to_owned(), file, cookie: 0, marks_sockets: !is_own, jobs };
        netns.cookie = netns.run_blocking(netns_cookie_of_thread)??;
        Ok(netns)
    }

    /// Whether keel's sockets in this namespace carry keel's mark (see the field).
    pub fn marks_sockets(&self) -> bool {
        self.marks_sockets
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this namespace (`bpf_get_netns_cookie` returns the same value).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on the namespace's thread and waits for it (for use outside the async runtime or at setup).
    pub fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("namespace thread of {} is gone", self.path.display()))?;
        rx.recv().map_err(|_| anyhow::anyhow!("namespace thread of {} dropped a job", self.path.display()))
    }

    /// Runs `f` on the namespace's thread from async code; fails with [`QueueFull`] rather than wait for room.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => anyhow::Error::new(QueueFull(self.path.display().to_string())),
            mpsc::TrySendError::Disconnected(_) => anyhow::anyhow!("namespace thread of {} is gone", self.path.display()),
        })?;
        rx.await.map_err(|_| anyhow::anyhow!("namespace thread of {} dropped a job", self.path.display()))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn same_file(a: &File, b: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// The cookie of the calling thread's network namespace, read from a throwaway socket.
fn netns_cookie_of_thread() -> anyhow::Result<u64> {
    // SAFETY: plain socket creation; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket() for the netns cookie");
    }
    // SAFETY: fd was just returned by socket().
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::sockopt::netns_cookie(&socket).context("getsockopt(SO_NETNS_COOKIE)")
}
