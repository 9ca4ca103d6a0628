//! The objects, the one resourceVersion counter, the retained window of watch events, and persistence.
//!
//! Every write takes the next resourceVersion, stamps it on the object and appends one event to the window and to
//! the broadcast that open watches follow, all under the one lock, so events are totally ordered by
//! resourceVersion. A watch may start at any resourceVersion from `floor` on; older ones are 410 Gone. `compact`
//! raises the floor past every resourceVersion handed out so far and ends every open watch, so clients come back
//! with a resourceVersion that is now too old and must relist.

use super::registry::{Registry, ResourceType};
use super::status::ApiError;
use super::tokens::TokenSpec;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

pub const CRD_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";
const NAMESPACE_KEY: &str = "/namespaces";

pub struct Event {
    pub rv: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The storage key of the object's resource.
    pub key: String,
    pub object: Arc<Value>,
    /// The object before a MODIFIED event (a selector it stopped matching turns the event into DELETED).
    pub previous: Option<Arc<Value>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    resource_version: String,
    objects: Vec<Arc<Value>>,
}

/// The retained events a watch starts with, and the receiver of those after them.
pub type Following = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

type Objects = BTreeMap<(String, String), Arc<Value>>;

pub struct Store {
    pub registry: Registry,
    objects: HashMap<String, Objects>,
    rv: u64,
    events: VecDeque<Arc<Event>>,
    window: usize,
    floor: u64,
    events_tx: broadcast::Sender<Arc<Event>>,
    /// Bumped to end every open watch (compaction).
    pub close_watches: watch::Sender<u64>,
    /// Changed since the state file was last written.
    pub dirty: bool,
    pub tokens: HashMap<String, TokenSpec>,
}

pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn random_uid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn meta<'a>(o: &'a Value, field: &str) -> &'a str {
    o.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

/// Everything but metadata and status: a change here is a new generation.
fn desired_state(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.retain(|k, _| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"));
    }
    o
}

impl Store {
    pub fn new(window: usize) -> Self {
        let (events_tx, _) = broadcast::channel(4096);
        let mut store = Self {
            registry: Registry::builtin(),
            objects: HashMap::new(),
            rv: 0,
            events: VecDeque::new(),
            window: window.max(1),
            floor: 0,
            events_tx,
            close_watches: watch::channel(0).0,
            dirty: false,
            tokens: HashMap::new(),
        };
        let ns = store.registry.by_key(NAMESPACE_KEY).expect("namespaces are builtin");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            store.create(&ns, object).expect("a fresh store has no namespaces");
        }
        store
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(&rt.key())?.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Objects of `rt` (in `namespace`, or all), ordered by namespace then name.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(all) = self.objects.get(&rt.key()) else { return Vec::new() };
        all.iter().filter(|((ns, _), _)| namespace.is_none_or(|want| ns == want)).map(|(_, o)| o.clone()).collect()
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.objects.get(NAMESPACE_KEY).is_some_and(|all| all.contains_key(&(String::new(), name.to_owned())))
    }

    fn commit(&mut self, key: String, kind: &'static str, mut object: Value, previous: Option<Arc<Value>>) -> Arc<Value> {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(object);
        let id = (meta(&object, "namespace").to_owned(), meta(&object, "name").to_owned());
        let all = self.objects.entry(key.clone()).or_default();
        if kind == "DELETED" {
            all.remove(&id);
        } else {
            all.insert(id, object.clone());
        }
        let event = Arc::new(Event { rv: self.rv, kind, key, object: object.clone(), previous });
        self.events.push_back(event.clone());
        while self.events.len() > self.window {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.rv;
            }
        }
        let _ = self.events_tx.send(event);
        self.dirty = true;
        object
    }

    /// Stores a new object: the server's fields (uid, creationTimestamp, generation, resourceVersion) are set here.
    pub fn create(&mut self, rt: &ResourceType, mut object: Value) -> Result<Arc<Value>, ApiError> {
        let (namespace, name) = (meta(&object, "namespace").to_owned(), meta(&object, "name").to_owned());
        if self.get(rt, &namespace, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.key() == CRD_KEY {
            self.registry.register_crd(&object)?;
        }
        let m = &mut object["metadata"];
        m["uid"] = json!(random_uid());
        m["creationTimestamp"] = json!(now());
        m["generation"] = json!(1);
        Ok(self.commit(rt.key(), "ADDED", object, None))
    }

    /// Replaces `old` by `object`, keeping the server's fields; once a deleted object has no finalizers left, it
    /// is removed.
    pub fn update(&mut self, rt: &ResourceType, mut object: Value, old: Arc<Value>) -> Result<Arc<Value>, ApiError> {
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            match old["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => drop(object["metadata"].as_object_mut().and_then(|m| m.remove(field))),
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = if desired_state(&object) != desired_state(&old) { generation + 1 } else { generation };
        object["metadata"]["generation"] = json!(bumped);
        if rt.key() == CRD_KEY {
            self.registry.register_crd(&object)?;
        }
        let finalizers_left = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if old["metadata"].get("deletionTimestamp").is_some() && !finalizers_left {
            return Ok(self.remove(rt, Arc::new(object)));
        }
        Ok(self.commit(rt.key(), "MODIFIED", object, Some(old)))
    }

    /// Removes `old` now (with a namespace, everything in it; with a CRD, its kind and objects).
    pub fn remove(&mut self, rt: &ResourceType, old: Arc<Value>) -> Arc<Value> {
        let name = meta(&old, "name").to_owned();
        if rt.key() == NAMESPACE_KEY {
            let contained: Vec<(String, Arc<Value>)> = self
                .objects
                .iter()
                .flat_map(|(key, all)| all.iter().filter(|((ns, _), _)| *ns == name).map(|(_, o)| (key.clone(), o.clone())))
                .collect();
            for (key, object) in contained {
                if let Some(t) = self.registry.by_key(&key) {
                    self.remove(&t, object);
                }
            }
        }
        if rt.key() == CRD_KEY {
            if let Some(key) = self.registry.unregister_crd(&name) {
                let objects: Vec<Arc<Value>> = self.objects.get(&key).map(|all| all.values().cloned().collect()).unwrap_or_default();
                for object in objects {
                    self.commit(key.clone(), "DELETED", (*object).clone(), None);
                }
            }
        }
        self.commit(rt.key(), "DELETED", (*old).clone(), None)
    }

    /// Marks `old` as being deleted (deletionTimestamp now); it goes once its finalizers or its grace are done.
    pub fn begin_deletion(&mut self, rt: &ResourceType, old: Arc<Value>, grace_seconds: u64) -> Arc<Value> {
        if old["metadata"].get("deletionTimestamp").is_some() {
            return old;
        }
        let mut object = (*old).clone();
        object["metadata"]["deletionTimestamp"] = json!(now());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(grace_seconds);
        self.commit(rt.key(), "MODIFIED", object, Some(old))
    }

    /// The events after `from` and a receiver for those still to come, or 410 when `from` is older than the window.
    pub fn follow(&self, from: u64) -> Result<Following, ApiError> {
        if from < self.floor {
            return Err(ApiError::gone(format!("too old resource version: {from} ({})", self.floor)));
        }
        if from > self.rv {
            return Err(ApiError::new(504, "Timeout", format!("Too large resource version: {from}, current: {}", self.rv)));
        }
        let backlog = self.events.iter().filter(|e| e.rv > from).cloned().collect();
        Ok((backlog, self.events_tx.subscribe()))
    }

    /// Whether a list or continue token at `rv` is still inside the retained history.
    pub fn retained(&self, rv: u64) -> bool {
        rv >= self.floor
    }

    /// Forgets the history: every resourceVersion handed out so far becomes too old to watch from; open watches end.
    pub fn compact(&mut self) -> u64 {
        self.rv += 1;
        self.floor = self.rv;
        self.events.clear();
        self.close_watches.send_modify(|n| *n += 1);
        self.dirty = true;
        self.rv
    }

    /// The persisted form: the counter and every object (CRDs first, so their kinds exist when restored).
    /// Cheap under the lock (shared objects); serialized after it is released.
    pub fn snapshot(&self) -> Snapshot {
        let crds = self.objects.get(CRD_KEY).into_iter().flat_map(|all| all.values());
        let others = self.objects.iter().filter(|(k, _)| k.as_str() != CRD_KEY).flat_map(|(_, all)| all.values());
        Snapshot { resource_version: self.rv.to_string(), objects: crds.chain(others).cloned().collect() }
    }

    /// Loads a snapshot. Watches may resume from its resourceVersion on, not before (that history is gone).
    pub fn restore(&mut self, state: &Value) -> Result<(), String> {
        self.objects.clear();
        for object in state["objects"].as_array().ok_or("no \"objects\" array")? {
            let (api_version, kind) = (object["apiVersion"].as_str().unwrap_or_default(), object["kind"].as_str().unwrap_or_default());
            if api_version == "apiextensions.k8s.io/v1" && kind == "CustomResourceDefinition" {
                self.registry.register_crd(object).map_err(|e| e.message)?;
            }
            let (rt, _) = self.registry.by_kind(api_version, kind).ok_or_else(|| format!("no resource serves {api_version} {kind}"))?;
            let id = (meta(object, "namespace").to_owned(), meta(object, "name").to_owned());
            self.objects.entry(rt.key()).or_default().insert(id, Arc::new(object.clone()));
        }
        self.rv = state["resourceVersion"].as_str().and_then(|s| s.parse().ok()).ok_or("no \"resourceVersion\"")?;
        self.floor = self.rv;
        self.events.clear();
        Ok(())
    }
}
