//! keel's workload state and where it comes from: the state the data path reads (`state`), the delta ADS client
//! that keeps it in sync with a control plane (`client`, configured by `setup`), or the local mode that reads a
//! config directory in-process (`local`).
pub mod channel;
pub mod client;
pub mod local;
pub mod persisted;
pub mod setup;
pub mod state;
