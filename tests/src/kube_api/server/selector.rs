//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors (`=`, `==`, `!=` on the
//! labels a resource supports), parsed as the real server does; anything else is a 400.

use super::registry::ResourceType;
use super::status::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, bool, String)>,
}

/// Splits on commas outside parentheses: `a in (x,y),b` is two requirements.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_label_term(term: &str) -> Result<(String, Op), ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: invalid label selector term {term:?}"));
    if let Some(key) = term.strip_prefix('!') {
        return Ok((key.trim().to_owned(), Op::DoesNotExist));
    }
    for (sep, eq) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((k, v)) = term.split_once(sep) {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            return Ok((k, if eq { Op::Equals(v) } else { Op::NotEquals(v) }));
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [key] if !key.contains(['(', ')', '<', '>']) => Ok((key.to_string(), Op::Exists)),
        [key, rest] => {
            let rest = rest.trim();
            let (word, set) = rest.split_once(char::is_whitespace).map(|(w, s)| (w, s.trim())).unwrap_or((rest, ""));
            let set = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(bad)?;
            let values: Vec<String> = set.split(',').map(|v| v.trim().to_owned()).collect();
            match word {
                "in" => Ok((key.to_string(), Op::In(values))),
                "notin" => Ok((key.to_string(), Op::NotIn(values))),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// The value of field label `label` of `object`, as the real server renders it (booleans as text, absent as "").
fn field_value(object: &Value, label: &str) -> String {
    let pointer = format!("/{}", label.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(v @ Value::Number(_)) => v.to_string(),
        None if label == "spec.hostNetwork" || label == "spec.unschedulable" => "false".to_owned(),
        _ => String::new(),
    }
}

impl Selector {
    pub fn parse(rt: &ResourceType, label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Self, ApiError> {
        let labels = split_terms(label_selector.unwrap_or_default()).into_iter().map(parse_label_term).collect::<Result<Vec<_>, _>>()?;
        let mut fields = Vec::new();
        for term in split_terms(field_selector.unwrap_or_default()) {
            let (label, equal, value) = if let Some((l, v)) = term.split_once("!=") {
                (l, false, v)
            } else if let Some((l, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (l, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            if !rt.supports_field(label.trim()) {
                return Err(ApiError::bad_request(format!("field label not supported: {}", label.trim())));
            }
            fields.push((label.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|(k, op)| match (op, label(k)) {
            (Op::Equals(v), Some(have)) => have == v,
            (Op::Equals(_), None) => false,
            (Op::NotEquals(v), have) => have != Some(v.as_str()),
            (Op::In(set), Some(have)) => set.iter().any(|v| v == have),
            (Op::In(_), None) => false,
            (Op::NotIn(set), have) => have.is_none_or(|h| !set.iter().any(|v| v == h)),
            (Op::Exists, have) => have.is_some(),
            (Op::DoesNotExist, have) => have.is_none(),
        });
        labels_ok && self.fields.iter().all(|(label, equal, value)| (field_value(object, label) == *value) == *equal)
    }
}
