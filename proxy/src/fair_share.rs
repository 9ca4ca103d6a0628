//! A pod's share of keel's relaying, so one pod's bulk transfer cannot take the node's proxy from its neighbours:
//!
//! - **bandwidth**: a token bucket of bytes per second over every connection keel relays for the pod (both
//!   directions), holding one second's worth so a burst goes through at full speed; set per pod by its
//!   `keel.dev/bytes-per-second` annotation, none by default;
//! - **worker time**: a relay gives its worker thread back to the runtime after each *quantum* of bytes it moved,
//!   so a bulk stream that always has bytes ready runs a slice at a time between other pods' connections instead
//!   of a whole cooperative budget (Tokio's 128 socket operations, megabytes) while they wait. A pod's quantum is
//!   shared by its open relays and scaled by its weight (`keel.dev/weight`, default 1: equal shares), so four
//!   bulk streams of one pod together run no longer a slice than one stream of another. `keel run --fair-share
//!   off` turns this off (relays run as the runtime schedules them); bandwidth budgets still hold.
//!
//! Bytes keel does not relay in user space (the same-node fast path splices them in the kernel) are outside both;
//! a pod with a bandwidth budget is never given the fast path (see [`PodShare::bypass_allowed`]).
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The bytes a relay of weight 1 moves between two yields when it is the pod's only one.
pub const BASE_QUANTUM: usize = 256 * 1024;
/// However many relays share a pod's quantum, each still moves this much per slice (below it, switching costs
/// more than it buys).
pub const MIN_QUANTUM: usize = 16 * 1024;

/// One pod's share: its budgets, and what they did (for `keel pods` and the metrics).
#[derive(Debug)]
pub struct PodShare {
    bandwidth: Option<Bandwidth>,
    weight: u32,
    /// Whether relays yield after each quantum (`--fair-share`).
    cooperative: bool,
    /// Relays running for the pod now.
    relays: AtomicUsize,
    yields: AtomicU64,
}

impl PodShare {
    pub fn new(bytes_per_second: Option<u64>, weight: u32, cooperative: bool) -> Arc<PodShare> {
        Arc::new(PodShare {
            bandwidth: bytes_per_second.map(Bandwidth::new),
            weight: weight.max(1),
            cooperative,
            relays: AtomicUsize::new(0),
            yields: AtomicU64::new(0),
        })
    }

    /// No budget and no yielding: for relays under test.
    #[cfg(test)]
    pub fn unshared() -> Arc<PodShare> {
        PodShare::new(None, 1, false)
    }

    /// A relay starts: its pacer holds the pod's share of relays until it is dropped.
    pub fn pacer(self: &Arc<Self>) -> Pacer {
        self.relays.fetch_add(1, Ordering::Relaxed);
        Pacer { share: self.clone() }
    }

    /// The same-node fast path moves bytes in the kernel, beyond the bandwidth budget: only for pods without one.
    pub fn bypass_allowed(&self) -> bool {
        self.bandwidth.is_none()
    }

    /// Bytes one relay direction moves before it yields: the pod's quantum, scaled by its weight, shared by its
    /// relays.
    fn quantum(&self) -> usize {
        let relays = self.relays.load(Ordering::Relaxed).max(1);
        (BASE_QUANTUM * self.weight as usize / relays).max(MIN_QUANTUM)
    }

    pub fn stats(&self) -> ShareStats {
        ShareStats {
            bytes_per_second: self.bandwidth.as_ref().map(|b| b.per_second),
            weight: self.weight,
            throttled_bytes: self.bandwidth.as_ref().map_or(0, |b| b.throttled_bytes.load(Ordering::Relaxed)),
            throttled_seconds: self.bandwidth.as_ref().map_or(0.0, |b| b.throttled_micros.load(Ordering::Relaxed) as f64 / 1e6),
            yields: self.yields.load(Ordering::Relaxed),
        }
    }
}

/// What a pod's share did so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ShareStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    pub weight: u32,
    /// Bytes that waited for the bandwidth budget, and how long relays waited in all.
    pub throttled_bytes: u64,
    pub throttled_seconds: f64,
    /// Times a relay of the pod gave its worker thread back after a quantum.
    pub yields: u64,
}

/// One relay's pacing, shared by its two directions: each direction keeps its own count of bytes since its last
/// yield ([`Pacer::direction`]).
#[derive(Debug)]
pub struct Pacer {
    share: Arc<PodShare>,
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.share.relays.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pacer {
    pub fn direction(&self) -> DirectionPacer<'_> {
        DirectionPacer { share: &self.share, since_yield: 0 }
    }
}

/// One direction of a relay: call [`DirectionPacer::moved`] after each chunk.
pub struct DirectionPacer<'a> {
    share: &'a PodShare,
    since_yield: usize,
}

impl DirectionPacer<'_> {
    /// `n` bytes were read and are about to be written: waits for the bandwidth budget, if the pod has one,
    /// then yields the worker thread if this direction used up its quantum.
    pub async fn moved(&mut self, n: usize) {
        if let Some(bandwidth) = &self.share.bandwidth {
            let wait = bandwidth.debit(n as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        if self.share.cooperative {
            self.since_yield += n;
            if self.since_yield >= self.share.quantum() {
                self.since_yield = 0;
                self.share.yields.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A token bucket of bytes: refills at `per_second` up to one second's worth. A debit larger than what is left
/// goes into debt, and the debtor waits until the refill has paid it: concurrent relays each wait for their own
/// bytes, and together they move `per_second`.
#[derive(Debug)]
struct Bandwidth {
    per_second: u64,
    /// Tokens (bytes; negative: debt) and when they were counted.
    bucket: Mutex<(f64, Instant)>,
    throttled_bytes: AtomicU64,
    throttled_micros: AtomicU64,
}

impl Bandwidth {
    fn new(per_second: u64) -> Bandwidth {
        let per_second = per_second.max(1);
        Bandwidth {
            per_second,
            bucket: Mutex::new((per_second as f64, Instant::now())),
            throttled_bytes: AtomicU64::new(0),
            throttled_micros: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes' tokens at `now`; returns how long to wait before moving them.
    fn debit(&self, n: u64, now: Instant) -> Duration {
        let rate = self.per_second as f64;
        let mut bucket = self.bucket.lock().expect("bandwidth bucket poisoned");
        let (tokens, counted) = *bucket;
        let refilled = (tokens + now.saturating_duration_since(counted).as_secs_f64() * rate).min(rate);
        let left = refilled - n as f64;
        *bucket = (left, now);
        drop(bucket);
        if left >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-left / rate);
        self.throttled_bytes.fetch_add(n, Ordering::Relaxed);
        self.throttled_micros.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_second_through_then_paces_to_its_rate() {
        let bandwidth = Bandwidth::new(1_000_000);
        let start = Instant::now();
        assert_eq!(bandwidth.debit(600_000, start), Duration::ZERO);
        assert_eq!(bandwidth.debit(400_000, start), Duration::ZERO, "a second's worth bursts through");
        let wait = bandwidth.debit(250_000, start);
        assert_eq!(wait, Duration::from_millis(250), "beyond the burst: a quarter second for a quarter of the rate");
        // A second relay behind it waits for the first one's debt as well as its own.
        assert_eq!(bandwidth.debit(250_000, start), Duration::from_millis(500));
        let stats = PodShare { bandwidth: Some(bandwidth), weight: 1, cooperative: false, relays: 0.into(), yields: 0.into() }.stats();
        assert_eq!((stats.throttled_bytes, stats.throttled_seconds), (500_000, 0.75));
        // A second later the debt is paid and half a second of tokens is back.
        let later = Bandwidth::new(1_000_000);
        assert_eq!(later.debit(1_500_000, start), Duration::from_millis(500));
        assert_eq!(later.debit(500_000, start + Duration::from_millis(1_500)), Duration::ZERO);
    }

    #[test]
    fn a_quantum_is_shared_by_the_pods_relays_and_scaled_by_its_weight() {
        let share = PodShare::new(None, 1, true);
        let first = share.pacer();
        assert_eq!(share.quantum(), BASE_QUANTUM);
        let others: Vec<Pacer> = (0..3).map(|_| share.pacer()).collect();
        assert_eq!(share.quantum(), BASE_QUANTUM / 4);
        drop(others);
        drop(first);
        assert_eq!(share.relays.load(Ordering::Relaxed), 0, "a finished relay gives its share back");
        let heavy = PodShare::new(None, 4, true);
        let _relays: Vec<Pacer> = (0..4).map(|_| heavy.pacer()).collect();
        assert_eq!(heavy.quantum(), BASE_QUANTUM, "weight 4 with four relays: each as much as one relay of weight 1");
        let many = PodShare::new(None, 1, true);
        let _relays: Vec<Pacer> = (0..1000).map(|_| many.pacer()).collect();
        assert_eq!(many.quantum(), MIN_QUANTUM);
    }

    #[tokio::test]
    async fn a_direction_yields_after_its_quantum_and_only_when_cooperative() {
        let share = PodShare::new(None, 1, true);
        let pacer = share.pacer();
        let mut up = pacer.direction();
        for _ in 0..(BASE_QUANTUM / 16_384) * 3 {
            up.moved(16_384).await;
        }
        assert_eq!(share.stats().yields, 3);
        let off = PodShare::new(None, 1, false);
        let pacer = off.pacer();
        let mut up = pacer.direction();
        up.moved(BASE_QUANTUM * 4).await;
        assert_eq!(off.stats().yields, 0);
        assert!(off.bypass_allowed() && !PodShare::new(Some(1_000), 1, true).bypass_allowed());
    }
}
