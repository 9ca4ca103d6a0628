//! The L7 engine (issue 6; see docs/design/l7-engine.md). What exists so far is its routing core, compiled from
//! Envoy's RouteConfiguration: `matching` (request matchers) and `route_table` (virtual hosts and ordered routes).
//! It is not on the data path yet.
pub mod matching;
pub mod route_table;

#[cfg(test)]
mod tests;
