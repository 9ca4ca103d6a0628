//! The edit of a `.conflist`: keel-cni's entry appended at the end of `plugins` (after the primary plugin and any
//! other chained ones, so it sees their final result), or taken out again. Pure functions over the JSON.
use serde_json::{Map, Value};

/// The `type` of keel-cni's entry: the runtime runs the binary of that name from the CNI bin dir.
pub const PLUGIN_TYPE: &str = "keel-cni";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConflistError {
    #[error("is not a configuration list: {0}")]
    NotAList(&'static str),
}

/// The entry keel-cni adds: its type and its own fields (see `netconf`).
pub fn entry(api_socket: &str, enroll_timeout_ms: u64) -> Value {
    let mut fields = Map::new();
    fields.insert("type".into(), PLUGIN_TYPE.into());
    fields.insert("apiSocket".into(), api_socket.into());
    fields.insert("enrollTimeoutMs".into(), enroll_timeout_ms.into());
    Value::Object(fields)
}

fn plugins_of(conflist: &mut Value) -> Result<&mut Vec<Value>, ConflistError> {
    let Value::Object(fields) = conflist else { return Err(ConflistError::NotAList("not a JSON object")) };
    match fields.get_mut("plugins") {
        Some(Value::Array(plugins)) => Ok(plugins),
        Some(_) => Err(ConflistError::NotAList("`plugins` is not a list")),
        None => Err(ConflistError::NotAList("no `plugins` list")),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `conflist` with exactly one keel-cni entry, `entry`, last in `plugins`; every other plugin and field as it
/// was, in order. Applying it to its own output changes nothing.
pub fn chain(conflist: &Value, entry: &Value) -> Result<Value, ConflistError> {
    let mut edited = conflist.clone();
    let plugins = plugins_of(&mut edited)?;
    if plugins.iter().all(is_ours) {
        return Err(ConflistError::NotAList("`plugins` has no primary plugin to chain after"));
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    Ok(edited)
}

/// `conflist` without keel-cni's entries, and how many there were.
pub fn unchain(conflist: &Value) -> Result<(Value, usize), ConflistError> {
    let mut edited = conflist.clone();
    let plugins = plugins_of(&mut edited)?;
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    let removed = before - plugins.len();
    Ok((edited, removed))
}

/// Whether `conflist` chains keel-cni.
pub fn is_chained(conflist: &Value) -> bool {
    conflist.get("plugins").and_then(Value::as_array).is_some_and(|p| p.iter().any(is_ours))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flannel() -> Value {
        json!({
            "name": "cbr0", "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    #[test]
    fn chaining_appends_after_every_other_plugin_and_is_idempotent() {
        let ours = entry("/run/keel/keel.sock", 10_000);
        let once = chain(&flannel(), &ours).unwrap();
        let plugins = once["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[..2], flannel()["plugins"].as_array().unwrap()[..], "the others untouched, in order");
        assert_eq!(plugins[2], json!({"type": "keel-cni", "apiSocket": "/run/keel/keel.sock", "enrollTimeoutMs": 10000}));
        assert_eq!(once["name"], "cbr0");
        assert_eq!(chain(&once, &ours).unwrap(), once, "a second install changes nothing");
        assert!(is_chained(&once) && !is_chained(&flannel()));
    }

    #[test]
    fn a_new_install_replaces_the_old_entry_and_moves_it_last() {
        let mut stale = flannel();
        stale["plugins"].as_array_mut().unwrap().insert(1, entry("/old.sock", 5));
        let updated = chain(&stale, &entry("/run/keel/keel.sock", 10_000)).unwrap();
        let types: Vec<&str> = updated["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["flannel", "portmap", "keel-cni"]);
        assert_eq!(updated["plugins"][2]["apiSocket"], "/run/keel/keel.sock");
    }

    #[test]
    fn unchaining_removes_exactly_ours() {
        let chained = chain(&flannel(), &entry("/run/keel/keel.sock", 10_000)).unwrap();
        assert_eq!(unchain(&chained).unwrap(), (flannel(), 1));
        assert_eq!(unchain(&flannel()).unwrap(), (flannel(), 0));
    }

    #[test]
    fn what_is_not_a_conflist_is_refused() {
        let ours = entry("/s", 1);
        assert!(chain(&json!({"type": "bridge"}), &ours).is_err(), "a single-plugin .conf");
        assert!(chain(&json!({"plugins": {}}), &ours).is_err());
        assert!(chain(&json!([]), &ours).is_err());
        assert!(chain(&json!({"plugins": [ours.clone()]}), &ours).is_err(), "nothing to chain after");
    }
}
