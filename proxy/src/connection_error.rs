//! Why a connection on the data path failed, as a type: the L4 relay, the L7 engine's downstream side and the
//! HBONE server return a [`ConnectionError`], and it is turned into text and Istio response flags once, at the
//! edge, when the connection's record is closed ([`ConnectionError::record`]).
//!
//! Istio's TCP metrics carry Envoy's response flags. The mapping (Envoy's documented meaning of each flag):
//!
//! | failure                                              | flag   | Envoy's meaning                           |
//! |------------------------------------------------------|--------|-------------------------------------------|
//! | original destination unknown                         | `NR`   | no route configured                       |
//! | addressed to one of keel's own ports                 | `NR`   | no route configured                       |
//! | service VIP without the port                         | `NR`   | no route configured                       |
//! | service VIP without a healthy endpoint               | `UH`   | no healthy upstream hosts                 |
//! | no Workload for the source or destination pod        | `UAEX` | unauthorized (keel cannot authorize it)   |
//! | authorization policy denies it                       | `UAEX` | unauthorized                              |
//! | closed by a policy change                            | `UAEX` | unauthorized                              |
//! | connecting (TCP, HBONE tunnel) failed or timed out   | `UF`   | upstream connection failure               |
//! | the relay's idle or half-closed timeout              | `SI`   | stream idle timeout                       |
//! | the relay was reset or failed after connecting       | `UC`   | upstream connection termination           |
//! | a malformed HBONE CONNECT or HTTP from the client    | `DPE`  | downstream protocol error                 |
//! | the client went away (responder, answering CONNECT)  | `DC`   | downstream connection termination         |
use std::{io, net::SocketAddrV4};

use crate::{
    dial::DialError,
    plan::{destination::RouteError, Refused},
    telemetry::{ConnectionRecord, Refusal},
};

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Capture could not tell where the connection was going.
    #[error("{0}")]
    OriginalDestination(String),
    /// The plan refused it.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    NoRoute(#[from] RouteError),
    /// Inbound to a pod keel has no Workload for (the text names it).
    #[error("{0}")]
    UnknownDestinationWorkload(String),
    /// Authorization denied it (the decision's reason).
    #[error("{0}")]
    PolicyDenied(String),
    /// The upstream (or the application, inbound) could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// Inbound: connecting to the application in the pod failed.
    #[error("connecting to {0}: {1}")]
    ConnectApp(SocketAddrV4, io::Error),
    /// The relay ended with an error after connecting (reset, broken pipe, or an idle timeout).
    #[error("{0}")]
    Relay(io::Error),
    /// A policy change closed the connection (the reason names the policy).
    #[error("{0}")]
    Revoked(String),
    /// The client sent something keel could not take (a malformed CONNECT, an HTTP protocol error).
    #[error("{0}")]
    Downstream(String),
    /// The client went away while keel answered it.
    #[error("{0}")]
    DownstreamIo(String),
}

impl ConnectionError {
    /// Envoy's response flag for this failure (see the module's table).
    pub fn response_flags(&self) -> &'static str {
        match self {
            ConnectionError::OriginalDestination(_) => "NR",
            ConnectionError::Refused(Refused::KeelPort(_)) => "NR",
            ConnectionError::Refused(Refused::UnknownSourceWorkload(_)) => "UAEX",
            ConnectionError::Refused(Refused::NotInRegistry(_)) => "NR",
            ConnectionError::NoRoute(RouteError::NoServicePort { .. }) => "NR",
            ConnectionError::NoRoute(RouteError::NoHealthyEndpoint { .. }) => "UH",
            ConnectionError::UnknownDestinationWorkload(_) | ConnectionError::PolicyDenied(_) | ConnectionError::Revoked(_) => "UAEX",
            ConnectionError::Dial(_) | ConnectionError::ConnectApp(..) => "UF",
            ConnectionError::Relay(e) if e.kind() == io::ErrorKind::TimedOut => "SI",
            ConnectionError::Relay(_) => "UC",
            ConnectionError::Downstream(_) => "DPE",
            ConnectionError::DownstreamIo(_) => "DC",
        }
    }

    /// Puts the failure in the connection's record: its text (`error`, as logs and `keel connections` show it)
    /// and its response flag (the Istio TCP metrics' `response_flags`).
    pub fn record(&self, record: &mut ConnectionRecord) {
        record.error = Some(self.to_string());
        record.response_flags = Some(self.response_flags());
    }
}

/// The refusal counter a plan's refusal counts under.
pub fn refusal(refused: &Refused) -> Refusal {
    match refused {
        Refused::KeelPort(_) => Refusal::KeelPort,
        Refused::UnknownSourceWorkload(_) => Refusal::UnknownSourceWorkload,
        Refused::NotInRegistry(_) => Refusal::RegistryOnly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_flag_and_keeps_its_text() {
        let destination: SocketAddrV4 = "10.0.0.1:15001".parse().unwrap();
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "idle for 3600 s");
        let cases: Vec<(ConnectionError, &str, &str)> = vec![
            (Refused::KeelPort(destination).into(), "NR", "refusing 10.0.0.1:15001: a keel port, not an application's"),
            (
                Refused::UnknownSourceWorkload(*destination.ip()).into(),
                "UAEX",
                "refusing: keel has no Workload for source pod 10.0.0.1 (no identity to present)",
            ),
            (
                RouteError::NoHealthyEndpoint { service: "demo/echo".into(), port: 80 }.into(),
                "UH",
                "no healthy endpoint for service demo/echo port 80",
            ),
            (ConnectionError::PolicyDenied("denied by DENY policy shop/deny".into()), "UAEX", "denied by DENY policy shop/deny"),
            (
                DialError::Connect(destination, io::Error::from(io::ErrorKind::ConnectionRefused)).into(),
                "UF",
                "connecting to 10.0.0.1:15001: connection refused",
            ),
            (ConnectionError::Relay(timed_out), "SI", "idle for 3600 s"),
            (ConnectionError::Relay(io::Error::from(io::ErrorKind::ConnectionReset)), "UC", "connection reset"),
            (ConnectionError::Revoked("closed by a policy change: x".into()), "UAEX", "closed by a policy change: x"),
        ];
        for (error, flag, text) in cases {
            assert_eq!((error.response_flags(), error.to_string().as_str()), (flag, text));
        }
    }
}
