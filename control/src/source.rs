//! Config input from a directory of YAML files (multi-document files allowed). Each document is parsed and
//! validated alone; errors name the file, the object and the field, and never stop the others from loading.
//! A Kubernetes API watcher can later produce the same [`Loaded`] from the API server.
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize as _};
use serde_yaml_ng::Value;

use crate::objects::Object;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}: {object}: {message}")]
pub struct ObjectError {
    pub file: PathBuf,
    /// `Kind namespace/name`, or `document N` when the document is not even an object.
    pub object: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects with the file each came from.
    pub objects: Vec<(PathBuf, Object)>,
    pub errors: Vec<ObjectError>,
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) => {
            loaded.errors.push(ObjectError { file: dir.to_owned(), object: "directory".into(), message: e.to_string() });
            return loaded;
        }
    };
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(e) => loaded.errors.push(ObjectError { file, object: "file".into(), message: e.to_string() }),
        }
    }
    loaded
}

/// Parses the documents of one file into `loaded`.
pub fn load_text(file: &Path, text: &str, loaded: &mut Loaded) {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let error = |object: String, message: String| ObjectError { file: file.to_owned(), object, message };
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue, // an empty document (e.g. a trailing `---`)
            Ok(value) => value,
            Err(e) => {
                loaded.errors.push(error(format!("document {}", index + 1), format!("not YAML: {e}")));
                continue;
            }
        };
        match parse_object(&value).and_then(|object| {
            crate::translate::check(&crate::translate::Mesh::default(), &object).map_err(|e| (Some(object.reference().to_string()), e))?;
            Ok(object)
        }) {
            Ok(object) => loaded.objects.push((file.to_owned(), object)),
            Err((object, message)) => loaded.errors.push(error(object.unwrap_or_else(|| format!("document {}", index + 1)), message)),
        }
    }
}

/// Turns one document into an [`Object`]; on error, the object's name (when it has one) and the message.
fn parse_object(value: &Value) -> Result<Object, (Option<String>, String)> {
    let kind = value.get("kind").and_then(Value::as_str).ok_or((None, "field `kind`: missing".to_owned()))?;
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let label = name.map(|n| format!("{kind} {namespace}/{n}"));
    let fail = |message: String| (label.clone(), message);
    if name.is_none_or(str::is_empty) {
        return Err(fail("field `metadata.name`: missing".into()));
    }
    let expect_group = |groups: &[&str]| -> Result<(), (Option<String>, String)> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if groups.contains(&group) {
            Ok(())
        } else {
            Err(fail(format!("field `apiVersion`: {api_version:?} is not a known version of {kind}")))
        }
    };
    // For the traffic-management kinds the version is checked too: keel knows their fields in the versions Istio
    // serves today, not in a future one.
    let expect_version = |versions: &[&str]| -> Result<(), (Option<String>, String)> {
        if versions.contains(&api_version) {
            Ok(())
        } else {
            Err(fail(format!("field `apiVersion`: {api_version:?} is not a known version of {kind} ({})", versions.join(", "))))
        }
    };
    let object = match kind {
        "Pod" => Object::Pod(typed(value).map_err(fail)?),
        "Service" => Object::Service(typed(value).map_err(fail)?),
        "ServiceEntry" => {
            expect_group(&["networking.istio.io"])?;
            Object::ServiceEntry(typed(value).map_err(fail)?)
        }
        "AuthorizationPolicy" => {
            expect_group(&["security.istio.io"])?;
            Object::AuthorizationPolicy(typed(value).map_err(fail)?)
        }
        "PeerAuthentication" => {
            expect_group(&["security.istio.io"])?;
            Object::PeerAuthentication(typed(value).map_err(fail)?)
        }
        "VirtualService" => {
            expect_version(NETWORKING_VERSIONS)?;
            Object::VirtualService(typed(value).map_err(fail)?)
        }
        "DestinationRule" => {
            expect_version(NETWORKING_VERSIONS)?;
            Object::DestinationRule(typed(value).map_err(fail)?)
        }
        other => return Err(fail(format!("field `kind`: {other:?} is not a kind keel-control reads"))),
    };
    Ok(object)
}

/// The apiVersions of VirtualService and DestinationRule keel reads; Istio serves the same schema under each.
const NETWORKING_VERSIONS: &[&str] = &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(Path::new("dir/config.yaml"), text, &mut loaded);
        loaded
    }

    #[test]
    fn reads_every_kind_from_one_multi_document_file() {
        let loaded = load(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccountName: sleep, nodeName: node-1}
status: {podIPs: [{ip: 10.244.0.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, clusterIPs: [10.96.0.10], ports: [{name: tcp-echo, port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec: {hosts: [example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/sleep]}}], to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: demo}
spec: {selector: {matchLabels: {app: echo}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}
---
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let kinds: Vec<&str> = loaded.objects.iter().map(|(_, o)| o.kind()).collect();
        assert_eq!(kinds, ["Pod", "Service", "ServiceEntry", "AuthorizationPolicy", "PeerAuthentication"]);
        let Object::Pod(pod) = &loaded.objects[0].1 else { panic!() };
        assert_eq!((pod.service_account(), pod.ips()), ("sleep", vec!["10.244.0.11".parse().unwrap()]));
        let Object::Service(svc) = &loaded.objects[1].1 else { panic!() };
        assert_eq!(svc.vips().unwrap(), vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn a_bad_object_is_reported_by_file_object_and_field_and_the_rest_still_load() {
        let loaded = load(
            r#"
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: demo}
spec: {ports: [{name: http, port: not-a-number}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo}
spec: {actoin: DENY}
---
apiVersion: v1
kind: Pod
metadata: {name: fine}
---
kind: Gizmo
metadata: {name: g}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x}
"#,
        );
        assert_eq!(loaded.objects.len(), 1, "the valid Pod still loads");
        let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].starts_with("dir/config.yaml: Service demo/broken: field `spec.ports[0].port`"), "{}", messages[0]);
        assert!(messages[1].contains("AuthorizationPolicy default/typo") && messages[1].contains("actoin"), "{}", messages[1]);
        assert!(messages[2].contains("Gizmo default/g: field `kind`"), "{}", messages[2]);
        assert!(messages[3].contains("document 5: field `metadata.name`: missing"), "{}", messages[3]);
    }

    #[test]
    fn traffic_kinds_are_read_in_every_version_istio_serves_and_no_other() {
        let document = |api_version: &str, kind: &str, spec: &str| {
            format!("---\napiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: reviews}}\nspec: {spec}\n")
        };
        let route = "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}";
        let mut text = String::new();
        for version in ["v1", "v1beta1", "v1alpha3"] {
            text += &document(&format!("networking.istio.io/{version}"), "VirtualService", route);
            text += &document(&format!("networking.istio.io/{version}"), "DestinationRule", "{host: reviews}");
        }
        text += &document("networking.istio.io/v2", "VirtualService", route);
        text += &document("security.istio.io/v1", "DestinationRule", "{host: reviews}");
        let loaded = load(&text);
        let kinds: Vec<&str> = loaded.objects.iter().map(|(_, o)| o.kind()).collect();
        assert_eq!(kinds, ["VirtualService", "DestinationRule"].repeat(3));
        let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].contains("VirtualService default/reviews: field `apiVersion`: \"networking.istio.io/v2\" is not a known version"), "{}", messages[0]);
        assert!(messages[1].contains("DestinationRule default/reviews: field `apiVersion`"), "{}", messages[1]);
    }
}
