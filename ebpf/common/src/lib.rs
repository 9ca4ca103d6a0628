//! The `#[repr(C)]` types and constants keel's kernel programs share with user space.
//!
//! Every map key and value crosses the user/kernel boundary byte for byte, so each type here has a fixed layout
//! with explicit padding, and addresses are kept in the byte order the kernel hands them over in (network order
//! for IPv4 addresses, as `u32` read straight from the context) unless a field's doc says otherwise.
#![no_std]

/// Socket mark keel sets on every socket it opens (as Istio's in-pod rules do: 0x539 = 1337).
/// The connect hook and the iptables backend both let marked sockets through: keel never captures itself.
pub const KEEL_MARK: u32 = 0x539;
/// Only these bits of the mark are keel's; the rest belong to the CNI or the application.
pub const KEEL_MARK_MASK: u32 = 0xfff;

/// Ports of keel's listeners inside each enrolled pod's network namespace (ztunnel's numbers).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;

/// 127.0.0.1 as the context's `user_ip4` reads it: network order in a `u32` loaded little-endian.
pub const LOOPBACK_IP4_NET: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Value of [`PodEntry::flags`]: the pod's outbound connections are captured.
pub const POD_CAPTURE_OUTBOUND: u32 = 1;

/// Per enrolled pod, keyed by the pod's network-namespace cookie (`bpf_get_netns_cookie`).
/// Enrollment is this map entry: adding or removing it enrolls or releases a pod without re-attaching anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    pub flags: u32,
    pub _pad: u32,
}

/// An IPv4 endpoint as recorded by the connect hook: both fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint4 {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of the original-destination table keel reads for each accepted outbound connection: the client socket's
/// own address as keel sees it as the peer (127.0.0.1:ephemeral after the rewrite), qualified by the pod's netns
/// cookie because loopback tuples repeat in every pod. `ip` is network order, `port` host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub netns: u64,
    pub ip: u32,
    pub port: u32,
}

/// A TCP connection as seen by one of its sockets: the key of the fast-path SockHash. Only connections between
/// two different pods of this node are spliced, and pod IPs are unique on a node, so unlike loopback tuples
/// (the same in every pod) these keys cannot collide across namespaces. IPs network order, ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local_ip: u32,
    pub remote_ip: u32,
    pub local_port: u32,
    pub remote_port: u32,
}

impl FlowKey {
    /// The same connection seen from the other end.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey { local_ip: self.remote_ip, remote_ip: self.local_ip, local_port: self.remote_port, remote_port: self.local_port }
    }
}

/// Fast-path state of one sending socket. A direction only ever moves from the splice to the TCP path, never
/// back: the receiver reads spliced bytes before TCP bytes, so that move keeps byte order, the reverse would not.
///
/// Each flag has exactly one writer, so no update can be lost without atomics: `peer_ready` is set once by the
/// peer's accept (sock_ops, on the peer's CPU), `off` only by this socket's own sk_msg (which the kernel runs
/// under this socket's lock, one message at a time). With both in one word, the two read-modify-writes could
/// race and a lost "off" would let a later message overtake bytes already sent by TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceState {
    /// Bytes this socket sent since its peer last sent anything (a request/response exchange resets it).
    pub burst_bytes: u32,
    /// Non-zero once the peer socket is in the SockHash: messages may be spliced to it.
    pub peer_ready: u32,
    /// Non-zero once this direction left the fast path for good (bulk burst, data sent before the peer was
    /// ready, a failed redirect).
    pub off: u32,
    pub _pad: u32,
}

/// A one-way burst longer than this leaves the fast path: sk_msg redirection has no backpressure, so a bulk
/// sender to a slow reader would fail with ENOMEM; TCP's flow control takes over from here.
pub const SPLICE_BURST_LIMIT: u32 = 64 * 1024;

/// Key of the in-pod listener table the sk_lookup program steers inbound connections with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The pod IP the connection is addressed to (network order).
    pub ip: u32,
    /// `LISTENER_*`.
    pub slot: u32,
}

pub const LISTENER_INBOUND: u32 = 0;
pub const LISTENER_HBONE: u32 = 1;

/// A same-node bypass verdict: the pod in `source_netns` may reach the pod in `destination_netns` on `port` without
/// keel in the path (keel's policy engine allowed it; see `BYPASS_VERDICTS`). Pods by netns cookie, not address:
/// a deleted pod's address given to a new pod does not inherit its verdicts. `port` host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BypassKey {
    pub source_netns: u64,
    pub destination_netns: u64,
    pub port: u32,
    pub _pad: u32,
}

/// One connection the kernel carried past keel, keyed by its [`FlowKey`] as the client sees it. The kernel fills
/// the byte counts when the client socket closes; keel reads, accounts and deletes closed entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BypassFlow {
    pub verdict: BypassKey,
    /// Client → server bytes the server acknowledged (`bytes_acked` of the client socket, less the SYN's and FIN's
    /// sequence numbers).
    pub bytes_sent: u64,
    /// Server → client bytes (`bytes_received` of the client socket, less the server's FIN).
    pub bytes_received: u64,
    /// When the client connected and when its socket closed (`bpf_ktime_get_ns`; 0 until then).
    pub started_ns: u64,
    pub ended_ns: u64,
    /// `BYPASS_FLOW_*`.
    pub state: u32,
    pub _pad: u32,
}

pub const BYPASS_FLOW_CONNECTING: u32 = 0;
pub const BYPASS_FLOW_ESTABLISHED: u32 = 1;
pub const BYPASS_FLOW_CLOSED: u32 = 2;

/// Verdicts count only while keel's heartbeat (`BYPASS_HEARTBEAT`, CLOCK_MONOTONIC ns as `bpf_ktime_get_ns` reads
/// it) is at most this old: a keel that died stops granting bypasses within it, and its pods' connections are
/// captured again (and refused while keel is down).
pub const BYPASS_HEARTBEAT_TTL_NS: u64 = 3_000_000_000;

/// Index into the CONFIG array.
pub const CONFIG_FAST_PATH: u32 = 0;
/// Non-zero: inbound connections to an enrolled pod whose keel listener is gone (keel crashed or is
/// restarting) are refused instead of reaching the application unauthenticated. Off with `keel run --fail-open`.
pub const CONFIG_FAIL_CLOSED: u32 = 1;
/// Non-zero: connect4 and sk_lookup apply same-node bypass verdicts.
pub const CONFIG_BYPASS: u32 = 2;
pub const CONFIG_LEN: u32 = 3;

/// Per-program counters: indices into the per-CPU STATS array.
pub mod counter {
    pub const CONNECT4_CAPTURED: u32 = 0;
    pub const CONNECT4_PASSED: u32 = 1;
    pub const CONNECT4_ERRORS: u32 = 2;
    pub const SOCK_OPS_ORIGINAL_DST: u32 = 3;
    pub const SOCK_OPS_SPLICED: u32 = 4;
    pub const SOCK_OPS_ERRORS: u32 = 5;
    pub const SK_MSG_REDIRECTED: u32 = 6;
    pub const SK_MSG_PASSED: u32 = 7;
    pub const SK_MSG_ERRORS: u32 = 8;
    pub const SK_LOOKUP_CAPTURED: u32 = 9;
    pub const SK_LOOKUP_PASSED: u32 = 10;
    pub const SK_LOOKUP_ERRORS: u32 = 11;
    /// Inbound connections refused because the pod's keel listener was gone (fail closed).
    pub const SK_LOOKUP_REFUSED: u32 = 12;
    /// Connections the kernel carried past keel under a same-node bypass verdict (the client's connect, the
    /// server's SYN).
    pub const CONNECT4_BYPASSED: u32 = 13;
    pub const SK_LOOKUP_BYPASSED: u32 = 14;
    pub const COUNT: u32 = 15;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], Copy, made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for super::PodEntry {}
    unsafe impl aya::Pod for super::Endpoint4 {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::SpliceState {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::BypassKey {}
    unsafe impl aya::Pod for super::BypassFlow {}
}
