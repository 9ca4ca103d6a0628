//! Kubernetes and DNS name rules for what keel-control reads: an object's name and namespace end up in hostnames
//! (`name.namespace.svc.cluster.local`), SPIFFE IDs, HTTP headers (HBONE's `forwarded`) and metric labels, so a
//! name no API server would accept is refused here, naming the field, rather than by every proxy (which NACKs it).

/// Why `value` is not a DNS-1123 label (a namespace; at most 63 of `a-z`, `0-9` and `-`, alphanumeric at both
/// ends), if it is not one.
pub fn not_a_label(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > 63 {
        return Some(format!("{value:?} must be 1-63 characters"));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let bytes = value.as_bytes();
    if !bytes.iter().all(|&b| allowed(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Some(format!("{value:?} is not a DNS-1123 label (lowercase letters, digits and '-', alphanumeric at both ends)"));
    }
    None
}

/// Why `value` is not a DNS-1123 subdomain (an object's name: at most 253 characters, dot-separated labels), if
/// it is not one.
pub fn not_a_subdomain(value: &str) -> Option<String> {
    if value.len() > 253 {
        return Some(format!("{value:?} is longer than 253 characters"));
    }
    value.split('.').find_map(not_a_label).map(|_| format!("{value:?} is not a DNS-1123 subdomain (dot-separated DNS-1123 labels)"))
}

/// Why `host` is not a hostname a ServiceEntry may name (a DNS name, optionally starting with the `*.` wildcard;
/// letters of either case, as DNS compares them case-insensitively), if it is not one.
pub fn not_a_host(host: &str) -> Option<String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !name.split('.').all(label_ok) {
        return Some(format!("{host:?} is not a DNS hostname (optionally `*.` then dot-separated labels of letters, digits, '-')"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_and_hosts() {
        for ok in ["default", "istioinaction", "a", "ns-1"] {
            assert_eq!(not_a_label(ok), None, "{ok}");
        }
        for bad in ["", "Demo", "-a", "a-", "istioinactio@n", "a.b", &"a".repeat(64)] {
            assert!(not_a_label(bad).is_some(), "{bad:?}");
        }
        assert_eq!(not_a_subdomain("catalog-v1.web"), None);
        assert!(not_a_subdomain("catalog..v1").is_some());
        assert!(not_a_subdomain("cata log").is_some());
        for ok in ["api.example.com", "*.example.com", "Example.COM", "svc_1.internal"] {
            assert_eq!(not_a_host(ok), None, "{ok}");
        }
        for bad in ["*", "a*.example.com", "a..b", "a b", "x\n", "x;host=y", ""] {
            assert!(not_a_host(bad).is_some(), "{bad:?}");
        }
    }
}
