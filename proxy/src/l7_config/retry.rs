//! Retries as Envoy's RetryPolicy (from a VirtualService's `retries`) describes them: which outcomes are
//! retriable (`retry_on`), how many retries, and the backoff between them (25 ms base, 10× cap, full jitter by
//! default). Parsed once per config version; deciding is a few comparisons.
use std::time::{Duration, Instant};

use keel_proto::route::RetryPolicy;
use rand::Rng as _;

use super::limits;

/// Envoy's defaults when the policy gives no backoff.
const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// How an attempt ended, as retry conditions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Response(u16),
    /// The upstream could not be connected to.
    ConnectFailure,
    /// The upstream reset the stream/connection before a response.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

impl std::fmt::Display for AttemptOutcome {
    /// What an attempt that was retried ended with, in Envoy's retry-condition words (a status by its code).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptOutcome::Response(status) => write!(f, "{status}"),
            AttemptOutcome::ConnectFailure => f.write_str("connect-failure"),
            AttemptOutcome::Reset => f.write_str("reset"),
            AttemptOutcome::RefusedStream => f.write_str("refused-stream"),
            AttemptOutcome::PerTryTimeout => f.write_str("per-try-timeout"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retries {
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    five_xx: bool,
    gateway_error: bool,
    connect_failure: bool,
    reset: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    status_codes: Vec<u16>,
    /// gRPC status codes (from a trailers-only response's headers) that are retried.
    grpc_codes: Vec<u32>,
    base_interval: Duration,
    max_interval: Duration,
    /// Envoy's `previous_hosts` predicate (Istio sets it): a retry goes to an endpoint not tried yet while there
    /// is one. Envoy's `host_selection_retry_max_attempts` (how often it re-picks hoping for another host) is not
    /// needed: keel leaves the tried hosts out of the pick.
    pub avoid_previous_hosts: bool,
}

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

impl Retries {
    /// Parses a policy; `field` names it in errors. Unknown `retry_on` conditions are refused so a typo does not
    /// silently disable retries.
    pub fn compile(field: &str, policy: &RetryPolicy) -> Result<Retries, String> {
        let num_retries = policy.num_retries.unwrap_or(1);
        if num_retries > limits::MAX_RETRIES {
            return Err(format!("{field}.num_retries: {num_retries} is more than {}", limits::MAX_RETRIES));
        }
        let per_try_timeout = match &policy.per_try_timeout {
            None => None,
            Some(d) => Some(limits::duration(&format!("{field}.per_try_timeout"), d)?).filter(|d| !d.is_zero()),
        };
        let mut status_codes = Vec::new();
        for (i, &code) in policy.retriable_status_codes.iter().enumerate() {
            match u16::try_from(code).ok().filter(|c| (100..600).contains(c)) {
                Some(code) => status_codes.push(code),
                None => return Err(format!("{field}.retriable_status_codes[{i}]: {code} is not an HTTP status")),
            }
        }
        let mut r = Retries { num_retries, per_try_timeout, status_codes, ..Default::default() };
        for condition in policy.retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match condition {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" | "reset-before-request" => r.reset = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "retriable-status-codes" => {}
                // Envoy's gRPC conditions (Istio's default retry_on lists some of them).
                "cancelled" => r.grpc_codes.push(1),
                "deadline-exceeded" => r.grpc_codes.push(4),
                "resource-exhausted" => r.grpc_codes.push(8),
                "internal" => r.grpc_codes.push(13),
                "unavailable" => r.grpc_codes.push(14),
                // gRPC and rate-limit conditions need the engine's gRPC status handling; accepted as no-ops for
                // now would be silent, so they are refused by name.
                other => return Err(format!("{field}.retry_on: {other:?} is not a retry condition keel supports")),
            }
        }
        if !policy.retry_on.split(',').any(|c| c.trim() == "retriable-status-codes") {
            r.status_codes.clear();
        }
        for (i, predicate) in policy.retry_host_predicate.iter().enumerate() {
            if predicate.name != PREVIOUS_HOSTS {
                return Err(format!("{field}.retry_host_predicate[{i}]: {} is not supported ({PREVIOUS_HOSTS} is)", predicate.name));
            }
            r.avoid_previous_hosts = true;
        }
        let back_off = policy.retry_back_off.as_ref();
        let interval = |name: &str, d: Option<&prost_types::Duration>| {
            d.map(|d| limits::positive_duration(&format!("{field}.retry_back_off.{name}"), d)).transpose()
        };
        r.base_interval = interval("base_interval", back_off.and_then(|b| b.base_interval.as_ref()))?.unwrap_or(DEFAULT_BASE_INTERVAL);
        r.max_interval = match interval("max_interval", back_off.and_then(|b| b.max_interval.as_ref()))? {
            Some(max) if max < r.base_interval => {
                return Err(format!("{field}.retry_back_off.max_interval: {max:?} is less than base_interval {:?}", r.base_interval));
            }
            Some(max) => max,
            None => r.base_interval.saturating_mul(10),
        };
        Ok(r)
    }

    /// The policy as a person writes it: `2 retries on 5xx,connect-failure, 2s per try`.
    pub fn describe(&self) -> String {
        let mut on: Vec<String> = [
            (self.five_xx, "5xx"),
            (self.gateway_error, "gateway-error"),
            (self.connect_failure, "connect-failure"),
            (self.reset, "reset"),
            (self.refused_stream, "refused-stream"),
            (self.retriable_4xx, "retriable-4xx"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name.to_owned())
        .collect();
        on.extend(self.status_codes.iter().map(u16::to_string));
        on.extend(self.grpc_codes.iter().map(|c| match c {
            1 => "cancelled".to_owned(),
            4 => "deadline-exceeded".to_owned(),
            8 => "resource-exhausted".to_owned(),
            13 => "internal".to_owned(),
            14 => "unavailable".to_owned(),
            other => format!("grpc-{other}"),
        }));
        let per_try = self.per_try_timeout.map(|t| format!(", {t:?} per try")).unwrap_or_default();
        let on = if on.is_empty() { "nothing".into() } else { on.join(",") };
        format!("{} retries on {on}{per_try}", self.num_retries)
    }

    /// Whether an attempt that ended so may be retried (the attempt budget is the caller's).
    pub fn is_retriable(&self, outcome: AttemptOutcome) -> bool {
        match outcome {
            AttemptOutcome::Response(status) => {
                (self.five_xx && (500..600).contains(&status))
                    || (self.gateway_error && matches!(status, 502..=504))
                    || (self.retriable_4xx && status == 409)
                    || self.status_codes.contains(&status)
            }
            AttemptOutcome::ConnectFailure => self.connect_failure || self.five_xx || self.gateway_error,
            AttemptOutcome::Reset => self.reset || self.five_xx || self.gateway_error,
            AttemptOutcome::RefusedStream => self.refused_stream || self.five_xx,
            AttemptOutcome::PerTryTimeout => self.five_xx || self.gateway_error,
        }
    }

    /// When an attempt started `now` times out (`None`: no per-try timeout).
    pub fn per_try_deadline(&self, now: Instant) -> Option<Instant> {
        self.per_try_timeout.and_then(|t| limits::deadline(now, t))
    }

    /// A gRPC status in the response headers (a trailers-only answer) the policy retries.
    pub fn is_retriable_grpc(&self, code: u32) -> bool {
        self.grpc_codes.contains(&code)
    }

    /// The wait before retry number `retry` (1-based): a random duration up to base × 2^(retry-1), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.base_interval.saturating_mul(1 << retry.saturating_sub(1).min(16)).min(self.max_interval);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &str, codes: &[u32]) -> RetryPolicy {
        RetryPolicy { retry_on: retry_on.into(), num_retries: Some(3), retriable_status_codes: codes.to_vec(), ..Default::default() }
    }

    #[test]
    fn conditions_decide_what_is_retried() {
        let r = Retries::compile("r", &policy("5xx", &[])).unwrap();
        assert_eq!(r.num_retries, 3);
        assert!(r.is_retriable(AttemptOutcome::Response(500)) && r.is_retriable(AttemptOutcome::Response(503)));
        assert!(!r.is_retriable(AttemptOutcome::Response(404)));
        assert!(r.is_retriable(AttemptOutcome::ConnectFailure) && r.is_retriable(AttemptOutcome::Reset));
        let r = Retries::compile("r", &policy("gateway-error", &[])).unwrap();
        assert!(r.is_retriable(AttemptOutcome::Response(502)) && !r.is_retriable(AttemptOutcome::Response(500)));
        let r = Retries::compile("r", &policy("connect-failure,retriable-status-codes", &[418])).unwrap();
        assert!(r.is_retriable(AttemptOutcome::Response(418)) && r.is_retriable(AttemptOutcome::ConnectFailure));
        assert!(!r.is_retriable(AttemptOutcome::Response(500)) && !r.is_retriable(AttemptOutcome::Reset));
        let r = Retries::compile("r", &policy("reset", &[418])).unwrap();
        assert!(!r.is_retriable(AttemptOutcome::Response(418)), "status codes count only with retriable-status-codes");
        let r = Retries::compile("r", &policy("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", &[503])).unwrap();
        assert!(r.is_retriable_grpc(14) && r.is_retriable_grpc(1) && !r.is_retriable_grpc(4), "Istio's default gRPC conditions");
        let r = Retries::compile("r", &policy("retriable-4xx,refused-stream", &[])).unwrap();
        assert!(r.is_retriable(AttemptOutcome::Response(409)) && r.is_retriable(AttemptOutcome::RefusedStream));
    }

    #[test]
    fn unknown_conditions_are_refused_by_name() {
        let err = Retries::compile("virtual_hosts[0].routes[0].route.retry_policy", &policy("5xx,bogus", &[])).unwrap_err();
        assert_eq!(err, "virtual_hosts[0].routes[0].route.retry_policy.retry_on: \"bogus\" is not a retry condition keel supports");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = Retries::compile("r", &policy("5xx", &[])).unwrap();
        for retry in 1..10 {
            let ceiling = (DEFAULT_BASE_INTERVAL * (1 << (retry - 1))).min(DEFAULT_BASE_INTERVAL * 10);
            assert!(r.backoff(retry) <= ceiling);
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_the_field() {
        let field = "virtual_hosts[0].routes[0].route.retry_policy";
        let mut p = policy("5xx", &[]);
        p.num_retries = Some(u32::MAX);
        assert_eq!(Retries::compile(field, &p).unwrap_err(), format!("{field}.num_retries: {} is more than 100", u32::MAX));
        let p = policy("retriable-status-codes", &[70_000]);
        assert_eq!(Retries::compile(field, &p).unwrap_err(), format!("{field}.retriable_status_codes[0]: 70000 is not an HTTP status"));
        let mut p = policy("5xx", &[]);
        p.per_try_timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(Retries::compile(field, &p).unwrap_err().starts_with(&format!("{field}.per_try_timeout: ")));
        let back_off = |base: i64, max: Option<i64>| RetryPolicy {
            retry_back_off: Some(keel_proto::route::retry_policy::RetryBackOff {
                base_interval: Some(prost_types::Duration { seconds: base, nanos: 0 }),
                max_interval: max.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            }),
            ..policy("5xx", &[])
        };
        assert!(Retries::compile(field, &back_off(10, Some(1)))
            .unwrap_err()
            .starts_with(&format!("{field}.retry_back_off.max_interval: 1s is less")));
        assert!(Retries::compile(field, &back_off(0, None)).unwrap_err().starts_with(&format!("{field}.retry_back_off.base_interval: must be")));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let back_off = |seconds: i64| keel_proto::route::retry_policy::RetryBackOff {
            base_interval: Some(prost_types::Duration { seconds, nanos: 0 }),
            max_interval: None,
        };
        // The old code multiplied this base by 10: Duration overflow, a panic while decoding.
        let mut p = policy("5xx", &[]);
        p.retry_back_off = Some(back_off(i64::MAX / 4));
        assert!(Retries::compile("r", &p).unwrap_err().starts_with("r.retry_back_off.base_interval: "));
        // And added this per-try timeout to Instant::now() on every attempt: a panic per request.
        let mut p = policy("5xx", &[]);
        p.per_try_timeout = Some(prost_types::Duration { seconds: i64::MAX, nanos: 0 });
        assert!(Retries::compile("r", &p).unwrap_err().starts_with("r.per_try_timeout: "));
        // The longest valid Durations are clamped to a year.
        p.retry_back_off = Some(back_off(315_576_000_000));
        p.per_try_timeout = Some(prost_types::Duration { seconds: 315_576_000_000, nanos: 0 });
        let r = Retries::compile("r", &p).unwrap();
        assert_eq!(r.per_try_timeout, Some(limits::MAX_DURATION));
        assert!(r.per_try_deadline(Instant::now()).is_some());
        assert!(r.backoff(3) <= limits::MAX_DURATION * 10);
    }
}
