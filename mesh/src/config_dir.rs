//! The config directory as a sequence of snapshots: read it when it changed on disk, keep the last good version
//! of each object, translate. Shared by `keel-control serve` and keel's local (no control plane) mode, so both
//! read the same YAML the same way.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::warn;

use crate::{
    config_state::ConfigState,
    objects::Object,
    snapshot::Snapshot,
    source,
    translate::{inline_key_sets, translate, KeySets, Mesh},
    watch::{fingerprint, Fingerprint},
};

pub struct ConfigDir {
    dir: PathBuf,
    mesh: Mesh,
    /// Fills `jwksUri` key sets (keel-control); without it such rules ship no keys and a warning says so.
    key_sets: Option<Arc<dyn KeySets>>,
    state: ConfigState,
    seen: Option<Fingerprint>,
    /// The errors of the last read, kept for status pages.
    last_errors: Vec<String>,
}

impl ConfigDir {
    pub fn new(dir: &Path, mesh: Mesh) -> ConfigDir {
        ConfigDir { dir: dir.to_owned(), mesh, key_sets: None, state: ConfigState::default(), seen: None, last_errors: Vec::new() }
    }

    pub fn with_key_sets(self, key_sets: Arc<dyn KeySets>) -> ConfigDir {
        ConfigDir { key_sets: Some(key_sets), ..self }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory if its files changed since the last call. `Some` carries the new snapshot when the
    /// objects in force changed, and always after the first read (an empty directory is a valid, empty config);
    /// errors and warnings are logged and kept.
    pub fn poll(&mut self) -> Option<Snapshot> {
        let now = fingerprint(&self.dir);
        if self.seen.as_ref() == Some(&now) {
            return None;
        }
        let first_read = self.seen.replace(now).is_none();
        let outcome = self.state.apply(source::load_dir(&self.dir));
        for error in &outcome.errors {
            warn!("config: {error}");
        }
        self.last_errors = outcome.errors;
        if !outcome.changed && !first_read {
            return None;
        }
        self.republish()
    }

    /// Translates the objects in force again (a fetched key set changed).
    pub fn republish(&mut self) -> Option<Snapshot> {
        match translate(&self.mesh, &self.state.objects()) {
            Ok(mut resources) => {
                match &self.key_sets {
                    Some(key_sets) => inline_key_sets(&mut resources, key_sets.as_ref()),
                    None => {
                        let by_uri = resources.request_authentications.values().filter(|ra| ra.rules.iter().any(|r| r.jwks.is_empty()));
                        for ra in by_uri {
                            warn!("config: RequestAuthentication {}/{}: jwksUri is fetched by keel-control; without it (local mode) give jwks inline: this issuer's tokens are refused", ra.namespace, ra.name);
                        }
                    }
                }
                for warning in &resources.warnings {
                    warn!("config: {warning}");
                }
                Some(Snapshot::from_resources(&resources))
            }
            Err(errors) => {
                // Unreachable for loaded objects (each passed `check`), but never publish a half-translated snapshot.
                errors.iter().for_each(|e| warn!("config: {e}"));
                self.last_errors.extend(errors);
                None
            }
        }
    }

    pub fn objects(&self) -> Vec<Object> {
        self.state.objects()
    }

    pub fn last_errors(&self) -> &[String] {
        &self.last_errors
    }
}
