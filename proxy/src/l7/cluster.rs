//! A live upstream cluster: its endpoints (from the ClusterLoadAssignment) behind the configured balancer, its
//! circuit breaker, its outlier detector, and the connection slots that make HTTP/1.1's one-request-per-
//! connection limit (`maxConnections`) queue requests as Envoy's pending queue does.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    balancer::{Balancer, Endpoint},
    circuit::{CircuitBreaker, Overflow, Permit, Resource},
    cluster_config::ClusterConfig,
    config::LoadAssignment,
    outlier::{OutlierDetector, Outcome},
};

/// How often a request may trigger the return of ejected endpoints (the sweep takes the detector's lock).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    pub assignment: Option<Arc<LoadAssignment>>,
    pub balancer: Balancer,
    pub breaker: Arc<CircuitBreaker>,
    outlier: Option<OutlierDetector>,
    /// HTTP/1.1 only: one slot per allowed upstream connection; a request holds one while it is in flight.
    connection_slots: Option<Arc<Semaphore>>,
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
        let endpoints: Vec<Arc<Endpoint>> =
            assignment.iter().flat_map(|a| a.endpoints.iter()).map(|e| Endpoint::new(e.address)).collect();
        let outlier = config.outlier.clone().map(|settings| OutlierDetector::new(settings, endpoints.clone()));
        let connection_slots =
            (!config.http2).then(|| Arc::new(Semaphore::new(config.limits.max_connections.min(Semaphore::MAX_PERMITS as u32) as usize)));
        Cluster {
            balancer: Balancer::new(&config.policy, endpoints),
            breaker: CircuitBreaker::new(config.limits),
            outlier,
            connection_slots,
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

    /// Picks an endpoint, returning ejected ones whose time is up first.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        if let Some(outlier) = &self.outlier {
            let now_ms = self.born.elapsed().as_millis() as u64;
            let last = self.last_sweep_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= SWEEP_EVERY.as_millis() as u64
                && self.last_sweep_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                outlier.sweep(Instant::now());
            }
        }
        self.balancer.pick(hash).cloned()
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
    use super::*;
    use crate::l7::{balancer::Policy, circuit::Limits, config::LbEndpoint};

    fn cluster(limits: Limits, http2: bool) -> Cluster {
        let config = ClusterConfig {
            name: "c".into(),
            policy: Policy::RoundRobin,
            limits,
            outlier: None,
            connect_timeout: Duration::from_secs(1),
            max_requests_per_connection: 0,
            http2,
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
}
