//! `keel run --kubernetes`: the node agent. keel follows the Kubernetes API for the pods of its own node (and the
//! namespaces' labels) and captures exactly the ambient ones, whoever started them: keel-cni's ADD captures a new
//! pod before its containers start, the agent catches up with everything else (pods that were running before keel
//! was installed, labels changed later, pods that went away while keel was down).
//!
//! - [`decision`]: whether a pod is captured, from its object and its namespace's labels (a pure function).
//! - [`cache`]: the watches' view, a relist swapped in only once complete.
//! - [`reconcile`]: the API's view against keel's enrollments, to the actions that close the gap (a pure plan).
//! - [`agent`]: the watches, the executor of the plan and the pods' `ambient.istio.io/redirection` annotation.
pub mod agent;
pub mod cache;
pub mod decision;
pub mod reconcile;

pub use agent::NodeAgent;
