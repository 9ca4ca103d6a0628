//! The L7 engine (issue 6; see docs/design/l7-engine.md). What exists so far is its core, not yet on the data
//! path: `matching` (request matchers) and `route_table` (virtual hosts and ordered routes), compiled from Envoy's
//! RouteConfiguration, `balancer` (least request, round robin, random, ring hash, Maglev), `outlier` (ejection),
//! `circuit` (connection-pool limits answering 503 UO), `retry` (retry conditions and backoff) and `fault` (delay
//! and abort injection), `action` (weighted clusters, hash keys, header edits), `cluster_config` (an Envoy Cluster
//! validated into balancer, limits and outlier settings).
pub mod action;
pub mod balancer;
pub mod body;
pub mod circuit;
pub mod cluster;
pub mod cluster_config;
pub mod config;
pub mod dump;
pub mod fault;
pub mod matching;
pub mod outlier;
pub mod request;
pub mod retry;
pub mod route_plan;
pub mod route_table;
pub mod server;
pub mod telemetry;
pub mod trace_headers;
pub mod upstream;

#[cfg(test)]
mod tests;
