//! keel-cni: the chained CNI plugin that closes the window at pod start. On ADD it asks the node's keel to capture
//! the pod (keel decides whether the pod is ambient) and answers the runtime only once keel has, so the pod's first
//! connection is already captured; when keel cannot be reached the ADD fails and the pod does not start uncaptured.
//!
//! Modules: `invocation` (environment), `netconf` (stdin), `version`, `keel_api` (keel's socket), `plugin` (the
//! commands), `error` (every failure and its CNI code, printed once by `main`), `install` (the node install step).
pub mod error;
pub mod install;
pub mod invocation;
pub mod keel_api;
pub mod netconf;
pub mod plugin;
pub mod version;
