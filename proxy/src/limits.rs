//! Everything a peer can hold in keel is bounded here: how many connections a pod may have in flight through
//! keel, how many HBONE connections a pod and the whole node accept, and how long a handshake, an idle HBONE
//! connection or a silent relay may last. One place, so an operator (and a reviewer) sees every bound at once;
//! `keel run` flags override the defaults.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::Refusal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub relay: RelayTimeouts,
    /// Captured connections (outbound and plaintext inbound) one pod may have open through keel at once.
    pub connections_per_pod: usize,
    pub hbone: HboneServerLimits,
    /// An HTTP/1.1 client of the L7 engine must send a whole request head within this time, for its first
    /// request and after each response (slowloris; and the keep-alive idle limit).
    pub http_header_read_timeout: Duration,
    /// A connection to the L7 engine that starts no request for this long is closed gracefully (HTTP/2 clients
    /// stay otherwise: keel's PINGs keep a live one open forever).
    pub http_idle_timeout: Duration,
    /// Relays share keel's worker time between pods by weight (`--fair-share`, see [`crate::fair_share`]).
    pub fair_share: bool,
}

/// How long a relayed connection may stay silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayTimeouts {
    /// No byte in either direction for this long ends the connection (Envoy's TCP proxy default: 1 hour).
    pub idle: Duration,
    /// Once one direction has ended, the other may be silent this long before the connection is ended.
    pub half_closed: Duration,
}

impl Default for RelayTimeouts {
    fn default() -> Self {
        RelayTimeouts { idle: Duration::from_secs(3600), half_closed: Duration::from_secs(300) }
    }
}

/// The HBONE server's bounds: a pod's 15008 faces every peer that can reach the pod, meshed or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HboneServerLimits {
    /// From TCP accept to a finished mTLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A connection without a stream for this long is closed with a GOAWAY (the client pool's idle limit is 5
    /// minutes, so a well-behaved client closes first).
    pub idle_timeout: Duration,
    pub connections_per_pod: usize,
    pub connections_per_node: usize,
    /// Unfinished handshakes (TCP accepted, mTLS and HTTP/2 preface not done) one source address may have at
    /// once. Unauthenticated peers can only ever hold these, so a flood from one address cannot take the slots
    /// that authenticated peers (other addresses) need.
    pub handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            relay: RelayTimeouts::default(),
            connections_per_pod: 16_384,
            hbone: HboneServerLimits {
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(600),
                connections_per_pod: 1_024,
                connections_per_node: 16_384,
                handshakes_per_source: 32,
            },
            http_header_read_timeout: Duration::from_secs(30),
            http_idle_timeout: Duration::from_secs(3600),
            fair_share: true,
        }
    }
}

/// A bounded pool of connection slots: a connection holds a [`Slot`] for its whole life.
#[derive(Debug)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    limit: usize,
    /// Connections refused for lack of a slot so far (the per-pod throttling keel reports).
    refused: AtomicU64,
    /// What a refusal for lack of a slot is counted and logged as.
    pub refusal: Refusal,
}

/// One connection's hold on a slot; dropping it frees the slot.
pub type Slot = OwnedSemaphorePermit;

impl Slots {
    pub fn new(limit: usize, refusal: Refusal) -> Arc<Slots> {
        Arc::new(Slots { semaphore: Arc::new(Semaphore::new(limit)), limit, refused: AtomicU64::new(0), refusal })
    }

    /// A slot if one is free; never waits (a connection beyond the limit is refused, not queued, and counted).
    pub fn try_take(&self) -> Option<Slot> {
        let slot = self.semaphore.clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// How many connections were refused for lack of a slot.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_use(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }
}

/// A rate budget: a token bucket refilled at `per_second` and holding one second's worth (bursts up to it are
/// allowed), taken from without waiting (a connection beyond it is refused, not queued) and counting refusals.
#[derive(Debug)]
pub struct RateBudget {
    per_second: u32,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, std::time::Instant)>,
    refused: AtomicU64,
    pub refusal: Refusal,
}

impl RateBudget {
    pub fn new(per_second: u32, refusal: Refusal) -> Arc<RateBudget> {
        let per_second = per_second.max(1);
        Arc::new(RateBudget {
            per_second,
            bucket: Mutex::new((f64::from(per_second), std::time::Instant::now())),
            refused: AtomicU64::new(0),
            refusal,
        })
    }

    /// One token if there is one now.
    pub fn try_take(&self) -> bool {
        self.try_take_at(std::time::Instant::now())
    }

    fn try_take_at(&self, now: std::time::Instant) -> bool {
        let mut bucket = self.bucket.lock().expect("rate budget poisoned");
        let (tokens, counted) = *bucket;
        let refilled = (tokens + now.saturating_duration_since(counted).as_secs_f64() * f64::from(self.per_second)).min(f64::from(self.per_second));
        if refilled >= 1.0 {
            *bucket = (refilled - 1.0, now);
            true
        } else {
            *bucket = (refilled, now);
            drop(bucket);
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Slots per source address (see [`HboneServerLimits::handshakes_per_source`]).
#[derive(Debug)]
pub struct PerSourceSlots {
    limit: usize,
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One source's hold on a slot; dropping it frees the slot (and forgets the source once it holds none).
#[derive(Debug)]
pub struct SourceSlot {
    source: IpAddr,
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().expect("source slots poisoned");
        if let Some(n) = in_use.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.source);
            }
        }
    }
}

impl PerSourceSlots {
    pub fn new(limit: usize) -> PerSourceSlots {
        PerSourceSlots { limit, in_use: Arc::default() }
    }

    pub fn try_take(&self, source: IpAddr) -> Option<SourceSlot> {
        let mut in_use = self.in_use.lock().expect("source slots poisoned");
        let n = in_use.entry(source).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot { source, in_use: self.in_use.clone() })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (every proxied connection costs keel two descriptors, and the
/// default soft limit of 1,024 would let a few hundred connections exhaust the node's proxy). Returns the limit
/// now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit fill and read a plain struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_beyond_the_limit_and_free_on_drop() {
        let slots = Slots::new(2, Refusal::PodConnectionLimit);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none(), "a third connection must be refused");
        assert_eq!((slots.in_use(), slots.refused()), (2, 1), "the refusal is counted");
        drop(a);
        assert!(slots.try_take().is_some(), "a freed slot is reusable");
    }

    #[test]
    fn a_rate_budget_allows_a_second_of_burst_then_its_rate() {
        let budget = RateBudget::new(10, Refusal::PodConnectionRate);
        let start = std::time::Instant::now();
        let taken = (0..25).filter(|_| budget.try_take_at(start)).count();
        assert_eq!((taken, budget.refused()), (10, 15), "a burst of one second's worth");
        let later = start + std::time::Duration::from_millis(500);
        let taken = (0..10).filter(|_| budget.try_take_at(later)).count();
        assert_eq!(taken, 5, "half a second refills half");
    }

    #[test]
    fn one_source_cannot_take_another_sources_handshake_slots() {
        let slots = PerSourceSlots::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.try_take(a).unwrap();
        let _second = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none(), "a third handshake from one source is refused");
        assert!(slots.try_take(b).is_some(), "another source is unaffected");
        drop(first);
        assert!(slots.try_take(a).is_some(), "a finished handshake frees its slot");
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((now, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
