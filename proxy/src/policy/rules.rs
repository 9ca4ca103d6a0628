//! Whether a policy matches a connection: any rule; a rule if all its clauses; a clause if any of its matches;
//! a match if all its fields (some value of each listed field matches, no `not_` value does).
use keel_proto::security::{Address, Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch};

use super::{matchers, ConnectionAttributes};

/// A policy without rules matches nothing: an ALLOW without rules allows nothing (as in Istio), a DENY without
/// rules denies nothing.
pub fn policy_matches(policy: &Authorization, connection: &ConnectionAttributes<'_>) -> bool {
    policy.rules.iter().any(|rule| rule_matches(rule, connection))
}

/// A rule without clauses matches every connection.
fn rule_matches(rule: &Rule, connection: &ConnectionAttributes<'_>) -> bool {
    rule.clauses.iter().all(|clause| clause_matches(clause, connection))
}

/// A clause without matches matches nothing (istiod never sends one).
fn clause_matches(clause: &Clause, connection: &ConnectionAttributes<'_>) -> bool {
    clause.matches.iter().any(|m| connection_matches(m, connection))
}

/// A match with no field set matches every connection. Also the connection part of an HTTP match.
pub fn connection_matches(m: &Match, c: &ConnectionAttributes<'_>) -> bool {
    let identity = c.source_identity;
    let namespace = |s: &StringMatch| identity.is_some_and(|id| matchers::string_matches(s, &[&id.namespace]));
    let principal = |s: &StringMatch| identity.is_some_and(|id| matchers::string_matches(s, &matchers::principal_parts(id)));
    let service_account = |sa: &ServiceAccountMatch| identity.is_some_and(|id| matchers::service_account_matches(sa, id));
    let source_ip = |cidr: &Address| matchers::cidr_contains(cidr, c.source_ip);
    let destination_ip = |cidr: &Address| matchers::cidr_contains(cidr, c.destination_ip);
    let destination_port = |&port: &u32| port == u32::from(c.destination_port);
    field(&m.namespaces, &m.not_namespaces, namespace)
        && field(&m.principals, &m.not_principals, principal)
        && field(&m.service_accounts, &m.not_service_accounts, service_account)
        && field(&m.source_ips, &m.not_source_ips, source_ip)
        && field(&m.destination_ips, &m.not_destination_ips, destination_ip)
        && field(&m.destination_ports, &m.not_destination_ports, destination_port)
}

/// One field of a match and its `not_` form: unset constrains nothing; values are ORed.
fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}
