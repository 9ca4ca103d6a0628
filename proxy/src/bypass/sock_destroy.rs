//! Closing one TCP socket of the calling thread's network namespace by its addresses: the kernel's SOCK_DESTROY
//! request over NETLINK_SOCK_DIAG (`CONFIG_INET_DIAG_DESTROY`), as `ss --kill` does. The socket is aborted and its
//! peer gets a reset. Needs CAP_NET_ADMIN in the namespace; run it on the namespace's thread.
use std::{
    io,
    mem::size_of,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `SOCK_DESTROY` (include/uapi/linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;
/// Every TCP state (`idiag_states` is a bit mask by state number).
const ALL_STATES: u32 = u32::MAX;
/// `INET_DIAG_NOCOOKIE`: match by addresses, whatever the socket's cookie.
const NO_COOKIE: [u32; 2] = [u32::MAX, u32::MAX];

/// `struct inet_diag_sockid` (include/uapi/linux/inet_diag.h): ports big-endian, addresses network order.
#[repr(C)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// Destroys the IPv4 TCP socket bound to `local` and connected to `remote`. `NotFound` if there is none (it
/// closed meanwhile); `Unsupported` on a kernel without `CONFIG_INET_DIAG_DESTROY`.
pub fn destroy_tcp4(local: SocketAddrV4, remote: SocketAddrV4) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = |ip: std::net::Ipv4Addr| [u32::from_ne_bytes(ip.octets()), 0, 0, 0];
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DESTROY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: ALL_STATES,
            id: InetDiagSockId {
                sport: local.port().to_be_bytes(),
                dport: remote.port().to_be_bytes(),
                src: address(*local.ip()),
                dst: address(*remote.ip()),
                interface: 0,
                cookie: NO_COOKIE,
            },
        },
    };
    // SAFETY: `request` is a plain #[repr(C)] value of the length given; the kernel only reads it.
    let sent = unsafe { libc::send(socket.as_raw_fd(), (&raw const request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 256];
    // SAFETY: `answer` is writable for its whole length.
    let received = unsafe { libc::recv(socket.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    acknowledgement(&answer[..received as usize])
}

/// The kernel's answer: an NLMSG_ERROR whose error is 0 (done) or a negative errno.
fn acknowledgement(answer: &[u8]) -> io::Result<()> {
    let header = size_of::<libc::nlmsghdr>();
    if answer.len() < header + 4 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {}-byte netlink answer", answer.len())));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("netlink answered with message type {kind}, not an acknowledgement")));
    }
    match i32::from_ne_bytes([answer[header], answer[header + 1], answer[header + 2], answer[header + 3]]) {
        0 => Ok(()),
        negative => Err(io::Error::from_raw_os_error(-negative)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::Read,
        net::{SocketAddr, TcpListener, TcpStream},
    };

    #[test]
    fn the_request_has_the_kernels_layout() {
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<Request>(), 72);
    }

    #[test]
    fn a_destroyed_socket_resets_its_peer_and_a_missing_one_is_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (client.local_addr().unwrap(), client.peer_addr().unwrap()) else {
            unreachable!("IPv4 loopback")
        };
        destroy_tcp4(local, remote).expect("SOCK_DESTROY (needs root and CONFIG_INET_DIAG_DESTROY)");
        let mut buf = [0u8; 8];
        let error = server.read(&mut buf).expect_err("the peer of a destroyed socket is reset");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        let gone = destroy_tcp4(local, remote).expect_err("nothing left to destroy");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
    }
}
