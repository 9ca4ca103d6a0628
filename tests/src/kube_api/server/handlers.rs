//! Routing and the verbs: authentication, discovery, get/list/create/update/patch/delete on resource URLs, the
//! `/status` subresource, TokenReview, and the harness's admin endpoints under `/stand-in/`.

use super::objects::{self, name_of};
use super::registry::ResourceType;
use super::selector::Selector;
use super::status::{self, ApiError};
use super::store::Store;
use super::{discovery, openapi, tokens, watch, Shared};
use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

pub type Body = BoxBody<Bytes, Infallible>;
/// The real server's limit on a request body.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn respond(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())).boxed();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid response")
}

pub async fn serve(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let line = format!("{} {}", req.method(), req.uri());
    let response = handle(&shared, req).await.unwrap_or_else(|e| respond(e.code, &e.to_status()));
    if shared.log_requests {
        eprintln!("kube-stand-in: {line} -> {}", response.status().as_u16());
    }
    Ok(response)
}

#[derive(PartialEq)]
enum Caller {
    Admin,
    User,
}

fn authenticate(shared: &Shared, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else { return Err(ApiError::unauthorized()) };
    if token == shared.admin_token {
        return Ok(Caller::Admin);
    }
    let store = shared.lock();
    match tokens::authenticate(&store, token) {
        Ok((spec, _)) if spec.audiences().iter().any(|a| a == tokens::API_AUDIENCE) => Ok(Caller::User),
        _ => Err(ApiError::unauthorized()),
    }
}

/// The request, once read: everything the verbs need.
pub struct Call {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub content_type: String,
    pub accept: String,
    pub body: Bytes,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => return Ok(respond(200, &discovery::version())),
        ["healthz" | "readyz" | "livez"] => return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed())),
        _ => {}
    }
    let caller = authenticate(shared, &parts.headers)?;
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|_| ApiError::too_large(MAX_BODY))?.to_bytes();
    let header = |h: header::HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let call = Call {
        method: parts.method.clone(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect(),
        content_type: header(header::CONTENT_TYPE),
        accept: header(header::ACCEPT),
        body,
    };
    let store = shared.lock();
    let found = |doc: Option<Value>| doc.map(|d| respond(200, &d)).ok_or_else(ApiError::unknown_path);
    match segments.as_slice() {
        ["stand-in", rest @ ..] if caller == Caller::Admin => admin(shared, store, rest, &call),
        ["stand-in", ..] => Err(ApiError::forbidden("the stand-in's admin endpoints need the admin token")),
        ["api"] => Ok(respond(200, &discovery::core_versions(&shared.address))),
        ["apis"] => Ok(respond(200, &discovery::groups(&store.registry))),
        ["apis", group] => found(discovery::one_group(&store.registry, group)),
        ["api", "v1"] => found(discovery::resources(&store.registry, "", "v1")),
        ["apis", group, version] => found(discovery::resources(&store.registry, group, version)),
        ["openapi", "v3"] => Ok(respond(200, &openapi::index(&store.registry))),
        ["openapi", "v3", "api", "v1"] => found(openapi::document(&store.registry, "", "v1")),
        ["openapi", "v3", "apis", group, version] => found(openapi::document(&store.registry, group, version)),
        ["api", "v1", rest @ ..] => resource(shared, store, "", "v1", rest, &call),
        ["apis", group, version, rest @ ..] => resource(shared, store, group, version, rest, &call),
        _ => Err(ApiError::unknown_path()),
    }
}

/// A resource URL, resolved.
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

fn target(store: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() && !matches!(more[0], "status" | "finalize") => (Some(ns.to_string()), more),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return Err(ApiError::unknown_path()),
    };
    let rt = store.registry.find(group, version, plural).ok_or_else(ApiError::unknown_path)?;
    // A cluster-scoped resource has no namespace; a namespaced object is named only inside its namespace.
    let scoped_wrong = matches!((rt.namespaced, &namespace, &name), (false, Some(_), _) | (true, None, Some(_)));
    if scoped_wrong || sub.is_some_and(|s| s != "status" || !rt.status) {
        return Err(ApiError::unknown_path());
    }
    Ok(Target { rt, version: version.to_owned(), namespace, name, status: sub.is_some() })
}

fn resource(
    shared: &Arc<Shared>,
    store: MutexGuard<'_, Store>,
    group: &str,
    version: &str,
    rest: &[&str],
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let t = target(&store, group, version, rest)?;
    if call.param("dryRun").is_some() {
        return Err(ApiError::bad_request("dryRun is not supported by this API stand-in"));
    }
    let m = &call.method;
    if t.rt.create_only {
        return match (m, &t.name, &t.namespace) {
            (&Method::POST, None, None) => token_review(store, &t, call),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    match (m, t.name.is_some(), t.status) {
        (&Method::GET, false, _) if matches!(call.param("watch"), Some("1" | "true")) => watch::start(shared, store, &t, call),
        (&Method::GET, false, _) => list(&store, &t, call),
        (&Method::POST, false, _) if t.namespace.is_some() || !t.rt.namespaced => create(store, &t, call),
        (&Method::GET, true, _) => {
            let object = store.get(&t.rt, t.namespace.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default());
            let object = object.ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, t.name.as_deref().unwrap_or_default()))?;
            Ok(respond(200, &objects::present(&t.rt, &t.version, &object)))
        }
        (&Method::PUT, true, _) => update(store, &t, call),
        (&Method::PATCH, true, _) => patch(store, &t, call),
        (&Method::DELETE, true, false) => delete(store, &t, call),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn token_review(store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let mut request = objects::parse_body(&call.content_type, &call.body)?;
    objects::fit_to_url(&mut request, &t.rt, &t.version, None)?;
    if let super::registry::Schema::Typed(decode) = t.rt.schema {
        decode(&request)?;
    }
    Ok(respond(201, &tokens::review(&store, request)?))
}

/// A continue token: the resourceVersion of the list's first page and the last object returned.
fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({ "rv": rv, "start": [namespace, name] }).to_string())
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let v: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    Some((v["rv"].as_u64()?, (v["start"][0].as_str()?.to_owned(), v["start"][1].as_str()?.to_owned())))
}

fn list(store: &Store, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let selector = Selector::parse(&t.rt, call.param("labelSelector"), call.param("fieldSelector"))?;
    let limit = call
        .param("limit")
        .map(|l| l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}"))))
        .transpose()?
        .filter(|l| *l > 0);
    let (rv, after) = match call.param("continue") {
        Some(token) => {
            let (rv, after) = decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if !store.retained(rv) {
                return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
            }
            (rv, Some(after))
        }
        None => (store.rv(), None),
    };
    if let Some(asked) = call.param("resourceVersion").filter(|v| *v != "0") {
        let asked: u64 = asked.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {asked:?}")))?;
        match call.param("resourceVersionMatch") {
            Some("Exact") if asked != store.rv() => return Err(ApiError::gone(format!("too old resource version: {asked} ({})", store.rv()))),
            _ if asked > store.rv() => {
                return Err(ApiError::new(504, "Timeout", format!("Too large resource version: {asked}, current: {}", store.rv())))
            }
            _ => {}
        }
    }
    let key = |o: &Value| (objects::namespace_of(o).to_owned(), name_of(o).to_owned());
    let matching: Vec<Arc<Value>> =
        store.list(&t.rt, t.namespace.as_deref()).into_iter().filter(|o| selector.matches(o) && after.as_ref().is_none_or(|a| key(o) > *a)).collect();
    let page = limit.unwrap_or(usize::MAX).min(matching.len());
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if page < matching.len() {
        let (ns, name) = key(&matching[page - 1]);
        metadata["continue"] = json!(encode_continue(rv, &ns, &name));
        metadata["remainingItemCount"] = json!(matching.len() - page);
    }
    let builtin = matches!(t.rt.schema, super::registry::Schema::Typed(_));
    let items: Vec<Value> = matching[..page]
        .iter()
        .map(|o| {
            let mut item = objects::present(&t.rt, &t.version, o);
            // Typed lists carry no apiVersion/kind on their items; custom resource lists do.
            if builtin {
                item.as_object_mut().map(|m| (m.remove("apiVersion"), m.remove("kind")));
            }
            item
        })
        .collect();
    if call.accept.contains("as=Table") {
        return Ok(respond(200, &table(&metadata, &items)));
    }
    Ok(respond(
        200,
        &json!({ "kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(&t.version), "metadata": metadata, "items": items }),
    ))
}

/// The server-side table kubectl prints (`kubectl get`): the generic columns, name and age.
fn table(metadata: &Value, items: &[Value]) -> Value {
    let column = |name: &str, kind: &str, format: &str| json!({ "name": name, "type": kind, "format": format, "description": "", "priority": 0 });
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"] });
            json!({ "cells": [o["metadata"]["name"], o["metadata"]["creationTimestamp"]], "object": object })
        })
        .collect();
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": [column("Name", "string", "name"), column("Created At", "date", "")], "rows": rows })
}

fn create(mut store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let mut object = objects::parse_body(&call.content_type, &call.body)?;
    objects::fit_to_url(&mut object, &t.rt, &t.version, t.namespace.as_deref())?;
    if object.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    objects::generate_name(&mut object);
    create_checked(&mut store, t, object)
}

/// Creates a validated object in an existing namespace; a kind with a status subresource starts from its
/// initial status.
fn create_checked(store: &mut Store, t: &Target, mut object: Value) -> Result<Response<Body>, ApiError> {
    objects::admit(&t.rt, &mut object)?;
    if let Some(ns) = t.namespace.as_deref().filter(|ns| !store.namespace_exists(ns)) {
        return Err(ApiError::not_found("", "namespaces", ns));
    }
    if t.rt.status {
        objects::initial_status(&t.rt, &mut object);
    }
    let created = store.create(&t.rt, object)?;
    Ok(respond(201, &objects::present(&t.rt, &t.version, &created)))
}

fn stored(store: &Store, t: &Target) -> Result<Arc<Value>, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    store.get(&t.rt, t.namespace.as_deref().unwrap_or_default(), name).ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, name))
}

fn same_name(t: &Target, object: &Value) -> Result<(), ApiError> {
    let (have, url) = (name_of(object), t.name.as_deref().unwrap_or_default());
    if have != url {
        return Err(ApiError::bad_request(format!("the name of the object ({have}) does not match the name on the URL ({url})")));
    }
    Ok(())
}

/// Stores `written` over `old`: freshness, the status split, validation.
fn write(store: &mut Store, t: &Target, written: Value, old: Arc<Value>) -> Result<Response<Body>, ApiError> {
    objects::check_fresh(&t.rt, &written, &old)?;
    let mut next = objects::split_status(&t.rt, t.status, written, &old);
    objects::admit(&t.rt, &mut next)?;
    let updated = store.update(&t.rt, next, old)?;
    Ok(respond(200, &objects::present(&t.rt, &t.version, &updated)))
}

fn update(mut store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let mut object = objects::parse_body(&call.content_type, &call.body)?;
    objects::fit_to_url(&mut object, &t.rt, &t.version, t.namespace.as_deref())?;
    same_name(t, &object)?;
    let old = stored(&store, t)?;
    write(&mut store, t, object, old)
}

fn patch(mut store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let media = call.content_type.split(';').next().unwrap_or_default().trim().to_owned();
    let old = stored(&store, t);
    let mut next = match media.as_str() {
        "application/merge-patch+json" => {
            let patch = objects::parse_body(&media, &call.body)?;
            let old = old?;
            objects::check_fresh(&t.rt, &patch, &old)?;
            let mut next = (*old).clone();
            json_patch::merge(&mut next, &patch);
            next
        }
        "application/json-patch+json" => {
            let ops: Vec<json_patch::PatchOperation> =
                serde_json::from_slice(&call.body).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut next = (*old?).clone();
            json_patch::patch(&mut next, &ops).map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
            next
        }
        "application/apply-patch+yaml" => {
            if call.param("fieldManager").is_none() {
                return Err(ApiError::bad_request("fieldManager is required for apply requests"));
            }
            let mut applied = objects::parse_body(&media, &call.body)?;
            if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
                return Err(ApiError::bad_request("invalid object type: an applied configuration must name its apiVersion and kind"));
            }
            objects::fit_to_url(&mut applied, &t.rt, &t.version, t.namespace.as_deref())?;
            // An applied configuration may leave the name to the URL (a status apply usually does).
            if name_of(&applied).is_empty() {
                applied["metadata"]["name"] = json!(t.name);
            }
            same_name(t, &applied)?;
            match old {
                Err(e) if e.code == 404 && !t.status => return create_checked(&mut store, t, applied),
                Err(e) => return Err(e),
                Ok(old) => {
                    objects::check_fresh(&t.rt, &applied, &old)?;
                    let mut next = (*old).clone();
                    objects::apply_over(&mut next, &applied);
                    next
                }
            }
        }
        other => {
            let accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (this API stand-in does not \
                            implement strategic merge patch: use server-side apply)";
            return Err(ApiError::unsupported_media_type(other, accepted));
        }
    };
    let old = stored(&store, t)?;
    // The patch may not move the object: its identity and version stay those of the stored object.
    next["metadata"]["name"] = old["metadata"]["name"].clone();
    next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    write(&mut store, t, next, old)
}

fn delete(mut store: MutexGuard<'_, Store>, t: &Target, call: &Call) -> Result<Response<Body>, ApiError> {
    let old = stored(&store, t)?;
    let options: Value = if call.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&call.body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(want) = options.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str) {
            let have = old["metadata"][field].as_str().unwrap_or_default();
            if want != have {
                let why = format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}");
                return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name_of(&old), &why));
            }
        }
    }
    if old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        let marked = store.begin_deletion(&t.rt, old, 0);
        return Ok(respond(200, &objects::present(&t.rt, &t.version, &marked)));
    }
    let uid = old["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let gone = store.remove(&t.rt, old);
    Ok(respond(200, &status::success(&t.rt.group, &t.rt.plural, name_of(&gone), &uid)))
}

/// An object named by kind, for the admin endpoints.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectRef {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
    #[serde(default)]
    grace_millis: u64,
}

fn admin_body<T: serde::de::DeserializeOwned>(call: &Call) -> Result<T, ApiError> {
    serde_json::from_slice(&call.body).map_err(|e| ApiError::bad_request(format!("admin request: {e}")))
}

fn admin(shared: &Arc<Shared>, mut store: MutexGuard<'_, Store>, rest: &[&str], call: &Call) -> Result<Response<Body>, ApiError> {
    let resolve = |store: &Store, r: &ObjectRef| {
        let (rt, _) = store
            .registry
            .by_kind(&r.api_version, &r.kind)
            .ok_or_else(|| ApiError::bad_request(format!("no resource serves {} {}", r.api_version, r.kind)))?;
        let found = store.get(&rt, &r.namespace, &r.name).ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &r.name));
        Ok::<_, ApiError>((rt, found))
    };
    match (&call.method, rest) {
        (&Method::PUT, ["tokens"]) => {
            let spec: tokens::TokenSpec = admin_body(call)?;
            store.tokens.insert(spec.token.clone(), spec);
            Ok(respond(200, &json!({})))
        }
        (&Method::POST, ["compact"]) => Ok(respond(200, &json!({ "resourceVersion": store.compact().to_string() }))),
        // The world writing an object as it is (status included): kubelet, controllers, users.
        (&Method::POST, ["objects"]) => {
            let mut object = objects::parse_body("application/json", &call.body)?;
            let (api_version, kind) =
                (object["apiVersion"].as_str().unwrap_or_default().to_owned(), object["kind"].as_str().unwrap_or_default().to_owned());
            let (rt, version) = store
                .registry
                .by_kind(&api_version, &kind)
                .ok_or_else(|| ApiError::bad_request(format!("no resource serves {api_version} {kind}")))?;
            let namespace = rt.namespaced.then(|| Some(objects::namespace_of(&object)).filter(|n| !n.is_empty()).unwrap_or("default").to_owned());
            objects::fit_to_url(&mut object, &rt, &version, namespace.as_deref())?;
            let t = Target { rt: rt.clone(), version, namespace, name: Some(name_of(&object).to_owned()), status: false };
            match stored(&store, &t) {
                Ok(old) => {
                    object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                    objects::admit(&rt, &mut object)?;
                    let updated = store.update(&rt, object, old)?;
                    Ok(respond(200, &updated))
                }
                Err(_) => {
                    objects::admit(&rt, &mut object)?;
                    if rt.status && object.get("status").is_none() {
                        objects::initial_status(&rt, &mut object);
                    }
                    if let Some(ns) = t.namespace.as_deref().filter(|ns| !store.namespace_exists(ns)) {
                        return Err(ApiError::not_found("", "namespaces", ns));
                    }
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    Ok(respond(201, &*store.create(&rt, object)?))
                }
            }
        }
        (&Method::POST, ["get"]) => {
            let (_, found) = resolve(&store, &admin_body(call)?)?;
            Ok(respond(200, &*found?))
        }
        (&Method::POST, ["delete"]) => {
            let (rt, found) = resolve(&store, &admin_body(call)?)?;
            Ok(respond(200, &store.remove(&rt, found?)))
        }
        // A graceful deletion as kubelet carries it out: deletionTimestamp now, the object gone after the grace.
        (&Method::POST, ["terminate"]) => {
            let r: ObjectRef = admin_body(call)?;
            let (rt, found) = resolve(&store, &r)?;
            let marked = store.begin_deletion(&rt, found?, r.grace_millis.div_ceil(1000));
            let uid = marked["metadata"]["uid"].clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(r.grace_millis)).await;
                let mut store = shared.lock();
                if let Some(current) = store.get(&rt, &r.namespace, &r.name).filter(|o| o["metadata"]["uid"] == uid) {
                    store.remove(&rt, current);
                }
            });
            Ok(respond(200, &marked))
        }
        _ => Err(ApiError::unknown_path()),
    }
}
