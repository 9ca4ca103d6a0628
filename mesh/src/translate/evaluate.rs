//! Test helper: decides a connection as a node proxy would from translated resources, following the
//! authorization semantics of the reference (hbone-and-workload-api.md §2). Tests use it to prove the effect of a
//! policy set (who is admitted where), not only its shape.
use keel_proto::{
    security::{string_match::MatchType, Action, Authorization, Match, Scope, StringMatch},
    workload::{address, Workload},
};

use super::Resources;

pub fn workload<'a>(r: &'a Resources, uid: &str) -> &'a Workload {
    match r.addresses.get(uid).and_then(|a| a.r#type.as_ref()) {
        Some(address::Type::Workload(w)) => w,
        _ => panic!("no workload {uid} in {:?}", r.addresses.keys()),
    }
}

/// Whether a connection to `port` of workload `uid` is admitted; `principal` is the peer's identity
/// (`cluster.local/ns/<ns>/sa/<sa>`), `None` for plaintext.
pub fn admits(r: &Resources, uid: &str, port: u32, principal: Option<&str>) -> bool {
    let w = workload(r, uid);
    let applicable = r
        .authorizations
        .values()
        .filter(|a| a.scope == Scope::Global as i32 || (a.scope == Scope::Namespace as i32 && a.namespace == w.namespace))
        .chain(w.authorization_policies.iter().map(|name| {
            let a = r.authorizations.get(name).unwrap_or_else(|| panic!("{uid} lists {name}, which does not exist"));
            assert_eq!(a.scope, Scope::WorkloadSelector as i32, "{uid} lists {name}, which is not workload-scoped");
            a
        }));
    let (mut allow_policies, mut allowed) = (0, false);
    for policy in applicable.filter(|a| !a.dry_run) {
        let matched = matches(policy, port, principal);
        if policy.action == Action::Deny as i32 && matched {
            return false;
        }
        if policy.action == Action::Allow as i32 {
            allow_policies += 1;
            allowed |= matched;
        }
    }
    allow_policies == 0 || allowed
}

fn matches(policy: &Authorization, port: u32, principal: Option<&str>) -> bool {
    policy.rules.iter().any(|rule| rule.clauses.iter().all(|clause| clause.matches.iter().any(|m| match_matches(m, port, principal))))
}

/// Fields ANDed, values ORed, `not_*` must not match. Only the fields policies of these tests set are known.
fn match_matches(m: &Match, port: u32, principal: Option<&str>) -> bool {
    let unsupported = [m.namespaces.len(), m.not_namespaces.len(), m.source_ips.len(), m.not_source_ips.len(), m.destination_ips.len()]
        .into_iter()
        .chain([m.not_destination_ips.len(), m.service_accounts.len(), m.not_service_accounts.len()]);
    assert!(unsupported.sum::<usize>() == 0, "the helper does not evaluate {m:?}");
    let principal_is = |s: &StringMatch| principal.is_some_and(|p| string_matches(s, p));
    (m.principals.is_empty() || m.principals.iter().any(principal_is))
        && !m.not_principals.iter().any(principal_is)
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&port))
        && !m.not_destination_ports.contains(&port)
}

/// A missing principal matches nothing, not even `presence`.
fn string_matches(s: &StringMatch, value: &str) -> bool {
    match s.match_type.as_ref() {
        Some(MatchType::Exact(x)) => value == x,
        Some(MatchType::Prefix(x)) => value.starts_with(x.as_str()),
        Some(MatchType::Suffix(x)) => value.ends_with(x.as_str()),
        Some(MatchType::Presence(())) => true,
        None => false,
    }
}
