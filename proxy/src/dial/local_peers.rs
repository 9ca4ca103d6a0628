//! Same-node connections keel made itself: when a pod talks to another pod of the same node, keel carries it
//! over plain TCP inside the node (no TLS: it never leaves the host, and keel is both ends) and records here who
//! the source is. The inbound side looks the connection up by its addresses and so authorizes, logs and counts
//! it with the source's identity — the same identity mTLS would have proven, from the only party that could.
//!
//! keel registers a connection right after connect() returns, which races with the inbound side's accept(): a
//! lookup for a source that is a local pod waits briefly for the registration instead of failing at once.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use crate::identity::Identity;

/// How long the inbound side waits for the outbound side's registration (normally microseconds).
pub const REGISTRATION_GRACE: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct LocalPeers {
    /// Every connection keel made to a pod of this node.
    connections: Mutex<HashMap<(SocketAddr, SocketAddr), LocalPeer>>,
    registered: Notify,
}

/// Who made a same-node connection, as the outbound side registered it.
#[derive(Clone, Debug, Default)]
pub struct LocalPeer {
    /// The source's identity, when it has one.
    pub identity: Option<Identity>,
    /// The source pod's netns cookie, when the outbound side carried the connection as plain L4 (no L7): later
    /// connections of the same pods and port may bypass keel once the inbound side admits this one.
    pub bypass_from: Option<u64>,
}

/// Removes the registration when the connection ends.
pub struct Registration {
    peers: Arc<LocalPeers>,
    key: (SocketAddr, SocketAddr),
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.peers.connections.lock().expect("local peers poisoned").remove(&self.key);
    }
}

impl LocalPeers {
    pub fn register(self: &Arc<Self>, from: SocketAddr, to: SocketAddr, peer: LocalPeer) -> Registration {
        self.connections.lock().expect("local peers poisoned").insert((from, to), peer);
        self.registered.notify_waiters();
        Registration { peers: self.clone(), key: (from, to) }
    }

    fn get(&self, from: SocketAddr, to: SocketAddr) -> Option<LocalPeer> {
        self.connections.lock().expect("local peers poisoned").get(&(from, to)).cloned()
    }

    /// What keel registered for this connection, waiting up to [`REGISTRATION_GRACE`] for the registration (a
    /// connection keel did not make, e.g. on an excluded port, waits it out and has no identity).
    pub async fn peer_of(&self, from: SocketAddr, to: SocketAddr) -> LocalPeer {
        let deadline = tokio::time::Instant::now() + REGISTRATION_GRACE;
        loop {
            let registered = self.registered.notified();
            if let Some(peer) = self.get(from, to) {
                return peer;
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return self.get(from, to).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { trust_domain: "cluster.local".into(), namespace: "demo".into(), service_account: "sleep".into() }
    }

    #[tokio::test]
    async fn a_late_registration_is_found_and_an_ended_one_is_not() {
        let peers = Arc::new(LocalPeers::default());
        let (from, to): (SocketAddr, SocketAddr) = ("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let late = {
            let peers = peers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                peers.register(from, to, LocalPeer { identity: Some(identity()), bypass_from: Some(7) })
            })
        };
        let peer = peers.peer_of(from, to).await;
        assert_eq!((peer.identity, peer.bypass_from), (Some(identity()), Some(7)));
        drop(late.await.unwrap());
        let started = std::time::Instant::now();
        let peer = peers.peer_of(from, to).await;
        assert_eq!((peer.identity, peer.bypass_from), (None, None));
        assert!(started.elapsed() >= REGISTRATION_GRACE);
    }
}
