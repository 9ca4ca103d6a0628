//! Outlier detection as Envoy does it for Istio's DestinationRule: an endpoint that returns `consecutive_5xx`
//! 5xx responses in a row (or `consecutive_gateway_failure` 502/503/504 / connect failures) is ejected for
//! `base_ejection_time × times ejected`, as long as no more than `max_ejection_percent` of the cluster is out; it
//! returns when its time is up (checked by the sweep, which the cluster runs once per `interval` on a pick, and on
//! every report). Time is passed in, so the policy
//! is tested without sleeping.
use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use super::balancer::Endpoint;

#[derive(Clone, Debug)]
pub struct OutlierSettings {
    /// 0 disables the check.
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// How a request to an endpoint ended, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than a gateway error.
    ServerError,
    /// 502, 503, 504, or the endpoint could not be reached (Envoy counts connect failures as gateway errors).
    GatewayError,
}

#[derive(Debug, Default)]
struct EndpointState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    endpoints: Vec<Arc<Endpoint>>,
    state: Mutex<Vec<EndpointState>>,
}

impl OutlierDetector {
    pub fn new(settings: OutlierSettings, endpoints: Vec<Arc<Endpoint>>) -> OutlierDetector {
        let state = Mutex::new(endpoints.iter().map(|_| EndpointState::default()).collect());
        OutlierDetector { settings, endpoints, state }
    }

    /// Records one response of endpoint `index`; returns true if this ejected it.
    pub fn report(&self, index: usize, outcome: Outcome, now: Instant) -> bool {
        let mut state = self.state.lock().expect("outlier state poisoned");
        self.return_due(&mut state, now);
        let s = &mut state[index];
        match outcome {
            Outcome::Success => {
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                return false;
            }
            Outcome::ServerError => {
                s.consecutive_5xx += 1;
                s.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                // A gateway error is a 5xx too.
                s.consecutive_5xx += 1;
                s.consecutive_gateway += 1;
            }
        }
        let tripped = |count: u32, limit: u32| limit > 0 && count >= limit;
        if s.ejected_until.is_some()
            || !(tripped(s.consecutive_5xx, self.settings.consecutive_5xx)
                || tripped(s.consecutive_gateway, self.settings.consecutive_gateway_failure))
        {
            return false;
        }
        let ejected_now = state.iter().filter(|s| s.ejected_until.is_some()).count();
        // Envoy ejects at least one endpoint whatever the percentage (Istio's default 10 % of 3 would be none).
        let allowed = ((self.endpoints.len() * self.settings.max_ejection_percent as usize) / 100).max(1);
        if ejected_now + 1 > allowed {
            return false; // ejecting it would leave too few endpoints
        }
        let s = &mut state[index];
        s.times_ejected += 1;
        // Saturating, and at most a year (limits::MAX_DURATION): an endpoint ejected again and again must not
        // overflow the clock arithmetic however long the configured base.
        let ejection = self.settings.base_ejection_time.saturating_mul(s.times_ejected).min(super::limits::MAX_DURATION);
        s.ejected_until = Some(super::limits::deadline(now, ejection).unwrap_or(now));
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
        self.endpoints[index].ejected.store(true, Ordering::Relaxed);
        true
    }

    /// Returns endpoints whose ejection time is over (the periodic sweep, every `interval`).
    pub fn sweep(&self, now: Instant) {
        let mut state = self.state.lock().expect("outlier state poisoned");
        self.return_due(&mut state, now);
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    fn return_due(&self, state: &mut [EndpointState], now: Instant) {
        for (i, s) in state.iter_mut().enumerate() {
            if s.ejected_until.is_some_and(|until| until <= now) {
                s.ejected_until = None;
                self.endpoints[i].ejected.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn detector(n: u8, max_percent: u32) -> OutlierDetector {
        let endpoints = (1..=n).map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i], 80)))).collect();
        OutlierDetector::new(
            OutlierSettings {
                consecutive_5xx: 3,
                consecutive_gateway_failure: 2,
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: max_percent,
            },
            endpoints,
        )
    }

    fn ejected(d: &OutlierDetector, i: usize) -> bool {
        d.endpoints[i].ejected.load(Ordering::Relaxed)
    }

    #[test]
    fn an_endless_ejection_time_does_not_overflow_the_clock() {
        let endpoints = (1..=2).map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i], 80)))).collect();
        let settings = OutlierSettings {
            consecutive_5xx: 1,
            consecutive_gateway_failure: 0,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::MAX,
            max_ejection_percent: 100,
        };
        let d = OutlierDetector::new(settings, endpoints);
        let now = Instant::now();
        assert!(d.report(0, Outcome::ServerError, now), "ejected, and `now + base` did not panic");
        d.sweep(now + super::super::limits::MAX_DURATION);
        assert!(d.report(0, Outcome::ServerError, now + super::super::limits::MAX_DURATION), "ejected again (base × 2 saturates)");
    }

    #[test]
    fn consecutive_errors_eject_and_the_endpoint_returns_after_its_time() {
        let d = detector(3, 100);
        let t0 = Instant::now();
        assert!(!d.report(0, Outcome::ServerError, t0));
        assert!(!d.report(0, Outcome::ServerError, t0));
        assert!(!d.report(0, Outcome::Success, t0), "a success resets the count");
        for _ in 0..2 {
            d.report(0, Outcome::ServerError, t0);
        }
        assert!(d.report(0, Outcome::ServerError, t0), "third consecutive 5xx ejects");
        assert!(ejected(&d, 0));
        d.sweep(t0 + Duration::from_secs(29));
        assert!(ejected(&d, 0));
        d.sweep(t0 + Duration::from_secs(30));
        assert!(!ejected(&d, 0), "back after base_ejection_time");
        // The second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(40);
        d.report(0, Outcome::GatewayError, t1);
        assert!(d.report(0, Outcome::GatewayError, t1), "two gateway errors eject");
        d.sweep(t1 + Duration::from_secs(59));
        assert!(ejected(&d, 0));
        d.sweep(t1 + Duration::from_secs(60));
        assert!(!ejected(&d, 0));
    }

    #[test]
    fn one_endpoint_may_always_be_ejected() {
        let d = detector(3, 10);
        let t = Instant::now();
        for i in 0..2 {
            for _ in 0..3 {
                d.report(i, Outcome::ServerError, t);
            }
        }
        assert_eq!((0..3).filter(|&i| ejected(&d, i)).count(), 1);
    }

    #[test]
    fn max_ejection_percent_keeps_enough_endpoints() {
        let d = detector(4, 50);
        let t = Instant::now();
        for i in 0..3 {
            for _ in 0..3 {
                d.report(i, Outcome::ServerError, t);
            }
        }
        let out = (0..4).filter(|&i| ejected(&d, i)).count();
        assert_eq!(out, 2, "at most 50 % of 4 endpoints are ejected");
    }
}
