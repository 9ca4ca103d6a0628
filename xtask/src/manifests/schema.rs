//! Schema validation of manifest YAML against the Kubernetes API types, with unknown fields refused.
//!
//! k8s-openapi's deserializers ignore fields they do not know, so each document is read twice: as plain JSON and
//! as its typed struct. The typed struct is written back to JSON and must equal the plain reading: a field the
//! types do not know (a typo, a field of another API version) is dropped on the way and named by its path.

use std::fmt;

use serde::Deserialize as _;
use serde_json::Value;
use thiserror::Error;

use super::document::{object_id, Object};

#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("document {index}: not YAML: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index}: not a mapping")]
    NotAnObject { index: usize },
    #[error("document {index}: no {field}")]
    MissingTypeMeta { index: usize, field: &'static str },
    #[error("document {index}: {api_version} {kind} is not a kind deploy/ installs (known: {known})")]
    UnknownKind { index: usize, api_version: String, kind: String, known: String },
    #[error("document {index} ({id}): does not match the Kubernetes type: {source}")]
    Invalid {
        index: usize,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("document {index} ({id}): field {path} is unknown to the Kubernetes type (dropped when read)")]
    UnknownField { index: usize, id: String, path: JsonPath },
    #[error("document {index} ({id}): field {path} reads back as {typed} instead of {written}")]
    Changed { index: usize, id: String, path: JsonPath, written: String, typed: String },
    #[error("document {index} ({id}): field {path} appears when read back (a default the file does not spell out)")]
    Added { index: usize, id: String, path: JsonPath },
}

/// A path into a document, e.g. `.spec.template.spec.containers[0].securityContext.capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    fn key(&self, key: &str) -> JsonPath {
        let mut next = self.clone();
        next.0.push(format!(".{key}"));
        next
    }

    fn index(&self, i: usize) -> JsonPath {
        let mut next = self.clone();
        next.0.push(format!("[{i}]"));
        next
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        self.0.iter().try_for_each(|s| f.write_str(s))
    }
}

/// Reads every document of a multi-document YAML text into its typed struct. Empty documents are skipped.
/// Returns every problem found, one per document at most.
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<SchemaError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    // Documents are numbered from 1, as a reader counts them.
    for (index, document) in (1..).zip(serde_yaml_ng::Deserializer::from_str(text)) {
        match Value::deserialize(document) {
            Err(source) => errors.push(SchemaError::Yaml { index, source }),
            Ok(Value::Null) => {}
            Ok(value) => match typed(index, value) {
                Ok(object) => objects.push(object),
                Err(err) => errors.push(err),
            },
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn typed(index: usize, value: Value) -> Result<Object, SchemaError> {
    let map = value.as_object().ok_or(SchemaError::NotAnObject { index })?;
    let field =
        |name: &'static str| map.get(name).and_then(Value::as_str).map(str::to_owned).ok_or(SchemaError::MissingTypeMeta { index, field: name });
    let (api_version, kind) = (field("apiVersion")?, field("kind")?);
    let id = format!("{kind} {}", name_of(&value));
    let object = match Object::from_json(&api_version, &kind, value.clone()) {
        None => {
            let known = Object::known_kinds().iter().map(|(a, k)| format!("{a} {k}")).collect::<Vec<_>>().join(", ");
            return Err(SchemaError::UnknownKind { index, api_version, kind, known });
        }
        Some(Err(source)) => return Err(SchemaError::Invalid { index, id, source }),
        Some(Ok(object)) => object,
    };
    let id = object_id(&object);
    let back = object.to_json().map_err(|source| SchemaError::Invalid { index, id: id.clone(), source })?;
    match difference(&value, &back, &JsonPath::default()) {
        None => Ok(object),
        Some(Difference::Dropped(path)) => Err(SchemaError::UnknownField { index, id, path }),
        Some(Difference::Added(path)) => Err(SchemaError::Added { index, id, path }),
        Some(Difference::Changed(path, written, typed)) => Err(SchemaError::Changed { index, id, path, written, typed }),
    }
}

fn name_of(value: &Value) -> String {
    let meta = &value["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "(no name)".to_owned(),
    }
}

enum Difference {
    Dropped(JsonPath),
    Added(JsonPath),
    Changed(JsonPath, String, String),
}

/// The first place where `typed` (the round trip) differs from `written` (the file), depth first.
fn difference(written: &Value, typed: &Value, path: &JsonPath) -> Option<Difference> {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (key, value) in w {
                let here = path.key(key);
                match t.get(key) {
                    None => return Some(Difference::Dropped(here)),
                    Some(back) => {
                        if let Some(d) = difference(value, back, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            t.keys().find(|k| !w.contains_key(*k)).map(|k| Difference::Added(path.key(k)))
        }
        (Value::Array(w), Value::Array(t)) if w.len() == t.len() => {
            w.iter().zip(t).enumerate().find_map(|(i, (w, t))| difference(w, t, &path.index(i)))
        }
        (w, t) if w == t => None,
        (w, t) => Some(Difference::Changed(path.clone(), w.to_string(), t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  ports: [{port: 80}]\n";

    fn errors(text: &str) -> Vec<String> {
        parse(text).err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_document_reads_into_its_type() {
        let objects = parse(SERVICE).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(object_id(&objects[0]), "Service n/s");
    }

    #[test]
    fn an_unknown_field_is_refused_by_its_path() {
        let text = SERVICE.replace("{port: 80}", "{port: 80, targetPrt: 8080}");
        assert_eq!(errors(&text), ["document 1 (Service n/s): field .spec.ports[0].targetPrt is unknown to the Kubernetes type (dropped when read)"]);
        let text = format!("{SERVICE}  sessionAfinity: None\n");
        assert_eq!(errors(&text), ["document 1 (Service n/s): field .spec.sessionAfinity is unknown to the Kubernetes type (dropped when read)"]);
    }

    #[test]
    fn a_wrong_type_is_refused() {
        let text = SERVICE.replace("port: 80", "port: eighty");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("document 1 (Service n/s): does not match the Kubernetes type"), "{errors:?}");
    }

    #[test]
    fn an_unknown_kind_and_a_missing_kind_are_refused() {
        let text = SERVICE.replace("kind: Service", "kind: Servce");
        assert!(errors(&text)[0].starts_with("document 1: v1 Servce is not a kind deploy/ installs (known: "), "{:?}", errors(&text));
        let text = SERVICE.replace("kind: Service\n", "");
        assert_eq!(errors(&text), ["document 1: no kind"]);
    }

    #[test]
    fn every_document_is_checked_and_empty_ones_are_skipped() {
        let bad = SERVICE.replace("name: s", "name: t").replace("{port: 80}", "{port: 80, nam: x}");
        let text = format!("---\n{SERVICE}---\n---\n{bad}");
        assert_eq!(errors(&text), ["document 3 (Service n/t): field .spec.ports[0].nam is unknown to the Kubernetes type (dropped when read)"]);
    }
}
