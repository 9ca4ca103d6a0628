//! Strict decoding of request bodies, so drift between what keel sends and what Kubernetes accepts shows.
//!
//! A builtin kind is decoded into its k8s-openapi type; every field the type ignored (a typo, a field of another
//! version, a field in the wrong place) is named in a 400 `strict decoding error: unknown field "spec.x"`, exactly as
//! the real server answers `fieldValidation=Strict` (which kubectl sends). This stand-in is always strict. Custom
//! resources get their `metadata` decoded the same way; their spec is kept as JSON (keel-control validates it).
//! Names and labels are checked as the real server does (422 Invalid, naming the field).

use super::status::ApiError;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How names of a resource are validated (the real server picks one of these per resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most resources.
    Subdomain,
    /// RFC 1123 label: namespaces, services.
    Label,
    /// Any path segment: RBAC objects (`system:controller:x`).
    PathSegment,
}

/// Decodes `object` as `K`, refusing unknown fields and naming where a value has the wrong shape.
pub fn typed<K: DeserializeOwned + k8s_openapi::Resource>(object: &Value) -> Result<(), ApiError> {
    decode_strict::<K>(object, "").map_err(|e| match e {
        Refusal::Unknown(message) => ApiError::bad_request(message),
        Refusal::Shape(path, message) => ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {path}: {message}",
            kind = K::KIND,
            version = K::VERSION
        )),
    })
}

/// A custom resource (Istio kinds, CRD-defined kinds): only `apiVersion`, `kind`, `metadata`, `spec`, `status` at
/// the top, `metadata` a strict ObjectMeta.
pub fn custom(object: &Value, kind: &str) -> Result<(), ApiError> {
    let Some(map) = object.as_object() else { return Err(ApiError::bad_request(format!("{kind}: the body is not a JSON object"))) };
    if let Some(unknown) = map.keys().find(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status")) {
        return Err(ApiError::bad_request(format!("strict decoding error: unknown field \"{unknown}\"")));
    }
    let metadata = map.get("metadata").cloned().unwrap_or(Value::Null);
    decode_strict::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&metadata, "metadata").map_err(|e| match e {
        Refusal::Unknown(message) => ApiError::bad_request(message),
        Refusal::Shape(path, message) => ApiError::bad_request(format!("{kind}: {path}: {message}")),
    })
}

enum Refusal {
    Unknown(String),
    Shape(String, String),
}

fn decode_strict<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<(), Refusal> {
    let mut unknown = Vec::new();
    let decoded: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut |path: serde_ignored::Path| {
        unknown.push(join(prefix, &field_path(&path)))
    }));
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        return Err(Refusal::Unknown(format!("strict decoding error: {}", list.join(", "))));
    }
    decoded.map(drop).map_err(|e| Refusal::Shape(join(prefix, &e.path().to_string()), e.inner().to_string()))
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// `spec.containers[0].imagePullPolicyy`: the notation the real server uses in strict decoding errors.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => join(&field_path(parent), key),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.starts_with(is_alnum) && s.ends_with(is_alnum) && s.chars().all(|c| is_alnum(c) || c == '-')
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// Why `name` is not a valid name under `rule`, in the real server's words.
pub fn name_problem(rule: NameRule, name: &str) -> Option<String> {
    let ok = match rule {
        NameRule::Subdomain => dns_subdomain(name),
        NameRule::Label => dns_label(name),
        NameRule::PathSegment => !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']),
    };
    (!ok).then(|| match rule {
        NameRule::Subdomain => format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character"
        ),
        NameRule::Label => format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character"
        ),
        NameRule::PathSegment => format!("Invalid value: \"{name}\": may not be '.' or '..' and may not contain '/' or '%'"),
    })
}

fn label_value_ok(v: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars().all(inner))
}

/// A qualified name (`[prefix/]name`): the shape of label and annotation keys.
fn qualified_name_ok(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(dns_subdomain) && !name.is_empty() && label_value_ok(name)
}

/// The first invalid label or annotation key or label value, as (field, detail).
pub fn metadata_problem(metadata: &Value) -> Option<(String, String)> {
    for (field, check_values) in [("labels", true), ("annotations", false)] {
        let Some(map) = metadata.get(field).and_then(Value::as_object) else { continue };
        for (k, v) in map {
            if !qualified_name_ok(k) {
                return Some((
                    format!("metadata.{field}"),
                    format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
            let text = v.as_str().unwrap_or_default();
            if check_values && !label_value_ok(text) {
                return Some((
                    format!("metadata.{field}"),
                    format!(
                        "Invalid value: \"{text}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
                    ),
                ));
            }
        }
    }
    None
}
