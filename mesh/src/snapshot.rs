//! Translated resources as the xDS server serves them: per type URL, per resource name, the encoded resource and
//! its version. A version is a hash of the encoded bytes, so an unchanged object keeps its version across
//! recomputations and is never pushed again; a change of the config directory publishes a new snapshot at once.
use std::{
    collections::{hash_map::DefaultHasher, BTreeMap},
    hash::{Hash, Hasher},
};

use keel_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, HTTP_AUTHORIZATION_TYPE_URL, LISTENER_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, SECRET_TYPE_URL,
};
use prost::Message;
use prost_types::Any;

use crate::translate::Resources;

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub version: String,
    pub resource: Any,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// type URL → resource name → entry: what node proxies get.
    pub types: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Gateway pod (`<namespace>/<pod>`) → its own listeners, route configurations and secrets, which replace the
    /// mesh's for that gateway's stream (the other types are the same for every client). Secrets exist only here:
    /// a node proxy never receives one.
    pub gateways: BTreeMap<String, BTreeMap<String, BTreeMap<String, Entry>>>,
}

/// Whose view of the snapshot a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View<'a> {
    NodeProxy,
    /// `keel gateway` in the pod `<namespace>/<pod>`.
    Gateway(&'a str),
}

fn entry(type_url: &str, message: &impl Message) -> Entry {
    let value = message.encode_to_vec();
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    Entry { version: format!("{:016x}", hasher.finish()), resource: Any { type_url: type_url.to_owned(), value } }
}

fn entries<M: Message>(type_url: &str, resources: &BTreeMap<String, M>) -> BTreeMap<String, Entry> {
    resources.iter().map(|(name, r)| (name.clone(), entry(type_url, r))).collect()
}

impl Snapshot {
    pub fn from_resources(resources: &Resources) -> Snapshot {
        let mut types = BTreeMap::new();
        let addresses = resources.addresses.iter().map(|(name, a)| (name.clone(), entry(ADDRESS_TYPE_URL, a))).collect();
        let authorizations = resources.authorizations.iter().map(|(name, a)| (name.clone(), entry(AUTHORIZATION_TYPE_URL, a))).collect();
        types.insert(ADDRESS_TYPE_URL.to_owned(), addresses);
        types.insert(AUTHORIZATION_TYPE_URL.to_owned(), authorizations);
        types.insert(HTTP_AUTHORIZATION_TYPE_URL.to_owned(), entries(HTTP_AUTHORIZATION_TYPE_URL, &resources.http_authorizations));
        types.insert(REQUEST_AUTHENTICATION_TYPE_URL.to_owned(), entries(REQUEST_AUTHENTICATION_TYPE_URL, &resources.request_authentications));
        types.insert(LISTENER_TYPE_URL.to_owned(), entries(LISTENER_TYPE_URL, &resources.listeners));
        types.insert(ROUTE_CONFIGURATION_TYPE_URL.to_owned(), entries(ROUTE_CONFIGURATION_TYPE_URL, &resources.route_configurations));
        types.insert(CLUSTER_TYPE_URL.to_owned(), entries(CLUSTER_TYPE_URL, &resources.clusters));
        types.insert(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.to_owned(), entries(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &resources.cluster_load_assignments));
        let gateways = resources
            .gateway_views
            .iter()
            .map(|(pod, view)| {
                let types = BTreeMap::from([
                    (LISTENER_TYPE_URL.to_owned(), entries(LISTENER_TYPE_URL, &view.listeners)),
                    (ROUTE_CONFIGURATION_TYPE_URL.to_owned(), entries(ROUTE_CONFIGURATION_TYPE_URL, &view.route_configurations)),
                    (SECRET_TYPE_URL.to_owned(), entries(SECRET_TYPE_URL, &view.secrets)),
                ]);
                (pod.clone(), types)
            })
            .collect();
        Snapshot { types, gateways }
    }

    /// What node proxies get of `type_url`.
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Entry>> {
        self.types.get(type_url)
    }

    /// What `view` gets of `type_url`: a gateway has its own listeners, routes and secrets (none if no Gateway
    /// selects its pod: it then serves nothing), and the mesh's resources of every other type; a node proxy gets
    /// no secrets.
    pub fn of_type_for(&self, view: View<'_>, type_url: &str) -> Option<&BTreeMap<String, Entry>> {
        static EMPTY: BTreeMap<String, Entry> = BTreeMap::new();
        let own = [LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, SECRET_TYPE_URL];
        match view {
            View::Gateway(pod) if own.contains(&type_url) => Some(self.gateways.get(pod).and_then(|types| types.get(type_url)).unwrap_or(&EMPTY)),
            View::NodeProxy if type_url == SECRET_TYPE_URL => Some(&EMPTY),
            _ => self.types.get(type_url),
        }
    }
}

/// What a client holding `known` (name → version) must receive to match `current`.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub updated: Vec<(String, Entry)>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(known: &BTreeMap<String, String>, current: &BTreeMap<String, Entry>) -> Diff {
    let updated = current.iter().filter(|(name, e)| known.get(*name) != Some(&e.version)).map(|(name, e)| (name.clone(), e.clone())).collect();
    let removed = known.keys().filter(|name| !current.contains_key(*name)).cloned().collect();
    Diff { updated, removed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: &[(&str, &[u8])]) -> BTreeMap<String, Entry> {
        items.iter().map(|(n, v)| (n.to_string(), entry("t", &prost_types::Any { type_url: String::new(), value: v.to_vec() }))).collect()
    }

    #[test]
    fn a_diff_carries_only_changes_and_removals() {
        let before = entries(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let known: BTreeMap<String, String> = before.iter().map(|(n, e)| (n.clone(), e.version.clone())).collect();
        let after = entries(&[("a", b"1"), ("b", b"changed"), ("d", b"4")]);
        let d = diff(&known, &after);
        let updated: Vec<&str> = d.updated.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(updated, ["b", "d"]);
        assert_eq!(d.removed, ["c"]);
        assert!(diff(&known, &before).is_empty(), "same content, same versions: nothing to send");
    }
}
