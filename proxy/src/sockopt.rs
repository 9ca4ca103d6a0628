//! The few socket options keel needs that std, tokio and socket2 do not expose.
use std::{
    io, mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd},
};

const SO_NETNS_COOKIE: libc::c_int = 71;
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Reads a fixed-size option. `T` must be plain data for which all-zero bytes are a valid value.
fn getsockopt<T: Copy>(fd: impl AsFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: callers only use integer and sockaddr types, for which zeroed memory is valid.
    let mut value: T = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value is a writable buffer of `len` bytes.
    let rc = unsafe { libc::getsockopt(fd.as_fd().as_raw_fd(), level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The cookie of the network namespace the socket lives in (what `bpf_get_netns_cookie` returns).
pub fn netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    getsockopt::<u64>(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE)
}

/// The destination before netfilter NAT (iptables REDIRECT) rewrote it.
pub fn original_dst(fd: impl AsFd) -> io::Result<SocketAddrV4> {
    let addr: libc::sockaddr_in = getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST)?;
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)))
}
