//! Circuit breaking as DestinationRule's connectionPool sets it (Envoy's default-priority thresholds): a cap on
//! upstream connections, on requests waiting for one (`http1MaxPendingRequests`), on requests in flight
//! (`http2MaxRequests`) and on retries in flight (`maxRetries`). Over a cap a request is refused at once with 503
//! and the UO ("upstream overflow") flag. Counters are atomics; a permit gives its slot back when dropped.
use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

/// Envoy's default for each threshold.
pub const DEFAULT_LIMIT: u32 = 1024;
/// Envoy's default for retries in flight.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: DEFAULT_LIMIT, max_pending_requests: DEFAULT_LIMIT, max_requests: DEFAULT_LIMIT, max_retries: DEFAULT_MAX_RETRIES }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Connection,
    PendingRequest,
    Request,
    Retry,
}

/// Which cap a refused request hit (shown in logs; the response flag is UO for all of them).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: {0:?} limit {1} reached")]
pub struct Overflow(pub Resource, pub u32);

#[derive(Debug, Default)]
pub struct CircuitBreaker {
    limits: Limits,
    in_use: [AtomicU32; 4],
}

/// A slot of one resource, held for as long as the connection, wait, request or retry lasts.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    resource: Resource,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.counter(self.resource).fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreaker {
    pub fn new(limits: Limits) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker { limits, in_use: Default::default() })
    }

    fn counter(&self, resource: Resource) -> &AtomicU32 {
        &self.in_use[resource as usize]
    }

    fn limit(&self, resource: Resource) -> u32 {
        match resource {
            Resource::Connection => self.limits.max_connections,
            Resource::PendingRequest => self.limits.max_pending_requests,
            Resource::Request => self.limits.max_requests,
            Resource::Retry => self.limits.max_retries,
        }
    }

    /// Takes a slot, or refuses when the cap is reached (never waits: overflow is answered at once).
    pub fn acquire(self: &Arc<Self>, resource: Resource) -> Result<Permit, Overflow> {
        let limit = self.limit(resource);
        self.counter(resource)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .map(|_| Permit { breaker: self.clone(), resource })
            .map_err(|_| Overflow(resource, limit))
    }

    pub fn in_use(&self, resource: Resource) -> u32 {
        self.counter(resource).load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_resource_overflows_until_a_permit_is_returned() {
        let b = CircuitBreaker::new(Limits { max_requests: 2, ..Limits::default() });
        let first = b.acquire(Resource::Request).unwrap();
        let _second = b.acquire(Resource::Request).unwrap();
        assert_eq!(b.acquire(Resource::Request).unwrap_err(), Overflow(Resource::Request, 2));
        assert!(b.acquire(Resource::Connection).is_ok(), "other resources are counted apart");
        drop(first);
        let _third = b.acquire(Resource::Request).expect("a returned slot is free again");
        assert_eq!(b.in_use(Resource::Request), 2);
    }

    #[test]
    fn defaults_are_envoys() {
        let b = CircuitBreaker::new(Limits::default());
        let retries: Vec<Permit> = (0..3).map(|_| b.acquire(Resource::Retry).unwrap()).collect();
        assert!(b.acquire(Resource::Retry).is_err(), "3 retries in flight by default");
        drop(retries);
        assert_eq!(b.in_use(Resource::Retry), 0);
    }
}
