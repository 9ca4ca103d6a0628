//! Choosing an endpoint of a cluster for a request, with Envoy's policies: least request (power of two choices,
//! Istio's default), round robin, random, and consistent hashing with a ring (Ketama-style) or a Maglev table.
//! Hash structures are built once per endpoint set; picks take no lock. Ejected endpoints (outlier detection) are
//! skipped; with every endpoint ejected there is no pick (Envoy's "no healthy upstream").
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use rand::Rng as _;

/// One upstream endpoint as the balancer sees it.
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Requests in flight: least-request's measure of load.
    pub active: AtomicU64,
    /// Set by outlier detection while the endpoint is ejected.
    pub ejected: AtomicBool,
}

impl Endpoint {
    pub fn new(address: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint { address, active: AtomicU64::new(0), ejected: AtomicBool::new(false) })
    }

    fn available(&self) -> bool {
        !self.ejected.load(Ordering::Relaxed)
    }
}

pub use crate::hashing::stable_hash;

#[derive(Debug)]
pub enum Policy {
    LeastRequest { choices: usize },
    RoundRobin,
    Random,
    RingHash { min_ring_size: usize },
    Maglev { table_size: usize },
}

#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    kind: Kind,
    /// Below this share of healthy endpoints (percent), ejections are ignored (Envoy's panic threshold).
    panic_threshold: f64,
}

/// Envoy's default healthy panic threshold.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

#[derive(Debug)]
enum Kind {
    LeastRequest {
        choices: usize,
    },
    RoundRobin {
        next: AtomicUsize,
    },
    Random,
    /// (point on the ring, endpoint index), sorted by point.
    Ring(Vec<(u64, usize)>),
    /// Endpoint index per slot.
    Maglev(Vec<usize>),
}

impl Balancer {
    pub fn new(policy: &Policy, endpoints: Vec<Arc<Endpoint>>) -> Balancer {
        let kind = match *policy {
            Policy::LeastRequest { choices } => Kind::LeastRequest { choices: choices.max(2) },
            Policy::RoundRobin => Kind::RoundRobin { next: AtomicUsize::new(0) },
            Policy::Random => Kind::Random,
            Policy::RingHash { min_ring_size } => Kind::Ring(ring(&endpoints, min_ring_size)),
            Policy::Maglev { table_size } => Kind::Maglev(maglev(&endpoints, table_size)),
        };
        Balancer { endpoints, kind, panic_threshold: DEFAULT_PANIC_THRESHOLD }
    }

    pub fn with_panic_threshold(mut self, percent: f64) -> Balancer {
        self.panic_threshold = percent.clamp(0.0, 100.0);
        self
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// An endpoint for a request; `hash` is the request's consistent-hash key (hash policies), when it has one.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        self.pick_avoiding(hash, &[])
    }

    /// As `pick`, but never one of `avoid` (a retry's previous hosts); `None` when only those are left.
    pub fn pick_avoiding(&self, hash: Option<u64>, avoid: &[SocketAddr]) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        // Envoy's panic threshold (50 % unless configured): with too few healthy endpoints left, ejection is
        // ignored and traffic spreads over all of them rather than overloading the few (or failing with none).
        let healthy = self.endpoints.iter().filter(|e| e.available()).count();
        let panic = (healthy as f64) * 100.0 < self.panic_threshold * n as f64;
        let usable = |e: usize| (panic || self.endpoints[e].available()) && !avoid.contains(&self.endpoints[e].address);
        // Usually every endpoint is usable: then the candidates are 0..n and nothing is collected per pick.
        let every = avoid.is_empty() && (panic || healthy == n);
        let filtered: Vec<usize> = if every { Vec::new() } else { (0..n).filter(|&e| usable(e)).collect() };
        let candidates = if every { n } else { filtered.len() };
        let candidate = |i: usize| if every { i } else { filtered[i] };
        let mut rng = rand::rng();
        let index = match (&self.kind, hash) {
            (Kind::Ring(ring), Some(h)) => {
                let start = ring.partition_point(|(point, _)| *point < h);
                (0..ring.len()).map(|i| ring[(start + i) % ring.len()].1).find(|&e| usable(e))?
            }
            (Kind::Maglev(table), Some(h)) => {
                let start = (h % table.len() as u64) as usize;
                (0..table.len()).map(|i| table[(start + i) % table.len()]).find(|&e| usable(e))?
            }
            (Kind::RoundRobin { next }, _) => (0..n).map(|_| next.fetch_add(1, Ordering::Relaxed) % n).find(|&e| usable(e))?,
            (Kind::LeastRequest { choices }, _) => {
                // The choices are distinct endpoints: drawn with replacement (as Envoy does), two endpoints would
                // compare a host with itself one time in two, and a slow endpoint would still get a quarter of
                // the requests however loaded it is.
                let load = |i: usize| self.endpoints[candidate(i)].active.load(Ordering::Relaxed);
                let best = match *choices {
                    _ if candidates <= 1 => (candidates == 1).then_some(0),
                    // Istio's default, without allocating.
                    2 => rand::seq::index::sample_array::<_, 2>(&mut rng, candidates).map(|[a, b]| if load(b) < load(a) { b } else { a }),
                    c => rand::seq::index::sample(&mut rng, candidates, c.min(candidates)).iter().min_by_key(|&i| load(i)),
                };
                candidate(best?)
            }
            _ if candidates == 0 => return None,
            _ => candidate(rng.random_range(0..candidates)),
        };
        Some(&self.endpoints[index])
    }

    /// The endpoint's position (what the outlier detector counts by).
    pub fn index_of(&self, endpoint: &Arc<Endpoint>) -> Option<usize> {
        self.endpoints.iter().position(|e| Arc::ptr_eq(e, endpoint))
    }
}

fn ring(endpoints: &[Arc<Endpoint>], min_ring_size: usize) -> Vec<(u64, usize)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let per_endpoint = min_ring_size.max(endpoints.len()).div_ceil(endpoints.len());
    let mut ring: Vec<(u64, usize)> =
        endpoints.iter().enumerate().flat_map(|(i, e)| (0..per_endpoint).map(move |k| (stable_hash((e.address, k)), i))).collect();
    ring.sort_unstable();
    ring
}

/// Maglev's table: every endpoint walks its own permutation of the slots (offset and skip from its address),
/// taking turns, so each ends with an equal share and a change of one endpoint moves few slots.
fn maglev(endpoints: &[Arc<Endpoint>], table_size: usize) -> Vec<usize> {
    let m = table_size.max(1);
    if endpoints.is_empty() {
        return Vec::new();
    }
    let permutation: Vec<(usize, usize)> = endpoints
        .iter()
        .map(|e| {
            let offset = (stable_hash((e.address, "offset")) % m as u64) as usize;
            let skip = (stable_hash((e.address, "skip")) % (m.max(2) as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; endpoints.len()];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in permutation.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot] != usize::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn endpoints(n: u8) -> Vec<Arc<Endpoint>> {
        (1..=n).map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i], 8080)))).collect()
    }

    fn spread(b: &Balancer, picks: usize, hash: impl Fn(usize) -> Option<u64>) -> HashMap<SocketAddr, usize> {
        let mut seen = HashMap::new();
        for i in 0..picks {
            *seen.entry(b.pick(hash(i)).unwrap().address).or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn round_robin_takes_turns_and_skips_ejected() {
        let b = Balancer::new(&Policy::RoundRobin, endpoints(3));
        let order: Vec<SocketAddr> = (0..6).map(|_| b.pick(None).unwrap().address).collect();
        assert_eq!(order[..3], order[3..]);
        b.endpoints()[1].ejected.store(true, Ordering::Relaxed);
        assert!(spread(&b, 30, |_| None).len() == 2);
        for e in b.endpoints() {
            e.ejected.store(true, Ordering::Relaxed);
        }
        assert_eq!(spread(&b, 30, |_| None).len(), 3, "all ejected: panic mode spreads over every endpoint");
        assert!(Balancer::new(&Policy::RoundRobin, vec![]).pick(None).is_none(), "no endpoint: no healthy upstream");
    }

    #[test]
    fn least_request_favours_the_idle_endpoint() {
        let b = Balancer::new(&Policy::LeastRequest { choices: 2 }, endpoints(2));
        b.endpoints()[0].active.store(50, Ordering::Relaxed);
        let seen = spread(&b, 2000, |_| None);
        let idle = seen[&b.endpoints()[1].address];
        // Two distinct choices out of two: the busy one never wins.
        assert_eq!(idle, 2000, "idle endpoint picked {idle} of 2000");
        // Out of four, the busiest is never picked and the idle ones share the load.
        let b = Balancer::new(&Policy::LeastRequest { choices: 2 }, endpoints(4));
        b.endpoints()[0].active.store(50, Ordering::Relaxed);
        let seen = spread(&b, 2000, |_| None);
        assert!(!seen.contains_key(&b.endpoints()[0].address), "busiest endpoint picked: {seen:?}");
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_retry_avoids_the_hosts_it_tried() {
        for policy in [Policy::LeastRequest { choices: 2 }, Policy::RoundRobin, Policy::Random, Policy::RingHash { min_ring_size: 64 }] {
            let b = Balancer::new(&policy, endpoints(2));
            let tried = [b.endpoints()[0].address];
            // The tried endpoint is the idle one, so least request alone would pick it every time.
            b.endpoints()[1].active.store(50, Ordering::Relaxed);
            for k in 0..50u64 {
                assert_eq!(b.pick_avoiding(Some(k), &tried).unwrap().address, b.endpoints()[1].address, "{policy:?}");
            }
            let all = [b.endpoints()[0].address, b.endpoints()[1].address];
            assert!(b.pick_avoiding(None, &all).is_none(), "{policy:?}: only tried hosts left");
        }
    }

    #[test]
    fn random_reaches_every_endpoint() {
        let b = Balancer::new(&Policy::Random, endpoints(4));
        assert_eq!(spread(&b, 400, |_| None).len(), 4);
    }

    fn consistent(policy: Policy) {
        let b = Balancer::new(&policy, endpoints(5));
        let keys: Vec<u64> = (0..500).map(|k| stable_hash(format!("user-{k}"))).collect();
        let first: Vec<SocketAddr> = keys.iter().map(|&h| b.pick(Some(h)).unwrap().address).collect();
        let again: Vec<SocketAddr> = keys.iter().map(|&h| b.pick(Some(h)).unwrap().address).collect();
        assert_eq!(first, again, "{policy:?}: a key always goes to the same endpoint");
        let used: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(used.len(), 5, "{policy:?}: keys spread over every endpoint");
        // Ejecting one endpoint moves only its keys.
        let gone = b.endpoints()[2].address;
        b.endpoints()[2].ejected.store(true, Ordering::Relaxed);
        let moved = keys.iter().zip(&first).filter(|(&h, &before)| before != gone && b.pick(Some(h)).unwrap().address != before).count();
        assert_eq!(moved, 0, "{policy:?}: keys of other endpoints stay put");
    }

    #[test]
    fn ring_hash_is_consistent() {
        consistent(Policy::RingHash { min_ring_size: 1024 });
    }

    #[test]
    fn maglev_is_consistent() {
        consistent(Policy::Maglev { table_size: 65537 });
    }

    #[test]
    fn maglev_shares_slots_evenly() {
        let table = maglev(&endpoints(3), 65537);
        let mut counts = [0usize; 3];
        table.iter().for_each(|&e| counts[e] += 1);
        assert!(counts.iter().all(|&c| (21000..=22700).contains(&c)), "{counts:?}");
    }
}
