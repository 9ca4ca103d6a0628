//! The L7 part of the published snapshot, read by the L7 engine ([`crate::l7`]): `config` turns the Envoy
//! resources from xDS into what the data path reads: `route_table` + `matching` + `route_plan` + `action`
//! (virtual hosts, routes and what they do), `cluster_config` + `cluster` (balancer, `circuit` limits, `outlier`
//! ejection, the live cluster state), `retry` and `fault`; `downstream_tls` and `secret` (a gateway's TLS termination and
//! the certificates it serves); `limits` bounds every number and header string a
//! control plane sends; `dump` prints the live config. Below `xds` and the engine: imports neither.
pub mod action;
pub mod balancer;
pub mod circuit;
pub mod cluster;
pub mod cluster_config;
pub mod config;
pub mod downstream_tls;
pub mod dump;
pub mod fault;
pub mod filter_chain;
pub mod limits;
pub mod local_file;
pub mod matching;
pub mod outlier;
pub mod retry;
pub mod route_plan;
pub mod route_table;
pub mod secret;
pub mod upstream_tls;

#[cfg(test)]
mod tests;
