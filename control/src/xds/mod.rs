//! The delta ADS server: every connected node proxy holds a wildcard subscription per type URL and receives, on
//! each change of the translated snapshot, only what changed for it (new or changed resources, removed names).
pub mod server;
