//! Every map the programs share with user space. Maps that describe configuration and enrollment are pinned by
//! name under keel's bpffs directory, so a restarted keel finds them; per-connection fast-path state is not.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use keel_ebpf_common::{counter, BypassFlow, BypassKey, ClientKey, Endpoint4, FlowKey, ListenerKey, PodEntry, SpliceState, CONFIG_LEN};

/// Enrolled pods by network-namespace cookie.
#[map]
pub static PODS: HashMap<u64, PodEntry> = HashMap::pinned(4096, 0);

/// IPv4 addresses of enrolled pods (network order) → the pod's netns cookie: "is this destination on this node?"
#[map]
pub static POD_IPS: HashMap<u32, u64> = HashMap::pinned(8192, 0);

/// Runtime switches (`CONFIG_*`), written by user space.
#[map]
pub static CONFIG: Array<u32> = Array::pinned(CONFIG_LEN, 0);

/// Destination ports an enrolled pod reaches directly (host order).
#[map]
pub static EXCLUDED_OUTBOUND_PORTS: HashMap<u16, u8> = HashMap::pinned(256, 0);

/// Destination CIDRs an enrolled pod reaches directly.
#[map]
pub static EXCLUDED_OUTBOUND_CIDRS: LpmTrie<u32, u8> = LpmTrie::pinned(256, 1 /* BPF_F_NO_PREALLOC */);

/// Pod ports that inbound traffic reaches directly (health probes, 15020/15021), host order.
#[map]
pub static EXCLUDED_INBOUND_PORTS: HashMap<u16, u8> = HashMap::pinned(256, 0);

/// Original destination by client socket cookie, between connect() and the SYN.
#[map]
pub static ORIGINAL_DST_BY_COOKIE: LruHashMap<u64, Endpoint4> = LruHashMap::pinned(65536, 0);

/// Original destination by the client's address in its pod: what keel reads for each accepted connection.
#[map]
pub static ORIGINAL_DST: LruHashMap<ClientKey, Endpoint4> = LruHashMap::pinned(65536, 0);

/// Per-program counters.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// keel's in-pod inbound/HBONE listeners by pod IP, for sk_lookup.
#[map]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(8192, 0);

/// Fast-path sockets: both ends (keel's) of each spliced connection between two pods of this node.
#[map]
pub static SPLICE_SOCKETS: SockHash<FlowKey> = SockHash::with_max_entries(65536, 0);

/// Per sending socket: may its messages be spliced, and how long is its current burst.
#[map]
pub static SPLICE_STATE: LruHashMap<FlowKey, SpliceState> = LruHashMap::with_max_entries(65536, 0);

/// Accepting ends whose connecting peer is spliced, keyed as the accepting end will see itself.
#[map]
pub static PENDING_PEERS: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Same-node bypass verdicts keel's policy engine granted (value unused). Not pinned: a restarted keel starts with
/// none, and every connection goes through it until it grants them again.
#[map]
pub static BYPASS_VERDICTS: HashMap<BypassKey, u8> = HashMap::with_max_entries(16384, 0);

/// keel's heartbeat (one slot): verdicts apply only while it is fresh (`BYPASS_HEARTBEAT_TTL_NS`).
#[map]
pub static BYPASS_HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Client sockets connect4 let past keel, by socket cookie, until sock_ops knows their addresses.
#[map]
pub static BYPASS_BY_COOKIE: LruHashMap<u64, BypassKey> = LruHashMap::with_max_entries(16384, 0);

/// Bypassed connections by the client's view of their addresses: sk_lookup lets exactly these SYNs reach the
/// application, and keel accounts for them (opened, closed, bytes).
#[map]
pub static BYPASS_FLOWS: LruHashMap<FlowKey, BypassFlow> = LruHashMap::with_max_entries(65536, 0);
