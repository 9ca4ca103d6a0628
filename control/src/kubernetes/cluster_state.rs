//! What the API server has told keel-control, object by object, and the config it makes: every Pod (with its
//! Namespace's and Node's labels as context), every Service and Istio object keel reads. An object whose new
//! version keel cannot accept keeps its last good version (as in a config directory); a relist after a watch
//! expired (410 Gone) replaces a kind's objects wholesale, so what was deleted meanwhile goes.
use std::collections::{BTreeMap, BTreeSet};

use keel_mesh::{
    objects::Object,
    source::{object_from_json, InvalidObject},
};
use serde_json::Value;

/// The kinds keel-control watches, by Kubernetes kind name.
pub const POD: &str = "Pod";
pub const NAMESPACE: &str = "Namespace";
pub const NODE: &str = "Node";

type Labels = BTreeMap<String, String>;

#[derive(Default)]
pub struct ClusterState {
    /// Pods, Services and Istio objects by `Kind namespace/name`.
    objects: BTreeMap<String, Object>,
    /// Only their labels matter: they decide ambient membership (namespaces) and locality (nodes).
    namespaces: BTreeMap<String, Labels>,
    nodes: BTreeMap<String, Labels>,
    /// The objects whose latest version was refused, with why: shown, and cleared when a good version arrives.
    refused: BTreeMap<String, String>,
}

/// What one change did: whether the config in force changed, and the refusal when the new version was refused.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub changed: bool,
    pub refused: Option<InvalidObject>,
}

impl ClusterState {
    /// An object created or changed.
    pub fn apply(&mut self, kind: &str, value: &Value) -> Applied {
        match kind {
            NAMESPACE => Applied { changed: upsert(&mut self.namespaces, name(value), labels(value)), refused: None },
            NODE => Applied { changed: upsert(&mut self.nodes, name(value), labels(value)), refused: None },
            _ => match object_from_json(value) {
                Ok(object) => {
                    let key = object.reference().to_string();
                    self.refused.remove(&key);
                    Applied { changed: upsert(&mut self.objects, key, object), refused: None }
                }
                Err(refused) => {
                    // The last good version (if any) stays in force.
                    self.refused.insert(reference(kind, value), refused.message.clone());
                    Applied { changed: false, refused: Some(refused) }
                }
            },
        }
    }

    /// An object deleted: whatever version of it was in force goes.
    pub fn delete(&mut self, kind: &str, value: &Value) -> bool {
        match kind {
            NAMESPACE => self.namespaces.remove(&name(value)).is_some(),
            NODE => self.nodes.remove(&name(value)).is_some(),
            _ => {
                let key = reference(kind, value);
                self.refused.remove(&key);
                self.objects.remove(&key).is_some()
            }
        }
    }

    /// The complete list of one kind (a watch's initial list or a relist): objects of that kind not in it are gone.
    /// Returns whether the config changed, and each refused object with why.
    pub fn relist<'v>(&mut self, kind: &str, values: &'v [Value]) -> (bool, Vec<(&'v Value, InvalidObject)>) {
        let listed: BTreeSet<String> = values.iter().map(|v| if matches!(kind, NAMESPACE | NODE) { name(v) } else { reference(kind, v) }).collect();
        let mut changed = match kind {
            NAMESPACE => retain(&mut self.namespaces, &listed),
            NODE => retain(&mut self.nodes, &listed),
            _ => {
                let prefix = format!("{kind} ");
                self.refused.retain(|key, _| !key.starts_with(&prefix) || listed.contains(key));
                let before = self.objects.len();
                self.objects.retain(|key, _| !key.starts_with(&prefix) || listed.contains(key));
                before != self.objects.len()
            }
        };
        let mut refusals = Vec::new();
        for value in values {
            let applied = self.apply(kind, value);
            changed |= applied.changed;
            refusals.extend(applied.refused.map(|refused| (value, refused)));
        }
        (changed, refusals)
    }

    /// The objects to translate: each Pod with its namespace's and node's labels.
    pub fn objects(&self) -> Vec<Object> {
        self.objects
            .values()
            .map(|object| match object {
                Object::Pod(pod) => {
                    let mut pod = pod.clone();
                    pod.context.namespace_labels = Some(self.namespaces.get(&pod.metadata.namespace).cloned().unwrap_or_default());
                    pod.context.node_labels = self.nodes.get(&pod.spec.node_name).cloned().unwrap_or_default();
                    Object::Pod(pod)
                }
                other => other.clone(),
            })
            .collect()
    }

    /// `Kind namespace/name` → why its latest version was refused.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        &self.refused
    }

    /// How many objects of each kind are held, for the log line of a push.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::from([(NAMESPACE, self.namespaces.len()), (NODE, self.nodes.len())]);
        for object in self.objects.values() {
            *counts.entry(object.kind()).or_default() += 1;
        }
        counts
    }
}

fn upsert<V: PartialEq>(map: &mut BTreeMap<String, V>, key: String, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

fn retain<V>(map: &mut BTreeMap<String, V>, listed: &BTreeSet<String>) -> bool {
    let before = map.len();
    map.retain(|key, _| listed.contains(key));
    before != map.len()
}

fn name(value: &Value) -> String {
    value["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

fn labels(value: &Value) -> Labels {
    let labels = value["metadata"]["labels"].as_object().into_iter().flatten();
    labels.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
}

/// `Kind namespace/name`, as [`Object::reference`] writes it.
fn reference(kind: &str, value: &Value) -> String {
    let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
    format!("{kind} {namespace}/{}", name(value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, namespace: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "resourceVersion": "7",
               "managedFields": [{"manager": "kubelet"}]},
               "spec": {"nodeName": node, "serviceAccountName": "sleep", "containers": [{"name": "app", "image": "sleep"}]},
               "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}], "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn virtual_service(weight: i64, other: i64) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "demo"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": weight},
                                                                 {"destination": {"host": "reviews", "subset": "v2"}, "weight": other}]}]},
               "status": {"conditions": [{"type": "Reconciled", "status": "True"}]}})
    }

    #[test]
    fn a_pod_from_the_api_carries_its_namespace_and_node_labels() {
        let mut state = ClusterState::default();
        assert!(state.apply(POD, &pod("sleep", "demo", "node-a")).changed);
        assert!(state.apply(NAMESPACE, &json!({"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}})).changed);
        assert!(state.apply(NODE, &json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})).changed);
        assert!(!state.apply(NODE, &json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})).changed);
        let objects = state.objects();
        let Object::Pod(pod) = &objects[0] else { panic!("{objects:?}") };
        assert_eq!(pod.metadata.uid.as_deref(), Some("uid-sleep"));
        assert_eq!(pod.context.namespace_labels.as_ref().unwrap()["istio.io/dataplane-mode"], "ambient");
        assert_eq!(pod.locality().1, "z1");
        assert!(pod.is_serving() && pod.is_workload());
    }

    #[test]
    fn a_refused_version_keeps_the_last_good_one_until_a_good_one_or_a_delete() {
        let mut state = ClusterState::default();
        assert!(state.apply("VirtualService", &virtual_service(80, 20)).changed);
        let refused = state.apply("VirtualService", &virtual_service(90, 20));
        assert!(!refused.changed);
        let refusal = refused.refused.unwrap();
        assert_eq!(refusal.object.as_deref(), Some("VirtualService demo/reviews"));
        assert!(refusal.message.contains("field spec.http[0].route"), "{refusal}");
        assert!(state.refused().contains_key("VirtualService demo/reviews"));
        let Object::VirtualService(vs) = &state.objects()[0] else { panic!() };
        assert_eq!(vs.spec.http[0].route[0].weight, 80, "the 80/20 split stays in force");

        assert!(state.apply("VirtualService", &virtual_service(50, 50)).changed);
        assert!(state.refused().is_empty());
        assert!(state.delete("VirtualService", &virtual_service(50, 50)));
        assert!(state.objects().is_empty());
    }

    #[test]
    fn a_relist_removes_what_was_deleted_while_the_watch_was_down_and_only_of_its_kind() {
        let mut state = ClusterState::default();
        state.apply(POD, &pod("a", "demo", "n"));
        state.apply(POD, &pod("b", "demo", "n"));
        state.apply("VirtualService", &virtual_service(80, 20));
        state.apply(NODE, &json!({"metadata": {"name": "n"}}));
        let listed = [pod("b", "demo", "n"), pod("c", "demo", "n")];
        let (changed, refused) = state.relist(POD, &listed);
        assert!(changed && refused.is_empty());
        let names: Vec<String> = state.objects().iter().map(|o| o.reference().to_string()).collect();
        assert_eq!(names, ["Pod demo/b", "Pod demo/c", "VirtualService demo/reviews"]);
        assert!(!state.relist(POD, &[pod("b", "demo", "n"), pod("c", "demo", "n")]).0, "the same list changes nothing");
        assert!(state.relist(NODE, &[]).0);
        assert_eq!(state.counts()[NODE], 0);
    }
}
