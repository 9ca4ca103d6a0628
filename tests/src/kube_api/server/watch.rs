//! Watches: a chunked stream of JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}`.
//!
//! Where a watch starts, as the real server decides it: `sendInitialEvents=true` (streaming list) or no/`"0"`
//! resourceVersion → synthetic ADDED events for the current state first (then, for a streaming list, a BOOKMARK
//! annotated `k8s.io/initial-events-end`); a resourceVersion → the retained events after it, or an ERROR event
//! carrying 410 Expired when it is older than the window. A label or field selector turns a MODIFIED event into
//! ADDED or DELETED when the object starts or stops matching. A watch ends at `timeoutSeconds`, on compaction, or
//! when it falls too far behind (the client resumes from its last resourceVersion).

use super::handlers::{Body, Call, Target};
use super::objects;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{Event, Store};
use super::Shared;
use bytes::Bytes;
use http::{header, Response};
use http_body_util::{channel::Channel, BodyExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

struct Filter {
    key: String,
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    /// What a client of this watch sees of `event`, if anything.
    fn see(&self, event: &Event) -> Option<&'static str> {
        if event.key != self.key || self.namespace.as_deref().is_some_and(|ns| objects::namespace_of(&event.object) != ns) {
            return None;
        }
        let now = self.selector.matches(&event.object);
        if event.kind != "MODIFIED" {
            return now.then_some(event.kind);
        }
        match (event.previous.as_ref().is_none_or(|p| self.selector.matches(p)), now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

fn invalid(field: &str, detail: &str) -> ApiError {
    ApiError::invalid("", "ListOptions", "", field, "FieldValueForbidden", detail)
}

/// Counts an open watch for as long as it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn start(shared: &Arc<Shared>, store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    if shared.open_watches.fetch_add(1, Ordering::Relaxed) >= shared.max_watches {
        shared.open_watches.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(429, "TooManyRequests", format!("too many open watches (at most {})", shared.max_watches)));
    }
    let open = Open(shared.clone());
    let selector = Selector::parse(&t.rt, call.param("labelSelector"), call.param("fieldSelector"))?;
    let bookmarks = call.param("allowWatchBookmarks") == Some("true");
    let send_initial = call.param("sendInitialEvents").map(|v| v == "true");
    let asked = call.param("resourceVersion");
    match (send_initial, call.param("resourceVersionMatch")) {
        (Some(_), Some("NotOlderThan")) if bookmarks || send_initial == Some(false) => {}
        (Some(_), Some("NotOlderThan")) => {
            return Err(invalid("allowWatchBookmarks", "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"))
        }
        (Some(_), _) => return Err(invalid("resourceVersionMatch", "Forbidden: sendInitialEvents requires resourceVersionMatch=NotOlderThan")),
        (None, Some(_)) => {
            return Err(invalid(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ))
        }
        (None, None) => {}
    }
    let initial = send_initial.unwrap_or(matches!(asked, None | Some("0")));
    let from = match asked.filter(|_| !initial) {
        Some(rv) => rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        None => store.rv(),
    };
    let timeout =
        call.param("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs).unwrap_or(shared.max_watch).min(shared.max_watch);
    let filter = Filter { key: t.rt.key(), namespace: t.namespace.clone(), selector };
    let present = {
        let (rt, version) = (t.rt.clone(), t.version.clone());
        move |o: &Value| objects::present(&rt, &version, o)
    };
    let bookmark = {
        let (kind, api_version) = (t.rt.kind.clone(), t.rt.api_version(&t.version));
        move |rv: u64, end_of_initial: bool| {
            let mut metadata = json!({ "resourceVersion": rv.to_string() });
            if end_of_initial {
                metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            line("BOOKMARK", &json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }))
        }
    };
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(64);
    let response = Response::builder().header(header::CONTENT_TYPE, "application/json").body(body.boxed()).expect("a valid response");
    let (backlog, mut events) = match store.follow(from) {
        Ok(follow) => follow,
        Err(e) => {
            tokio::spawn(async move {
                let _open = open;
                tx.send_data(line("ERROR", &e.to_status())).await
            });
            return Ok(response);
        }
    };
    let current: Vec<Arc<Value>> =
        if initial { store.list(&t.rt, t.namespace.as_deref()).into_iter().filter(|o| filter.selector.matches(o)).collect() } else { Vec::new() };
    let mut closing = store.close_watches.subscribe();
    drop(store);
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let _open = open;
        let mut seen = from;
        let mut opening: Vec<Bytes> = current.iter().map(|o| line("ADDED", &present(o))).collect();
        if send_initial == Some(true) {
            opening.push(bookmark(seen, true));
        }
        for event in &backlog {
            seen = event.rv;
            opening.extend(filter.see(event).map(|kind| line(kind, &present(&event.object))));
        }
        for chunk in opening {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let chunk = tokio::select! {
                received = events.recv() => match received {
                    Ok(event) if event.rv > seen => {
                        seen = event.rv;
                        match filter.see(&event) {
                            Some(kind) => line(kind, &present(&event.object)),
                            None => continue,
                        }
                    }
                    Ok(_) => continue,
                    // Lagged (too slow a reader) or closed: end the watch; the client resumes where it was.
                    Err(_) => return,
                },
                _ = ticks.tick(), if bookmarks => bookmark(seen, false),
                _ = tokio::time::sleep_until(deadline) => return,
                _ = closing.changed() => return,
            };
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}
