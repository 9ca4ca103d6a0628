//! keel's node daemon: captures enrolled pods' TCP with eBPF (or iptables) into listeners keel opens inside each
//! pod's network namespace, and proxies it.
pub mod admin;
pub mod api;
pub mod app;
pub mod capture;
pub mod cli;
pub mod config;
pub mod config_dump;
pub mod enrollment;
pub mod hbone;
pub mod identity;
pub mod l4;
pub mod l7;
pub mod limits;
pub mod logging;
pub mod netns;
pub mod pods;
pub mod policy;
pub mod proxy_config;
pub mod sockopt;
pub mod telemetry;
pub mod xds;
