//! The leaf comparisons of a match, without allocating: strings (exact, prefix, suffix, presence), principals,
//! service accounts and CIDRs. A malformed matcher (no match type, an address that is not 4 or 16 bytes, a prefix
//! longer than the address) matches nothing.
use std::net::IpAddr;

use keel_proto::security::{string_match::MatchType, Address, ServiceAccountMatch, StringMatch};

use crate::identity::Identity;

/// A principal as policies spell it, `<trust-domain>/ns/<ns>/sa/<sa>` (the SPIFFE ID without `spiffe://`), in
/// parts: matching walks them, so no string is built per connection.
pub fn principal_parts(identity: &Identity) -> [&str; 5] {
    [&identity.trust_domain, "/ns/", &identity.namespace, "/sa/", &identity.service_account]
}

/// Whether `m` matches the concatenation of `parts`. Presence means a non-empty value; an absent value (no
/// peer identity) is the caller's to decide, and matches no matcher.
pub fn string_matches(m: &StringMatch, parts: &[&str]) -> bool {
    match &m.match_type {
        Some(MatchType::Exact(x)) => parts.iter().map(|p| p.len()).sum::<usize>() == x.len() && starts_with(parts, x),
        Some(MatchType::Prefix(x)) => starts_with(parts, x),
        Some(MatchType::Suffix(x)) => ends_with(parts, x),
        Some(MatchType::Presence(())) => parts.iter().any(|p| !p.is_empty()),
        None => false,
    }
}

fn starts_with(parts: &[&str], pattern: &str) -> bool {
    let mut rest = pattern.as_bytes();
    for part in parts.iter().map(|p| p.as_bytes()) {
        if rest.len() <= part.len() {
            return part.starts_with(rest);
        }
        match rest.strip_prefix(part) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

fn ends_with(parts: &[&str], pattern: &str) -> bool {
    let mut rest = pattern.as_bytes();
    for part in parts.iter().rev().map(|p| p.as_bytes()) {
        if rest.len() <= part.len() {
            return part.ends_with(rest);
        }
        match rest.strip_suffix(part) {
            Some(before) => rest = before,
            None => return false,
        }
    }
    rest.is_empty()
}

/// A service account is a namespace and a name; the trust domain is not part of it.
pub fn service_account_matches(m: &ServiceAccountMatch, identity: &Identity) -> bool {
    m.namespace == identity.namespace && m.service_account == identity.service_account
}

/// Whether `ip` is in the CIDR. Families never mix: an IPv4 CIDR (even /0) does not contain an IPv6 address,
/// IPv4-mapped or not.
pub fn cidr_contains(cidr: &Address, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => same_prefix(&cidr.address, &ip.octets(), cidr.length),
        IpAddr::V6(ip) => same_prefix(&cidr.address, &ip.octets(), cidr.length),
    }
}

/// Whether the first `bits` bits of `network` and `ip` agree; bits past the prefix in `network` are ignored.
fn same_prefix(network: &[u8], ip: &[u8], bits: u32) -> bool {
    let Ok(bits) = usize::try_from(bits) else { return false };
    if network.len() != ip.len() || bits > ip.len() * 8 {
        return false;
    }
    let (whole, partial) = (bits / 8, bits % 8);
    let mask = 0xffu8.checked_shl(8 - partial as u32).unwrap_or(0);
    network[..whole] == ip[..whole] && (partial == 0 || (network[whole] ^ ip[whole]) & mask == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(match_type: MatchType) -> StringMatch {
        StringMatch { match_type: Some(match_type) }
    }

    #[test]
    fn parts_match_as_their_concatenation() {
        let parts = ["ab", "", "cd", "e"];
        for (pattern, is_prefix, is_suffix) in [
            ("", true, true),
            ("a", true, false),
            ("abc", true, false),
            ("abcde", true, true),
            ("abcdef", false, false),
            ("de", false, true),
            ("bcde", false, true),
            ("x", false, false),
        ] {
            assert_eq!(string_matches(&string(MatchType::Prefix(pattern.into())), &parts), is_prefix, "prefix {pattern:?}");
            assert_eq!(string_matches(&string(MatchType::Suffix(pattern.into())), &parts), is_suffix, "suffix {pattern:?}");
            assert_eq!(string_matches(&string(MatchType::Exact(pattern.into())), &parts), pattern == "abcde", "exact {pattern:?}");
        }
        // Multi-byte characters split across a part boundary compare as bytes, without panicking.
        assert!(string_matches(&string(MatchType::Exact("é".into())), &["\u{e9}"]));
        assert!(!string_matches(&string(MatchType::Prefix("é".into())), &["e"]));
    }

    #[test]
    fn presence_needs_a_non_empty_value_and_no_type_matches_nothing() {
        assert!(string_matches(&string(MatchType::Presence(())), &["x"]));
        assert!(!string_matches(&string(MatchType::Presence(())), &[""]));
        assert!(!string_matches(&StringMatch { match_type: None }, &["x"]));
    }

    #[test]
    fn cidrs_compare_the_prefix_bits_only() {
        let v4 = |address: [u8; 4], length| Address { address: address.to_vec(), length };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Host bits set in the network part are ignored, as a prefix length says.
        assert!(cidr_contains(&v4([10, 0, 1, 99], 24), ip("10.0.1.5")));
        assert!(cidr_contains(&v4([10, 0, 1, 0], 25), ip("10.0.1.127")));
        assert!(!cidr_contains(&v4([10, 0, 1, 0], 25), ip("10.0.1.128")));
        assert!(cidr_contains(&v4([10, 0, 0, 0], 12), ip("10.15.255.255")));
        assert!(!cidr_contains(&v4([10, 0, 0, 0], 12), ip("10.16.0.0")));
        // Malformed: too long a prefix, or an address of neither family.
        assert!(!cidr_contains(&v4([10, 0, 1, 5], 33), ip("10.0.1.5")));
        assert!(!cidr_contains(&Address { address: vec![10, 0, 1], length: 8 }, ip("10.0.1.5")));
        assert!(!cidr_contains(&Address { address: vec![10, 0, 1, 5], length: u32::MAX }, ip("10.0.1.5")));
    }
}
