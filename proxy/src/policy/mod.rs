//! L4 authorization: whether an inbound connection to a workload is admitted, decided on the destination side
//! with the semantics of Istio's `istio.security.Authorization` (../shared/reference/hbone-and-workload-api.md §2),
//! so a policy written for ztunnel means the same under keel.
//!
//! - [`candidates`](candidates::candidates): which policies apply to a destination workload;
//! - [`rules`]: whether a policy matches a connection (rule → clause → match);
//! - [`matchers`]: the leaf comparisons (strings, principals, CIDRs), allocation-free;
//! - [`authorize`]: the decision (DENY first, then ALLOW), reporting dry-run policies without enforcing them;
//! - [`request`] and [`authorize_request`]: the same decision for one HTTP request, where a policy's HTTP rules
//!   (keel's `HttpAuthorization`, next to the L4 `Authorization`) apply whole: methods, paths, hosts, headers,
//!   request principals, remote IPs.
//!
//! # Re-evaluation
//! [`authorize`] is a pure function of (snapshot, connection): no state, no locks, no clock, no I/O. The same
//! inputs always give the same [`Decision`] (even the policy it names when several match: the first by name).
//! That is what lets keel re-run it on open connections whenever a new snapshot is published and close those a
//! new policy denies: [`OpenConnection`] keeps what a connection was admitted with, and
//! [`OpenConnection::reauthorize`] decides it again against the newest snapshot.
mod candidates;
mod connection;
mod decision;
mod evaluate;
mod matchers;
pub mod open_connections;
mod request;
mod rules;

#[cfg(test)]
mod tests;

pub use candidates::candidates;
pub use connection::{ConnectionAttributes, OpenConnection};
pub use decision::{Decision, DryRun, Reason};
pub use evaluate::{authorize, authorize_request, denies_every_request, needs_requests};
pub use request::{normalize_path, RequestAttributes};
