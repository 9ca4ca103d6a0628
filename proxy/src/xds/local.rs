//! Local mode, with no control plane: keel reads the same YAML directory `keel-control` would, translates it
//! in-process with the control plane's own code, and feeds the result through the same decode-and-validate path
//! as an xDS response. The directory is polled four times a second, so an edit applies within a second.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{bail, Context as _};
use keel_mesh::{
    config_dir::ConfigDir,
    snapshot::{diff, Snapshot as XdsSnapshot},
    translate::Mesh,
    watch::POLL_INTERVAL,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    client::XdsStatus,
    setup::Xds,
    state::{decode, Rejected, WorkloadStore},
};

#[derive(Clone, Debug)]
pub struct LocalSettings {
    pub config_dir: PathBuf,
    pub cluster_id: String,
    /// The CA that signs workload certificates in local mode (istiod's plugged-in layout; generated if empty).
    pub ca_dir: PathBuf,
    pub trust_domain: String,
}

/// Starts following the directory; the first read happens before this returns, so keel is ready at once.
pub fn start(settings: &LocalSettings) -> anyhow::Result<Xds> {
    let dir = &settings.config_dir;
    if !dir.is_dir() {
        bail!("--config-dir {}: not a directory", dir.display());
    }
    std::fs::read_dir(dir).with_context(|| format!("--config-dir {}: not readable", dir.display()))?;
    let mesh = Mesh { cluster_id: settings.cluster_id.clone(), ..Mesh::default() };
    let mut follower = Follower { config: ConfigDir::new(dir, mesh), store: Arc::new(WorkloadStore::default()), held: BTreeMap::new() };
    let (status, status_rx) = watch::channel(XdsStatus { source: format!("local {}", dir.display()), ..Default::default() });
    follower.poll(&status);
    let (_ready, ready) = watch::channel(true);
    let store = follower.store.clone();
    std::thread::Builder::new().name("keel-config-dir".into()).spawn(move || loop {
        std::thread::sleep(POLL_INTERVAL);
        follower.poll(&status);
    })?;
    info!(dir = %dir.display(), "following the local config directory");
    Ok(Xds { store, ready, status: status_rx })
}

struct Follower {
    config: ConfigDir,
    store: Arc<WorkloadStore>,
    /// type URL → resource name → version applied, so an unchanged resource is not applied again.
    held: BTreeMap<String, BTreeMap<String, String>>,
}

impl Follower {
    fn poll(&mut self, status: &watch::Sender<XdsStatus>) {
        let Some(snapshot) = self.config.poll() else { return };
        let rejected = self.apply(&snapshot);
        for r in &rejected {
            warn!(%r, "local config: resource refused");
        }
        status.send_modify(|s| {
            s.connected = true;
            for (type_url, names) in &self.held {
                s.versions.insert(type_url.clone(), names.len());
            }
            let mut errors: Vec<String> = self.config.last_errors().to_vec();
            errors.extend(rejected.iter().map(ToString::to_string));
            s.last_error = (!errors.is_empty()).then(|| errors.join("; "));
        });
    }

    /// Applies what changed since the last snapshot, as one store update.
    fn apply(&mut self, snapshot: &XdsSnapshot) -> Vec<Rejected> {
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        let mut rejected = Vec::new();
        for (type_url, current) in &snapshot.types {
            let held = self.held.entry(type_url.clone()).or_default();
            let changes = diff(held, current);
            for (name, entry) in changes.updated {
                match decode(type_url, &name, &entry.resource.value) {
                    Ok(resource) => {
                        held.insert(name.clone(), entry.version);
                        upserts.push((name, resource));
                    }
                    Err(e) => rejected.push(e),
                }
            }
            for name in changes.removed {
                held.remove(&name);
                removed.push((type_url.clone(), name));
            }
        }
        self.store.apply(upserts, &removed);
        rejected
    }
}
