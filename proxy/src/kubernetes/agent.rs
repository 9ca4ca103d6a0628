//! The node agent at run time: two watches (the node's pods by field selector, every namespace's labels) feed the
//! [`View`]; after every change and on a timer the [`reconcile::plan`] is made against keel's enrollments and carried
//! out; the pods keel captures carry `ambient.istio.io/redirection: enabled`, as istio-cni marks them.
//!
//! The API server being away changes nothing: the last complete view stays, so nothing is released for want of
//! news; a CNI ADD that cannot learn whether its pod is ambient fails (the kubelet retries it) rather than guess.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use keel_mesh::ambient::REDIRECTION_ANNOTATION;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        watcher::{self, watcher},
        WatchStreamExt as _,
    },
    Client,
};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{
    cache::{Applied, WatchCache},
    decision::{self, PodRecord, Release},
    reconcile::{self, Action, Enrolled, Observed},
};
use crate::{
    enrollment::Enrollment,
    pods::{EnrollRequest, PodName},
};

/// Reconciliation runs this often even without news (level-triggered: a failed action is simply planned again).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Changes arriving together are reconciled once.
const SETTLE: Duration = Duration::from_millis(100);
/// A pod a CNI ADD enrolled is kept this long while the watch has not shown it yet.
const CNI_GRACE: Duration = Duration::from_secs(30);
/// After a CNI DEL released a pod's sandbox, the agent does not enroll that pod again from the API for this long
/// (its next sandbox, if any, comes with its own ADD).
const CNI_DEL_HOLD: Duration = Duration::from_secs(300);
/// A failed enrollment is retried after this, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// One API call (a pod or namespace read, an annotation patch) gets this long.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = BTreeMap<String, String>;

/// What the watches have said.
#[derive(Default)]
struct View {
    /// The node's pods by UID.
    pods: WatchCache<PodRecord>,
    /// Every namespace's labels by name.
    namespaces: WatchCache<Labels>,
}

/// When a pod whose enrollment failed (or whose sandbox a CNI DEL released) may be enrolled again.
#[derive(Clone, Copy)]
struct Hold {
    until: Instant,
    backoff: Duration,
}

pub struct NodeAgent {
    client: Client,
    node: String,
    view: Mutex<View>,
    /// UID → when a CNI ADD enrolled it.
    cni_adds: Mutex<HashMap<String, Instant>>,
    /// UID → when it may be enrolled again.
    holds: Mutex<HashMap<String, Hold>>,
    changed: Notify,
    /// True once both kinds are listed and the first reconciliation ran (part of keel's readiness).
    synced: watch::Sender<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NodeAgent {
    /// A client for the API server of `kubeconfig`, else of the cluster keel runs in (its ServiceAccount).
    pub async fn connect(kubeconfig: Option<&Path>, node: &str) -> anyhow::Result<Arc<NodeAgent>> {
        if node.is_empty() {
            bail!("--kubernetes needs --node-name (from the Downward API: spec.nodeName)");
        }
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            None => kube::Config::incluster().context("in-cluster Kubernetes config (or pass --kubeconfig)")?,
        };
        Ok(Arc::new(NodeAgent {
            client: Client::try_from(config).context("Kubernetes client")?,
            node: node.to_owned(),
            view: Mutex::default(),
            cni_adds: Mutex::default(),
            holds: Mutex::default(),
            changed: Notify::new(),
            synced: watch::Sender::new(false),
        }))
    }

    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The watches and the reconciliation loop, forever.
    pub async fn run(self: Arc<Self>, enrollment: Arc<Enrollment>) {
        tokio::spawn(self.clone().watch_pods());
        tokio::spawn(self.clone().watch_namespaces());
        loop {
            let next_hold = lock(&self.holds).values().map(|h| h.until).min();
            let wake = next_hold.map_or(RESYNC_INTERVAL, |until| until.saturating_duration_since(Instant::now()).min(RESYNC_INTERVAL));
            tokio::select! {
                () = self.changed.notified() => tokio::time::sleep(SETTLE).await,
                () = tokio::time::sleep(wake) => {}
            }
            let listed = {
                let view = lock(&self.view);
                view.pods.synced() && view.namespaces.synced()
            };
            if listed {
                self.reconcile(&enrollment).await;
                if !self.synced() {
                    info!(node = %self.node, pods = lock(&self.view).pods.len(), "node agent: the node's pods listed and reconciled");
                    self.synced.send_replace(true);
                }
            }
        }
    }

    async fn watch_pods(self: Arc<Self>) {
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let mut events = watcher(Api::<Pod>::all(self.client.clone()), config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if lock(&self.view).pods.apply(event, read_pod) == Applied::Changed {
                        self.changed.notify_one();
                    }
                }
                Err(e) => warn!(error = %e, "node agent: watch of the node's pods failed; retrying with backoff"),
            }
        }
    }

    async fn watch_namespaces(self: Arc<Self>) {
        let mut events = watcher(Api::<Namespace>::all(self.client.clone()), watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let read = |ns: &Namespace| Some((ns.metadata.name.clone()?, ns.metadata.labels.clone().unwrap_or_default()));
                    if lock(&self.view).namespaces.apply(event, read) == Applied::Changed {
                        self.changed.notify_one();
                    }
                }
                Err(e) => warn!(error = %e, "node agent: watch of namespaces failed; retrying with backoff"),
            }
        }
    }

    /// One round: plan against keel's enrollments, carry the plan out, then mark the pods as they now are.
    async fn reconcile(&self, enrollment: &Enrollment) {
        let (observed, marked) = {
            let view = lock(&self.view);
            let mut observed = BTreeMap::new();
            let mut marked = BTreeMap::new();
            for (uid, pod) in view.pods.items() {
                let verdict = decision::verdict(pod, view.namespaces.get(&pod.name.namespace));
                observed.insert(uid.clone(), Observed { name: pod.name.clone(), service_account: pod.service_account.clone(), verdict });
                marked.insert(uid.clone(), (pod.name.clone(), pod.marked_captured()));
            }
            (observed, marked)
        };
        let enrolled = enrolled(enrollment).await;
        let now = Instant::now();
        let holds = Holds {
            cni_adds: lock(&self.cni_adds).iter().filter(|(_, at)| now.duration_since(**at) < CNI_GRACE).map(|(uid, _)| uid.clone()).collect(),
            held: lock(&self.holds).iter().filter(|(_, hold)| hold.until > now).map(|(uid, _)| uid.clone()).collect(),
        };
        lock(&self.cni_adds).retain(|_, at| now.duration_since(*at) < CNI_GRACE);
        for action in reconcile::plan(&observed, &enrolled, &holds) {
            self.execute(enrollment, action).await;
        }
        let captured: std::collections::BTreeSet<String> = enrolled_uids(enrollment).await;
        for (uid, (name, is_marked)) in marked {
            let should = captured.contains(&uid);
            if should != is_marked {
                self.mark(&name, should).await;
            }
        }
    }

    /// The pod's connection budgets from its annotations (a bad value is warned about, naming the annotation).
    pub fn budgets(&self, uid: &str, name: &crate::pods::PodName) -> crate::pods::PodBudgets {
        let annotations = lock(&self.view).pods.get(uid).map(|p| p.annotations.clone()).unwrap_or_default();
        let (budgets, warnings) = crate::pods::PodBudgets::from_annotations(&annotations);
        for warning in warnings {
            warn!(pod = %name, "{warning}");
        }
        budgets
    }

    async fn execute(&self, enrollment: &Enrollment, action: Action) {
        match action {
            Action::Enroll(wanted) => {
                let name = wanted.name.clone();
                let budgets = self.budgets(&wanted.uid, &name);
                let request = EnrollRequest {
                    namespace: name.namespace.clone(),
                    name: name.name.clone(),
                    service_account: wanted.service_account,
                    netns: None,
                    cgroup: None,
                    uid: Some(wanted.uid.clone()),
                    ips: wanted.ips.clone(),
                    budgets,
                };
                let enrolled = async { enrollment.enroll_replacing(enrollment.resolve(request).await?).await };
                match enrolled.await {
                    Ok(()) => {
                        lock(&self.holds).remove(&wanted.uid);
                        info!(pod = %name, uid = %wanted.uid, ips = ?wanted.ips, "node agent: pod captured (from the API)");
                    }
                    Err(e) => {
                        let mut holds = lock(&self.holds);
                        let backoff = holds.get(&wanted.uid).map_or(RETRY_FIRST, |h| (h.backoff * 2).min(RETRY_MAX));
                        holds.insert(wanted.uid.clone(), Hold { until: Instant::now() + backoff, backoff });
                        warn!(pod = %name, uid = %wanted.uid, error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "node agent: capturing the pod failed");
                    }
                }
            }
            Action::Unenroll { name, uid, reason } => match enrollment.unenroll(&name).await {
                Ok(()) => info!(pod = %name, %uid, %reason, "node agent: pod released"),
                Err(e) => warn!(pod = %name, %uid, error = %format!("{e:#}"), "node agent: releasing the pod failed"),
            },
        }
    }

    /// Sets or removes the pod's `ambient.istio.io/redirection` annotation (a merge patch of that key only).
    async fn mark(&self, pod: &PodName, captured: bool) {
        let value = if captured { json!("enabled") } else { serde_json::Value::Null };
        let patch = json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match tokio::time::timeout(API_CALL_TIMEOUT, api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(%pod, error = %e, "node agent: annotating the pod failed"),
            Err(_) => warn!(%pod, "node agent: annotating the pod timed out"),
        }
    }

    /// For a CNI ADD: whether the pod is to be captured, from the watch's view or, for a pod the watch has not
    /// brought yet (the ADD often comes first), from the API directly. An API that cannot say is an error.
    pub async fn admit(&self, pod: &PodName, uid: &str) -> anyhow::Result<Result<(), Release>> {
        let (cached, namespace_labels) = {
            let view = lock(&self.view);
            (view.pods.get(uid).cloned(), view.namespaces.get(&pod.namespace).cloned())
        };
        let record = match cached {
            Some(record) => record,
            None => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
                let object = timed(api.get(&pod.name)).await.with_context(|| format!("reading pod {pod} from the Kubernetes API"))?;
                let record = PodRecord::from_pod(&object)?;
                if record.uid != uid {
                    bail!("the Kubernetes API's pod {pod} has uid {}, not {uid}", record.uid);
                }
                record
            }
        };
        let namespace_labels = match namespace_labels {
            Some(labels) => Some(labels),
            None => {
                let api: Api<Namespace> = Api::all(self.client.clone());
                let namespace = timed(api.get_opt(&pod.namespace))
                    .await
                    .with_context(|| format!("reading namespace {} from the Kubernetes API", pod.namespace))?;
                namespace.map(|ns| ns.metadata.labels.unwrap_or_default())
            }
        };
        let verdict = decision::admissible(&record, namespace_labels.as_ref());
        if verdict.is_ok() {
            lock(&self.cni_adds).insert(uid.to_owned(), Instant::now());
            lock(&self.holds).remove(uid);
            self.changed.notify_one();
        }
        Ok(verdict)
    }

    /// A CNI DEL released the pod's sandbox: the agent leaves that pod alone until its next ADD.
    pub fn released_by_cni(&self, uid: &str) {
        lock(&self.holds).insert(uid.to_owned(), Hold { until: Instant::now() + CNI_DEL_HOLD, backoff: RETRY_FIRST });
        lock(&self.cni_adds).remove(uid);
    }
}

async fn timed<T>(call: impl std::future::Future<Output = kube::Result<T>>) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(API_CALL_TIMEOUT, call).await.map_err(|_| anyhow::anyhow!("no answer within {API_CALL_TIMEOUT:?}"))??)
}

fn read_pod(pod: &Pod) -> Option<(String, PodRecord)> {
    match PodRecord::from_pod(pod) {
        Ok(record) => Some((record.uid.clone(), record)),
        Err(e) => {
            warn!(error = %e, "node agent: pod skipped");
            None
        }
    }
}

async fn enrolled(enrollment: &Enrollment) -> Vec<Enrolled> {
    enrollment.specs().await.into_iter().map(|spec| Enrolled { name: spec.pod_name(), uid: spec.uid, ips: spec.ips }).collect()
}

async fn enrolled_uids(enrollment: &Enrollment) -> std::collections::BTreeSet<String> {
    enrollment.specs().await.into_iter().filter_map(|spec| spec.uid).collect()
}

/// The plan's holds, as of one reconciliation.
struct Holds {
    cni_adds: std::collections::BTreeSet<String>,
    held: std::collections::BTreeSet<String>,
}

impl reconcile::Holds for Holds {
    fn in_cni_grace(&self, uid: &str) -> bool {
        self.cni_adds.contains(uid)
    }
    fn enroll_held(&self, uid: &str) -> bool {
        self.held.contains(uid)
    }
}
