//! A live upstream cluster: its endpoints (from the ClusterLoadAssignment) behind the configured balancer, its
//! circuit breaker, its outlier detector, and the connection slots that make HTTP/1.1's one-request-per-
//! connection limit (`maxConnections`) queue requests as Envoy's pending queue does.
//!
//! Locality preference, as Istio enables it when a cluster has outlier detection: a client is served by the
//! endpoints of its own region/zone/subzone while any of them is healthy, then its zone, then its region, then
//! all. Each level is a balancer over the same endpoints, so in-flight counts and ejections are shared.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    balancer::{Balancer, Endpoint},
    circuit::{CircuitBreaker, Overflow, Permit, Resource},
    cluster_config::ClusterConfig,
    config::LoadAssignment,
    outlier::{Outcome, OutlierDetector},
};

#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    pub assignment: Option<Arc<LoadAssignment>>,
    pub balancer: Balancer,
    pub breaker: Arc<CircuitBreaker>,
    outlier: Option<OutlierDetector>,
    /// HTTP/1.1 only: one slot per allowed upstream connection; a request holds one while it is in flight.
    connection_slots: Option<Arc<Semaphore>>,
    /// (region, zone, subzone) prefixes → the balancer over endpoints sharing them, most specific first.
    localities: Vec<((String, String, String), Balancer)>,
    born: Instant,
    last_sweep_ms: AtomicU64,
}

/// What a request holds while it uses the cluster.
pub struct Admission {
    _request: Permit,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Cluster {
    pub fn new(config: Arc<ClusterConfig>, assignment: Option<Arc<LoadAssignment>>) -> Cluster {
        let endpoints: Vec<Arc<Endpoint>> = assignment.iter().flat_map(|a| a.endpoints.iter()).map(|e| Endpoint::new(e.address)).collect();
        let outlier = config.outlier.clone().map(|settings| OutlierDetector::new(settings, endpoints.clone()));
        let localities = if outlier.is_some() { locality_levels(&config, assignment.as_deref(), &endpoints) } else { Vec::new() };
        let connection_slots =
            (!config.http2).then(|| Arc::new(Semaphore::new(config.limits.max_connections.min(Semaphore::MAX_PERMITS as u32) as usize)));
        Cluster {
            balancer: Balancer::new(&config.policy, endpoints).with_panic_threshold(config.panic_threshold),
            breaker: CircuitBreaker::new(config.limits),
            outlier,
            connection_slots,
            localities,
            config,
            assignment,
            born: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    pub fn built_from(&self, config: &Arc<ClusterConfig>, assignment: Option<&Arc<LoadAssignment>>) -> bool {
        Arc::ptr_eq(&self.config, config)
            && match (&self.assignment, assignment) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Admits a request under the circuit breaker: `max_requests` at once, and for HTTP/1.1 one connection per
    /// request in flight with at most `max_pending_requests` waiting for one. Overflow is Envoy's 503 UO.
    pub async fn admit(&self) -> Result<Admission, Overflow> {
        let request = self.breaker.acquire(Resource::Request)?;
        let slot = match &self.connection_slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let _pending = self.breaker.acquire(Resource::PendingRequest)?;
                    Some(slots.clone().acquire_owned().await.expect("slots are never closed"))
                }
            },
        };
        Ok(Admission { _request: request, _slot: slot })
    }

    /// A retry is allowed while fewer than `max_retries` are in flight.
    pub fn admit_retry(&self) -> Result<Permit, Overflow> {
        self.breaker.acquire(Resource::Retry)
    }

    /// Picks an endpoint for a client in `locality` (nearest healthy level first), returning ejected endpoints
    /// whose time is up before.
    pub fn pick(&self, hash: Option<u64>, locality: Option<&(String, String, String)>) -> Option<Arc<Endpoint>> {
        self.pick_avoiding(hash, locality, &[])
    }

    /// As `pick`, but not one of `avoid` (a retry's previous hosts) while any other endpoint can serve; when
    /// only those are left, one of them.
    pub fn pick_avoiding(
        &self,
        hash: Option<u64>,
        locality: Option<&(String, String, String)>,
        avoid: &[std::net::SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        if let Some(outlier) = &self.outlier {
            let now_ms = self.born.elapsed().as_millis() as u64;
            let last = self.last_sweep_ms.load(Ordering::Relaxed);
            // Envoy's ejection sweep runs every `outlier_detection.interval`; here the first pick after an interval
            // has passed runs it (the sweep takes the detector's lock, so not on every pick).
            if now_ms.saturating_sub(last) >= outlier.interval().as_millis() as u64
                && self.last_sweep_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                outlier.sweep(Instant::now());
            }
        }
        if let Some((region, zone, subzone)) = locality {
            let levels = [(region, zone, subzone), (region, zone, &String::new()), (region, &String::new(), &String::new())];
            for level in levels.iter().filter(|(r, ..)| !r.is_empty()) {
                let nearby = self.localities.iter().find(|((r, z, s), _)| (r, z, s) == (level.0, level.1, level.2));
                if let Some((_, balancer)) = nearby.filter(|(_, b)| b.endpoints().iter().any(|e| !e.ejected.load(Ordering::Relaxed))) {
                    if let Some(endpoint) = balancer.pick_avoiding(hash, avoid) {
                        return Some(endpoint.clone());
                    }
                }
            }
        }
        self.balancer.pick_avoiding(hash, avoid).or_else(|| self.balancer.pick(hash)).cloned()
    }

    /// Feeds one attempt's result to outlier detection; true when it ejected the endpoint.
    pub fn report(&self, endpoint: &Arc<Endpoint>, outcome: Outcome) -> bool {
        let Some(outlier) = &self.outlier else { return false };
        match self.balancer.index_of(endpoint) {
            Some(i) => outlier.report(i, outcome, Instant::now()),
            None => false,
        }
    }

    pub fn ejected(&self) -> usize {
        self.balancer.endpoints().iter().filter(|e| e.ejected.load(Ordering::Relaxed)).count()
    }
}

/// A locality prefix: (region, zone, sub-zone), with "" for the levels it leaves out.
type LocalityKey = (String, String, String);

/// One balancer per locality prefix that some endpoint has: (r, z, s), (r, z, ""), (r, "", "").
fn locality_levels(config: &ClusterConfig, assignment: Option<&LoadAssignment>, endpoints: &[Arc<Endpoint>]) -> Vec<(LocalityKey, Balancer)> {
    let Some(assignment) = assignment else { return Vec::new() };
    let mut levels: Vec<(LocalityKey, Vec<Arc<Endpoint>>)> = Vec::new();
    for (lb, endpoint) in assignment.endpoints.iter().zip(endpoints) {
        let Some((r, z, s)) = &lb.locality else { continue };
        for key in [(r.clone(), z.clone(), s.clone()), (r.clone(), z.clone(), String::new()), (r.clone(), String::new(), String::new())] {
            match levels.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => {
                    if !list.iter().any(|e| Arc::ptr_eq(e, endpoint)) {
                        list.push(endpoint.clone());
                    }
                }
                None => levels.push((key, vec![endpoint.clone()])),
            }
        }
    }
    levels.into_iter().map(|(key, list)| (key, Balancer::new(&config.policy, list).with_panic_threshold(config.panic_threshold))).collect()
}

/// Tracks one request on an endpoint for least-request balancing.
pub struct ActiveRequest(Arc<Endpoint>);

impl ActiveRequest {
    pub fn start(endpoint: &Arc<Endpoint>) -> ActiveRequest {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(endpoint.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::l7_config::{balancer::Policy, circuit::Limits, config::LbEndpoint};

    fn cluster(limits: Limits, http2: bool) -> Cluster {
        let config = ClusterConfig {
            upstream_tls: None,
            name: "c".into(),
            policy: Policy::RoundRobin,
            limits,
            outlier: None,
            connect_timeout: Duration::from_secs(1),
            max_requests_per_connection: 0,
            http2,
            panic_threshold: 50.0,
        };
        let endpoints = vec![LbEndpoint { address: "10.0.0.1:80".parse().unwrap(), hostname: String::new(), locality: None }];
        Cluster::new(Arc::new(config), Some(Arc::new(LoadAssignment { cluster: "c".into(), endpoints })))
    }

    #[tokio::test]
    async fn one_connection_and_one_pending_request_then_overflow() {
        let c = Arc::new(cluster(Limits { max_connections: 1, max_pending_requests: 1, ..Limits::default() }, false));
        let first = c.admit().await.unwrap();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.admit().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.admit().await.err().map(|o| o.0), Some(Resource::PendingRequest), "the pending queue is full");
        drop(first);
        waiting.await.unwrap().expect("the pending request gets the connection");
    }

    #[tokio::test]
    async fn http2_is_limited_by_requests() {
        let c = cluster(Limits { max_connections: 1, max_requests: 2, ..Limits::default() }, true);
        let _a = c.admit().await.unwrap();
        let _b = c.admit().await.unwrap();
        assert_eq!(c.admit().await.err().map(|o| o.0), Some(Resource::Request));
    }

    #[test]
    fn clients_stay_in_their_zone_while_it_has_a_healthy_endpoint() {
        use crate::l7_config::outlier::OutlierSettings;
        let config = ClusterConfig {
            upstream_tls: None,
            name: "c".into(),
            policy: Policy::RoundRobin,
            limits: Limits::default(),
            outlier: Some(OutlierSettings {
                consecutive_5xx: 1,
                consecutive_gateway_failure: 0,
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 100,
            }),
            connect_timeout: Duration::from_secs(1),
            max_requests_per_connection: 0,
            http2: false,
            panic_threshold: 50.0,
        };
        let at = |ip: &str, zone: &str| LbEndpoint {
            address: ip.parse().unwrap(),
            hostname: String::new(),
            locality: Some(("eu".into(), zone.into(), String::new())),
        };
        let endpoints = vec![at("10.0.0.1:80", "a"), at("10.0.0.2:80", "b"), at("10.0.0.3:80", "b")];
        let c = Cluster::new(Arc::new(config), Some(Arc::new(LoadAssignment { cluster: "c".into(), endpoints })));
        let zone_a = ("eu".to_owned(), "a".to_owned(), String::new());
        let picks: std::collections::HashSet<_> = (0..20).map(|_| c.pick(None, Some(&zone_a)).unwrap().address).collect();
        assert_eq!(picks, ["10.0.0.1:80".parse().unwrap()].into(), "zone a's only endpoint takes zone a's clients");
        assert_eq!((0..20).map(|_| c.pick(None, None).unwrap().address).collect::<std::collections::HashSet<_>>().len(), 3);
        let local = c.pick(None, Some(&zone_a)).unwrap();
        assert!(c.report(&local, Outcome::ServerError), "one 5xx ejects");
        let failover: std::collections::HashSet<_> = (0..20).map(|_| c.pick(None, Some(&zone_a)).unwrap().address).collect();
        assert!(!failover.contains(&local.address) && failover.len() == 2, "zone a ejected: the region takes over: {failover:?}");
    }

    /// An endpoint ejected for 1 ms comes back at the first sweep, which runs once per configured `interval`.
    #[test]
    fn ejected_endpoints_return_at_the_sweep_interval() {
        use crate::l7_config::outlier::OutlierSettings;
        let with_interval = |interval: Duration| {
            let outlier = OutlierSettings {
                consecutive_5xx: 1,
                consecutive_gateway_failure: 0,
                interval,
                base_ejection_time: Duration::from_millis(1),
                max_ejection_percent: 100,
            };
            let config = ClusterConfig {
                upstream_tls: None,
                name: "c".into(),
                policy: Policy::RoundRobin,
                limits: Limits::default(),
                outlier: Some(outlier),
                connect_timeout: Duration::from_secs(1),
                max_requests_per_connection: 0,
                http2: true,
                panic_threshold: 50.0,
            };
            let endpoints =
                ["10.0.0.1:80", "10.0.0.2:80"].map(|a| LbEndpoint { address: a.parse().unwrap(), hostname: String::new(), locality: None }).to_vec();
            Cluster::new(Arc::new(config), Some(Arc::new(LoadAssignment { cluster: "c".into(), endpoints })))
        };
        let picked = |c: &Cluster| (0..10).map(|_| c.pick(None, None).unwrap().address).collect::<std::collections::HashSet<_>>().len();
        for (interval, back) in [(Duration::from_secs(3600), false), (Duration::from_millis(5), true)] {
            let c = with_interval(interval);
            let first = c.pick(None, None).unwrap();
            assert!(c.report(&first, Outcome::ServerError), "one 5xx ejects");
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(picked(&c) == 2, back, "interval {interval:?}: the ejected endpoint is back after its 1 ms: {back}");
        }
    }
}
