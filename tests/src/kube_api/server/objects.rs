//! Shaping objects on their way in and out: request bodies (JSON, or YAML for apply), the type and namespace a URL
//! implies, validation, the status subresource split, and the version a client asked for on the way out.

use super::registry::{ResourceType, Schema};
use super::status::ApiError;
use super::store::random_uid;
use super::structural::{self, Mismatch};
use super::validate;
use base64::Engine;
use serde_json::{json, Value};

/// Parses an object: JSON, or YAML for `application/yaml` and `application/apply-patch+yaml`.
pub fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "application/merge-patch+json" => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml_ng::from_slice::<Value>(body).map_err(|e| e.to_string()),
        other => {
            return Err(ApiError::unsupported_media_type(other, "application/json, application/yaml (this API stand-in reads no protobuf or CBOR)"))
        }
    };
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad_request("the body of the request is not an object")),
        Err(e) => Err(ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))),
    }
}

pub fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

pub fn namespace_of(o: &Value) -> &str {
    o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

/// Checks (or fills in) `apiVersion` and `kind` against the URL's resource and version, and the namespace
/// against the URL's (filled in when absent; a cluster-scoped object carries none).
pub fn fit_to_url(object: &mut Value, rt: &ResourceType, version: &str, namespace: Option<&str>) -> Result<(), ApiError> {
    let expected = rt.api_version(version);
    match object.get("apiVersion").and_then(Value::as_str) {
        None => object["apiVersion"] = json!(expected),
        Some(v) if v == expected => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!("the API version in the data ({v}) does not match the expected API version ({expected})")))
        }
    }
    match object.get("kind").and_then(Value::as_str) {
        None => object["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => return Err(ApiError::bad_request(format!("the kind in the data ({k}) does not match the expected kind ({})", rt.kind))),
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    let metadata = object["metadata"].as_object_mut().expect("made an object above");
    metadata.remove("managedFields");
    match (rt.namespaced, namespace) {
        (true, Some(ns)) => match metadata.get("namespace").and_then(Value::as_str) {
            None | Some("") => drop(metadata.insert("namespace".to_owned(), json!(ns))),
            Some(have) if have == ns => {}
            Some(_) => return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request")),
        },
        _ => drop(metadata.remove("namespace")),
    }
    // Kept at the storage version; `present` serves it at whichever version is asked for.
    object["apiVersion"] = json!(rt.api_version(rt.storage_version()));
    Ok(())
}

/// Gives an object created with only `metadata.generateName` its name.
pub fn generate_name(object: &mut Value) {
    let prefix = object.pointer("/metadata/generateName").and_then(Value::as_str).map(str::to_owned);
    if let (Some(prefix), "") = (prefix, name_of(object)) {
        let suffix: String = random_uid().chars().filter(char::is_ascii_alphanumeric).take(5).collect();
        object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
    }
}

/// Admission: strict decoding, the name and labels checked as the real server checks them, then what the real
/// server rewrites (a Secret's `stringData` is merged into `data`, base64, and never stored).
pub fn admit(rt: &ResourceType, object: &mut Value) -> Result<(), ApiError> {
    validate(rt, object)?;
    if rt.group.is_empty() && rt.plural == "secrets" {
        if let Some(Value::Object(plain)) = object.as_object_mut().and_then(|m| m.remove("stringData")) {
            for (k, v) in plain {
                object["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

fn validate(rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
    match &rt.schema {
        Schema::Typed(decode) => decode(object)?,
        Schema::Custom => validate::custom(object, &rt.kind)?,
        Schema::Crd(schemas) => {
            validate::custom(object, &rt.kind)?;
            by_crd_schema(rt, schemas, object)?;
        }
    }
    let name = name_of(object);
    let invalid = |field: &str, reason: &str, detail: &str| ApiError::invalid(&rt.group, &rt.kind, name, field, reason, detail);
    if name.is_empty() {
        return Err(invalid("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"));
    }
    if let Some(detail) = validate::name_problem(rt.names, name) {
        return Err(invalid("metadata.name", "FieldValueInvalid", &detail));
    }
    if let Some((field, detail)) = validate::metadata_problem(&object["metadata"]) {
        return Err(invalid(&field, "FieldValueInvalid", &detail));
    }
    Ok(())
}

/// Checks everything but `apiVersion`, `kind` and `metadata` against the schema of the version the object is
/// written at (the storage version when it names none this kind serves).
fn by_crd_schema(rt: &ResourceType, schemas: &[(String, Value)], object: &Value) -> Result<(), ApiError> {
    let version = object["apiVersion"].as_str().and_then(|v| v.rsplit('/').next()).unwrap_or_default();
    let Some((_, schema)) = schemas.iter().find(|(v, _)| v == version).or_else(|| schemas.first()) else { return Ok(()) };
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        for server_side in ["apiVersion", "kind", "metadata"] {
            map.remove(server_side);
        }
    }
    structural::validate(schema, &body, "").map_err(|mismatch| match mismatch {
        Mismatch::Unknown(field) => ApiError::bad_request(format!("strict decoding error: unknown field \"{field}\"")),
        Mismatch::Invalid(field, reason, detail) => ApiError::invalid(&rt.group, &rt.kind, name_of(object), &field, reason, &detail),
    })
}

/// The status a new object starts with when the kind has a status subresource (the client's is dropped).
pub fn initial_status(rt: &ResourceType, object: &mut Value) {
    let Some(map) = object.as_object_mut() else { return };
    map.remove("status");
    let status = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => json!({ "phase": "Pending" }),
        ("", "namespaces") => json!({ "phase": "Active" }),
        ("apiextensions.k8s.io", _) => {
            let names = map.get("spec").and_then(|s| s.get("names")).cloned().unwrap_or(json!({}));
            let storage: Vec<Value> = map
                .get("spec")
                .and_then(|s| s["versions"].as_array())
                .into_iter()
                .flatten()
                .filter(|v| v["storage"] == true)
                .map(|v| v["name"].clone())
                .collect();
            let condition = |kind: &str, reason: &str| json!({ "type": kind, "status": "True", "reason": reason, "message": "", "lastTransitionTime": super::store::now() });
            json!({ "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")], "acceptedNames": names, "storedVersions": storage })
        }
        _ => return,
    };
    map.insert("status".to_owned(), status);
}

/// The status subresource split: a write to `/status` changes only `status`; a write to the object (of a kind
/// with a status subresource) leaves `status` as it was.
pub fn split_status(rt: &ResourceType, to_status: bool, mut written: Value, old: &Value) -> Value {
    if to_status {
        let mut next = old.clone();
        match written.get("status") {
            Some(s) => next["status"] = s.clone(),
            None => drop(next.as_object_mut().map(|m| m.remove("status"))),
        }
        next["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"].take();
        return next;
    }
    if rt.status {
        match old.get("status") {
            Some(s) => written["status"] = s.clone(),
            None => drop(written.as_object_mut().map(|m| m.remove("status"))),
        }
    }
    written
}

/// 409 when the write names a resourceVersion other than the stored one (an empty one is an unconditional write).
pub fn check_fresh(rt: &ResourceType, written: &Value, old: &Value) -> Result<(), ApiError> {
    let want = written.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
    if !want.is_empty() && Some(want) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        return Err(ApiError::stale(&rt.group, &rt.plural, name_of(old)));
    }
    Ok(())
}

/// Server-side apply, simplified: the applied fields are merged over the stored object (maps merged key by key,
/// lists and scalars replaced). Field ownership is not tracked, so a field dropped from the applied
/// configuration is not removed.
pub fn apply_over(base: &mut Value, applied: &Value) {
    match (base, applied) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in a {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => apply_over(existing, v),
                    _ => drop(b.insert(k.clone(), v.clone())),
                }
            }
        }
        (b, a) => *b = a.clone(),
    }
}

/// The object as served at `version`: stored objects carry the storage version; custom resources are served at
/// any of their versions by rewriting `apiVersion`.
pub fn present(rt: &ResourceType, version: &str, object: &Value) -> Value {
    let mut o = object.clone();
    if version != rt.storage_version() {
        o["apiVersion"] = json!(rt.api_version(version));
    }
    o
}
