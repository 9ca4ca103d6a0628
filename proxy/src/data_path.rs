//! The data path's shared state: what every connection handler of the node ([`DataPath`]) and of one pod
//! ([`PodContext`]) reads. Built once; it names no `l4` or `l7` type (only the layers below them: `dial`,
//! `upstream`, `policy`, `telemetry`, `capture`, `limits`).
use std::sync::Arc;

use crate::{
    capture::Capture,
    dial::{Dialer, Origin},
    fair_share::PodShare,
    limits::{Limits, PerSourceSlots, RateBudget, Slots},
    netns::Netns,
    pods::PodBudgets,
    policy::open_connections::OpenConnections,
    telemetry::{Refusal, Telemetry},
    upstream::Upstreams,
    xds::state::{Snapshot, WorkloadStore},
};

/// What every connection handler of one pod shares.
pub struct PodContext {
    pub name: String,
    /// Shared with the same-node bypass, which closes bypassed connections from inside the pod.
    pub netns: Arc<Netns>,
    /// The pod's own IPv4 address: shown as the source of its outbound connections.
    pub ip: std::net::Ipv4Addr,
    /// Captured connections (outbound and plaintext inbound) the pod may have in flight.
    pub connection_slots: Arc<Slots>,
    /// New captured connections per second, when the pod has such a budget.
    pub connection_rate: Option<Arc<RateBudget>>,
    /// HBONE connections the pod's 15008 accepts.
    pub hbone_slots: Arc<Slots>,
    /// Its bandwidth budget and share of keel's worker time, over every relay of its connections.
    pub share: Arc<PodShare>,
}

impl PodContext {
    /// The pod's context; its own `budgets` replace keel's defaults where they are set.
    pub fn new(name: String, netns: Netns, ip: std::net::Ipv4Addr, limits: &Limits, budgets: PodBudgets) -> PodContext {
        PodContext {
            name,
            netns: Arc::new(netns),
            ip,
            connection_slots: Slots::new(budgets.max_connections.unwrap_or(limits.connections_per_pod), Refusal::PodConnectionLimit),
            connection_rate: budgets.connections_per_second.map(|rate| RateBudget::new(rate, Refusal::PodConnectionRate)),
            hbone_slots: Slots::new(limits.hbone.connections_per_pod, Refusal::PodHboneLimit),
            share: PodShare::new(budgets.bytes_per_second, budgets.weight.unwrap_or(1), limits.fair_share),
        }
    }

    /// The pod as the origin of connections keel makes for it.
    pub fn origin(&self) -> Origin<'_> {
        Origin { netns: &self.netns, ip: self.ip }
    }
}

/// Node-wide inputs of the data path, built once.
pub struct DataPath {
    pub capture: Capture,
    /// Same-node bypass verdicts granted and the connections the kernel carries under them.
    pub bypass: crate::bypass::Bypass,
    pub telemetry: Telemetry,
    /// Workloads, services and policies (from a control plane or the local config directory; empty without).
    pub workloads: Arc<WorkloadStore>,
    /// How keel reaches endpoints: certificates, the HBONE client pool, the node's pods and same-node peers.
    pub dialer: Dialer,
    /// Pooled upstream HTTP connections of the L7 engine.
    pub upstreams: Upstreams,
    pub open_connections: Arc<OpenConnections>,
    pub limits: Limits,
    /// HBONE connections the whole node accepts (every pod's 15008 together).
    pub hbone_node_slots: Arc<Slots>,
    /// HBONE handshakes in progress per source address, node-wide.
    pub hbone_handshakes: PerSourceSlots,
    /// keel follows a workload source (control plane or config directory): a pod keel has no Workload for is
    /// not in the mesh as far as keel knows, and its traffic is refused rather than carried unauthenticated.
    /// Off only in `--capture-only` mode (benchmarks and capture tests), where keel carries bytes and nothing
    /// else.
    pub mesh: bool,
    /// Benchmark mode: answer outbound HTTP requests in keel instead of relaying them (see `l4::responder`).
    pub responder: bool,
    /// Istio's `outboundTrafficPolicy`: whether addresses the mesh does not know are reachable.
    pub outbound_policy: crate::plan::OutboundTrafficPolicy,
    /// ServiceEntry hosts with resolution DNS, resolved.
    pub dns: Arc<crate::dns::DnsResolver>,
    /// Pauses the byte relays that move to a successor keel, and collects them (`keel run --takeover`).
    pub mover: Arc<crate::handover::relays::RelayMover>,
}

impl DataPath {
    /// What a captured connection's plan is decided over (see [`crate::plan::plan`]): `snapshot`, and `on_node`,
    /// which tells this node's enrolled pods (`|ip| self.dialer.node_pods.contains(ip)`: a closure the caller owns).
    pub fn plan_inputs<'a>(&'a self, snapshot: &'a Snapshot, on_node: &'a dyn Fn(std::net::IpAddr) -> bool) -> crate::plan::Inputs<'a> {
        crate::plan::Inputs {
            snapshot,
            on_node,
            certificates: self.dialer.certificates.is_some(),
            mesh: self.mesh,
            responder: self.responder,
            outbound_policy: self.outbound_policy,
            resolved: self.dns.as_ref(),
        }
    }
}
