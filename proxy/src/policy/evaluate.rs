//! The decision: any matching DENY refuses; otherwise no ALLOW policy admits, a matching ALLOW admits, and
//! ALLOW policies none of which match refuse. Dry-run policies are evaluated and reported, never enforced.
use keel_proto::security::{Action, Authorization};

use super::{candidates::candidates, request, rules::policy_matches, ConnectionAttributes, Decision, DryRun, Reason, RequestAttributes};
use crate::xds::state::Snapshot;

/// Decides a new inbound connection to `connection.destination_workload` under `snapshot`.
///
/// Pure: the result depends only on the arguments, so keel re-runs it on open connections when a new snapshot
/// is published (see [`OpenConnection::reauthorize`](super::OpenConnection::reauthorize)). Every applicable
/// policy is evaluated, so that the policy a decision names does not depend on the snapshot's hash order.
pub fn authorize<'s>(snapshot: &'s Snapshot, connection: &ConnectionAttributes<'_>) -> Decision<'s> {
    decide(snapshot, connection, |_, policy| policy_matches(policy, connection))
}

/// Decides one HTTP request on a connection to `connection.destination_workload`: the same policies, order and
/// precedence as [`authorize`], but a policy that has HTTP rules (`snapshot.http_policies`) is matched by those,
/// whole, instead of by its L4 rules (which a proxy without HTTP reads fail-closed).
pub fn authorize_request<'s>(snapshot: &'s Snapshot, connection: &ConnectionAttributes<'_>, request: &RequestAttributes<'_>) -> Decision<'s> {
    decide(snapshot, connection, |name, policy| match snapshot.http_policies.get(name) {
        Some(http) => request::policy_matches(http, connection, request),
        None => policy_matches(policy, connection),
    })
}

/// Whether some policy that applies to connections to `connection.destination_workload` has HTTP rules, or a
/// RequestAuthentication applies to it: then its requests must be decided one by one, on ports that carry HTTP.
pub fn needs_requests(snapshot: &Snapshot, connection: &ConnectionAttributes<'_>) -> bool {
    let workload = connection.destination_workload;
    let http_rules = !snapshot.http_policies.is_empty() && candidates(snapshot, workload).any(|(name, _)| snapshot.http_policies.contains_key(name));
    http_rules || snapshot.request_authentications.values().any(|r| r.applies_to(workload))
}

/// Whether a connection-level decision already settles every request on the connection: a DENY that matched by
/// L4 rules alone (a policy without HTTP rules) denies each request the same way.
pub fn denies_every_request(snapshot: &Snapshot, decision: &Decision<'_>) -> bool {
    matches!(decision.reason, Reason::DeniedBy(name) if !snapshot.http_policies.contains_key(name))
}

/// DENY first, then ALLOW, every candidate evaluated with `matches` (so the policy a decision names is the first
/// by name, whatever the snapshot's hash order).
fn decide<'s>(snapshot: &'s Snapshot, connection: &ConnectionAttributes<'_>, matches: impl Fn(&str, &Authorization) -> bool) -> Decision<'s> {
    let mut denied_by = None;
    let mut allowed_by = None;
    let mut allow_policies = 0;
    let mut dry_run = Vec::new();
    for (name, policy) in candidates(snapshot, connection.destination_workload) {
        let action = action(policy);
        let matched = matches(name, policy);
        if policy.dry_run {
            dry_run.push(DryRun { policy: name, action, matched });
            continue;
        }
        match action {
            Action::Deny if matched => denied_by = first_by_name(denied_by, name),
            Action::Deny => {}
            Action::Allow => {
                allow_policies += 1;
                if matched {
                    allowed_by = first_by_name(allowed_by, name);
                }
            }
        }
    }
    dry_run.sort_unstable_by_key(|d| d.policy);
    let reason = match (denied_by, allowed_by) {
        (Some(name), _) => Reason::DeniedBy(name),
        _ if allow_policies == 0 => Reason::NoAllowPolicy,
        (None, Some(name)) => Reason::AllowedBy(name),
        (None, None) => Reason::NoAllowMatched { allow_policies },
    };
    Decision { reason, dry_run }
}

/// An action keel does not know is taken as DENY: a policy it cannot read may only ever refuse more.
fn action(policy: &Authorization) -> Action {
    Action::try_from(policy.action).unwrap_or(Action::Deny)
}

fn first_by_name<'s>(current: Option<&'s str>, name: &'s str) -> Option<&'s str> {
    Some(current.map_or(name, |current| current.min(name)))
}
