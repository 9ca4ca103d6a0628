//! What authorization knows about a connection: its two ends as the destination side sees them.
use std::net::IpAddr;

use keel_proto::workload::Workload;

use super::{authorize, needs_requests, Decision, Reason};
use crate::{identity::Identity, plan, xds::state::Snapshot};

/// A new inbound connection, borrowed from what the data path already holds (no copies per connection).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionAttributes<'a> {
    pub source_ip: IpAddr,
    /// The peer's identity from its mTLS certificate; `None` for a plaintext (unauthenticated) peer, which no
    /// principal, namespace or service-account matcher matches.
    pub source_identity: Option<&'a Identity>,
    pub destination_ip: IpAddr,
    /// The target port on the workload: the port policies name.
    pub destination_port: u16,
    pub destination_workload: &'a Workload,
}

/// An admitted connection as keel remembers it, to decide it again when policies change. Owned, because the
/// snapshot it was admitted under is replaced; the destination is kept by uid and looked up in each new snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenConnection {
    pub source_ip: IpAddr,
    pub source_identity: Option<Identity>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub destination_uid: String,
}

impl OpenConnection {
    /// Copies what re-evaluation needs; done once per connection, only for connections the caller tracks.
    pub fn new(connection: &ConnectionAttributes<'_>) -> OpenConnection {
        OpenConnection {
            source_ip: connection.source_ip,
            source_identity: connection.source_identity.cloned(),
            destination_ip: connection.destination_ip,
            destination_port: connection.destination_port,
            destination_uid: connection.destination_workload.uid.clone(),
        }
    }

    /// This connection's attributes against `destination` (normally the workload its uid names in a snapshot).
    pub fn attributes<'a>(&'a self, destination: &'a Workload) -> ConnectionAttributes<'a> {
        ConnectionAttributes {
            source_ip: self.source_ip,
            source_identity: self.source_identity.as_ref(),
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            destination_workload: destination,
        }
    }

    /// Decides this connection again under `snapshot`, exactly as [`authorize`] decided it when it opened. A
    /// destination workload that no longer exists denies: nothing vouches for the connection any more.
    pub fn reauthorize<'s>(&self, snapshot: &'s Snapshot) -> Decision<'s> {
        match snapshot.workloads.get(&self.destination_uid) {
            Some(destination) => authorize(snapshot, &self.attributes(destination)),
            None => Decision { reason: Reason::DestinationGone, dry_run: Vec::new() },
        }
    }

    /// Why this connection, admitted as a byte stream, must close under `snapshot`, if it must: a policy now
    /// denies it, or a policy with HTTP rules now applies to its HTTP port, whose requests keel must then decide
    /// one by one, which it cannot do on a stream it does not parse (the client's next connection is served so).
    pub fn revocation(&self, snapshot: &Snapshot) -> Option<String> {
        let decision = self.reauthorize(snapshot);
        if !decision.allowed() {
            return Some(format!("closed by a policy change: {}", decision.reason));
        }
        let destination = snapshot.workloads.get(&self.destination_uid)?;
        let per_request = needs_requests(snapshot, &self.attributes(destination))
            && plan::inbound_http_service(snapshot, destination, self.destination_port).is_some();
        per_request.then(|| {
            format!(
                "closed by a policy change: policies with HTTP rules or a RequestAuthentication now apply to port {}, whose requests are decided one by one",
                self.destination_port
            )
        })
    }
}
