//! keel's control plane. The configuration model (Istio objects, validation, translation to xDS resources, the
//! CA's signing core) is the `keel-mesh` crate, shared with keel's local mode; this crate adds what only a
//! control plane does: `serve` (the config sources feeding one translation: a directory, or `kubernetes`), `xds`
//! (the delta ADS server for clients `client_auth` authenticated), `ca_service` (the Istio CA gRPC API) and
//! `metrics` (what both count, for Prometheus).
pub mod ca_service;
pub mod client_auth;
pub mod jwks;
pub mod kubernetes;
pub mod metrics;
pub mod serve;
pub mod tokens;
pub mod xds;
