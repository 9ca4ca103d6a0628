//! keel's xDS side: the workload/service/policy state the data path reads (`state`), and the delta ADS client
//! that keeps it in sync with a control plane (`client`).
pub mod client;
pub mod setup;
pub mod state;
