//! The outcome of authorizing a connection, borrowed from the snapshot it was decided under: deciding allocates
//! nothing unless dry-run policies apply, and the text for logs is produced only when displayed.
use std::fmt;

use keel_proto::security::Action;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'s> {
    pub reason: Reason<'s>,
    /// What each applicable dry-run policy would have done, by policy name; empty (and unallocated) without any.
    pub dry_run: Vec<DryRun<'s>>,
}

/// Why a connection is admitted or refused; `Display` gives the sentence for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason<'s> {
    /// A DENY policy matched (the first by name if several did).
    DeniedBy(&'s str),
    /// No DENY matched and no ALLOW policy applies.
    NoAllowPolicy,
    /// No DENY matched and this ALLOW policy did (the first by name if several did).
    AllowedBy(&'s str),
    /// ALLOW policies apply and none matched.
    NoAllowMatched { allow_policies: usize },
    /// Re-evaluation only: the destination workload is no longer in the snapshot.
    DestinationGone,
}

/// A dry-run policy's would-be effect: evaluated like the others, never enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun<'s> {
    pub policy: &'s str,
    pub action: Action,
    pub matched: bool,
}

impl<'s> Decision<'s> {
    pub fn allowed(&self) -> bool {
        matches!(self.reason, Reason::NoAllowPolicy | Reason::AllowedBy(_))
    }

    /// The `<ns>/<name>` of the policy that decided: the DENY that refused, or the ALLOW that admitted.
    pub fn policy(&self) -> Option<&'s str> {
        match self.reason {
            Reason::DeniedBy(name) | Reason::AllowedBy(name) => Some(name),
            _ => None,
        }
    }

    /// What the decision would be if the dry-run policies were enforced too: the question dry-run exists to
    /// answer before a policy is switched on.
    pub fn allowed_with_dry_run_enforced(&self) -> bool {
        let dry = |action: Action| self.dry_run.iter().filter(move |d| d.action == action);
        if dry(Action::Deny).any(|d| d.matched) {
            return false;
        }
        let dry_allow_matched = dry(Action::Allow).any(|d| d.matched);
        match self.reason {
            Reason::DeniedBy(_) | Reason::DestinationGone => false,
            Reason::AllowedBy(_) => true,
            Reason::NoAllowPolicy => dry(Action::Allow).next().is_none() || dry_allow_matched,
            Reason::NoAllowMatched { .. } => dry_allow_matched,
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeniedBy(name) => write!(f, "denied by DENY policy {name}"),
            Reason::NoAllowPolicy => f.write_str("allowed: no ALLOW policy applies"),
            Reason::AllowedBy(name) => write!(f, "allowed by ALLOW policy {name}"),
            Reason::NoAllowMatched { allow_policies } => {
                write!(f, "no ALLOW policy matched ({allow_policies} candidates)")
            }
            Reason::DestinationGone => f.write_str("denied: the destination workload no longer exists"),
        }
    }
}

impl fmt::Display for DryRun<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match (self.action, self.matched) {
            (Action::Deny, true) => "would deny",
            (Action::Allow, true) => "would allow",
            (_, false) => "would not match",
        };
        write!(f, "dry-run {} policy {} {effect}", self.action.as_str_name(), self.policy)
    }
}

/// The reason, then each dry-run outcome: one line for a connection log.
impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        for dry_run in &self.dry_run {
            write!(f, "; {dry_run}")?;
        }
        Ok(())
    }
}
