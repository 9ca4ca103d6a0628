//! The L7 engine: HTTP traffic to a Service VIP whose port has routes (a plan's `Http`, see [`crate::plan`]) is
//! terminated here, routed by the live L7 configuration ([`crate::l7_config`]) and sent on
//! (docs/design/l7-engine.md maps the modules). `server` terminates HTTP/1.1 and h2c, `request` carries one
//! request through routing, faults, retries and mirrors, [`crate::upstream`] sends it over pooled connections,
//! `body` and [`crate::telemetry::http`] report it, `trace_headers` propagates traces; `inbound` serves HTTP on
//! the destination side where policies decide requests. Imports `data_path`,
//! `l7_config`, `plan`, `upstream`, `telemetry`, `xds`; never `l4`.
pub mod body;
pub mod inbound;
pub mod request;
pub mod server;
pub mod trace_headers;
