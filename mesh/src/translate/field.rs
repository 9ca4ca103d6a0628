//! Field-naming errors and warnings, and the value rules the traffic-management checks share. Paths are written
//! as the YAML nests them (`spec.http[0].route[1].weight`), so a user can find the field.
use std::fmt::Display;

/// An error on the field at `path`.
pub fn error(path: &str, message: impl Display) -> String {
    format!("field {path}: {message}")
}

/// A warning on the field at `path` (translate prefixes the object).
pub fn warning(path: &str, message: impl Display) -> String {
    format!("{path}: {message}")
}

pub fn port(path: &str, number: u32) -> Result<(), String> {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(error(path, format!("{number} is not a port (1-65535)")))
    }
}

/// Istio's signed limits and counts, where 0 means "the default".
pub fn non_negative(path: &str, value: i32) -> Result<(), String> {
    if value >= 0 {
        Ok(())
    } else {
        Err(error(path, format!("{value} must not be negative")))
    }
}

/// A share in percent, fractions allowed.
pub fn percent(path: &str, value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(error(path, format!("{value} is not a percentage (0-100)")))
    }
}

/// An integer percentage (Istio's int32 `maxEjectionPercent`, route weights).
pub fn whole_percent(path: &str, value: i32) -> Result<(), String> {
    if (0..=100).contains(&value) {
        Ok(())
    } else {
        Err(error(path, format!("{value} must be 0-100")))
    }
}

/// A duration Envoy requires to be more than zero (connect timeouts, outlier intervals).
pub fn positive(path: &str, value: std::time::Duration) -> Result<(), String> {
    if value.is_zero() {
        Err(error(path, "must be more than 0"))
    } else {
        Ok(())
    }
}

/// keel's bound on retries per request (proxy/src/l7/limits.rs MAX_RETRIES); Istio has none.
pub const MAX_RETRY_ATTEMPTS: i32 = 100;

/// A `host[:port]` that goes in `:authority`/Host or a Location (keel refuses a route with anything else).
pub fn authority(path: &str, value: &str) -> Result<(), String> {
    match value.parse::<http::uri::Authority>() {
        Ok(a) if !a.as_str().contains('@') => Ok(()),
        _ => Err(error(path, format!("{value:?} is not a valid host[:port]"))),
    }
}

/// An absolute path (with an optional query) that can go on a request line or in a Location.
pub fn uri_path(path: &str, value: &str) -> Result<(), String> {
    match value.parse::<http::uri::PathAndQuery>() {
        Ok(_) if value.starts_with('/') => Ok(()),
        _ => Err(error(path, format!("{value:?} is not a valid path"))),
    }
}

pub fn header_value(path: &str, value: &str) -> Result<(), String> {
    http::HeaderValue::from_str(value).map(drop).map_err(|_| error(path, format!("{value:?} is not a valid HTTP header value")))
}

/// A name that can be an HTTP header (keel hashes on it; it refuses a route naming anything else).
pub fn header_name(path: &str, value: &str) -> Result<(), String> {
    http::HeaderName::from_bytes(value.as_bytes()).map(drop).map_err(|_| error(path, format!("{value:?} is not a valid HTTP header name")))
}

/// A cookie name (an RFC 6265 token) and path that can go in the `Set-Cookie` keel writes for a hash cookie.
pub fn cookie(path: &str, name: &str, cookie_path: Option<&str>) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) {
        return Err(error(&format!("{path}.name"), format!("{name:?} is not a cookie name")));
    }
    match cookie_path {
        Some(p) if p.bytes().any(|b| !b.is_ascii_graphic() || b == b';') => {
            Err(error(&format!("{path}.path"), format!("{p:?} cannot be a cookie path")))
        }
        _ => Ok(()),
    }
}

pub fn not_empty(path: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(error(path, "must not be empty"))
    } else {
        Ok(())
    }
}
