//! Same-node bypass (eBPF capture, `--same-node-bypass on`): the kernel carries plain L4 traffic between two pods
//! of this node once keel's policy engine allowed it, and keel stays accountable for it.
//!
//! - **Granting.** The first connection of a (source pod, destination pod, port) goes through keel as always. When
//!   the inbound side admits it and the outbound side carried it as plain L4 between two pods of this node (no
//!   L7, no HBONE), the triple gets a verdict in the kernel ([`Bypass::grant`]). connect4 then leaves that triple's
//!   connections alone and sk_lookup lets exactly their SYNs reach the application: one TCP connection between
//!   the pods. Service VIPs, L7 ports and other nodes keep keel's path.
//! - **Failing closed.** Verdicts count only while keel's heartbeat is fresh (`BYPASS_HEARTBEAT_TTL_NS`): a keel
//!   that died grants nothing after it, and its pods' connections are captured (and refused) again. A restarted
//!   keel starts with no verdicts; SIGTERM and `keel fast-path off` revoke them.
//! - **Policy changes and unenrollment.** Every verdict is revoked (the next connection is decided again), and
//!   open bypassed connections the new policy denies, or of a pod that left, are closed with SOCK_DESTROY.
//! - **Accounting.** Every second keel reads the kernel's flow table: a new flow counts as opened, a closed one is
//!   recorded with its bytes (`keel connections`, path `bypass`; the Istio TCP metrics) and forgotten. A bypassed
//!   connection has one record, the destination's (keel carried ones have one per side).
pub mod sock_destroy;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_ebpf_common::{BypassFlow, BypassKey, FlowKey, BYPASS_FLOW_CLOSED};
use tracing::{info, warn};

use crate::{
    capture::{ebpf::EbpfCapture, Capture, Direction},
    netns::Netns,
    plan::Path,
    policy::OpenConnection,
    telemetry::{ConnectionRecord, Telemetry},
    xds::state::{Snapshot, WorkloadStore},
};

/// How often keel renews its heartbeat and reads the flow table (well inside `BYPASS_HEARTBEAT_TTL_NS`).
pub const TICK: Duration = Duration::from_secs(1);

/// What keel keeps of a verdict it granted: how to decide it again, and what to record bypassed connections as.
pub struct Grant {
    pub connection: OpenConnection,
    /// The admitted connection's record (peers, identities, policy); each bypassed connection's is a copy.
    pub record: ConnectionRecord,
}

#[derive(Default)]
pub struct Bypass {
    granted: Mutex<HashMap<BypassKey, Arc<Grant>>>,
    /// Revoked grants the kernel still has flows of: kept to decide and account for those.
    retired: Mutex<HashMap<BypassKey, Arc<Grant>>>,
    /// Enrolled pods (name, namespace) by netns cookie: where to close a bypassed connection.
    pods: Mutex<HashMap<u64, (String, Arc<Netns>)>>,
    /// Open bypassed connections already counted as opened.
    open: Mutex<HashMap<FlowKey, OpenFlow>>,
    /// Why keel closed a bypassed connection, for its record.
    closed_by_keel: Mutex<HashMap<FlowKey, String>>,
}

/// A bypassed connection keel saw open: since when, under which grant.
#[derive(Clone)]
struct OpenFlow {
    since: Instant,
    grant: Arc<Grant>,
}

impl Bypass {
    pub fn pod_enrolled(&self, name: &str, netns: Arc<Netns>) {
        self.pods.lock().expect("bypass pods poisoned").insert(netns.cookie(), (name.to_owned(), netns));
    }

    /// A pod left: no verdict may outlive it, nor any bypassed connection of it.
    pub async fn pod_left(&self, capture: &Capture, cookie: u64) {
        if let Some(ebpf) = configured(capture) {
            self.close_flows_of(ebpf, cookie).await;
        }
        self.pods.lock().expect("bypass pods poisoned").remove(&cookie);
    }

    /// Revokes every verdict and closes the open bypassed connections from or to the pod in `cookie` (its
    /// namespace still known, so the source side can be reached).
    async fn close_flows_of(&self, ebpf: &EbpfCapture, cookie: u64) {
        self.revoke(ebpf);
        let doomed: Vec<(FlowKey, BypassFlow)> = ebpf
            .bypass_flows()
            .into_iter()
            .filter(|(_, flow)| flow.state != BYPASS_FLOW_CLOSED && (flow.verdict.source_netns == cookie || flow.verdict.destination_netns == cookie))
            .collect();
        for (key, flow) in doomed {
            self.close(&key, flow.verdict.source_netns, "its pod left the mesh").await;
        }
    }

    /// Lets `key`'s later connections bypass keel, if the kernel applies verdicts now. `decided_under` is the
    /// snapshot the admitting decision was made with: if `store` has published another since, the grant is
    /// dropped (its re-authorization may already have run, and would not see a verdict granted after it).
    /// `grant` is called only for a new verdict: connections of a pair already granted, or with the bypass off,
    /// build nothing.
    pub fn grant(&self, capture: &Capture, store: &WorkloadStore, decided_under: &Arc<Snapshot>, key: BypassKey, grant: impl FnOnce() -> Grant) {
        let Some(ebpf) = configured(capture).filter(|e| e.bypass_on()) else { return };
        // Checked under the lock `revoke_all` takes: a snapshot published after the check is followed by a
        // revocation that finds this grant.
        let mut granted = self.granted.lock().expect("bypass grants poisoned");
        if granted.contains_key(&key) || !Arc::ptr_eq(&store.snapshot(), decided_under) {
            return;
        }
        match ebpf.grant_bypass(&key) {
            Ok(()) => {
                let grant = grant();
                info!(destination = %grant.record.pod, source = %grant.record.source.ip(), port = key.port, "same-node bypass granted");
                granted.insert(key, Arc::new(grant));
            }
            Err(e) => warn!(error = %format!("{e:#}"), "could not grant a same-node bypass; connections keep going through keel"),
        }
    }

    /// Takes back every verdict (the kernel's and keel's record of them).
    pub fn revoke_all(&self, capture: &Capture) {
        if let Some(ebpf) = configured(capture) {
            self.revoke(ebpf);
        }
    }

    fn revoke(&self, ebpf: &EbpfCapture) {
        let revoked = std::mem::take(&mut *self.granted.lock().expect("bypass grants poisoned"));
        self.retired.lock().expect("bypass grants poisoned").extend(revoked);
        if let Err(e) = ebpf.revoke_bypasses() {
            warn!(error = %format!("{e:#}"), "could not revoke same-node bypass verdicts");
        }
    }

    /// A new snapshot: every verdict is revoked, so the next connection of each triple is decided under it; open
    /// bypassed connections it denies are closed. Returns how many were.
    pub async fn reauthorize(&self, capture: &Capture, snapshot: &Snapshot) -> usize {
        let Some(ebpf) = configured(capture) else { return 0 };
        self.revoke(ebpf);
        // Every flow the kernel has open, including ones keel's accounting has not seen yet.
        let mut closed = 0;
        for (key, flow) in ebpf.bypass_flows().into_iter().filter(|(_, f)| f.state != BYPASS_FLOW_CLOSED) {
            let Some(grant) = self.grant_of(&flow) else { continue };
            let Some(reason) = grant.connection.revocation(snapshot) else { continue };
            if self.close(&key, flow.verdict.source_netns, &reason).await {
                closed += 1;
            }
        }
        closed
    }

    /// Renews the heartbeat and accounts for the kernel's flows: new ones are opened, closed ones recorded.
    pub fn tick(&self, ebpf: &EbpfCapture, telemetry: &Telemetry) {
        if let Err(e) = ebpf.bypass_heartbeat() {
            // Without a heartbeat the kernel stops honouring verdicts: bypassed pairs go through keel again.
            warn!(error = %format!("{e:#}"), "could not renew the same-node bypass heartbeat");
        }
        let flows = ebpf.bypass_flows();
        for &(key, flow) in &flows {
            let seen = self.open.lock().expect("bypass flows poisoned").get(&key).cloned();
            let OpenFlow { since, grant, .. } = match seen {
                Some(seen) => seen,
                None => {
                    let Some(grant) = self.grant_of(&flow) else {
                        // A flow of no grant keel knows (a previous keel's): nothing to record it as.
                        if flow.state == BYPASS_FLOW_CLOSED {
                            ebpf.forget_bypass_flow(&key);
                        }
                        continue;
                    };
                    telemetry.connection_opened(Direction::Inbound);
                    telemetry.connection_identified(&record_of(&grant, &key, &flow));
                    let seen = OpenFlow { since: Instant::now(), grant };
                    self.open.lock().expect("bypass flows poisoned").insert(key, seen.clone());
                    seen
                }
            };
            if flow.state == BYPASS_FLOW_CLOSED {
                // The kernel's own timestamps; keel's (a tick apart) only if they are missing.
                let lived = match flow.ended_ns.checked_sub(flow.started_ns) {
                    Some(ns) if flow.started_ns != 0 => Duration::from_nanos(ns),
                    _ => since.elapsed(),
                };
                let mut record = record_of(&grant, &key, &flow);
                record.duration_ms = lived.as_secs_f64() * 1e3;
                record.error = self.closed_by_keel.lock().expect("bypass flows poisoned").remove(&key);
                telemetry.connection_closed(record, lived);
                self.open.lock().expect("bypass flows poisoned").remove(&key);
                ebpf.forget_bypass_flow(&key);
            }
        }
        // A flow the kernel no longer lists (its LRU table evicted it) can no longer be accounted for: end it here
        // so keel's own table stays bounded by the kernel's.
        let listed: std::collections::HashSet<FlowKey> = flows.iter().map(|(key, _)| *key).collect();
        let lost: Vec<(FlowKey, OpenFlow)> = {
            let mut open = self.open.lock().expect("bypass flows poisoned");
            let keys: Vec<FlowKey> = open.keys().filter(|key| !listed.contains(key)).copied().collect();
            keys.into_iter().filter_map(|key| open.remove(&key).map(|flow| (key, flow))).collect()
        };
        for (key, flow) in lost {
            let mut record = record_of(&flow.grant, &key, &BypassFlow::default());
            record.error = Some("no longer in the kernel's table of bypassed connections: bytes unknown".to_owned());
            telemetry.connection_closed(record, flow.since.elapsed());
        }
        let mut retired = self.retired.lock().expect("bypass grants poisoned");
        retired.retain(|verdict, _| flows.iter().any(|(_, flow)| flow.state != BYPASS_FLOW_CLOSED && flow.verdict == *verdict));
    }

    fn grant_of(&self, flow: &BypassFlow) -> Option<Arc<Grant>> {
        let granted = self.granted.lock().expect("bypass grants poisoned").get(&flow.verdict).cloned();
        granted.or_else(|| self.retired.lock().expect("bypass grants poisoned").get(&flow.verdict).cloned())
    }

    /// Closes the client end of a bypassed connection from inside its pod, `source_netns` (its peer is reset).
    async fn close(&self, key: &FlowKey, source_netns: u64, reason: &str) -> bool {
        let pod = self.pods.lock().expect("bypass pods poisoned").get(&source_netns).cloned();
        let (local, remote) = endpoints(key);
        let Some((pod, netns)) = pod else {
            warn!(%local, %remote, reason, "cannot close a bypassed connection: its source pod is not enrolled here");
            return false;
        };
        match netns.run(move || sock_destroy::destroy_tcp4(local, remote)).await {
            Ok(Ok(())) => {
                info!(%pod, %local, %remote, reason, "closed a bypassed connection");
                self.closed_by_keel.lock().expect("bypass flows poisoned").insert(*key, reason.to_owned());
                true
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => false, // it ended by itself meanwhile
            Ok(Err(e)) => {
                warn!(%pod, %local, %remote, error = %e, "could not close a bypassed connection (SOCK_DESTROY)");
                false
            }
            Err(e) => {
                warn!(%pod, error = %format!("{e:#}"), "could not close a bypassed connection");
                false
            }
        }
    }
}

/// The eBPF capture, if it runs with the bypass (`--same-node-bypass on`); without, there is nothing to grant,
/// revoke or account for, and no map to read.
pub fn configured(capture: &Capture) -> Option<&EbpfCapture> {
    capture.ebpf().filter(|e| e.bypass_configured())
}

/// The client's and the server's address of a flow (keyed as the client sees it).
fn endpoints(key: &FlowKey) -> (SocketAddrV4, SocketAddrV4) {
    let ip = |raw: u32| Ipv4Addr::from(raw.to_ne_bytes());
    (SocketAddrV4::new(ip(key.local_ip), key.local_port as u16), SocketAddrV4::new(ip(key.remote_ip), key.remote_port as u16))
}

/// The record of one bypassed connection: its grant's, with this connection's addresses and bytes.
fn record_of(grant: &Grant, key: &FlowKey, flow: &BypassFlow) -> ConnectionRecord {
    let (client, server) = endpoints(key);
    let mut record = grant.record.clone();
    record.source = SocketAddr::V4(client);
    record.original_destination = SocketAddr::V4(server);
    record.upstream = Some(SocketAddr::V4(server));
    record.path = Some(Path::Bypass);
    record.bytes_sent = flow.bytes_sent;
    record.bytes_received = flow.bytes_received;
    record.error = None;
    record
}
