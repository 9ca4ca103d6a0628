//! A minimal OpenAPI v3: for every group version, its PATCH operations, each tagged with its kind and declaring
//! the `fieldValidation` query parameter. That is what kubectl reads to decide the server validates fields itself
//! (it then sends `fieldValidation=Strict` instead of validating client-side against the full schemas, which this
//! stand-in does not serve).

use super::registry::Registry;
use serde_json::{json, Value};

fn path_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: where each group version's document is.
pub fn index(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = path_of(&group, &version);
            paths.insert(path.clone(), json!({ "serverRelativeURL": format!("/openapi/v3/{path}") }));
        }
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/api/v1`, `GET /openapi/v3/apis/<group>/<version>`.
pub fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for t in types.iter().filter(|t| !t.create_only) {
        let scope = if t.namespaced { "namespaces/{namespace}/" } else { "" };
        let patch = json!({
            "operationId": format!("patch{}", t.kind),
            "x-kubernetes-group-version-kind": { "group": t.group, "version": version, "kind": t.kind },
            "parameters": [
                { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
                { "name": "force", "in": "query", "schema": { "type": "boolean" } },
            ],
        });
        paths.insert(format!("/{}/{scope}{}/{{name}}", path_of(group, version), t.plural), json!({ "patch": patch }));
    }
    Some(
        json!({ "openapi": "3.0.0", "info": { "title": "Kubernetes (keel API stand-in)", "version": format!("v1.{}.0", super::discovery::MINOR) }, "paths": paths }),
    )
}
