//! Admitted inbound connections, kept so a policy change can close the ones it now denies (ztunnel only applies
//! policy to new connections; users asked for open ones too). On by default, `--keep-denied-connections` turns
//! it off. Re-evaluation runs once per published snapshot, off the data path.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::watch;
use tracing::info;

use super::OpenConnection;
use crate::xds::state::Snapshot;

/// What revokes a tracked connection: the reason, once a new policy denies it.
type Revoke = watch::Sender<Option<String>>;

pub struct OpenConnections {
    enabled: bool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, (OpenConnection, Revoke)>>,
}

/// A tracked connection: resolves [`Tracked::revoked`] with the reason when a new policy denies it.
pub struct Tracked {
    id: u64,
    owner: Arc<OpenConnections>,
    revoked: watch::Receiver<Option<String>>,
}

impl Tracked {
    /// Waits until the connection is denied by a later snapshot (forever if it never is).
    pub async fn revoked(&mut self) -> String {
        let reason = match self.revoked.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.owner.open.lock().expect("open connections poisoned").remove(&self.id);
    }
}

impl OpenConnections {
    pub fn new(enabled: bool) -> Arc<OpenConnections> {
        Arc::new(OpenConnections { enabled, next_id: AtomicU64::new(0), open: Mutex::new(HashMap::new()) })
    }

    pub fn track(self: &Arc<Self>, connection: OpenConnection) -> Tracked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = watch::channel(None);
        if self.enabled {
            self.open.lock().expect("open connections poisoned").insert(id, (connection, revoke));
        }
        Tracked { id, owner: self.clone(), revoked }
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("open connections poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides every open connection again under `snapshot`; those now denied are told to close. Returns how
    /// many were.
    pub fn reauthorize(&self, snapshot: &Snapshot) -> usize {
        let open = self.open.lock().expect("open connections poisoned");
        let mut closed = 0;
        for (connection, revoke) in open.values() {
            if revoke.borrow().is_some() {
                continue;
            }
            if let Some(reason) = connection.revocation(snapshot) {
                info!(source = %connection.source_ip, destination = %connection.destination_ip,
                      port = connection.destination_port, %reason, "closing an open connection");
                revoke.send_replace(Some(reason));
                closed += 1;
            }
        }
        closed
    }
}
