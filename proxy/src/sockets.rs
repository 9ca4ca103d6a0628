//! keel's sockets inside a pod: the listeners capture steers to, and the connections keel makes on the pod's
//! behalf. All are created on the pod's namespace thread; every one carries keel's mark so no capture rule or
//! program ever takes keel's own traffic back to keel.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use keel_ebpf_common::{HBONE_PORT, INBOUND_PORT, KEEL_MARK, OUTBOUND_PORT};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::netns::Netns;

const LISTEN_BACKLOG: i32 = 4096;
/// TCP keepalive on every keel socket: a peer that vanished (node gone, cable cut, half-open NAT entry) is
/// noticed after about 4 minutes of silence instead of never, so it cannot hold keel's sockets forever.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(120);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_PROBES: u32 = 4;

fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES)
}

/// Turns TCP keepalive on for an accepted or connected socket (best effort: a socket that refuses it is no
/// worse off than before).
pub fn set_keepalive(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive());
}

/// keel's listeners in a pod.
pub struct PodListeners {
    /// 127.0.0.1:15001: where connect4 (or REDIRECT) sends the pod's outbound connections.
    pub outbound: std::net::TcpListener,
    /// 0.0.0.0:15006: where sk_lookup (or REDIRECT) hands inbound connections.
    pub inbound: std::net::TcpListener,
    /// 0.0.0.0:15008: HBONE, addressed to the pod itself (capture leaves the port alone).
    pub hbone: std::net::TcpListener,
}

impl PodListeners {
    /// Copies of the three descriptors (the same sockets).
    pub fn try_clone(&self) -> io::Result<PodListeners> {
        Ok(PodListeners { outbound: self.outbound.try_clone()?, inbound: self.inbound.try_clone()?, hbone: self.hbone.try_clone()? })
    }
}

pub fn marked_tcp_socket() -> io::Result<Socket> {
    tcp_socket(true)
}

/// A non-blocking TCP socket, with keel's mark when `marked` (capture lets marked sockets pass).
fn tcp_socket(marked: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if marked {
        socket.set_mark(KEEL_MARK)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn listener(addr: SocketAddrV4, transparent: bool) -> io::Result<std::net::TcpListener> {
    let socket = marked_tcp_socket()?;
    // Accepted sockets inherit it.
    socket.set_tcp_keepalive(&keepalive())?;
    // A restarted keel must rebind while the old listener's connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if transparent {
        // sk_lookup hands this listener connections addressed to the pod's application ports.
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Creates keel's listeners inside the pod.
pub fn open_pod_listeners(netns: &Netns) -> anyhow::Result<PodListeners> {
    let listeners = netns.run_blocking(|| -> io::Result<PodListeners> {
        Ok(PodListeners {
            outbound: listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND_PORT), false)?,
            inbound: listener(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, INBOUND_PORT), true)?,
            hbone: listener(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, HBONE_PORT), false)?,
        })
    })??;
    Ok(listeners)
}

pub fn into_tokio(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    TcpListener::from_std(listener)
}

/// Connects to `destination` from inside the pod, as the pod itself would have.
pub async fn connect_from_pod(netns: &Netns, destination: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let marked = netns.marks_sockets();
    let socket = netns.run(move || tcp_socket(marked)).await.map_err(|e| io::Error::other(e.to_string()))??;
    socket.set_tcp_keepalive(&keepalive())?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(SocketAddr::V4(destination))).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}"))),
    }
}

/// Makes the next close send RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
