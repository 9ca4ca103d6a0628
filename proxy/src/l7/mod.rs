//! The L7 engine: HTTP traffic to a Service VIP whose port has routes is terminated here, routed and sent on
//! (docs/design/l7-engine.md maps the modules). `config` turns the Envoy resources from xDS into what the data
//! path reads: `route_table` + `matching` + `route_plan` + `action` (virtual hosts, routes and what they do),
//! `cluster_config` + `cluster` (balancer, `circuit` limits, `outlier` ejection), `retry` and `fault`; `limits`
//! bounds every number and header string a control plane sends.
//! `server` terminates HTTP/1.1 and h2c, `request` carries one request through routing, faults, retries and
//! mirrors, `crate::upstream` sends it over pooled connections, `body` and `crate::telemetry::http` report it,
//! `trace_headers` propagates traces, `dump` prints the live config.
pub mod action;
pub mod balancer;
pub mod body;
pub mod circuit;
pub mod cluster;
pub mod cluster_config;
pub mod config;
pub mod dump;
pub mod fault;
pub mod limits;
pub mod matching;
pub mod outlier;
pub mod request;
pub mod retry;
pub mod route_plan;
pub mod route_table;
pub mod server;
pub mod trace_headers;

#[cfg(test)]
mod tests;
