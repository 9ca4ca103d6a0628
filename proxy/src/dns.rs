//! keel's resolver for the hosts of ServiceEntries with `resolution: DNS`: their endpoints arrive as Workloads
//! with a `hostname` and no address, which keel resolves itself (as Envoy resolves a STRICT_DNS cluster) and
//! re-resolves when the answer's TTL runs out, so a name whose address changes is followed. The answers serve two
//! things: the endpoints a connection to such a service's VIP is balanced over, and, under
//! `--outbound-traffic-policy registry-only`, the addresses a pod may reach directly because a ServiceEntry host
//! resolves to them. An application resolves names itself and may hold an older answer: an address stays known
//! for a grace period after it left the answer.
//!
//! Bounded: at most [`MAX_HOSTS`] names, TTLs clamped to [`MIN_TTL`]..[`MAX_TTL`], each lookup bounded by the
//! resolver's timeout, failures retried with back-off. A name that does not resolve has no endpoint (connections
//! to its service get "no healthy endpoint") and admits no address.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
    TokioResolver,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::xds::state::WorkloadStore;

pub const MAX_HOSTS: usize = 10_000;
pub const MIN_TTL: Duration = Duration::from_secs(5);
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// How long an address stays known after it left a name's answer (applications cache answers too).
pub const GRACE: Duration = Duration::from_secs(60);
const RETRY_START: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the resolver knows now.
#[derive(Debug, Default)]
struct Answers {
    /// Host → its current IPv4 addresses.
    by_host: HashMap<String, Vec<Ipv4Addr>>,
    /// Address → until when it counts as a ServiceEntry host's (the current answers' until their next refresh
    /// plus the grace, former answers' until their grace ends).
    known: HashMap<IpAddr, Instant>,
}

pub struct DnsResolver {
    resolver: Option<TokioResolver>,
    answers: ArcSwap<Answers>,
}

/// One name's schedule.
struct Entry {
    next: Instant,
    retry: Duration,
}

impl DnsResolver {
    /// Resolves with `server` (UDP and TCP, port included) when given, else with the system's configuration
    /// (`/etc/resolv.conf`). Without a usable configuration nothing resolves (fail closed), which is logged.
    pub fn new(server: Option<SocketAddr>) -> DnsResolver {
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        // keel schedules refreshes by TTL itself; its own cache would only delay seeing a change.
        options.cache_size = 0;
        let resolver = match server {
            Some(server) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()].map(|mut c| {
                    c.port = server.port();
                    c
                });
                let name_server = NameServerConfig::new(server.ip(), true, connections.to_vec());
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).with_options(options).build()
            }
            None => TokioResolver::builder_tokio().and_then(|builder| builder.with_options(options).build()),
        };
        let resolver =
            resolver.inspect_err(|e| warn!(error = %e, "no usable DNS configuration: ServiceEntry hosts with resolution DNS will not resolve")).ok();
        DnsResolver { resolver, answers: ArcSwap::default() }
    }

    /// The addresses `host` resolves to now (empty when it does not, or not yet).
    pub fn addresses(&self, host: &str) -> Vec<Ipv4Addr> {
        self.answers.load().by_host.get(host).cloned().unwrap_or_default()
    }

    /// Whether `ip` is (or was, within the grace period) what a ServiceEntry host resolves to.
    pub fn is_known(&self, ip: IpAddr) -> bool {
        self.answers.load().known.get(&ip).is_some_and(|until| *until > Instant::now())
    }

    /// Resolves the hostname endpoints of the workload state, re-resolving each at its TTL and following the
    /// state's changes, until the store is dropped.
    pub async fn run(self: Arc<Self>, store: Arc<WorkloadStore>) {
        let Some(resolver) = self.resolver.clone() else { return };
        let mut changes = store.subscribe();
        let mut schedule: HashMap<String, Entry> = HashMap::new();
        loop {
            let wanted = hostnames(&store);
            schedule.retain(|host, _| wanted.contains(host));
            for host in &wanted {
                schedule.entry(host.clone()).or_insert(Entry { next: Instant::now(), retry: RETRY_START });
            }
            self.forget_unwanted(&wanted);
            let now = Instant::now();
            let due: Vec<String> = schedule.iter().filter(|(_, e)| e.next <= now).map(|(h, _)| h.clone()).collect();
            for host in due {
                let entry = schedule.get_mut(&host).expect("scheduled");
                match resolver.ipv4_lookup(format!("{host}.")).await {
                    Ok(lookup) => {
                        let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now()).clamp(MIN_TTL, MAX_TTL);
                        let ips: Vec<Ipv4Addr> = lookup
                            .answers()
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::A(a) => Some(a.0),
                                _ => None,
                            })
                            .collect();
                        debug!(%host, ?ips, ttl_s = ttl.as_secs(), "resolved");
                        self.record(&host, ips, ttl);
                        *entry = Entry { next: Instant::now() + ttl, retry: RETRY_START };
                    }
                    Err(e) => {
                        warn!(%host, error = %e, retry_in_s = entry.retry.as_secs(), "cannot resolve a ServiceEntry host");
                        self.record(&host, Vec::new(), Duration::ZERO);
                        entry.next = Instant::now() + entry.retry;
                        entry.retry = (entry.retry * 2).min(RETRY_MAX);
                    }
                }
            }
            let next = schedule.values().map(|e| e.next).min();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sleep_until(next) => {}
            }
        }
    }

    /// Replaces `host`'s answer; addresses it no longer has stay known for the grace period.
    fn record(&self, host: &str, ips: Vec<Ipv4Addr>, ttl: Duration) {
        let now = Instant::now();
        let mut next = Answers { by_host: self.answers.load().by_host.clone(), known: self.answers.load().known.clone() };
        if let Some(old) = next.by_host.get(host) {
            if *old != ips {
                info!(%host, from = ?old, to = ?ips, "a ServiceEntry host's addresses changed");
            }
            for ip in old {
                next.known.insert(IpAddr::V4(*ip), now + GRACE);
            }
        }
        for ip in &ips {
            next.known.insert(IpAddr::V4(*ip), now + ttl + GRACE);
        }
        next.known.retain(|_, until| *until > now);
        next.by_host.insert(host.to_owned(), ips);
        self.answers.store(Arc::new(next));
    }

    fn forget_unwanted(&self, wanted: &[String]) {
        let current = self.answers.load();
        if current.by_host.keys().all(|h| wanted.contains(h)) {
            return;
        }
        let by_host = current.by_host.iter().filter(|(h, _)| wanted.contains(h)).map(|(h, v)| (h.clone(), v.clone())).collect();
        self.answers.store(Arc::new(Answers { by_host, known: current.known.clone() }));
    }
}

impl crate::plan::Resolved for DnsResolver {
    fn addresses(&self, host: &str) -> Vec<Ipv4Addr> {
        DnsResolver::addresses(self, host)
    }

    fn is_known(&self, ip: IpAddr) -> bool {
        DnsResolver::is_known(self, ip)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The hostnames of the workloads without an address (ServiceEntry endpoints to resolve), at most [`MAX_HOSTS`].
fn hostnames(store: &WorkloadStore) -> Vec<String> {
    let snapshot = store.snapshot();
    let mut hosts: Vec<String> =
        snapshot.workloads.values().filter(|w| w.addresses.is_empty() && !w.hostname.is_empty()).map(|w| w.hostname.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    if hosts.len() > MAX_HOSTS {
        warn!(hosts = hosts.len(), max = MAX_HOSTS, "too many ServiceEntry hosts to resolve; the rest are not resolved");
        hosts.truncate(MAX_HOSTS);
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_that_left_the_answer_stays_known_for_the_grace_period() {
        let dns = DnsResolver { resolver: None, answers: ArcSwap::default() };
        let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        dns.record("api.example.com", vec![a], Duration::from_secs(30));
        assert_eq!(dns.addresses("api.example.com"), [a]);
        assert!(dns.is_known(IpAddr::V4(a)) && !dns.is_known(IpAddr::V4(b)));
        // The name moves to b: b is its address, a is still known for the grace period, then not.
        dns.record("api.example.com", vec![b], Duration::from_secs(30));
        assert_eq!(dns.addresses("api.example.com"), [b]);
        assert!(dns.is_known(IpAddr::V4(a)) && dns.is_known(IpAddr::V4(b)));
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert!(!dns.is_known(IpAddr::V4(a)), "a former address is forgotten after the grace period");
        assert!(dns.is_known(IpAddr::V4(b)), "the current one lasts its TTL plus the grace");
        // A failed lookup empties the answer; what it had stays known for the grace period only.
        dns.record("api.example.com", vec![], Duration::ZERO);
        assert!(dns.addresses("api.example.com").is_empty());
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert!(!dns.is_known(IpAddr::V4(b)));
    }
}
