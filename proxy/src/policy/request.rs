//! Whether a policy's HTTP rules (`keel.security.HttpAuthorization`) match a request: the same rule → clause →
//! match structure as [`super::rules`], where a match has the connection part of an L4 match plus the request's
//! host, method, path, principal, remote address and `when` conditions.
use std::borrow::Cow;

use http::HeaderMap;
use keel_proto::{
    http_security::{path_match::Kind, request_condition::Attribute, HttpAuthorization, HttpMatch, PathMatch, RequestCondition},
    security::{Address, StringMatch},
};

use super::{matchers, rules::connection_matches, ConnectionAttributes};

/// One HTTP request as authorization sees it, borrowed from the request being served.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    pub method: &'a str,
    /// `:authority` (or Host), lowercased.
    pub host: &'a str,
    /// The normalized path ([`normalize_path`]), without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// `<iss>/<sub>` of the request's verified JWT, if it had one.
    pub principal: Option<&'a str>,
    /// The verified JWT's claims, if it had one.
    pub claims: Option<&'a serde_json::Value>,
    /// The TLS server name the client sent, if keel terminated its TLS.
    pub server_name: Option<&'a str>,
}

/// A policy without rules matches nothing; a rule without clauses matches every request.
pub fn policy_matches(policy: &HttpAuthorization, connection: &ConnectionAttributes<'_>, request: &RequestAttributes<'_>) -> bool {
    policy.rules.iter().any(|rule| rule.clauses.iter().all(|clause| clause.matches.iter().any(|m| match_matches(m, connection, request))))
}

fn match_matches(m: &HttpMatch, c: &ConnectionAttributes<'_>, r: &RequestAttributes<'_>) -> bool {
    let principal = |s: &StringMatch| r.principal.is_some_and(|p| matchers::string_matches(s, &[p]));
    let remote_ip = |cidr: &Address| matchers::cidr_contains(cidr, c.source_ip);
    m.connection.as_ref().is_none_or(|l4| connection_matches(l4, c))
        && field(&m.hosts, &m.not_hosts, |s| host_matches(s, r.host))
        && field(&m.methods, &m.not_methods, |s| matchers::string_matches(s, &[r.method]))
        && field(&m.paths, &m.not_paths, |p| path_matches(p, r.path))
        && field(&m.request_principals, &m.not_request_principals, principal)
        && field(&m.remote_ips, &m.not_remote_ips, remote_ip)
        && m.conditions.iter().all(|condition| condition_holds(condition, r))
}

/// As in [`super::rules`]: unset constrains nothing; values are ORed; no `not_` value may match.
fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}

/// Hosts are written without a port most of the time, and clients send one with non-default ports: a pattern
/// matches the authority as sent or without its port.
fn host_matches(pattern: &StringMatch, host: &str) -> bool {
    matchers::string_matches(pattern, &[host]) || host_without_port(host).is_some_and(|bare| matchers::string_matches(pattern, &[bare]))
}

fn host_without_port(host: &str) -> Option<&str> {
    let (bare, port) = host.rsplit_once(':')?;
    // `[::1]` has colons of its own; a port is digits after the last one.
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!bare.contains(':') || bare.ends_with(']'))).then_some(bare)
}

fn path_matches(pattern: &PathMatch, path: &str) -> bool {
    match &pattern.kind {
        Some(Kind::String(s)) => matchers::string_matches(s, &[path]),
        Some(Kind::Template(template)) => template_matches(template, path),
        None => false,
    }
}

/// `{*}` is exactly one non-empty segment, `{**}` (last) the rest of the path, anything else a literal segment.
fn template_matches(template: &str, path: &str) -> bool {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    for operator in template.strip_prefix('/').unwrap_or(template).split('/') {
        match operator {
            "{**}" => return true,
            "{*}" => {
                if segments.next().is_none_or(str::is_empty) {
                    return false;
                }
            }
            literal => {
                if segments.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    segments.next().is_none()
}

/// A condition holds if some value matches (or none is listed) and no `not_values` one does. An attribute the
/// request does not have (no such header, no JWT, no TLS) matches no value, so only a `notValues` condition holds.
fn condition_holds(condition: &RequestCondition, r: &RequestAttributes<'_>) -> bool {
    let matches_value = |s: &StringMatch| match &condition.attribute {
        Some(Attribute::Header(name)) => header_matches(s, r.headers, name),
        Some(Attribute::Claim(path)) => r.claims.is_some_and(|claims| claim_matches(s, claims, &path.segments)),
        Some(Attribute::Principal(())) => r.principal.is_some_and(|p| matchers::string_matches(s, &[p])),
        Some(Attribute::ServerName(())) => r.server_name.is_some_and(|n| matchers::string_matches(s, &[n])),
        // Refused when the policy was decoded; a condition keel cannot read holds for no request.
        None => false,
    };
    condition.attribute.is_some() && field(&condition.values, &condition.not_values, matches_value)
}

/// Any value of the header, whole or any comma-separated element of it (a list header sent once).
fn header_matches(s: &StringMatch, headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|value| {
        matchers::string_matches(s, &[value])
            || (value.contains(',') && value.split(',').any(|element| matchers::string_matches(s, &[element.trim()])))
    })
}

/// The claim at `path` in the verified payload; a list matches by any element, numbers and booleans as written.
fn claim_matches(s: &StringMatch, claims: &serde_json::Value, path: &[String]) -> bool {
    let Some(value) = path.iter().try_fold(claims, |at, segment| at.get(segment)) else { return false };
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(text) => matchers::string_matches(s, &[text]),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => matchers::string_matches(s, &[&v.to_string()]),
        _ => false,
    };
    match value {
        serde_json::Value::Array(items) => items.iter().any(scalar),
        other => scalar(other),
    }
}

/// The path policies compare: the query cut off and dot segments removed (RFC 3986 §5.2.4, `%2e` read as `.`),
/// as Envoy's `normalize_path`, which Istio turns on. The request is forwarded with this path, so the application
/// serves exactly what was authorized: `/public/../admin` is decided, and served, as `/admin`.
pub fn normalize_path(path_and_query: &str) -> Cow<'_, str> {
    let path = path_and_query.split_once('?').map_or(path_and_query, |(path, _)| path);
    let is_dot = |segment: &str| segment == "." || segment.eq_ignore_ascii_case("%2e");
    let is_dot_dot = |segment: &str| {
        segment == ".."
            || (segment.len() > 2 && segment.len() <= 6 && {
                let lower = segment.to_ascii_lowercase();
                matches!(lower.as_str(), "%2e%2e" | ".%2e" | "%2e.")
            })
    };
    if !path.split('/').any(|segment| is_dot(segment) || is_dot_dot(segment)) {
        return Cow::Borrowed(path);
    }
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if is_dot(segment) {
            // `/a/.` is the directory `/a/`.
            if i == last {
                output.push("");
            }
        } else if is_dot_dot(segment) {
            output.pop();
            if i == last {
                output.push("");
            }
        } else {
            output.push(segment);
        }
    }
    Cow::Owned(format!("/{}", output.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_the_query_cut() {
        for (given, expected) in [
            ("/items?id=1", "/items"),
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a..b/c", "/a..b/c"),
            ("/", "/"),
        ] {
            assert_eq!(normalize_path(given), expected, "{given}");
        }
    }

    #[test]
    fn templates_match_whole_segments() {
        for (template, path, matches) in [
            ("/v1/{*}/reviews", "/v1/42/reviews", true),
            ("/v1/{*}/reviews", "/v1/42/43/reviews", false),
            ("/v1/{*}/reviews", "/v1//reviews", false),
            ("/v1/{*}", "/v1/42/x", false),
            ("/v1/{**}", "/v1/42/x", true),
            ("/v1/{**}", "/v1/", true),
            ("/v1/{**}", "/v2/x", false),
            ("/v1/{*}/x/{**}", "/v1/a/x/b/c", true),
        ] {
            assert_eq!(template_matches(template, path), matches, "{template} vs {path}");
        }
    }

    #[test]
    fn hosts_match_with_or_without_the_port() {
        assert_eq!(host_without_port("shop.example:8080"), Some("shop.example"));
        assert_eq!(host_without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(host_without_port("::1"), None);
        assert_eq!(host_without_port("shop.example"), None);
    }
}
