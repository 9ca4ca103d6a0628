//! A CustomResourceDefinition's schema as the API server uses it: a CRD whose schema is not *structural* is
//! refused when it is created (the rules of apiextensions.k8s.io/v1), and every object of a CRD's kind is checked
//! against the schema of the version it is written at: types, `nullable`, `required`, `enum`, bounds, and no
//! field the schema does not declare (the stand-in answers as `fieldValidation=Strict` would: an error, where the
//! real server's default would prune the field and warn).

use serde_json::Value;

/// Why a CRD's schema is not structural, one line per problem, each naming its place
/// (`spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: ...`).
pub fn problems(schema: &Value, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    check(schema, path, None, false, &mut found);
    found
}

/// Keywords a structural schema may not use anywhere.
const UNSUPPORTED: [&str; 7] = ["$ref", "definitions", "patternProperties", "dependencies", "additionalItems", "id", "$schema"];
/// What a schema inside `allOf`/`anyOf`/`oneOf`/`not` may not set: structure lives outside the junctors.
const STRUCTURE: [&str; 5] = ["type", "description", "default", "additionalProperties", "nullable"];
const JUNCTORS: [&str; 3] = ["allOf", "anyOf", "oneOf"];

fn check(node: &Value, path: &str, parent: Option<&Value>, in_junctor: bool, found: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        found.push(format!("{path}: Invalid value: a schema must be an object"));
        return;
    };
    for keyword in UNSUPPORTED {
        if map.contains_key(keyword) {
            found.push(format!("{path}.{keyword}: Forbidden: {keyword} is not supported"));
        }
    }
    if map.get("uniqueItems") == Some(&Value::Bool(true)) {
        found.push(format!("{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"));
    }
    if map.contains_key("properties") && map.get("additionalProperties").is_some_and(|a| a != &Value::Bool(true)) {
        found.push(format!("{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"));
    }
    let flag = |name: &str| map.get(name) == Some(&Value::Bool(true));
    if in_junctor {
        for keyword in STRUCTURE {
            if map.contains_key(keyword) {
                found.push(format!("{path}.{keyword}: Forbidden: must be empty to be structural"));
            }
        }
        // A field named inside a junctor must be declared outside it too.
        let declared = parent.and_then(|p| p.get("properties")).and_then(Value::as_object);
        for field in map.get("properties").and_then(Value::as_object).into_iter().flat_map(|p| p.keys()) {
            if !declared.is_some_and(|d| d.contains_key(field)) {
                found.push(format!("{path}.properties[{field}]: Required value: must be declared outside the junctors too"));
            }
        }
    } else if map.get("type").and_then(Value::as_str).is_none_or(str::is_empty)
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        found.push(format!("{path}.type: Required value: must not be empty for specified object fields"));
    }
    for (field, schema) in map.get("properties").and_then(Value::as_object).into_iter().flatten() {
        check(schema, &format!("{path}.properties[{field}]"), Some(node), in_junctor, found);
    }
    if let Some(items) = map.get("items") {
        check(items, &format!("{path}.items"), Some(node), in_junctor, found);
    }
    if let Some(values @ Value::Object(_)) = map.get("additionalProperties") {
        check(values, &format!("{path}.additionalProperties"), Some(node), in_junctor, found);
    }
    // The one structure allowed in a junctor: int-or-string spelt out as `anyOf: [{type: integer}, {type: string}]`.
    let int_or_string = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
    for junctor in JUNCTORS {
        if junctor == "anyOf" && flag("x-kubernetes-int-or-string") && map.get(junctor) == Some(&int_or_string) {
            continue;
        }
        for (i, schema) in map.get(junctor).and_then(Value::as_array).into_iter().flatten().enumerate() {
            check(schema, &format!("{path}.{junctor}[{i}]"), Some(node), true, found);
        }
    }
    if let Some(schema) = map.get("not") {
        check(schema, &format!("{path}.not"), Some(node), true, found);
    }
}

/// Why `value` (at `path`, e.g. `spec`) does not match `schema`.
#[derive(Debug, PartialEq)]
pub enum Mismatch {
    /// A field the schema does not declare: a strict decoding error, as the real server reports it.
    Unknown(String),
    /// `(field, cause reason, detail)`, as a 422 Invalid names them.
    Invalid(String, &'static str, String),
}

pub fn validate(schema: &Value, value: &Value, path: &str) -> Result<(), Mismatch> {
    let flag = |name: &str| schema.get(name) == Some(&Value::Bool(true));
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or_default();
    if value.is_null() {
        return if flag("nullable") || ty.is_empty() { Ok(()) } else { Err(type_mismatch(path, value, ty)) };
    }
    if flag("x-kubernetes-int-or-string") {
        return match value {
            Value::String(_) => Ok(()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => Err(type_mismatch(path, value, "integer or string")),
        };
    }
    let matches = match ty {
        "" => true,
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => false,
    };
    if !matches {
        return Err(type_mismatch(path, value, ty));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(Mismatch::Invalid(
                path.to_owned(),
                "FieldValueNotSupported",
                format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
            ));
        }
    }
    if let Some(number) = value.as_f64() {
        let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|min| number < min) || bound("maximum").is_some_and(|max| number > max) {
            let (min, max) = (bound("minimum").map_or("-".into(), |b| b.to_string()), bound("maximum").map_or("-".into(), |b| b.to_string()));
            return Err(Mismatch::Invalid(
                path.to_owned(),
                "FieldValueInvalid",
                format!("Invalid value: {value}: {path} in body should be within [{min}, {max}]"),
            ));
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !fields.contains_key(required) {
                    return Err(Mismatch::Invalid(join(path, required), "FieldValueRequired", "Required value".to_owned()));
                }
            }
            for (name, field) in fields {
                let at = join(path, name);
                match (properties.and_then(|p| p.get(name)), schema.get("additionalProperties")) {
                    (Some(declared), _) => validate(declared, field, &at)?,
                    (None, Some(values @ Value::Object(_))) => validate(values, field, &at)?,
                    (None, Some(Value::Bool(true))) => {}
                    _ if flag("x-kubernetes-preserve-unknown-fields") => {}
                    _ => return Err(Mismatch::Unknown(at)),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn type_mismatch(path: &str, value: &Value, expected: &str) -> Mismatch {
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Mismatch::Invalid(
        path.to_owned(),
        "FieldValueTypeInvalid",
        format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schema_without_types_or_with_pattern_properties_is_not_structural() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"properties": {"a": {"type": "string"}}},
            "ports": {"type": "object", "patternProperties": {"^\\d+$": {"type": "string"}}},
            "either": {"type": "object", "anyOf": [{"type": "object", "properties": {"b": {"type": "string"}}}]},
        }});
        let found = problems(&schema, "openAPIV3Schema");
        assert_eq!(
            found,
            [
                "openAPIV3Schema.properties[either].anyOf[0].type: Forbidden: must be empty to be structural",
                "openAPIV3Schema.properties[either].anyOf[0].properties[b]: Required value: must be declared outside the junctors too",
                "openAPIV3Schema.properties[either].anyOf[0].properties[b].type: Forbidden: must be empty to be structural",
                "openAPIV3Schema.properties[ports].patternProperties: Forbidden: patternProperties is not supported",
                "openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
            ]
        );
        let structural = json!({"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
        assert_eq!(problems(&structural, "s"), Vec::<String>::new());
    }

    #[test]
    fn objects_are_checked_field_by_field() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["hosts"], "properties": {
            "hosts": {"type": "array", "items": {"type": "string"}},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535},
            "mode": {"type": "string", "nullable": true, "enum": ["STRICT", "PERMISSIVE"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "tls": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }}}});
        let ok = json!({"spec": {"hosts": ["a"], "port": 80, "mode": null, "labels": {"x": "y"}, "tls": {"anything": [1]}}});
        assert_eq!(validate(&schema, &ok, ""), Ok(()));
        let refused = |value: Value| validate(&schema, &value, "").unwrap_err();
        assert_eq!(
            refused(json!({"spec": {"hosts": "a"}})),
            Mismatch::Invalid(
                "spec.hosts".into(),
                "FieldValueTypeInvalid",
                "Invalid value: \"string\": spec.hosts in body must be of type array: \"string\"".into()
            )
        );
        assert_eq!(refused(json!({"spec": {"hosts": [], "hostz": []}})), Mismatch::Unknown("spec.hostz".into()));
        assert_eq!(refused(json!({"spec": {}})), Mismatch::Invalid("spec.hosts".into(), "FieldValueRequired", "Required value".into()));
        assert!(matches!(refused(json!({"spec": {"hosts": [], "port": 70000}})), Mismatch::Invalid(f, "FieldValueInvalid", _) if f == "spec.port"));
        assert!(
            matches!(refused(json!({"spec": {"hosts": [], "mode": "LOOSE"}})), Mismatch::Invalid(f, "FieldValueNotSupported", _) if f == "spec.mode")
        );
        assert!(matches!(refused(json!({"spec": {"hosts": [], "labels": {"x": 1}}})), Mismatch::Invalid(f, _, _) if f == "spec.labels.x"));
    }
}
