//! The parts of a route's action that shape one request: which weighted cluster it goes to, its consistent-hash
//! key (hash policies), and header edits (Envoy's HeaderValueOption semantics, as Istio's `headers` set/add/remove
//! produce them).
use std::net::IpAddr;

use http::{header::HeaderName, HeaderMap, HeaderValue};
use keel_proto::{
    core::{header_value_option::HeaderAppendAction, HeaderValueOption},
    route::{
        route_action::{hash_policy::PolicySpecifier, HashPolicy},
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

/// The request's consistent-hash key from the route's hash policies, Envoy-style: each policy that yields a
/// value is folded into the hash, and a `terminal` one that yields stops the list. `None` when none yields (the
/// balancer then picks at random).
pub fn request_hash(policies: &[HashPolicy], request: &RequestView<'_>, source_ip: IpAddr) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        let value: Option<u64> = match &policy.policy_specifier {
            Some(PolicySpecifier::Header(h)) => request.headers.get(h.header_name.as_str()).map(|v| stable_hash(v.as_bytes())),
            Some(PolicySpecifier::Cookie(c)) => cookie(request.headers, &c.name).map(stable_hash),
            Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => Some(stable_hash(source_ip)),
            Some(PolicySpecifier::QueryParameter(q)) => request
                .path_and_query
                .split_once('?')
                .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix(q.name.as_str())?.strip_prefix('=')))
                .map(stable_hash),
            _ => None,
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(v, |h| stable_hash((h, v))));
            if policy.terminal {
                break;
            }
        }
    }
    hash
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
        route::route_action::hash_policy::{ConnectionProperties, Cookie, Header},
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
        let h1 = request_hash(&by_header, &view("/"), ip);
        assert_eq!(h1, Some(stable_hash(b"alice".as_slice())));
        let by_cookie = [HashPolicy {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie { name: "session".into(), ..Default::default() })),
            terminal: false,
        }];
        assert_eq!(request_hash(&by_cookie, &view("/"), ip), Some(stable_hash("s42")));
        let by_ip =
            [HashPolicy { policy_specifier: Some(PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })), terminal: true }];
        assert_eq!(request_hash(&by_ip, &view("/"), ip), request_hash(&by_ip, &view("/other"), ip));
        let missing = [HashPolicy { policy_specifier: Some(PolicySpecifier::Header(Header { header_name: "x-none".into() })), terminal: false }];
        assert_eq!(request_hash(&missing, &view("/"), ip), None);
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
