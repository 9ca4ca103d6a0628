//! keel's node daemon: captures enrolled pods' TCP with eBPF (or iptables) into listeners keel opens inside each
//! pod's network namespace, and proxies it.
//!
//! The data path reads top-down (each module imports only the ones below it):
//! `captured` (accept → plan → execute) → `l4` (relays, inbound, the HBONE server) and `l7` (the HTTP engine)
//! → `accept`, `data_path` (with `fair_share`) → `upstream` (L7 connection pools) → `dial` (direct, same-node, HBONE) → `plan`
//! (what a connection is) → `hbone` (client protocol), `policy`, `telemetry`, `limits`, `sockets`, `xds`.
//! Failures on it are [`connection_error::ConnectionError`]s, mapped to log text and response flags once.
pub mod accept;
pub mod admin;
pub mod api;
pub mod app;
pub mod bypass;
pub mod capture;
pub mod captured;
pub mod chunk_io;
pub mod cli;
pub mod cni_requests;
pub mod config;
pub mod config_dump;
pub mod connection_error;
pub mod data_path;
pub mod dial;
pub mod dns;
pub mod enrollment;
pub mod explain;
pub mod fair_share;
pub mod gateway;
pub mod handover;
pub mod hashing;
pub mod hbone;
pub mod hbone_server;
pub mod health_metrics;
pub mod identity;
pub mod jwt;
pub mod kubelet_pods;
pub mod kubernetes;
pub mod l4;
pub mod l7;
pub mod l7_config;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod logging;
pub mod netns;
pub mod plan;
pub mod pods;
pub mod policy;
pub mod proxy_config;
pub mod sockets;
pub mod sockopt;
pub mod telemetry;
pub mod upstream;
pub mod xds;
