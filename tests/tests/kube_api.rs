//! The Kubernetes API stand-in (`kube-stand-in`), driven by the real client keel uses (kube-rs) and by kubectl.
//! Needs no root: the stand-in listens on loopback.

use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use keel_tests::kube_api::{KubeApi, KubeApiOptions, ServiceAccountToken};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::{reflector, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn start(options: KubeApiOptions) -> (tempfile::TempDir, KubeApi) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let api = KubeApi::start_with(dir.path(), options).expect("the stand-in starts");
    (dir, api)
}

fn from_json<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a valid object")
}

fn config_map(name: &str, data: &str) -> ConfigMap {
    from_json(json!({ "metadata": { "name": name }, "data": { "k": data } }))
}

fn pod(name: &str, node: &str, labels: Value) -> Pod {
    from_json(
        json!({ "metadata": { "name": name, "labels": labels }, "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "app:1" }] } }),
    )
}

/// The refusal an API call ended with.
fn refusal<T: Debug>(result: kube::Result<T>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

async fn next<T, S: Stream<Item = T> + Unpin>(stream: &mut S) -> T {
    tokio::time::timeout(WAIT, stream.next()).await.expect("an event within 10 s").expect("the stream goes on")
}

/// The next watcher event that is not an error (a watcher reports 410 as an error, then relists).
async fn next_event<K: Debug, S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin>(stream: &mut S) -> Event<K> {
    loop {
        if let Ok(event) = next(stream).await {
            return event;
        }
    }
}

fn name_of<K: kube::Resource>(event: &Event<K>) -> String {
    match event {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => o.name_any(),
        Event::Init | Event::InitDone => String::new(),
    }
}

/// A raw request with the admin kubeconfig: (status code, JSON body).
async fn raw(client: &kube::Client, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let request = http::Request::builder().method(method).uri(path).header("content-type", content_type).body(body.as_bytes().to_vec()).unwrap();
    let response = client.send(request.map(kube::client::Body::from)).await.expect("an answer");
    let code = response.status().as_u16();
    let bytes = response.into_body().collect().await.expect("a body").to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_create_update_delete_in_order() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let client = stand_in.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &config_map("before", "0")).await.unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut events).await, Event::Init));
    assert_eq!(name_of(&next_event(&mut events).await), "before");
    assert!(matches!(next_event(&mut events).await, Event::InitDone));

    let created = api.create(&PostParams::default(), &config_map("cm", "1")).await.unwrap();
    let mut changed = created.clone();
    changed.data = Some([("k".to_owned(), "2".to_owned())].into());
    let replaced = api.replace("cm", &PostParams::default(), &changed).await.unwrap();
    api.delete("cm", &DeleteParams::default()).await.unwrap();

    let Event::Apply(added) = next_event(&mut events).await else { panic!("expected the create") };
    assert_eq!((added.name_any(), added.data.unwrap()["k"].as_str()), ("cm".to_owned(), "1"));
    let Event::Apply(modified) = next_event(&mut events).await else { panic!("expected the update") };
    assert_eq!(modified.data.unwrap()["k"], "2");
    let Event::Delete(deleted) = next_event(&mut events).await else { panic!("expected the delete") };
    let rv = |o: &ConfigMap| o.resource_version().unwrap().parse::<u64>().unwrap();
    assert!(rv(&created) < rv(&replaced) && rv(&replaced) < rv(&deleted), "one increasing resourceVersion");
    assert_eq!(deleted.uid(), created.uid());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.creation_timestamp.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors_filter_lists_and_watches() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let pods: Api<Pod> = Api::namespaced(stand_in.client().await.unwrap(), "default");
    for (name, node, labels) in
        [("p1", "node-1", json!({"app": "web"})), ("p2", "node-2", json!({"app": "web"})), ("p3", "node-1", json!({"app": "db", "canary": "true"}))]
    {
        pods.create(&PostParams::default(), &pod(name, node, labels)).await.unwrap();
    }
    let names = |params: ListParams| {
        let pods = pods.clone();
        async move { pods.list(&params).await.unwrap().items.iter().map(|p| p.name_any()).collect::<Vec<_>>() }
    };
    assert_eq!(names(ListParams::default().labels("app=web")).await, ["p1", "p2"]);
    assert_eq!(names(ListParams::default().labels("app in (web, db),!canary")).await, ["p1", "p2"]);
    assert_eq!(names(ListParams::default().labels("app!=web")).await, ["p3"]);
    assert_eq!(names(ListParams::default().labels("canary")).await, ["p3"]);
    assert_eq!(names(ListParams::default().labels("app notin (web)")).await, ["p3"]);
    assert_eq!(names(ListParams::default().fields("spec.nodeName=node-1")).await, ["p1", "p3"]);
    assert_eq!(names(ListParams::default().fields("spec.nodeName=node-1,metadata.name!=p3").labels("app==web")).await, ["p1"]);
    assert_eq!(names(ListParams::default().fields("status.phase=Pending")).await, ["p1", "p2", "p3"], "a created pod is Pending");
    let refused = refusal(pods.list(&ListParams::default().fields("spec.containers=app")).await);
    assert_eq!((refused.code, refused.reason.as_str(), refused.message.as_str()), (400, "BadRequest", "field label not supported: spec.containers"));

    // A watch with a selector: an object that stops matching is DELETED for it, one that starts matching ADDED.
    let mut web = watcher(pods.clone(), watcher::Config::default().labels("app=web")).boxed();
    while !matches!(next_event(&mut web).await, Event::InitDone) {}
    let mut p1 = pods.get("p1").await.unwrap();
    p1.labels_mut().insert("app".into(), "db".into());
    pods.replace("p1", &PostParams::default(), &p1).await.unwrap();
    let event = next_event(&mut web).await;
    assert!(matches!(&event, Event::Delete(p) if p.name_any() == "p1"), "p1 left the selection: {event:?}");
    pods.patch("p3", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}}))).await.unwrap();
    let event = next_event(&mut web).await;
    assert!(matches!(&event, Event::Apply(p) if p.name_any() == "p3"), "p3 joined the selection: {event:?}");

    // Status is written through /status; writes to the pod itself leave it alone.
    pods.patch_status("p2", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.0.0.2"}}))).await.unwrap();
    let mut p2 = pods.get("p2").await.unwrap();
    p2.status.as_mut().unwrap().phase = Some("Failed".into());
    pods.replace("p2", &PostParams::default(), &p2).await.unwrap();
    assert_eq!(names(ListParams::default().fields("status.phase=Running,status.podIP=10.0.0.2")).await, ["p2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_with_continue_tokens() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let api: Api<ConfigMap> = Api::namespaced(stand_in.client().await.unwrap(), "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &config_map(&format!("cm{i}"), "x")).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["cm0", "cm1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = api.list(&ListParams::default().limit(10).continue_token(&token)).await.unwrap();
    assert_eq!(rest.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["cm2", "cm3", "cm4"]);
    assert_eq!(rest.metadata.continue_, None);
    assert_eq!(rest.metadata.resource_version, first.metadata.resource_version, "every page is at the first page's resourceVersion");
    stand_in.compact().unwrap();
    let expired = refusal(api.list(&ListParams::default().limit(10).continue_token(&token)).await);
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_answers_410_and_the_watcher_relists() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let api: Api<ConfigMap> = Api::namespaced(stand_in.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &config_map("old", "1")).await.unwrap();
    let listed_at = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    let (reader, writer) = reflector::store::<ConfigMap>();
    let mut events = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    while !matches!(next_event(&mut events).await, Event::InitDone) {}
    // Once an event came through, the watcher's watch is open (its stream is lazy).
    api.create(&PostParams::default(), &config_map("probe", "1")).await.unwrap();
    assert_eq!(name_of(&next_event(&mut events).await), "probe");

    let compacted = stand_in.compact().unwrap();
    assert!(compacted > listed_at.parse().unwrap());
    let mut stale = api.watch(&WatchParams::default().disable_bookmarks(), &listed_at).await.unwrap().boxed();
    match next(&mut stale).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(status.message.starts_with(&format!("too old resource version: {listed_at}")), "{}", status.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    api.create(&PostParams::default(), &config_map("new", "2")).await.unwrap();
    api.delete("old", &DeleteParams::default()).await.unwrap();
    api.delete("probe", &DeleteParams::default()).await.unwrap();
    // The open watch was ended; its resume is too old: the watcher relists (Init) and converges.
    let mut relisted = false;
    loop {
        match next_event(&mut events).await {
            Event::Init => relisted = true,
            Event::InitDone | Event::Apply(_) | Event::Delete(_) if relisted => {
                let mut names: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
                names.sort();
                if names == ["new"] {
                    break;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_carry_the_current_resource_version() {
    let options = KubeApiOptions { bookmark_interval: Duration::from_millis(200), ..Default::default() };
    let (_dir, stand_in) = start(options);
    let client = stand_in.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let listed_at: u64 = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap().parse().unwrap();
    let mut stream = api.watch(&WatchParams::default(), &listed_at.to_string()).await.unwrap().boxed();
    let secret: Secret = from_json(json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}));
    let stored = Api::<Secret>::namespaced(client, "default").create(&PostParams::default(), &secret).await.unwrap();
    let written: u64 = stored.resource_version().unwrap().parse().unwrap();
    assert_eq!((stored.data.unwrap()["a"].0.as_slice(), stored.string_data), (&b"b"[..], None), "stringData is stored as data");
    // The Secret is not a ConfigMap: no event for it, but the bookmarks move past it.
    loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.types.kind, "ConfigMap");
                if b.metadata.resource_version.parse::<u64>().unwrap() >= written {
                    break;
                }
            }
            other => panic!("expected only bookmarks, got {other:?}"),
        }
    }

    // A streaming list: the current objects, then a bookmark marking their end.
    api.create(&PostParams::default(), &config_map("cm", "1")).await.unwrap();
    let mut streaming = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(next_event(&mut streaming).await, Event::Init));
    assert_eq!(name_of(&next_event(&mut streaming).await), "cm");
    assert!(matches!(next_event(&mut streaming).await, Event::InitDone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_watchers_reconverge() {
    let (_dir, mut stand_in) = start(KubeApiOptions::default());
    stand_in.register_token(ServiceAccountToken::new("controller-token", "keel-system", "keel-control")).unwrap();
    let path = _dir.path().join("controller.kubeconfig");
    stand_in.write_kubeconfig("controller-token", &path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let before = pods.create(&PostParams::default(), &pod("before", "node-1", json!({}))).await.unwrap();

    let (reader, writer) = reflector::store::<Pod>();
    let mut events = reflector(writer, watcher(pods.clone(), watcher::Config::default())).boxed();
    while !matches!(next_event(&mut events).await, Event::InitDone) {}
    pods.create(&PostParams::default(), &pod("probe", "node-1", json!({}))).await.unwrap();
    assert_eq!(name_of(&next_event(&mut events).await), "probe", "the watch is open when the server restarts");

    stand_in.restart().unwrap();
    let kept = pods.get("before").await.expect("the token and the pod survive the restart");
    assert_eq!((kept.uid(), kept.resource_version()), (before.uid(), before.resource_version()));
    let after = pods.create(&PostParams::default(), &pod("after", "node-1", json!({}))).await.unwrap();
    assert!(after.resource_version().unwrap().parse::<u64>().unwrap() > before.resource_version().unwrap().parse::<u64>().unwrap());
    let mut events = events.applied_objects();
    loop {
        let _ = tokio::time::timeout(WAIT, events.next()).await.expect("the watcher follows the restarted server");
        let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        if names == ["after", "before", "probe"] {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_wrong_verbs_and_bad_names_are_refused() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let client = stand_in.client().await.unwrap();
    let pod_body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "i", "imagePullPolicyy": "Always"}]}});
    let (code, status) = raw(&client, "POST", "/api/v1/namespaces/default/pods", "application/json", &pod_body.to_string()).await;
    assert_eq!(
        (code, status["kind"].as_str(), status["status"].as_str(), status["reason"].as_str()),
        (400, Some("Status"), Some("Failure"), Some("BadRequest"))
    );
    assert_eq!(status["message"], "strict decoding error: unknown field \"spec.containers[0].imagePullPolicyy\"");

    let vs =
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "v", "labelz": {}}, "spec": {"anything": 1}});
    let (code, status) =
        raw(&client, "POST", "/apis/networking.istio.io/v1/namespaces/default/virtualservices", "application/json", &vs.to_string()).await;
    assert_eq!((code, status["message"].as_str()), (400, Some("strict decoding error: unknown field \"metadata.labelz\"")));

    let (code, status) = raw(&client, "DELETE", "/api/v1/namespaces/default/pods", "application/json", "").await;
    assert_eq!((code, status["reason"].as_str()), (405, Some("MethodNotAllowed")));
    let (code, _) = raw(&client, "GET", "/apis/authentication.k8s.io/v1/tokenreviews", "application/json", "").await;
    assert_eq!(code, 405);
    let (code, status) = raw(&client, "GET", "/apis/example.com/v1/widgets", "application/json", "").await;
    assert_eq!((code, status["message"].as_str()), (404, Some("the server could not find the requested resource")));
    let (code, status) = raw(&client, "PATCH", "/api/v1/namespaces/default", "application/strategic-merge-patch+json", "{}").await;
    assert_eq!((code, status["reason"].as_str()), (415, Some("UnsupportedMediaType")));

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let bad = refusal(cms.create(&PostParams::default(), &config_map("Bad_Name", "x")).await);
    assert_eq!((bad.code, bad.reason.as_str()), (422, "Invalid"));
    assert!(bad.message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"), "{}", bad.message);
    let missing = refusal(Api::<ConfigMap>::namespaced(client.clone(), "nowhere").create(&PostParams::default(), &config_map("c", "x")).await);
    assert_eq!((missing.code, missing.message.as_str()), (404, "namespaces \"nowhere\" not found"));
    let absent = refusal(cms.get("absent").await);
    assert_eq!((absent.code, absent.reason.as_str(), absent.message.as_str()), (404, "NotFound", "configmaps \"absent\" not found"));
    assert_eq!(absent.details.unwrap().kind, "configmaps");

    let mut wrong_token = stand_in.kubeconfig();
    wrong_token.set_file_name("wrong.kubeconfig");
    stand_in.write_kubeconfig("not-a-token", &wrong_token).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&wrong_token).unwrap(), &Default::default()).await.unwrap();
    let (code, status) = raw(&kube::Client::try_from(config).unwrap(), "GET", "/api/v1/pods", "application/json", "").await;
    assert_eq!((code, status["reason"].as_str()), (401, Some("Unauthorized")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_updates_and_duplicate_creates_conflict() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let api: Api<ConfigMap> = Api::namespaced(stand_in.client().await.unwrap(), "default");
    let original = api.create(&PostParams::default(), &config_map("cm", "1")).await.unwrap();
    let dup = refusal(api.create(&PostParams::default(), &config_map("cm", "1")).await);
    assert_eq!((dup.code, dup.reason.as_str(), dup.message.as_str()), (409, "AlreadyExists", "configmaps \"cm\" already exists"));
    let mut first = original.clone();
    first.data = Some([("k".to_owned(), "first".to_owned())].into());
    api.replace("cm", &PostParams::default(), &first).await.unwrap();
    let mut second = original.clone();
    second.data = Some([("k".to_owned(), "second".to_owned())].into());
    let stale = refusal(api.replace("cm", &PostParams::default(), &second).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert!(stale.message.contains("the object has been modified"), "{}", stale.message);
    assert_eq!(api.get("cm").await.unwrap().data.unwrap()["k"], "first");
    let precondition =
        DeleteParams { preconditions: Some(kube::api::Preconditions { uid: Some("other".into()), resource_version: None }), ..Default::default() };
    assert_eq!(refusal(api.delete("cm", &precondition).await).code, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_answers_as_the_real_server() {
    let (_dir, mut stand_in) = start(KubeApiOptions::default());
    let client = stand_in.client().await.unwrap();
    stand_in.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})).unwrap();
    let node_pod = stand_in.apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keel-abc", "namespace": "istio-system"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "keel", "containers": [{"name": "keel", "image": "keel"}]}, "status": {"phase": "Running", "podIP": "10.0.0.9"}})).unwrap();
    let pod_uid = node_pod["metadata"]["uid"].as_str().unwrap();
    let token = ServiceAccountToken::new("node-token", "istio-system", "keel")
        .bound_to_pod("keel-abc", Some(pod_uid), Some("node-1"))
        .with_audiences(&["istio-ca"]);
    stand_in.register_token(token).unwrap();

    let reviews: Api<TokenReview> = Api::all(client);
    let review = |token: &str, audiences: &[&str]| {
        let reviews = reviews.clone();
        let body: TokenReview = from_json(json!({"spec": {"token": token, "audiences": audiences}}));
        async move { reviews.create(&PostParams::default(), &body).await.unwrap().status.unwrap() }
    };
    let ok = review("node-token", &["istio-ca"]).await;
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.audiences, Some(vec!["istio-ca".to_owned()]));
    let user = ok.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:istio-system:keel"));
    assert!(user.groups.unwrap().contains(&"system:serviceaccounts:istio-system".to_owned()));
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["keel-abc"]);
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], [pod_uid]);
    assert_eq!(extra["authentication.kubernetes.io/node-name"], ["node-1"]);

    let wrong_audience = review("node-token", &["other"]).await;
    assert_eq!(wrong_audience.authenticated, None);
    assert!(wrong_audience.error.unwrap().contains("token audiences [\"istio-ca\"] is invalid for the target audiences [\"other\"]"));
    assert!(review("unknown", &["istio-ca"]).await.error.unwrap().contains("invalid bearer token"));
    // An istio-ca token is no API credential, and a deleted pod's token is invalid.
    assert!(review("node-token", &[]).await.error.is_some());
    stand_in.delete("v1", "Pod", Some("istio-system"), "keel-abc").unwrap();
    assert!(review("node-token", &["istio-ca"]).await.error.unwrap().contains("invalidated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_updates_conflict_like_leader_election_expects() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let leases: Api<Lease> = Api::namespaced(stand_in.client().await.unwrap(), "default");
    let lease: Lease = from_json(json!({"metadata": {"name": "keel-control"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}));
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut by_b = created.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut by_c = created.clone();
    by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    leases.replace("keel-control", &PostParams::default(), &by_b).await.unwrap();
    assert_eq!(refusal(leases.replace("keel-control", &PostParams::default(), &by_c).await).code, 409);
    let applied =
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "keel-control"}, "spec": {"holderIdentity": "d"}});
    let after = leases.patch("keel-control", &PatchParams::apply("keel-control"), &Patch::Apply(&applied)).await.unwrap();
    let spec = after.spec.unwrap();
    assert_eq!((spec.holder_identity.as_deref(), spec.lease_duration_seconds), (Some("d"), Some(15)), "apply merges over the stored lease");
    let (code, status) = raw(
        &leases.clone().into_client(),
        "PATCH",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/keel-control",
        "application/apply-patch+yaml",
        "{}",
    )
    .await;
    assert_eq!((code, status["message"].as_str()), (400, Some("fieldManager is required for apply requests")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_kinds_crds_discovery_and_graceful_deletion() {
    let (_dir, stand_in) = start(KubeApiOptions::default());
    let client = stand_in.client().await.unwrap();
    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService");
    let (resource, capabilities) = discovery.resolve_gvk(&gvk).expect("VirtualService is discoverable");
    assert_eq!((resource.plural.as_str(), capabilities.scope), ("virtualservices", kube::discovery::Scope::Namespaced));
    assert!(
        capabilities.subresources.iter().any(|(r, _)| r.plural == "virtualservices/status" || r.plural == "status"),
        "{:?}",
        capabilities.subresources
    );

    let v1beta1: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let vs: DynamicObject = from_json(
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": {"name": "reviews"}, "spec": {"hosts": ["reviews"]}, "status": {"ignored": true}}),
    );
    let created = v1beta1.create(&PostParams::default(), &vs).await.unwrap();
    assert_eq!(created.data.get("status"), None, "status is written through /status only");
    let condition = json!({"status": {"conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "spec.http[0]: bad"}]}});
    v1beta1.patch_status("reviews", &PatchParams::default(), &Patch::Merge(condition.clone())).await.unwrap();
    let v1: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"), "virtualservices"),
    );
    let read = v1.get("reviews").await.unwrap();
    assert_eq!(read.types.unwrap().api_version, "networking.istio.io/v1", "served at the version asked for");
    assert_eq!(read.data["status"], condition["status"]);
    assert_eq!(read.metadata.generation, Some(1));
    v1.patch("reviews", &PatchParams::default(), &Patch::Merge(json!({"spec": {"hosts": ["reviews", "ratings"]}}))).await.unwrap();
    assert_eq!(v1.get("reviews").await.unwrap().metadata.generation, Some(2), "a spec change is a new generation");
    // A controller's status apply names no object: the URL does.
    let accepted =
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "status": {"conditions": [{"type": "Accepted", "status": "True"}]}});
    v1.patch_status("reviews", &PatchParams::apply("keel-control").force(), &Patch::Apply(&accepted)).await.unwrap();
    let read = v1.get("reviews").await.unwrap();
    assert_eq!((read.data["status"]["conditions"][0]["status"].as_str(), read.metadata.generation), (Some("True"), Some(2)));

    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    let established = crds.create(&PostParams::default(), &from_json(crd)).await.unwrap();
    assert!(established.status.unwrap().conditions.unwrap().iter().any(|c| c.type_ == "Established" && c.status == "True"));
    let widget_gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let (widget, _) = kube::discovery::pinned_kind(&client, &widget_gvk).await.expect("a CRD's kind is discoverable");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &widget);
    widgets
        .create(
            &PostParams::default(),
            &from_json(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}})),
        )
        .await
        .unwrap();
    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    assert_eq!(refusal(widgets.get("w").await).code, 404, "deleting the CRD removes its kind");

    // Graceful deletion of a pod: deletionTimestamp first (MODIFIED), gone after the grace (DELETED).
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("leaving", "node-1", json!({}))).await.unwrap();
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while !matches!(next_event(&mut events).await, Event::InitDone) {}
    stand_in.delete_gracefully("v1", "Pod", Some("default"), "leaving", Duration::from_millis(300)).unwrap();
    let Event::Apply(terminating) = next_event(&mut events).await else { panic!("expected the pod marked for deletion") };
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert!(matches!(next_event(&mut events).await, Event::Delete(p) if p.name_any() == "leaving"));
}

#[test]
fn the_binary_explains_its_flags_and_refuses_bad_ones() {
    let bin = env!("CARGO_BIN_EXE_kube-stand-in");
    let help = std::process::Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--dir",
        "--state-file",
        "--admin-token",
        "--san",
        "--bookmark-interval-ms",
        "--event-window",
        "--max-watch-seconds",
        "--plain-http",
        "--log-requests",
    ] {
        assert!(text.contains(flag), "--help names {flag}:\n{text}");
    }
    let no_dir = std::process::Command::new(bin).output().unwrap();
    assert_eq!(no_dir.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_dir.stderr).contains("--dir <DIR>"));
    let dir = tempfile::tempdir().unwrap();
    let bad_state = dir.path().join("state.json");
    std::fs::write(&bad_state, "{\"objects\": [{\"apiVersion\": \"v9\", \"kind\": \"Nope\"}], \"resourceVersion\": \"3\"}").unwrap();
    let refused = std::process::Command::new(bin).arg("--dir").arg(dir.path()).arg("--state-file").arg(&bad_state).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no resource serves v9 Nope"), "{}", String::from_utf8_lossy(&refused.stderr));
}

/// kubectl from `$KUBECTL` or PATH; under CI=true its absence fails the test.
fn kubectl() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("KUBECTL")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())));
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "kubectl is required under CI=true (cargo xtask setup installs it; or set KUBECTL)");
        eprintln!("SKIPPED: no kubectl on PATH or in $KUBECTL");
    }
    found
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: keel-system
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: keel
  namespace: keel-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: keel:node
rules:
- apiGroups: [""]
  resources: [pods, namespaces]
  verbs: [get, list, watch]
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: keel
  namespace: keel-system
spec:
  selector:
    matchLabels: {app: keel}
  template:
    metadata:
      labels: {app: keel}
    spec:
      serviceAccountName: keel
      priorityClassName: system-node-critical
      containers:
      - name: keel
        image: keel:dev
        ports: [{containerPort: 15008, name: hbone}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: keel-system
spec:
  hosts: [reviews]
"#;

#[test]
fn kubectl_applies_manifests_server_side() {
    let Some(kubectl) = kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stand_in = KubeApi::start(dir.path()).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("keel.yaml"), MANIFESTS).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&kubectl).arg("--kubeconfig").arg(stand_in.kubeconfig()).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let path = manifests.to_str().unwrap();
    for _ in 0..2 {
        let (ok, stdout, stderr) = run(&["apply", "--server-side", "-f", path]);
        assert!(ok, "kubectl apply: {stdout}{stderr}\nstand-in log:\n{}", stand_in.log());
        for applied in [
            "namespace/keel-system",
            "serviceaccount/keel",
            "clusterrole.rbac.authorization.k8s.io/keel:node",
            "daemonset.apps/keel",
            "virtualservice.networking.istio.io/reviews",
        ] {
            assert!(stdout.contains(&format!("{applied} serverside-applied")), "{applied} in:\n{stdout}");
        }
    }
    let (ok, stdout, stderr) = run(&["get", "daemonsets,virtualservices", "-n", "keel-system", "-o", "name"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["daemonset.apps/keel", "virtualservice.networking.istio.io/reviews"]);
    let (ok, stdout, _) = run(&["get", "ns", "keel-system", "-o", "jsonpath={.metadata.labels.istio\\.io/dataplane-mode}"]);
    assert!(ok);
    assert_eq!(stdout, "ambient");
    let (ok, stdout, _) = run(&["get", "vs", "-n", "keel-system"]);
    assert!(ok && stdout.starts_with("NAME") && stdout.contains("reviews"), "{stdout}");

    std::fs::write(manifests.join("keel.yaml"), MANIFESTS.replace("containerPort", "containerPortt")).unwrap();
    let (ok, _, stderr) = run(&["apply", "--server-side", "-f", path]);
    assert!(!ok);
    assert!(stderr.contains("unknown field \"spec.template.spec.containers[0].ports[0].containerPortt\""), "{stderr}");
}

/// keel's generated CRDs (deploy/crds/istio.yaml) installed with kubectl: the stand-in refuses a CRD that is not
/// structural, as the API server does, and then checks every Istio object against the installed schema. Istio
/// objects as users write them (tests/fixtures/istio-objects.yaml and the traffic scenarios keel's translation is
/// tested with) must all be accepted; a wrongly typed or misspelt field is refused naming the field.
#[test]
fn generated_istio_crds_install_and_accept_what_users_write() {
    let Some(kubectl) = kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stand_in = KubeApi::start(dir.path()).unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(stand_in.kubeconfig())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crds = root.join("deploy/crds/istio.yaml");
    let (ok, stdout, stderr) = run(&["apply", "--server-side", "-f", crds.to_str().unwrap()], None);
    assert!(ok, "kubectl apply of the CRDs: {stdout}{stderr}\nstand-in log:\n{}", stand_in.log());
    for crd in ["virtualservices.networking.istio.io", "destinationrules.networking.istio.io", "serviceentries.networking.istio.io"] {
        assert!(stdout.contains(&format!("customresourcedefinition.apiextensions.k8s.io/{crd} serverside-applied")), "{stdout}");
    }
    for crd in ["authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"] {
        assert!(stdout.contains(&format!("customresourcedefinition.apiextensions.k8s.io/{crd} serverside-applied")), "{stdout}");
    }

    // What users write, every kind and version.
    let mut documents = vec![std::fs::read_to_string(root.join("tests/fixtures/istio-objects.yaml")).unwrap()];
    for scenario in std::fs::read_dir(root.join("mesh/tests/fixtures/traffic/scenarios")).unwrap() {
        documents.push(std::fs::read_to_string(scenario.unwrap().path()).unwrap());
    }
    let istio: Vec<String> = documents
        .iter()
        .flat_map(|file| file.split("\n---"))
        .filter(|doc| doc.contains("istio.io/"))
        .map(|doc| {
            let mut value: Value = serde_yaml_ng::from_str(doc).unwrap();
            value["metadata"]["namespace"] = json!("default");
            serde_json::to_string(&value).unwrap()
        })
        .collect();
    assert!(istio.len() >= 20, "{} Istio objects", istio.len());
    let stream = istio.join("\n---\n");
    let (ok, stdout, stderr) = run(&["apply", "--server-side", "-f", "-"], Some(&stream));
    assert!(ok, "kubectl apply of users' Istio objects: {stdout}{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with("serverside-applied")).count(), istio.len(), "{stdout}");
    let (ok, stdout, _) = run(&["get", "vs,dr,se,ap,pa", "-A", "-o", "name"], None);
    assert!(ok && stdout.contains("virtualservice.networking.istio.io/reviews") && stdout.contains("peerauthentication.security.istio.io/finance"));

    let refused = |object: &str| {
        let (ok, stdout, stderr) = run(&["apply", "--server-side", "-f", "-"], Some(object));
        assert!(!ok, "accepted: {object}\n{stdout}");
        stderr
    };
    let vs = |spec: &str| {
        format!("{{\"apiVersion\": \"networking.istio.io/v1\", \"kind\": \"VirtualService\", \"metadata\": {{\"name\": \"bad\", \"namespace\": \"default\"}}, \"spec\": {spec}}}")
    };
    let stderr = refused(&vs(r#"{"hosts": "reviews"}"#));
    assert!(stderr.contains("spec.hosts: Invalid value: \"string\": spec.hosts in body must be of type array"), "{stderr}");
    let stderr = refused(&vs(r#"{"hosts": ["reviews"], "http": [{"rout": []}]}"#));
    assert!(stderr.contains("unknown field \"spec.http[0].rout\""), "{stderr}");
    let stderr = refused(&vs(r#"{"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "r", "port": {"number": -1}}}]}]}"#));
    assert!(stderr.contains("spec.http[0].route[0].destination.port.number"), "{stderr}");

    // A CRD that is not structural never installs.
    let loose = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {}}}}}}]}}"#;
    let stderr = refused(loose);
    assert!(stderr.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty"), "{stderr}");
}
