//! The eBPF backend: loads keel's kernel programs, attaches the node-wide ones once, and enrolls pods by writing
//! map entries (plus one sk_lookup link per pod network namespace, the only per-pod attachment the kernel allows).
//!
//! **Fail closed** (the default): every program attachment is a bpf_link pinned under `<bpffs>/links/`, and the
//! enrollment maps are pinned, so capture outlives a crashed keel. Its enrolled pods' outbound connections are
//! still steered to keel's (now closed) in-pod listener and refused, and inbound connections are refused by
//! sk_lookup (CONFIG_FAIL_CLOSED), instead of flowing in plaintext and unauthorized until keel is back. A
//! restarted keel attaches its own programs first, then replaces the pins, so there is no window without
//! capture. `keel run --fail-open` keeps the links owned by the process: they go with it, and pods talk directly
//! while keel is down.
use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use anyhow::Context as _;
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, SockHash},
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        CgroupSockAddr, SkLookup, SkMsg, SockOps,
    },
    Ebpf, EbpfLoader,
};
use keel_ebpf_common::{
    counter, BypassFlow, BypassKey, ClientKey, Endpoint4, FlowKey, ListenerKey, PodEntry, CONFIG_BYPASS, CONFIG_FAIL_CLOSED, CONFIG_FAST_PATH,
    LISTENER_INBOUND, POD_CAPTURE_OUTBOUND,
};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{EbpfCounters, OriginalDstError, PodCapture, ProgramCounters};
use crate::config::{check_fs_magic, Config, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC};

/// The object file aya-build compiled from `ebpf/programs` (see build.rs).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keel"));

const FALLBACK_HINT: &str = "eBPF capture is unavailable; `keel run --capture iptables` works without it";

pub struct EbpfCapture {
    /// Map handles used on the connection path, outside the lock.
    original_dst: HashMap<MapData, ClientKey, Endpoint4>,
    stats: PerCpuArray<MapData, u64>,
    fast_path: AtomicBool,
    /// Same-node bypass was asked for at start (`--same-node-bypass on`); `keel fast-path` switches it with the
    /// splice only then.
    bypass_configured: bool,
    bypass_active: AtomicBool,
    bypass: Mutex<BypassMaps>,
    pin_dir: PathBuf,
    /// Links are pinned (capture outlives keel) unless `--fail-open`.
    fail_closed: bool,
    /// `None` once shut down.
    state: Mutex<Option<Attached>>,
}

/// The same-node bypass maps (see `crate::bypass`), apart from enrollment's lock: verdicts are granted on the
/// connection path.
struct BypassMaps {
    verdicts: HashMap<MapData, BypassKey, u8>,
    heartbeat: Array<MapData, u64>,
    flows: HashMap<MapData, FlowKey, BypassFlow>,
}

/// Everything that changes on enroll/unenroll, behind one lock (enrollment is rare; connections never take it).
struct Attached {
    ebpf: Ebpf,
    pods: HashMap<MapData, u64, PodEntry>,
    pod_ips: HashMap<MapData, u32, u64>,
    listeners: SockHash<MapData, ListenerKey>,
    config: Array<MapData, u32>,
    /// sk_lookup links by pod netns cookie.
    lookup_links: StdHashMap<u64, HeldLink<aya::programs::sk_lookup::SkLookupLinkId>>,
    /// connect4 and sock_ops, when pinned (fail closed); owned by their programs otherwise.
    _cgroup_links: Vec<PinnedLink>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

impl EbpfCapture {
    pub fn start(config: &Config) -> anyhow::Result<EbpfCapture> {
        check_kernel(config)?;
        std::fs::create_dir_all(&config.bpffs_dir).with_context(|| format!("creating the pin directory {}", config.bpffs_dir.display()))?;
        let mut ebpf = load_reusing_pins(&config.bpffs_dir)?;
        let logger = start_kernel_logger(&mut ebpf);

        let cgroup = File::open(&config.cgroup_root).with_context(|| format!("opening cgroup {}", config.cgroup_root.display()))?;
        let links_dir = links_dir(&config.bpffs_dir);
        std::fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
        let fail_closed = !config.fail_open;
        let cgroup_links = attach_cgroup_programs(&mut ebpf, &cgroup, &config.cgroup_root, fail_closed.then_some(links_dir.as_path()))?;

        let splice_sockets: SockHash<MapData, FlowKey> = take(&mut ebpf, "SPLICE_SOCKETS")?;
        let sk_msg: &mut SkMsg = program(&mut ebpf, "keel_sk_msg")?;
        sk_msg.load().context("loading sk_msg")?;
        sk_msg.attach(splice_sockets.fd()).context("attaching sk_msg to the fast-path sockhash")?;
        let sk_lookup: &mut SkLookup = program(&mut ebpf, "keel_sk_lookup")?;
        sk_lookup.load().context("loading sk_lookup")?;

        // Pinned maps survive a restart and keep the previous keel's pods captured (refused, not bypassed) until
        // this keel has restored them; `retain` then drops the entries of pods it did not restore.
        let pods: HashMap<MapData, u64, PodEntry> = take(&mut ebpf, "PODS")?;
        let pod_ips: HashMap<MapData, u32, u64> = take(&mut ebpf, "POD_IPS")?;
        let mut config_map: Array<MapData, u32> = take(&mut ebpf, "CONFIG")?;
        config_map.set(CONFIG_FAST_PATH, u32::from(config.fast_path), 0).context("writing CONFIG")?;
        config_map.set(CONFIG_FAIL_CLOSED, u32::from(fail_closed), 0).context("writing CONFIG")?;
        config_map.set(CONFIG_BYPASS, u32::from(config.same_node_bypass), 0).context("writing CONFIG")?;
        write_exclusions(&mut ebpf, config)?;

        let capture = EbpfCapture {
            original_dst: take(&mut ebpf, "ORIGINAL_DST")?,
            stats: take(&mut ebpf, "STATS")?,
            fast_path: AtomicBool::new(config.fast_path),
            bypass_configured: config.same_node_bypass,
            bypass_active: AtomicBool::new(config.same_node_bypass),
            bypass: Mutex::new(BypassMaps {
                verdicts: take(&mut ebpf, "BYPASS_VERDICTS")?,
                heartbeat: take(&mut ebpf, "BYPASS_HEARTBEAT")?,
                flows: take(&mut ebpf, "BYPASS_FLOWS")?,
            }),
            pin_dir: config.bpffs_dir.clone(),
            fail_closed,
            state: Mutex::new(Some(Attached {
                listeners: take(&mut ebpf, "LISTENERS")?,
                pods,
                pod_ips,
                config: config_map,
                lookup_links: StdHashMap::new(),
                _cgroup_links: cgroup_links,
                ebpf,
                _logger: logger,
            })),
        };
        // Kept alive by the program's attachment; the handle itself is no longer needed.
        drop(splice_sockets);
        if !fail_closed {
            // Links an earlier fail-closed keel pinned: ours (owned by this process) replace them.
            remove_pins(&links_dir)?;
        }
        info!(cgroup = %config.cgroup_root.display(), pins = %config.bpffs_dir.display(), fast_path = config.fast_path,
              fail_closed, "eBPF capture attached");
        Ok(capture)
    }

    pub fn enroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        let mut guard = self.state.lock().expect("capture state poisoned");
        let state = guard.as_mut().context("eBPF capture is shut down")?;
        let cookie = pod.netns.cookie();
        for ip in &pod.spec.ips {
            let IpAddr::V4(v4) = ip else { continue };
            let key = ListenerKey { ip: u32::from_ne_bytes(v4.octets()), slot: LISTENER_INBOUND };
            state.listeners.insert(key, pod.inbound_listener.as_raw_fd(), 0).with_context(|| format!("registering the inbound listener for {ip}"))?;
        }
        if !state.lookup_links.contains_key(&cookie) {
            let sk_lookup: &mut SkLookup = program(&mut state.ebpf, "keel_sk_lookup")?;
            let link = sk_lookup.attach(pod.netns).with_context(|| format!("attaching sk_lookup to {}", pod.netns.path().display()))?;
            let held = if self.fail_closed {
                let link: FdLink = sk_lookup.take_link(link)?.into();
                HeldLink::Pinned(pin_replacing(link, &lookup_link_pin(&self.pin_dir, cookie))?)
            } else {
                HeldLink::Owned(link)
            };
            state.lookup_links.insert(cookie, held);
        }
        for ip in &pod.spec.ips {
            let IpAddr::V4(v4) = ip else { continue };
            state.pod_ips.insert(u32::from_ne_bytes(v4.octets()), cookie, 0).context("writing the POD_IPS entry")?;
        }
        let entry = PodEntry { flags: POD_CAPTURE_OUTBOUND, _pad: 0 };
        state.pods.insert(cookie, entry, 0).context("writing the PODS entry")?;
        Ok(())
    }

    pub fn unenroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        let mut guard = self.state.lock().expect("capture state poisoned");
        let state = guard.as_mut().context("eBPF capture is shut down")?;
        let cookie = pod.netns.cookie();
        // Outbound capture ends with the map entry: the next connect() in the pod goes straight out.
        let _ = state.pods.remove(&cookie);
        for ip in &pod.spec.ips {
            let IpAddr::V4(v4) = ip else { continue };
            let ip = u32::from_ne_bytes(v4.octets());
            let _ = state.listeners.remove(&ListenerKey { ip, slot: LISTENER_INBOUND });
            let _ = state.pod_ips.remove(&ip);
        }
        match state.lookup_links.remove(&cookie) {
            Some(HeldLink::Owned(link)) => {
                let sk_lookup: &mut SkLookup = program(&mut state.ebpf, "keel_sk_lookup")?;
                sk_lookup.detach(link).context("detaching sk_lookup")?;
            }
            // Removing the pin and closing our descriptor detaches it.
            Some(HeldLink::Pinned(pinned)) => drop(pinned.unpin().context("unpinning the sk_lookup link")?),
            None => {}
        }
        Ok(())
    }

    /// After restoring the persisted pods: forgets every pod a previous keel captured that this one did not
    /// restore (gone meanwhile), so its namespace is neither captured nor refused any more.
    pub fn retain(&self, enrolled: &[(u64, Vec<IpAddr>)]) -> anyhow::Result<()> {
        let mut guard = self.state.lock().expect("capture state poisoned");
        let state = guard.as_mut().context("eBPF capture is shut down")?;
        let cookies: std::collections::HashSet<u64> = enrolled.iter().map(|(cookie, _)| *cookie).collect();
        let ips: std::collections::HashSet<u32> = enrolled
            .iter()
            .flat_map(|(_, ips)| ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(u32::from_ne_bytes(v4.octets())),
                IpAddr::V6(_) => None,
            })
            .collect();
        let stale: Vec<u64> = state.pods.keys().filter_map(Result::ok).filter(|c| !cookies.contains(c)).collect();
        for cookie in &stale {
            let _ = state.pods.remove(cookie);
        }
        let stale_ips: Vec<u32> = state.pod_ips.keys().filter_map(Result::ok).filter(|ip| !ips.contains(ip)).collect();
        for ip in &stale_ips {
            let _ = state.pod_ips.remove(ip);
        }
        let links = links_dir(&self.pin_dir);
        for entry in std::fs::read_dir(&links).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(cookie) = name.to_str().and_then(|n| n.strip_prefix(LOOKUP_LINK_PREFIX)).and_then(|c| c.parse::<u64>().ok()) else {
                continue;
            };
            if !cookies.contains(&cookie) {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing stale link pin {}", entry.path().display()))?;
            }
        }
        if !stale.is_empty() || !stale_ips.is_empty() {
            info!(pods = stale.len(), addresses = stale_ips.len(), "released pods a previous keel captured and this one did not restore");
        }
        Ok(())
    }

    pub fn original_destination(&self, netns_cookie: u64, stream: &TcpStream) -> Result<SocketAddrV4, OriginalDstError> {
        let peer = stream.peer_addr()?;
        let SocketAddr::V4(peer_v4) = peer else { return Err(OriginalDstError::NotRecorded(peer)) };
        let key = ClientKey { netns: netns_cookie, ip: u32::from_ne_bytes(peer_v4.ip().octets()), port: peer_v4.port() as u32 };
        match self.original_dst.get(&key, 0) {
            Ok(dst) => Ok(SocketAddrV4::new(dst.ip.to_ne_bytes().into(), u16::from_be(dst.port))),
            Err(aya::maps::MapError::KeyNotFound) => Err(OriginalDstError::NotRecorded(peer)),
            Err(e) => Err(OriginalDstError::Map(e.to_string())),
        }
    }

    pub fn set_fast_path(&self, on: bool) -> anyhow::Result<()> {
        let mut guard = self.state.lock().expect("capture state poisoned");
        let state = guard.as_mut().context("eBPF capture is shut down")?;
        state.config.set(CONFIG_FAST_PATH, u32::from(on), 0).context("writing CONFIG")?;
        if self.bypass_configured {
            state.config.set(CONFIG_BYPASS, u32::from(on), 0).context("writing CONFIG")?;
            // Off, the programs ignore verdicts at once; the caller revokes them (see `crate::bypass`).
            self.bypass_active.store(on, Ordering::Relaxed);
        }
        self.fast_path.store(on, Ordering::Relaxed);
        info!(on, same_node_bypass = on && self.bypass_configured, "fast path switched");
        Ok(())
    }

    /// Same-node bypass was asked for at start (`--same-node-bypass on`): its maps are in use.
    pub fn bypass_configured(&self) -> bool {
        self.bypass_configured
    }

    /// Whether the kernel applies bypass verdicts now (asked for at start, and not switched off since).
    pub fn bypass_on(&self) -> bool {
        self.bypass_active.load(Ordering::Relaxed)
    }

    /// Lets the pods of `key` talk without keel from their next connection on.
    pub fn grant_bypass(&self, key: &BypassKey) -> anyhow::Result<()> {
        let mut maps = self.bypass.lock().expect("bypass maps poisoned");
        maps.verdicts.insert(key, 1, 0).context("writing a BYPASS_VERDICTS entry")
    }

    /// Takes back every verdict: every new connection goes through keel again.
    pub fn revoke_bypasses(&self) -> anyhow::Result<()> {
        let mut maps = self.bypass.lock().expect("bypass maps poisoned");
        let keys: Vec<BypassKey> = maps.verdicts.keys().filter_map(Result::ok).collect();
        for key in keys {
            match maps.verdicts.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing a BYPASS_VERDICTS entry"),
            }
        }
        Ok(())
    }

    /// keel is alive: the kernel honours verdicts for `BYPASS_HEARTBEAT_TTL_NS` after this.
    pub fn bypass_heartbeat(&self) -> anyhow::Result<()> {
        let now = monotonic_ns();
        self.bypass.lock().expect("bypass maps poisoned").heartbeat.set(0, now, 0).context("writing BYPASS_HEARTBEAT")
    }

    /// Every bypassed connection the kernel knows of (connecting, established or closed, not yet forgotten).
    pub fn bypass_flows(&self) -> Vec<(FlowKey, BypassFlow)> {
        self.bypass.lock().expect("bypass maps poisoned").flows.iter().filter_map(Result::ok).collect()
    }

    /// Drops a closed flow keel has accounted for.
    pub fn forget_bypass_flow(&self, key: &FlowKey) {
        let _ = self.bypass.lock().expect("bypass maps poisoned").flows.remove(key);
    }

    pub fn fast_path(&self) -> bool {
        self.fast_path.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> EbpfCounters {
        let read = |index: u32| -> u64 { self.stats.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0) };
        EbpfCounters {
            connect4: ProgramCounters {
                captured: read(counter::CONNECT4_CAPTURED),
                passed: read(counter::CONNECT4_PASSED),
                bypassed: read(counter::CONNECT4_BYPASSED),
                errors: read(counter::CONNECT4_ERRORS),
                ..Default::default()
            },
            sock_ops: ProgramCounters {
                captured: read(counter::SOCK_OPS_ORIGINAL_DST),
                redirected: read(counter::SOCK_OPS_SPLICED),
                errors: read(counter::SOCK_OPS_ERRORS),
                ..Default::default()
            },
            sk_msg: ProgramCounters {
                redirected: read(counter::SK_MSG_REDIRECTED),
                passed: read(counter::SK_MSG_PASSED),
                errors: read(counter::SK_MSG_ERRORS),
                ..Default::default()
            },
            sk_lookup: ProgramCounters {
                captured: read(counter::SK_LOOKUP_CAPTURED),
                passed: read(counter::SK_LOOKUP_PASSED),
                refused: read(counter::SK_LOOKUP_REFUSED),
                bypassed: read(counter::SK_LOOKUP_BYPASSED),
                errors: read(counter::SK_LOOKUP_ERRORS),
                ..Default::default()
            },
        }
    }

    /// Detaches every program (dropping the object closes its links) and removes the pins.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let taken = self.state.lock().expect("capture state poisoned").take();
        if let Some(state) = taken {
            if let Some(logger) = &state._logger {
                logger.abort();
            }
            drop(state);
        }
        remove_pins(&self.pin_dir)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn check_kernel(config: &Config) -> anyhow::Result<()> {
    check_fs_magic(&config.cgroup_root, CGROUP2_SUPER_MAGIC, "a cgroup v2 directory").with_context(|| format!("--cgroup: {FALLBACK_HINT}"))?;
    let bpffs_parent = config.bpffs_dir.parent().unwrap_or(Path::new("/"));
    if check_fs_magic(bpffs_parent, BPF_FS_MAGIC, "bpffs").is_err() {
        mount_bpffs(bpffs_parent).with_context(|| format!("--bpffs: {FALLBACK_HINT}"))?;
    }
    Ok(())
}

/// Mounts bpffs where the pin directory's parent should be (as systemd or the kubelet usually already did).
fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("mounting bpffs at {}", dir.display()));
    }
    info!(dir = %dir.display(), "mounted bpffs");
    Ok(())
}

/// Loads the object reusing the maps a previous keel pinned; pins that no longer match this keel's map
/// definitions (an upgrade) are removed and the load is retried once with fresh maps.
fn load_reusing_pins(pin_dir: &Path) -> anyhow::Result<Ebpf> {
    let load = || EbpfLoader::new().default_map_pin_directory(pin_dir).load(PROGRAMS);
    match load() {
        Ok(ebpf) => Ok(ebpf),
        Err(first) => {
            warn!(error = %first, pins = %pin_dir.display(), "pinned maps are unusable; removing them and loading fresh");
            remove_pins(pin_dir)?;
            std::fs::create_dir_all(pin_dir)?;
            load().with_context(|| format!("loading keel's eBPF programs: {FALLBACK_HINT}"))
        }
    }
}

fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pins in {}", pin_dir.display())),
    }
}

/// Attached through bpf_link, which always coexists with other programs on the cgroup (Cilium's, another
/// keel's): the link API takes no ALLOW_MULTI flag, so the mode is the default one. With `pins`, the links are
/// pinned there (replacing a previous keel's), and returned: they outlive this process.
fn attach_cgroup_programs(ebpf: &mut Ebpf, cgroup: &File, cgroup_path: &Path, pins: Option<&Path>) -> anyhow::Result<Vec<PinnedLink>> {
    let mut pinned = Vec::new();
    let connect4: &mut CgroupSockAddr = program(ebpf, "keel_connect4")?;
    connect4.load().with_context(|| format!("loading cgroup/connect4: {FALLBACK_HINT}"))?;
    let link = connect4
        .attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching connect4 to {}: {FALLBACK_HINT}", cgroup_path.display()))?;
    if let Some(dir) = pins {
        let link = FdLink::try_from(connect4.take_link(link)?).context("connect4 is not a bpf_link")?;
        pinned.push(pin_replacing(link, &dir.join("connect4"))?);
    }
    let sock_ops: &mut SockOps = program(ebpf, "keel_sock_ops")?;
    sock_ops.load().with_context(|| format!("loading sock_ops: {FALLBACK_HINT}"))?;
    let link = sock_ops
        .attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching sock_ops to {}: {FALLBACK_HINT}", cgroup_path.display()))?;
    if let Some(dir) = pins {
        let link = FdLink::try_from(sock_ops.take_link(link)?).context("sock_ops is not a bpf_link")?;
        pinned.push(pin_replacing(link, &dir.join("sock_ops"))?);
    }
    Ok(pinned)
}

/// A program attachment: owned by the loaded program (goes with keel) or pinned (outlives it).
enum HeldLink<Id> {
    Owned(Id),
    Pinned(PinnedLink),
}

const LOOKUP_LINK_PREFIX: &str = "sk_lookup-";

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn lookup_link_pin(pin_dir: &Path, netns_cookie: u64) -> PathBuf {
    links_dir(pin_dir).join(format!("{LOOKUP_LINK_PREFIX}{netns_cookie}"))
}

/// Pins `link` at `path`, taking over from a link a previous keel pinned there: the new attachment is already
/// in place when the old one goes, so the hook is never empty.
fn pin_replacing(link: FdLink, path: &Path) -> anyhow::Result<PinnedLink> {
    let previous = PinnedLink::from_pin(path).ok();
    if previous.is_some() {
        std::fs::remove_file(path).with_context(|| format!("replacing the pinned link {}", path.display()))?;
    }
    let pinned = link.pin(path).with_context(|| format!("pinning {}", path.display()))?;
    // Closing the last reference to the previous link (its pin is gone) detaches it.
    drop(previous);
    Ok(pinned)
}

/// Writes the configured exclusions over whatever a previous keel left in the pinned maps.
fn write_exclusions(ebpf: &mut Ebpf, config: &Config) -> anyhow::Result<()> {
    let excl = &config.exclusions;
    let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(map_mut(ebpf, "EXCLUDED_OUTBOUND_PORTS")?)?;
    replace_all(&mut ports, &excl.outbound_ports)?;
    let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(map_mut(ebpf, "EXCLUDED_INBOUND_PORTS")?)?;
    replace_all(&mut ports, &excl.inbound_ports)?;
    let mut cidrs: LpmTrie<&mut MapData, u32, u8> = LpmTrie::try_from(map_mut(ebpf, "EXCLUDED_OUTBOUND_CIDRS")?)?;
    let old: Vec<Key<u32>> = cidrs.keys().filter_map(Result::ok).collect();
    for key in old {
        let _ = cidrs.remove(&key);
    }
    for net in &excl.outbound_cidrs {
        let key = Key::new(u32::from(net.prefix_len()), u32::from_ne_bytes(net.network().octets()));
        cidrs.insert(&key, 1, 0).with_context(|| format!("excluding {net}"))?;
    }
    Ok(())
}

fn clear<T: std::borrow::BorrowMut<MapData>, K: aya::Pod, V: aya::Pod>(map: &mut HashMap<T, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

fn replace_all(map: &mut HashMap<&mut MapData, u16, u8>, ports: &[u16]) -> anyhow::Result<()> {
    clear(map);
    for port in ports {
        map.insert(port, 1, 0).with_context(|| format!("excluding port {port}"))?;
    }
    Ok(())
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("map {name} missing from keel's eBPF object"))
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from keel's eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).with_context(|| format!("program {name} missing from keel's eBPF object"))?;
    program.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

/// Forwards aya-log records from the kernel programs into keel's log.
fn start_kernel_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            warn!(error = %e, "kernel program logging unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for as long as it lives.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "kernel program logging unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    /// keel's aya (third_party/README.md) parses the kernel BTF, ≈ 15 MiB at its peak, only for an object with CO-RE
    /// relocations. Loading would still work if the programs gained one, but keel's footprint would quietly grow back.
    #[test]
    fn ebpf_object_needs_no_kernel_btf() {
        let object = aya_obj::Object::parse(super::PROGRAMS).expect("keel's eBPF object parses");
        assert!(
            !object.has_btf_relocations(),
            "keel's eBPF programs now carry CO-RE relocations: every load parses the kernel BTF (see docs/design/keel-footprint.md)"
        );
    }
}
