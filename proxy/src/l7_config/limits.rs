//! Bounds on the numbers and strings a control plane sends, checked when a resource is decoded: any control plane
//! may drive keel, so nothing here trusts keel-control to have validated first. Out-of-range values are refused
//! naming the field (the xDS client NACKs and keeps the last good version), except durations beyond a year, which
//! are clamped (see [`MAX_DURATION`]). Where Envoy has a limit, it is Envoy's.
use std::time::{Duration, Instant};

/// The longest timeout, delay or interval keel uses: longer ones are clamped to it. A year never elapses in a
/// proxy's lifetime, so the clamp changes nothing observable, while `Instant + Duration` with the value a
/// control plane may send (up to 10 000 years in a protobuf Duration) overflows and panics. Control planes
/// write "forever" as huge durations (`87600h`); refusing them would turn a harmless habit into a NACK.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// google.protobuf.Duration's own range: ±10 000 years; anything beyond is not a valid Duration.
const MAX_PROTO_SECONDS: i64 = 315_576_000_000;

/// Envoy's bound on `maglev_lb_config.table_size` (which must also be prime).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// Envoy's bound on `ring_hash_lb_config.minimum_ring_size` and `maximum_ring_size` (8M entries).
pub const MAX_RING_SIZE: u64 = 8_388_608;

/// Retries per request. Envoy has no bound; keel's is generous (Istio users write single digits) and keeps a
/// request whose route has no timeout (Istio's default) from retrying for days against a failing upstream.
pub const MAX_RETRIES: u32 = 100;

/// A protobuf Duration as a [`Duration`]: negative or malformed ones (nanos out of range, signs that disagree,
/// beyond ±10 000 years) are refused, longer than [`MAX_DURATION`] clamped.
pub fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(format!("{field}: {}s {}ns is negative", d.seconds, d.nanos));
    }
    if d.nanos >= 1_000_000_000 || d.seconds > MAX_PROTO_SECONDS {
        return Err(format!("{field}: {}s {}ns is not a valid google.protobuf.Duration", d.seconds, d.nanos));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32).min(MAX_DURATION))
}

/// As [`duration`], for a field Envoy requires to be more than zero.
pub fn positive_duration(field: &str, d: &prost_types::Duration) -> Result<Duration, String> {
    let value = duration(field, d)?;
    if value.is_zero() {
        return Err(format!("{field}: must be more than 0"));
    }
    Ok(value)
}

/// `start + timeout`; `None` (no deadline) only if even the clamp cannot be represented, which a validated
/// timeout (at most [`MAX_DURATION`]) never hits on a real clock.
pub fn deadline(start: Instant, timeout: Duration) -> Option<Instant> {
    start.checked_add(timeout.min(MAX_DURATION))
}

pub fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// A string keel will put in a request or response header (an authority, a host, a header value).
pub fn header_value(field: &str, value: &str) -> Result<(), String> {
    http::HeaderValue::from_str(value).map(drop).map_err(|_| format!("{field}: {value:?} is not a valid HTTP header value"))
}

pub fn header_name(field: &str, name: &str) -> Result<(), String> {
    http::HeaderName::from_bytes(name.as_bytes()).map(drop).map_err(|_| format!("{field}: {name:?} is not a valid HTTP header name"))
}

/// A host (with optional port) keel will send as `:authority`/Host or put in a Location.
pub fn authority(field: &str, value: &str) -> Result<(), String> {
    match value.parse::<http::uri::Authority>() {
        Ok(a) if !a.as_str().contains('@') => Ok(()),
        _ => Err(format!("{field}: {value:?} is not a valid host[:port]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn durations_are_checked_and_clamped() {
        assert_eq!(duration("f", &proto(1, 500_000_000)), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("f", &proto(MAX_PROTO_SECONDS, 0)), Ok(MAX_DURATION));
        assert_eq!(duration("f", &proto(-1, 0)).unwrap_err(), "f: -1s 0ns is negative");
        assert!(duration("f", &proto(0, 1_000_000_000)).unwrap_err().contains("not a valid google.protobuf.Duration"));
        assert!(duration("f", &proto(i64::MAX, 0)).unwrap_err().contains("not a valid google.protobuf.Duration"));
        assert_eq!(positive_duration("f", &proto(0, 0)).unwrap_err(), "f: must be more than 0");
        assert!(deadline(Instant::now(), Duration::MAX).is_some(), "the clamp keeps Instant arithmetic in range");
    }

    #[test]
    fn primes_and_header_strings() {
        assert!(is_prime(65537) && is_prime(MAX_MAGLEV_TABLE_SIZE) && !is_prime(65536) && !is_prime(1) && !is_prime(0));
        assert!(authority("f", "reviews.default.svc.cluster.local:9080").is_ok());
        assert!(authority("f", "bad host").is_err() && authority("f", "user@host").is_err() && authority("f", "").is_err());
        assert!(header_value("f", "ok value").is_ok() && header_value("f", "no\nnewline").is_err());
        assert!(header_name("f", "x-ok").is_ok() && header_name("f", "not ok").is_err());
    }
}
