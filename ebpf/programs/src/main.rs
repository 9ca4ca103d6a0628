//! keel's kernel programs. Each program returns what its `try_*` body decided; errors are counted and the
//! connection is let through untouched (fail open per connection, never a dropped packet).
//!
//! - `keel_connect4` (cgroup/connect4): an enrolled pod's TCP connect() is rewritten to keel's in-pod outbound
//!   listener; the original destination is recorded under the socket cookie.
//! - `keel_sock_ops` (sock_ops): moves that record to the client's address once the port is bound, and puts the
//!   two ends of a keel↔keel connection between pods of this node into the fast-path SockHash.
//! - `keel_sk_msg` (sk_msg on the SockHash): splices messages to the peer socket's receive queue.
//! - `keel_sk_lookup` (sk_lookup, attached per pod network namespace): steers inbound TCP to keel's listeners.
//!
//! Same-node bypass: once keel's policy engine allowed (source pod, destination pod, port), connect4 leaves that
//! triple's later connections alone, sock_ops records them (addresses, then bytes at close) and sk_lookup lets
//! exactly those SYNs reach the application: one TCP connection between the pods, keel out of the path.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{
    bindings::{sk_action, BPF_ANY, BPF_F_INGRESS},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, sk_lookup, sk_msg, sock_ops},
    programs::{SkLookupContext, SkMsgContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::error;
use keel_ebpf_common::{
    counter, BypassFlow, BypassKey, ClientKey, Endpoint4, FlowKey, ListenerKey, SpliceState, BYPASS_FLOW_CLOSED, BYPASS_FLOW_CONNECTING,
    BYPASS_FLOW_ESTABLISHED, BYPASS_HEARTBEAT_TTL_NS, CONFIG_BYPASS, CONFIG_FAIL_CLOSED, CONFIG_FAST_PATH, HBONE_PORT, INBOUND_PORT, KEEL_MARK,
    KEEL_MARK_MASK, LISTENER_HBONE, LISTENER_INBOUND, LOOPBACK_IP4_NET, OUTBOUND_PORT, SPLICE_BURST_LIMIT,
};
use maps::*;

const AF_INET: u32 = 2;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

// sock_ops callback codes (include/uapi/linux/bpf.h).
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE: u32 = 7;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_loopback(ip_net: u32) -> bool {
    ip_net.to_ne_bytes()[0] == 127
}

#[inline(always)]
fn fast_path_enabled() -> bool {
    matches!(CONFIG.get(CONFIG_FAST_PATH), Some(v) if *v != 0)
}

/// Ports arrive in network order in the upper 16 bits of `remote_port` (sock_ops, sk_msg) on little-endian.
#[inline(always)]
fn remote_port_host(raw: u32) -> u32 {
    u16::from_be((raw >> 16) as u16) as u32
}

// ---------------------------------------------------------------------------------------------------------------
// Outbound capture.

/// What connect4 did with one connect().
enum Connect {
    /// Rewritten to keel's outbound listener.
    Captured,
    /// Not keel's business (not enrolled, excluded, keel's own).
    Passed,
    /// Left to go straight to a pod of this node under a bypass verdict.
    Bypassed,
}

#[cgroup_sock_addr(connect4)]
pub fn keel_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(Connect::Captured) => count(counter::CONNECT4_CAPTURED),
        Ok(Connect::Passed) => count(counter::CONNECT4_PASSED),
        Ok(Connect::Bypassed) => count(counter::CONNECT4_BYPASSED),
        Err(()) => {
            count(counter::CONNECT4_ERRORS);
            error!(&ctx, "connect4: could not record an original destination; connection left uncaptured");
        }
    }
    1 // always let connect() proceed: to keel when rewritten, to the original destination otherwise
}

fn try_connect4(ctx: &SockAddrContext) -> Result<Connect, ()> {
    // SAFETY: the context pointer is valid for the program's run; fields are read through the verifier-checked ctx.
    let addr = unsafe { &mut *ctx.sock_addr };
    if addr.type_ != SOCK_STREAM || addr.protocol != IPPROTO_TCP {
        return Ok(Connect::Passed);
    }
    // SAFETY: helper valid for cgroup_sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain lookup of a Copy value.
    if unsafe { PODS.get(&netns) }.is_none() {
        return Ok(Connect::Passed);
    }
    let sk = unsafe { addr.__bindgen_anon_1.sk };
    if sk.is_null() {
        return Ok(Connect::Passed);
    }
    // keel's own sockets carry its mark: never capture them (no loops).
    if unsafe { (*sk).mark } & KEEL_MARK_MASK == KEEL_MARK {
        return Ok(Connect::Passed);
    }
    let ip = addr.user_ip4;
    let port_net = addr.user_port as u16;
    let port = u16::from_be(port_net);
    if is_loopback(ip) || unsafe { EXCLUDED_OUTBOUND_PORTS.get(&port) }.is_some() {
        return Ok(Connect::Passed);
    }
    if EXCLUDED_OUTBOUND_CIDRS.get(&aya_ebpf::maps::lpm_trie::Key::new(32, ip)).is_some() {
        return Ok(Connect::Passed);
    }
    // SAFETY: helper valid for cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(verdict) = bypass_verdict(netns, ip, port) {
        // sock_ops turns this into the flow sk_lookup admits once the client's port is bound. If that record
        // cannot be made, the connection is captured as usual.
        if BYPASS_BY_COOKIE.insert(&cookie, &verdict, BPF_ANY as u64).is_ok() {
            return Ok(Connect::Bypassed);
        }
    }
    let original = Endpoint4 { ip, port: port_net, _pad: 0 };
    ORIGINAL_DST_BY_COOKIE.insert(&cookie, &original, BPF_ANY as u64).map_err(|_| ())?;
    addr.user_ip4 = LOOPBACK_IP4_NET;
    addr.user_port = (OUTBOUND_PORT.to_be()) as u32;
    Ok(Connect::Captured)
}

// ---------------------------------------------------------------------------------------------------------------
// Same-node bypass.

#[inline(always)]
fn bypass_enabled() -> bool {
    matches!(CONFIG.get(CONFIG_BYPASS), Some(v) if *v != 0)
}

/// keel is alive: its heartbeat is at most `BYPASS_HEARTBEAT_TTL_NS` old. A keel that died (its programs and maps
/// outlive it) grants nothing.
#[inline(always)]
fn keel_alive() -> bool {
    let Some(beat) = BYPASS_HEARTBEAT.get(0) else { return false };
    let beat = *beat;
    // SAFETY: helper valid for every program type.
    let now = unsafe { bpf_ktime_get_ns() };
    beat != 0 && now >= beat && now - beat <= BYPASS_HEARTBEAT_TTL_NS
}

/// The verdict for a connect() from the pod in `netns` to `ip:port`, if the destination is a pod of this node and
/// keel allowed the triple.
#[inline(always)]
fn bypass_verdict(netns: u64, ip: u32, port: u16) -> Option<BypassKey> {
    if !bypass_enabled() || !keel_alive() {
        return None;
    }
    // SAFETY: plain lookups of Copy values.
    let destination_netns = *unsafe { POD_IPS.get(&ip) }?;
    if destination_netns == netns {
        return None;
    }
    let key = BypassKey { source_netns: netns, destination_netns, port: port as u32, _pad: 0 };
    unsafe { BYPASS_VERDICTS.get(&key) }?;
    Some(key)
}

/// TCP_CONNECT_CB of a client connect4 bypassed: its addresses are known now, so its SYN can be recognised at the
/// destination; close-time byte counts are asked for.
fn record_bypassed_client(ctx: &SockOpsContext, cookie: u64) -> Result<(), ()> {
    // SAFETY: plain lookup of a Copy value.
    let Some(verdict) = (unsafe { BYPASS_BY_COOKIE.get(&cookie) }).copied() else {
        return Ok(());
    };
    let _ = BYPASS_BY_COOKIE.remove(&cookie);
    // SAFETY: helper valid for every program type.
    let started_ns = unsafe { bpf_ktime_get_ns() };
    let flow = BypassFlow { verdict, state: BYPASS_FLOW_CONNECTING, started_ns, ..BypassFlow::default() };
    BYPASS_FLOWS.insert(&flow_key(ctx), &flow, BPF_ANY as u64).map_err(|_| ())?;
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32).map_err(|_| ())?;
    Ok(())
}

fn bypassed_client_established(ctx: &SockOpsContext) {
    if let Some(flow) = BYPASS_FLOWS.get_ptr_mut(&flow_key(ctx)) {
        // SAFETY: a live map value; only this socket's callbacks write its entry.
        unsafe { (*flow).state = BYPASS_FLOW_ESTABLISHED };
    }
}

/// A bypassed client socket closing: what crossed it, for keel's accounting.
fn bypassed_client_state(ctx: &SockOpsContext) {
    if ctx.arg(1) != TCP_CLOSE {
        return;
    }
    // The counters are sequence-number deltas: `bytes_acked` counts the SYN once the connection was established,
    // and both count the FINs. Closing from these states both FINs went through (sent and acknowledged, and
    // received); from any other (a reset), none did.
    let fins = u64::from(matches!(ctx.arg(0), TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING));
    if let Some(flow) = BYPASS_FLOWS.get_ptr_mut(&flow_key(ctx)) {
        // SAFETY: the context is a live bpf_sock_ops of a full socket (state callbacks only run on those); the
        // map value is live and only this socket's callbacks write it.
        unsafe {
            let ops = &*ctx.ops;
            (*flow).bytes_sent = ops.bytes_acked.saturating_sub(1 + fins);
            (*flow).bytes_received = ops.bytes_received.saturating_sub(fins);
            (*flow).ended_ns = bpf_ktime_get_ns();
            (*flow).state = BYPASS_FLOW_CLOSED;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Connection events: original destination hand-over and fast-path insertion.

#[sock_ops]
pub fn keel_sock_ops(ctx: SockOpsContext) -> u32 {
    if try_sock_ops(&ctx).is_err() {
        count(counter::SOCK_OPS_ERRORS);
        error!(&ctx, "sock_ops: map update failed (op {})", ctx.op());
    }
    1
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), ()> {
    if ctx.family() != AF_INET {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // SAFETY: helper valid for sock_ops programs.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            record_bypassed_client(ctx, cookie)?;
            record_client_address(ctx, cookie)
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            bypassed_client_established(ctx);
            splice_active(ctx)
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => splice_passive(ctx),
        BPF_SOCK_OPS_STATE_CB => {
            bypassed_client_state(ctx);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[inline(always)]
fn netns_of(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper valid for sock_ops programs.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The client's local port is known from TCP_CONNECT_CB on: re-key the original destination by the address keel
/// will see as its peer, since keel's accepted socket has a different cookie.
fn record_client_address(ctx: &SockOpsContext, cookie: u64) -> Result<(), ()> {
    let Some(original) = (unsafe { ORIGINAL_DST_BY_COOKIE.get(&cookie) }).copied() else {
        return Ok(());
    };
    let _ = ORIGINAL_DST_BY_COOKIE.remove(&cookie);
    let key = ClientKey { netns: netns_of(ctx), ip: ctx.local_ip4(), port: ctx.local_port() };
    ORIGINAL_DST.insert(&key, &original, BPF_ANY as u64).map_err(|_| ())?;
    count(counter::SOCK_OPS_ORIGINAL_DST);
    Ok(())
}

#[inline(always)]
fn flow_key(ctx: &SockOpsContext) -> FlowKey {
    FlowKey { local_ip: ctx.local_ip4(), remote_ip: ctx.remote_ip4(), local_port: ctx.local_port(), remote_port: remote_port_host(ctx.remote_port()) }
}

/// The fast path splices the hop between two keels on the same node: keel's connection out of one pod into
/// another enrolled pod, accepted by keel there. Only keel's own (marked, non-blocking) sockets ever enter the
/// SockHash: the kernel's sockmap receive path can fail a *blocking* read with EAGAIN on a spurious wake-up, so
/// application sockets stay on plain TCP.
fn splice_active(ctx: &SockOpsContext) -> Result<(), ()> {
    if !fast_path_enabled() || !is_keel_socket(ctx) {
        return Ok(());
    }
    let key = flow_key(ctx);
    // Same-node destinations only, and never keel's delivery to an application inside its own pod.
    if key.local_ip == key.remote_ip || unsafe { POD_IPS.get(&key.remote_ip) }.is_none() {
        return Ok(());
    }
    // SAFETY: the context is a live bpf_sock_ops for this callback.
    let ops = unsafe { &mut *ctx.ops };
    SPLICE_SOCKETS.update(key, ops, BPF_ANY as u64).map_err(|_| ())?;
    SPLICE_STATE.insert(&key, &SpliceState::default(), BPF_ANY as u64).map_err(|_| ())?;
    PENDING_PEERS.insert(&key.reversed(), &1u8, BPF_ANY as u64).map_err(|_| ())?;
    Ok(())
}

#[inline(always)]
fn is_keel_socket(ctx: &SockOpsContext) -> bool {
    // SAFETY: `sk` is a verifier-checked, possibly null socket pointer for this callback.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    !sk.is_null() && unsafe { (*sk).mark } & KEEL_MARK_MASK == KEEL_MARK
}

/// The accepting end (keel's inbound socket, which inherits its listener's mark): joins only if its connecting
/// peer asked for a splice, then tells the peer it may start.
fn splice_passive(ctx: &SockOpsContext) -> Result<(), ()> {
    let key = flow_key(ctx);
    if unsafe { PENDING_PEERS.get(&key) }.is_none() {
        return Ok(());
    }
    let _ = PENDING_PEERS.remove(&key);
    if !is_keel_socket(ctx) {
        return Ok(());
    }
    // SAFETY: the context is a live bpf_sock_ops for this callback.
    let ops = unsafe { &mut *ctx.ops };
    SPLICE_SOCKETS.update(key, ops, BPF_ANY as u64).map_err(|_| ())?;
    let ready = SpliceState { peer_ready: 1, ..SpliceState::default() };
    SPLICE_STATE.insert(&key, &ready, BPF_ANY as u64).map_err(|_| ())?;
    if let Some(peer) = SPLICE_STATE.get_ptr_mut(&key.reversed()) {
        // SAFETY: a live map value; this is the only writer of `peer_ready` (see SpliceState).
        unsafe { (*peer).peer_ready = 1 };
    }
    count(counter::SOCK_OPS_SPLICED);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Same-node fast path.

#[sk_msg]
pub fn keel_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(true) => count(counter::SK_MSG_REDIRECTED),
        Ok(false) => count(counter::SK_MSG_PASSED),
        Err(()) => count(counter::SK_MSG_ERRORS),
    }
    // SK_PASS either way: a redirected message was queued on the peer by the helper, any other takes TCP.
    sk_action::SK_PASS
}

fn try_sk_msg(ctx: &SkMsgContext) -> Result<bool, ()> {
    // SAFETY: the context pointer is valid for the program's run.
    let md = unsafe { &*ctx.msg };
    let key = FlowKey { local_ip: md.local_ip4, remote_ip: md.remote_ip4, local_port: md.local_port, remote_port: remote_port_host(md.remote_port) };
    let Some(state) = SPLICE_STATE.get_ptr_mut(&key) else {
        return Ok(false);
    };
    // SAFETY: live map value owned by this sending socket.
    let state = unsafe { &mut *state };
    if state.off != 0 {
        return Ok(false);
    }
    // Bytes sent before the peer joined went by TCP: splicing later ones could overtake them.
    if state.peer_ready == 0 || !fast_path_enabled() {
        state.off = 1;
        return Ok(false);
    }
    state.burst_bytes = state.burst_bytes.saturating_add(ctx.size());
    if state.burst_bytes > SPLICE_BURST_LIMIT {
        state.off = 1;
        return Ok(false);
    }
    let peer_key = key.reversed();
    if let Some(peer) = SPLICE_STATE.get_ptr_mut(&peer_key) {
        // The peer's turn to talk is over once we answer: its burst starts again from zero.
        unsafe { (*peer).burst_bytes = 0 };
    }
    let verdict = SPLICE_SOCKETS.redirect_msg(ctx, peer_key, BPF_F_INGRESS as u64);
    if verdict as u32 != sk_action::SK_PASS {
        state.off = 1;
        return Err(());
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------------------------
// Inbound capture.

/// What sk_lookup decided for one connection.
enum Lookup {
    /// Handed to keel's listener.
    Captured,
    /// Not keel's business: the regular lookup goes on.
    Passed,
    /// An enrolled pod whose keel listener is gone (keel crashed or is restarting): refused with a reset rather
    /// than delivered to the application unauthenticated.
    Refused,
    /// A bypassed connection: the regular lookup delivers it to the application.
    Bypassed,
}

#[sk_lookup]
pub fn keel_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Ok(Lookup::Captured) => count(counter::SK_LOOKUP_CAPTURED),
        Ok(Lookup::Passed) => count(counter::SK_LOOKUP_PASSED),
        Ok(Lookup::Bypassed) => count(counter::SK_LOOKUP_BYPASSED),
        Ok(Lookup::Refused) => {
            count(counter::SK_LOOKUP_REFUSED);
            // SK_DROP: the kernel finds no socket and answers the SYN with a reset.
            return sk_action::SK_DROP;
        }
        Err(()) => {
            count(counter::SK_LOOKUP_ERRORS);
            error!(&ctx, "sk_lookup: assigning keel's listener failed; connection takes the regular lookup");
        }
    }
    // SK_PASS: with a socket assigned the kernel uses it, otherwise the regular lookup goes on.
    sk_action::SK_PASS
}

#[inline(always)]
fn fail_closed() -> bool {
    matches!(CONFIG.get(CONFIG_FAIL_CLOSED), Some(v) if *v != 0)
}

fn try_sk_lookup(ctx: &SkLookupContext) -> Result<Lookup, ()> {
    // SAFETY: the context pointer is valid for the program's run.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != IPPROTO_TCP {
        return Ok(Lookup::Passed);
    }
    // Loopback inside the pod is the pod's own business, and the path keel delivers inbound traffic on. The pod
    // talking to its own IP also crosses lo, but the kernel reports the pod interface as ingress for it: a source
    // equal to the destination is what gives it away.
    if lookup.ingress_ifindex == LOOPBACK_IFINDEX || lookup.remote_ip4 == lookup.local_ip4 {
        return Ok(Lookup::Passed);
    }
    // Read once, up front: the verifier refuses a context pointer the compiler offsets and dereferences later.
    // SAFETY: a plain read of a field of the live context.
    let local_ip4 = unsafe { core::ptr::read_volatile(&lookup.local_ip4) };
    let port = lookup.local_port as u16;
    if port == OUTBOUND_PORT || port == INBOUND_PORT {
        return Ok(Lookup::Passed);
    }
    if unsafe { EXCLUDED_INBOUND_PORTS.get(&port) }.is_some() {
        return Ok(Lookup::Passed);
    }
    let slot = if port == HBONE_PORT { LISTENER_HBONE } else { LISTENER_INBOUND };
    if slot == LISTENER_INBOUND && bypass_enabled() && keel_alive() {
        // A SYN from a client socket connect4 let past keel (the flow sock_ops recorded from that very socket, so
        // another pod cannot claim it by forging an address): the application's own listener takes it.
        // SAFETY: plain reads of fields of the live context.
        let (remote_ip4, remote_port) = unsafe { (core::ptr::read_volatile(&lookup.remote_ip4), core::ptr::read_volatile(&lookup.remote_port)) };
        let client = FlowKey { local_ip: remote_ip4, remote_ip: local_ip4, local_port: u16::from_be(remote_port) as u32, remote_port: port as u32 };
        if unsafe { BYPASS_FLOWS.get(&client) }.is_some() {
            return Ok(Lookup::Bypassed);
        }
    }
    let key = ListenerKey { ip: local_ip4, slot };
    match LISTENERS.redirect_sk_lookup(ctx, key, 0) {
        Ok(()) => Ok(Lookup::Captured),
        // No listener, but the pod is still enrolled (its POD_IPS entry outlives keel: the maps are pinned):
        // keel is down. 15008 takes the regular lookup, which finds no listener either while keel is down.
        Err(e) if e == -ENOENT && slot == LISTENER_INBOUND && fail_closed() && unsafe { POD_IPS.get(&local_ip4) }.is_some() => Ok(Lookup::Refused),
        Err(e) if e == -ENOENT => Ok(Lookup::Passed), // not a pod keel serves
        // During a takeover both keels' programs run; the first one already assigned the (same, shared) listener.
        Err(e) if e == -EEXIST => Ok(Lookup::Captured),
        Err(_) => Err(()),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
