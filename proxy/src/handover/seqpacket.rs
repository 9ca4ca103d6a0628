//! The handover's transport: a Unix SOCK_SEQPACKET socket (each message arrives whole, never split or merged)
//! carrying a JSON document and, as SCM_RIGHTS, the file descriptors it speaks of. Bounded: a message is at most
//! [`MAX_MESSAGE`] bytes and [`MAX_FDS`] descriptors, and every receive times out.
use std::{
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use rustix::net::{
    sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketAddrUnix, SocketType,
};
use serde::{de::DeserializeOwned, Serialize};

/// The largest message (a pod list is a few hundred bytes a pod).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 64;

/// Binds and listens at `path` (a stale socket file is replaced), owner-only from the start.
pub fn listen(path: &Path) -> anyhow::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let socket = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)?;
    let address = SocketAddrUnix::new(path)?;
    // SAFETY: umask only swaps the process's file-creation mask; restored right after the bind.
    let previous = unsafe { libc::umask(0o177) };
    let bound = rustix::net::bind(&socket, &address);
    unsafe { libc::umask(previous) };
    bound.with_context(|| format!("binding the handover socket {}", path.display()))?;
    rustix::net::listen(&socket, 1)?;
    Ok(socket)
}

/// Connects to `path`; `None` when nothing listens there (no keel to take over from).
pub fn connect(path: &Path, timeout: Duration) -> anyhow::Result<Option<OwnedFd>> {
    let socket = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)?;
    match rustix::net::connect(&socket, &SocketAddrUnix::new(path)?) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
    set_timeout(&socket, timeout)?;
    Ok(Some(socket))
}

/// Accepts the next peer; only root or keel's own user may hand over or take over.
pub fn accept(listener: &OwnedFd, timeout: Duration) -> anyhow::Result<OwnedFd> {
    let peer = rustix::net::accept(listener)?;
    let credentials = sockopt::socket_peercred(&peer)?;
    let own = rustix::process::geteuid();
    if !(credentials.uid.is_root() || credentials.uid == own) {
        anyhow::bail!("handover refused: uid {} is neither root nor keel's", credentials.uid.as_raw());
    }
    set_timeout(&peer, timeout)?;
    Ok(peer)
}

pub fn set_timeout(socket: &OwnedFd, timeout: Duration) -> anyhow::Result<()> {
    sockopt::set_socket_timeout(socket, sockopt::Timeout::Recv, Some(timeout))?;
    sockopt::set_socket_timeout(socket, sockopt::Timeout::Send, Some(timeout))?;
    Ok(())
}

pub fn send<T: Serialize>(socket: &OwnedFd, message: &T, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(message)?;
    anyhow::ensure!(bytes.len() <= MAX_MESSAGE, "handover message of {} bytes is over {MAX_MESSAGE}", bytes.len());
    anyhow::ensure!(fds.len() <= MAX_FDS, "handover message with {} descriptors is over {MAX_FDS}", fds.len());
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        anyhow::ensure!(control.push(SendAncillaryMessage::ScmRights(fds)), "descriptors do not fit the control buffer");
    }
    let sent = rustix::net::sendmsg(socket.as_fd(), &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    anyhow::ensure!(sent == bytes.len(), "handover message cut short");
    Ok(())
}

/// The next message and the descriptors that came with it (close-on-exec).
pub fn receive<T: DeserializeOwned>(socket: &OwnedFd) -> anyhow::Result<(T, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(socket.as_fd(), &mut [IoSliceMut::new(&mut buffer)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .context("receiving a handover message")?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    anyhow::ensure!(received.bytes > 0, "the other keel closed the handover connection");
    anyhow::ensure!(!received.flags.contains(rustix::net::ReturnFlags::TRUNC), "handover message over {MAX_MESSAGE} bytes");
    anyhow::ensure!(!received.flags.contains(rustix::net::ReturnFlags::CTRUNC), "handover message with more than {MAX_FDS} descriptors");
    let message = serde_json::from_slice(&buffer[..received.bytes]).context("an unreadable handover message")?;
    Ok((message, fds))
}
