//! The last good xDS state on disk (`<state-dir>/xds-snapshot.pb`), so a keel restarted while its control plane
//! is away serves the config it had instead of nothing: every accepted resource, one `DeltaDiscoveryResponse`
//! per type URL, length-delimited protobuf. It is read back through the same decode-and-validate path as a
//! live response (a file from an older keel, or a corrupted one, cannot smuggle in what a push could not), and
//! its versions become the `initial_resource_versions` of the first request, so the control plane sends only
//! what changed meanwhile (removals included).
use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use keel_proto::discovery::{DeltaDiscoveryResponse, Resource};
use prost::Message as _;

pub const FILE_NAME: &str = "xds-snapshot.pb";

/// The snapshot file in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Writes `held` (type URL → name → resource) atomically, readable by root only.
/// Removes the saved state from `state_dir` (on uninstall), if there is one.
pub fn forget(state_dir: &Path) -> anyhow::Result<()> {
    let path = path_in(state_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

pub fn save(path: &Path, held: &HashMap<String, HashMap<String, Resource>>) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    let mut types: Vec<&String> = held.keys().collect();
    types.sort();
    for type_url in types {
        let mut resources: Vec<Resource> = held[type_url].values().cloned().collect();
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        let response = DeltaDiscoveryResponse { type_url: type_url.clone(), resources, ..Default::default() };
        response.encode_length_delimited(&mut bytes).context("encoding the xDS snapshot")?;
    }
    let tmp = path.with_extension("pb.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The responses saved at `path`; none when there is no file. A file that does not decode is reported, and
/// nothing of it is used.
pub fn load(path: &Path) -> anyhow::Result<Vec<DeltaDiscoveryResponse>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut rest = bytes.as_slice();
    let mut responses = Vec::new();
    while !rest.is_empty() {
        let response =
            DeltaDiscoveryResponse::decode_length_delimited(&mut rest).with_context(|| format!("{}: not a keel xDS snapshot", path.display()))?;
        responses.push(response);
    }
    Ok(responses)
}
