//! Events (`events.k8s.io/v1`, type Warning, reason `Rejected`) on the Istio objects keel-control refuses, naming
//! the field, so `kubectl describe` and `kubectl events` show why an object is not in force (its last good version
//! is). Written by the leader only (every replica refuses the same objects from its own watches), each distinct
//! refusal of an object once per `REPEAT_AFTER`, through a bounded queue: a flood of bad objects costs dropped
//! Events, never memory or the API server's patience.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Api, PostParams},
    Client,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// Refusals waiting to be reported; beyond it they are dropped (the log has them all).
const QUEUE: usize = 256;
/// The same refusal of the same object is reported again only after this.
const REPEAT_AFTER: Duration = Duration::from_secs(600);
/// Refusals remembered for de-duplication at most.
const REMEMBERED: usize = 4096;
/// An Event's note is at most 1 kB (the API server's limit).
const MAX_NOTE: usize = 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
pub const REPORTING_CONTROLLER: &str = "keel.io/keel-control";

/// An object keel refused, as the Event's `regarding` names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rejection {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub message: String,
}

impl Rejection {
    pub fn of(value: &Value, message: &str) -> Rejection {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let metadata = &value["metadata"];
        Rejection {
            api_version: text(&value["apiVersion"]),
            kind: text(&value["kind"]),
            namespace: metadata["namespace"].as_str().unwrap_or("default").to_owned(),
            name: text(&metadata["name"]),
            uid: metadata["uid"].as_str().map(str::to_owned),
            message: message.to_owned(),
        }
    }
}

/// Where the controller drops refusals; never blocks.
#[derive(Clone)]
pub struct Reports(mpsc::Sender<Rejection>);

impl Reports {
    pub fn report(&self, rejection: Rejection) {
        if self.0.try_send(rejection).is_err() {
            debug!("Event queue full: a refusal goes unreported (it is logged)");
        }
    }
}

/// The queue, and the task that writes its Events while this replica leads.
pub fn reporter(client: Client, instance: String, leading: watch::Receiver<bool>) -> (Reports, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Reports(tx), run(client, instance, rx, leading))
}

async fn run(client: Client, instance: String, mut queue: mpsc::Receiver<Rejection>, leading: watch::Receiver<bool>) {
    let mut reported: HashMap<Rejection, Instant> = HashMap::new();
    while let Some(rejection) = queue.recv().await {
        if !*leading.borrow() || reported.get(&rejection).is_some_and(|at| at.elapsed() < REPEAT_AFTER) {
            continue;
        }
        if reported.len() >= REMEMBERED {
            reported.retain(|_, at| at.elapsed() < REPEAT_AFTER);
            if reported.len() >= REMEMBERED {
                reported.clear();
            }
        }
        let api: Api<Event> = Api::namespaced(client.clone(), &rejection.namespace);
        let event = event(&rejection, &instance, Timestamp::now());
        match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &event)).await {
            Ok(Ok(_)) => {
                reported.insert(rejection, Instant::now());
            }
            Ok(Err(e)) => {
                warn!(error = %e, object = %format!("{} {}/{}", rejection.kind, rejection.namespace, rejection.name), "writing an Event failed")
            }
            Err(_) => warn!("writing an Event timed out"),
        }
    }
}

fn event(rejection: &Rejection, instance: &str, now: Timestamp) -> Event {
    let mut note = format!("keel-control refused this version (the last good one stays in force): {}", rejection.message);
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    Event {
        metadata: ObjectMeta {
            // kubectl's naming: the object's name and a unique suffix.
            name: Some(format!("{}.{:x}", rejection.name, now.as_nanosecond())),
            namespace: Some(rejection.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Translate".into()),
        reason: Some("Rejected".into()),
        note: Some(note),
        type_: Some("Warning".into()),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.to_owned()),
        regarding: Some(ObjectReference {
            api_version: Some(rejection.api_version.clone()),
            kind: Some(rejection.kind.clone()),
            namespace: Some(rejection.namespace.clone()),
            name: Some(rejection.name.clone()),
            uid: rejection.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_the_object_and_the_field_and_fits_the_api_limit() {
        let value = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                       "metadata": {"name": "allow", "namespace": "demo", "uid": "u-1"}});
        let rejection = Rejection::of(&value, "field spec.action: \"MAYBE\" is not ALLOW, DENY, AUDIT or CUSTOM");
        let event = event(&rejection, "keel-control-0", Timestamp::now());
        let regarding = event.regarding.unwrap();
        assert_eq!(
            (regarding.kind.as_deref(), regarding.name.as_deref(), regarding.uid.as_deref()),
            (Some("AuthorizationPolicy"), Some("allow"), Some("u-1"))
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("demo"));
        assert!(event.note.unwrap().contains("field spec.action"));
        assert_eq!((event.type_.as_deref(), event.reason.as_deref()), (Some("Warning"), Some("Rejected")));

        let long = Rejection { message: "é".repeat(2000), ..rejection };
        assert!(super::event(&long, "i", Timestamp::now()).note.unwrap().len() <= MAX_NOTE);
    }
}
