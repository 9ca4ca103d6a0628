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
    /// Every connection keel made to a pod of this node, with the source's identity when it has one.
    connections: Mutex<HashMap<(SocketAddr, SocketAddr), Option<Identity>>>,
    registered: Notify,
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
    pub fn register(self: &Arc<Self>, from: SocketAddr, to: SocketAddr, identity: Option<Identity>) -> Registration {
        self.connections.lock().expect("local peers poisoned").insert((from, to), identity);
        self.registered.notify_waiters();
        Registration { peers: self.clone(), key: (from, to) }
    }

    fn get(&self, from: SocketAddr, to: SocketAddr) -> Option<Option<Identity>> {
        self.connections.lock().expect("local peers poisoned").get(&(from, to)).cloned()
    }

    /// The identity keel registered for this connection, waiting up to [`REGISTRATION_GRACE`] for the
    /// registration (a connection keel did not make, e.g. on an excluded port, waits it out and has none).
    pub async fn identity_of(&self, from: SocketAddr, to: SocketAddr) -> Option<Identity> {
        let deadline = tokio::time::Instant::now() + REGISTRATION_GRACE;
        loop {
            let registered = self.registered.notified();
            if let Some(identity) = self.get(from, to) {
                return identity;
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return self.get(from, to).flatten();
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
                peers.register(from, to, Some(identity()))
            })
        };
        assert_eq!(peers.identity_of(from, to).await, Some(identity()));
        drop(late.await.unwrap());
        let started = std::time::Instant::now();
        assert_eq!(peers.identity_of(from, to).await, None);
        assert!(started.elapsed() >= REGISTRATION_GRACE);
    }
}
