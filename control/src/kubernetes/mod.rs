//! `keel-control serve --kubernetes`: the config comes from the Kubernetes API instead of a directory, through the
//! same check and translation (one translation, two inputs). One watch per kind (kube-rs watchers, reconnecting with
//! backoff and relisting after a 410 Gone) feeds one task that owns the [`ClusterState`]; changes arriving together
//! are translated once and pushed as one snapshot.
//!
//! Every replica watches and serves on its own; the one holding the Lease ([`leader`]) also writes Events on the
//! objects it refuses ([`events`]).
//!
//! Nothing is served before every kind has been listed once: a node proxy that connected earlier would be handed
//! a cluster without workloads or policies, and would refuse (or worse, allow) traffic on that basis.
pub mod cluster_state;
pub mod events;
pub mod kinds;
pub mod leader;
pub mod token_review;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    api::{Api, DynamicObject},
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt as _,
    },
    Client,
};
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{info, warn};

use crate::jwks::JwksCache;
use keel_mesh::{
    snapshot::Snapshot,
    translate::{inline_key_sets, translate, Mesh},
};

use crate::ca_service::NodeIdentities;
use cluster_state::ClusterState;
use events::{Rejection, Reports};
use kinds::WatchedKind;

/// Watch events queued for the state's task; a full queue holds the watches back (they are pull-based streams).
const EVENT_QUEUE: usize = 1024;
/// Changes arriving together are translated once: a push waits until the watches have been quiet this long...
const SETTLE: Duration = Duration::from_millis(50);
/// ...but no longer than this after the first change, so a steady stream of pod updates is still pushed.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Istio kinds whose CRDs are installed after keel-control started are found and watched within this.
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// Where the controller publishes what it makes.
pub struct Outputs {
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub identities: watch::Sender<Arc<NodeIdentities>>,
    /// Becomes true once every kind has been listed and the first snapshot published.
    pub synced: watch::Sender<bool>,
}

/// This replica, as the Lease and its Events name it.
#[derive(Clone, Debug)]
pub struct Replica {
    /// Where the Lease lives (keel-control's own namespace).
    pub namespace: String,
    /// The holder identity (keel-control's pod name).
    pub name: String,
}

/// Runs until every watch has ended (they do not, short of the process ending): errors are retried with backoff.
pub async fn run(
    client: Client,
    mesh: Mesh,
    trust_domain: String,
    replica: Replica,
    outputs: Outputs,
    key_sets: Arc<JwksCache>,
) -> anyhow::Result<()> {
    let (leading, leads) = watch::channel(false);
    tokio::spawn(leader::run(client.clone(), replica.namespace, replica.name.clone(), leading));
    let (reports, reporter) = events::reporter(client.clone(), replica.name, leads);
    tokio::spawn(reporter);
    let (events, mut queue) = mpsc::channel(EVENT_QUEUE);
    let mut kinds = kinds::builtins();
    let (istio, missing) = match kinds::istio(&client).await {
        Ok(found) => found,
        Err(e) => {
            // Watching without the Istio kinds would serve a mesh without its policies: retry until discovery works.
            warn!(error = %e, "discovering the Istio kinds failed; retrying");
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match kinds::istio(&client).await {
                    Ok(found) => break found,
                    Err(e) => warn!(error = %e, "discovering the Istio kinds failed; retrying"),
                }
            }
        }
    };
    if !missing.is_empty() {
        warn!(missing = ?missing, "Istio kinds not served by the API server (CRDs not installed?): watched once they appear");
    }
    kinds.extend(istio);
    let mut key_set_changes = key_sets.changes();
    let mut state = Controller::new(mesh, trust_domain, outputs, reports, kinds.iter().map(|k| k.kind), key_sets);
    let mut watched: HashSet<&'static str> = HashSet::new();
    for kind in kinds {
        watched.insert(kind.kind);
        tokio::spawn(watch_kind(client.clone(), kind, events.clone()));
    }
    tokio::spawn(rediscover(client, watched, events));

    let mut pending: Option<(Instant, Instant)> = None; // (first unpushed change, last change)
    loop {
        let deadline = pending.map(|(first, last)| (last + SETTLE).min(first + MAX_DELAY));
        tokio::select! {
            event = queue.recv() => {
                let Some((kind, event)) = event else { anyhow::bail!("every Kubernetes watch ended") };
                if state.handle(kind, event) {
                    let now = Instant::now();
                    pending = Some((pending.map_or(now, |(first, _)| first), now));
                }
            }
            // A fetched key set changed: the same objects, translated again.
            Ok(()) = key_set_changes.changed() => {
                if state.synced() {
                    state.publish();
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                // Until the last kind is listed nothing is published; its InitDone counts as a change.
                if state.synced() {
                    state.publish();
                }
                pending = None;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

type KindEvent = (&'static str, Event<Value>);

/// One kind's watch, forever: events to the state's task, errors logged (the watcher retries them with backoff).
async fn watch_kind(client: Client, kind: WatchedKind, events: mpsc::Sender<KindEvent>) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.resource);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                warn!(kind = kind.kind, error = %e, "Kubernetes watch failed; retrying with backoff");
                continue;
            }
        };
        let value = |object: DynamicObject| json_with_type(&kind, object);
        let event = match event {
            Event::Init => Event::Init,
            Event::InitApply(object) => Event::InitApply(value(object)),
            Event::InitDone => Event::InitDone,
            Event::Apply(object) => Event::Apply(value(object)),
            Event::Delete(object) => Event::Delete(value(object)),
        };
        if events.send((kind.kind, event)).await.is_err() {
            return;
        }
    }
}

/// The object as JSON with its `apiVersion` and `kind`: list responses leave them out of their items, and the
/// translation reads them.
fn json_with_type(kind: &WatchedKind, object: DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.resource.api_version.clone()));
        map.insert("kind".into(), Value::String(kind.resource.kind.clone()));
    }
    value
}

/// Watches the Istio kinds whose CRDs appear after start.
async fn rediscover(client: Client, mut watched: HashSet<&'static str>, events: mpsc::Sender<KindEvent>) {
    loop {
        tokio::time::sleep(REDISCOVERY_INTERVAL).await;
        if events.is_closed() {
            return;
        }
        let Ok((found, _)) = kinds::istio(&client).await else { continue };
        for kind in found {
            if watched.insert(kind.kind) {
                info!(kind = kind.kind, version = %kind.resource.version, "Istio kind now served: watching it");
                tokio::spawn(watch_kind(client.clone(), kind, events.clone()));
            }
        }
    }
}

/// The state's task: applies watch events, and translates and publishes on request.
struct Controller {
    state: ClusterState,
    /// Per kind, the list being received (between `Init` and `InitDone`): swapped in whole at its end, so a list
    /// cut short never shows a partial cluster.
    relisting: HashMap<&'static str, Vec<Value>>,
    /// Kinds not yet listed once.
    unlisted: BTreeSet<&'static str>,
    mesh: Mesh,
    trust_domain: String,
    outputs: Outputs,
    reports: Reports,
    /// The translation's warnings at the last push, so each is logged once rather than on every push.
    warnings: Vec<String>,
    /// Fills `jwksUri` key sets into the translation.
    key_sets: Arc<JwksCache>,
}

impl Controller {
    fn new(
        mesh: Mesh,
        trust_domain: String,
        outputs: Outputs,
        reports: Reports,
        kinds: impl Iterator<Item = &'static str>,
        key_sets: Arc<JwksCache>,
    ) -> Controller {
        Controller {
            state: ClusterState::default(),
            relisting: HashMap::new(),
            unlisted: kinds.collect(),
            mesh,
            trust_domain,
            outputs,
            reports,
            warnings: Vec::new(),
            key_sets,
        }
    }

    fn synced(&self) -> bool {
        self.unlisted.is_empty()
    }

    /// Applies one event; true when the config in force may have changed (a push is due).
    fn handle(&mut self, kind: &'static str, event: Event<Value>) -> bool {
        match event {
            Event::Init => {
                self.relisting.insert(kind, Vec::new());
                false
            }
            Event::InitApply(value) => {
                self.relisting.entry(kind).or_default().push(value);
                false
            }
            Event::InitDone => {
                let listed = self.relisting.remove(&kind).unwrap_or_default();
                let (changed, refusals) = self.state.relist(kind, &listed);
                for (value, refusal) in refusals {
                    self.refused(value, &refusal);
                }
                // The first complete list of the last kind is what makes keel-control ready, changed or not.
                self.unlisted.remove(kind) || changed
            }
            Event::Apply(value) => {
                let applied = self.state.apply(kind, &value);
                if let Some(refusal) = &applied.refused {
                    self.refused(&value, refusal);
                }
                applied.changed
            }
            Event::Delete(value) => self.state.delete(kind, &value),
        }
    }

    fn refused(&self, value: &Value, refusal: &keel_mesh::source::InvalidObject) {
        warn!(%refusal, "object refused: its last good version (if any) stays in force");
        self.reports.report(Rejection::of(value, &refusal.message));
    }

    /// Translates the cluster state and publishes the snapshot if it differs from the one in force.
    fn publish(&mut self) {
        let objects = self.state.objects();
        let mut resources = match translate(&self.mesh, &objects) {
            Ok(resources) => resources,
            Err(errors) => {
                // Unreachable for checked objects, but never publish a half-translated snapshot.
                errors.iter().for_each(|error| warn!(%error, "translation failed: the last snapshot stays in force"));
                return;
            }
        };
        inline_key_sets(&mut resources, self.key_sets.as_ref());
        if resources.warnings != self.warnings {
            resources.warnings.iter().filter(|w| !self.warnings.contains(w)).for_each(|warning| warn!(%warning, "config"));
            self.warnings.clone_from(&resources.warnings);
        }
        self.outputs.identities.send_replace(Arc::new(NodeIdentities::from_objects(&self.trust_domain, &objects)));
        let snapshot = Snapshot::from_resources(&resources);
        if **self.outputs.snapshots.borrow() != snapshot {
            info!(objects = ?self.state.counts(), refused = self.state.refused().len(), "cluster changed: pushing");
            self.outputs.snapshots.send_replace(Arc::new(snapshot));
        }
        if !*self.outputs.synced.borrow() {
            info!(objects = ?self.state.counts(), "every kind listed: serving");
            self.outputs.synced.send_replace(true);
        }
    }
}
