//! L4 execution of planned connections: byte relays to an upstream reached by [`crate::dial`] (outbound), and
//! inbound connections authorized on the destination side and delivered to the application (plaintext from
//! [`crate::captured`], HBONE streams from [`crate::hbone_server`]). Imports `dial`, `plan`, `policy`, `data_path`,
//! `accept`, `telemetry`, never `l7`.
pub mod inbound;
pub mod moving;
pub mod outbound;
pub mod relay;
pub mod responder;
