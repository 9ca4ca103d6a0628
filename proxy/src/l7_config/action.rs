//! The parts of a route's action that shape one request: which weighted cluster it goes to, its consistent-hash
//! key (hash policies), and header edits (Envoy's HeaderValueOption semantics, as Istio's `headers` set/add/remove
//! produce them).
use std::net::IpAddr;

use http::{header::HeaderName, HeaderMap, HeaderValue};
use keel_proto::{
    core::{header_value_option::HeaderAppendAction, HeaderValueOption},
    route::{
        route_action::{
            hash_policy::{Cookie, PolicySpecifier},
            HashPolicy,
        },
        weighted_cluster::ClusterWeight,
        WeightedCluster,
    },
};
use rand::Rng as _;

use super::matching::RequestView;
use crate::hashing::stable_hash;

/// Picks a cluster in proportion to the weights (`total_weight` when set, else their sum); `None` when every
/// weight is zero.
pub fn pick_weighted(clusters: &WeightedCluster) -> Option<&ClusterWeight> {
    let sum: u64 = clusters.clusters.iter().map(|c| u64::from(c.weight.unwrap_or(0))).sum();
    let total = clusters.total_weight.map_or(sum, u64::from).max(sum);
    if total == 0 {
        return None;
    }
    pick_with_roll(clusters, rand::rng().random_range(0..total))
}

fn pick_with_roll(clusters: &WeightedCluster, mut roll: u64) -> Option<&ClusterWeight> {
    for c in &clusters.clusters {
        let w = u64::from(c.weight.unwrap_or(0));
        if roll < w {
            return Some(c);
        }
        roll -= w;
    }
    None
}

/// A request's consistent-hash key, and the cookie to set on its response when a cookie policy with a TTL had
/// to generate one.
#[derive(Debug, Default, PartialEq)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

/// The request's consistent-hash key from the route's hash policies, Envoy-style: each policy that yields a
/// value is folded into the hash, and a `terminal` one that yields stops the list. `None` when none yields (the
/// balancer then picks at random). A cookie policy with a `ttl` whose cookie is absent yields a generated value
/// (derived from the client's address, so a client that drops it is still sticky) and asks for it to be set, so
/// the client's next requests carry it (Istio's `consistentHash.httpCookie`).
pub fn request_hash(policies: &[HashPolicy], request: &RequestView<'_>, source_ip: IpAddr) -> RequestHash {
    let mut out = RequestHash::default();
    for policy in policies {
        let value: Option<u64> = match &policy.policy_specifier {
            Some(PolicySpecifier::Header(h)) => request.headers.get(h.header_name.as_str()).map(|v| stable_hash(v.as_bytes())),
            Some(PolicySpecifier::Cookie(c)) => match (cookie(request.headers, &c.name), &c.ttl) {
                (Some(value), _) => Some(stable_hash(value)),
                (None, Some(ttl)) => {
                    let value = format!("{:016x}", stable_hash((source_ip, c.name.as_str())));
                    out.set_cookie = set_cookie(c, &value, ttl);
                    Some(stable_hash(value.as_str()))
                }
                (None, None) => None,
            },
            Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => Some(stable_hash(source_ip)),
            Some(PolicySpecifier::QueryParameter(q)) => request
                .path_and_query
                .split_once('?')
                .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix(q.name.as_str())?.strip_prefix('=')))
                .map(stable_hash),
            _ => None,
        };
        if let Some(v) = value {
            out.hash = Some(out.hash.map_or(v, |h| stable_hash((h, v))));
            if policy.terminal {
                break;
            }
        }
    }
    out
}

/// `Set-Cookie` for a generated cookie, as Envoy writes it: quoted value, `Max-Age` (none for a zero TTL, a
/// session cookie), the policy's path, HttpOnly. The name and path were validated with the route.
fn set_cookie(policy: &Cookie, value: &str, ttl: &prost_types::Duration) -> Option<HeaderValue> {
    let mut header = format!("{}=\"{value}\"", policy.name);
    if ttl.seconds > 0 {
        header.push_str(&format!("; Max-Age={}", ttl.seconds));
    }
    if !policy.path.is_empty() {
        header.push_str(&format!("; Path={}", policy.path));
    }
    header.push_str("; HttpOnly");
    HeaderValue::from_str(&header).ok()
}

/// Whether `name` can name a cookie (an RFC 6265 token: visible ASCII but no separators).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Applies removals, then additions, as Envoy does for request and response headers.
pub fn edit_headers(headers: &mut HeaderMap, add: &[HeaderValueOption], remove: &[String]) {
    for name in remove {
        headers.remove(name.as_str());
    }
    for option in add {
        let Some(header) = &option.header else { continue };
        let Ok(name) = HeaderName::from_bytes(header.key.as_bytes()) else { continue };
        let raw = if header.raw_value.is_empty() { header.value.as_bytes() } else { header.raw_value.as_slice() };
        let Ok(value) = HeaderValue::from_bytes(raw) else { continue };
        if value.is_empty() && !option.keep_empty_value {
            continue;
        }
        // The deprecated `append` wins when set (Istio still sends it): false = overwrite.
        let action = match option.append {
            Some(false) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            Some(true) => HeaderAppendAction::AppendIfExistsOrAdd,
            None => HeaderAppendAction::try_from(option.append_action).unwrap_or(HeaderAppendAction::AppendIfExistsOrAdd),
        };
        match action {
            HeaderAppendAction::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            HeaderAppendAction::AddIfAbsent => {
                headers.entry(name).or_insert(value);
            }
            HeaderAppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
            HeaderAppendAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_proto::{
        core::HeaderValue as EnvoyHeader,
        route::route_action::hash_policy::{ConnectionProperties, Header},
    };

    use super::*;

    fn weighted(weights: &[(&str, u32)]) -> WeightedCluster {
        WeightedCluster {
            clusters: weights.iter().map(|(n, w)| ClusterWeight { name: (*n).into(), weight: Some(*w), ..Default::default() }).collect(),
            total_weight: None,
        }
    }

    #[test]
    fn an_80_20_split_lands_within_a_few_percent() {
        let wc = weighted(&[("v1", 80), ("v2", 20)]);
        let v2 = (0..10_000).filter(|_| pick_weighted(&wc).unwrap().name == "v2").count();
        assert!((1800..=2200).contains(&v2), "v2 got {v2} of 10000");
        assert!(pick_weighted(&weighted(&[("a", 0), ("b", 0)])).is_none());
        assert_eq!(pick_with_roll(&weighted(&[("a", 1), ("b", 1)]), 1).unwrap().name, "b");
    }

    #[test]
    fn hash_keys_follow_the_policies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.insert(http::header::COOKIE, HeaderValue::from_static("a=1; session=s42"));
        let view = |path| RequestView { method: "GET", authority: "a", path_and_query: path, headers: &headers };
        let by_header = [HashPolicy { policy_specifier: Some(PolicySpecifier::Header(Header { header_name: "x-user".into() })), terminal: false }];
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let h1 = request_hash(&by_header, &view("/"), ip).hash;
        assert_eq!(h1, Some(stable_hash(b"alice".as_slice())));
        let by_cookie = [HashPolicy {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie { name: "session".into(), ..Default::default() })),
            terminal: false,
        }];
        assert_eq!(request_hash(&by_cookie, &view("/"), ip), RequestHash { hash: Some(stable_hash("s42")), set_cookie: None });
        let by_ip =
            [HashPolicy { policy_specifier: Some(PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })), terminal: true }];
        assert_eq!(request_hash(&by_ip, &view("/"), ip), request_hash(&by_ip, &view("/other"), ip));
        assert!(request_hash(&by_ip, &view("/"), ip).hash.is_some());
        let missing = [HashPolicy { policy_specifier: Some(PolicySpecifier::Header(Header { header_name: "x-none".into() })), terminal: false }];
        assert_eq!(request_hash(&missing, &view("/"), ip), RequestHash::default());
    }

    /// Istio's `httpCookie` with a TTL: an absent cookie is generated, set on the response, and the request is
    /// hashed as the next one carrying it will be.
    #[test]
    fn an_absent_cookie_with_a_ttl_is_generated_and_set() {
        let policy = |ttl: i64| {
            [HashPolicy {
                policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                    name: "user".into(),
                    ttl: Some(prost_types::Duration { seconds: ttl, nanos: 0 }),
                    path: "/".into(),
                })),
                terminal: false,
            }]
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let none = HeaderMap::new();
        let first = request_hash(&policy(60), &RequestView { method: "GET", authority: "a", path_and_query: "/", headers: &none }, ip);
        let set = first.set_cookie.clone().expect("a cookie is set").to_str().unwrap().to_owned();
        assert!(set.starts_with("user=\"") && set.ends_with("\"; Max-Age=60; Path=/; HttpOnly"), "{set}");
        let value = set.split('"').nth(1).unwrap();
        let mut with = HeaderMap::new();
        with.insert(http::header::COOKIE, HeaderValue::from_str(&format!("user={value}")).unwrap());
        let next = request_hash(&policy(60), &RequestView { method: "GET", authority: "a", path_and_query: "/", headers: &with }, ip);
        assert_eq!(next, RequestHash { hash: first.hash, set_cookie: None }, "the next request lands where the first did");
        let session = request_hash(&policy(0), &RequestView { method: "GET", authority: "a", path_and_query: "/", headers: &none }, ip);
        assert!(!session.set_cookie.unwrap().to_str().unwrap().contains("Max-Age"), "a zero TTL is a session cookie");
        assert!(is_cookie_name("user") && !is_cookie_name("us er") && !is_cookie_name("a;b") && !is_cookie_name(""));
    }

    fn option(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
        HeaderValueOption { header: Some(EnvoyHeader { key: key.into(), value: value.into(), raw_value: vec![] }), append, ..Default::default() }
    }

    #[test]
    fn header_edits_remove_then_set_or_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-old", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("before"));
        headers.insert("x-add", HeaderValue::from_static("first"));
        edit_headers(&mut headers, &[option("x-set", "after", Some(false)), option("x-add", "second", Some(true))], &["x-old".into()]);
        assert!(!headers.contains_key("x-old"));
        assert_eq!(headers["x-set"], "after");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["first", "second"]);
    }
}
