//! Which policies apply to connections to a workload.
use keel_proto::{
    security::{Authorization, Scope},
    workload::Workload,
};

use crate::xds::state::Snapshot;

/// The policies that apply to `workload`, each once, named by their snapshot key (`<ns>/<name>`): every GLOBAL
/// one (istiod gives root-namespace policies that scope), the NAMESPACE-scoped ones of the workload's namespace,
/// and the ones the workload lists in `authorization_policies` (istiod resolved their selectors for us; a
/// selector policy not listed does not apply, whatever it selects).
///
/// Lazy and allocation-free. It scans the snapshot's policies, which is cheap for the policy counts meshes have;
/// an index by namespace built when a snapshot is published would make it independent of the total.
///
/// A listed name the snapshot does not hold yet is skipped, as ztunnel does: xDS may deliver a workload before
/// its policies, and re-evaluation on the next snapshot applies the policy once it arrives.
pub fn candidates<'s, 'w>(snapshot: &'s Snapshot, workload: &'w Workload) -> impl Iterator<Item = (&'s str, &'s Authorization)> + use<'s, 'w> {
    let namespace = workload.namespace.as_str();
    let by_scope = snapshot.policies.iter().filter(move |(_, policy)| applies_by_scope(policy, namespace));
    let listed = &workload.authorization_policies;
    let by_listing = listed
        .iter()
        .enumerate()
        // A name listed twice is one policy.
        .filter(|&(i, name)| !listed[..i].contains(name))
        .filter_map(|(_, name)| snapshot.policies.get_key_value(name.as_str()))
        // Listed and also in scope: already a candidate above.
        .filter(move |(_, policy)| !applies_by_scope(policy, namespace));
    by_scope.chain(by_listing).map(|(name, policy)| (name.as_str(), &**policy))
}

/// Whether `policy` applies to every workload of `namespace` by its scope alone. Unknown scopes apply nowhere.
fn applies_by_scope(policy: &Authorization, namespace: &str) -> bool {
    match Scope::try_from(policy.scope) {
        Ok(Scope::Global) => true,
        Ok(Scope::Namespace) => policy.namespace == namespace,
        Ok(Scope::WorkloadSelector) | Err(_) => false,
    }
}
