//! Config input from a directory of YAML files (multi-document files allowed). Each document is parsed and
//! validated alone; errors name the file, the object and the field, and never stop the others from loading.
//! A Kubernetes API watcher can later produce the same [`Loaded`] from the API server.
//!
//! What one file may cost is bounded: at most [`MAX_FILE_SIZE`] bytes are read, and [`scan`] refuses deep
//! nesting and YAML aliases before anything is built; a syntax error stops the reading of its file (reported
//! once, with its position), never of the others.
mod scan;

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::objects::{names, Object};

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
    /// Files (or a directory: every file under it) not read to the end, so objects they held before may be
    /// missing from `objects` only because of that: unreadable, too large, or not YAML from some document on.
    pub incomplete: BTreeSet<PathBuf>,
}

/// The largest config file read. Kubernetes objects are far smaller (the API server refuses objects over
/// 1.5 MiB); the bound keeps one file from costing more than a few hundred MiB to parse.
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// Reads every `*.yaml`/`*.yml` file of `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.flatten().map(|e| e.path()).filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))).collect()
        }
        Err(e) => {
            loaded.errors.push(ObjectError { file: dir.to_owned(), object: "directory".into(), message: e.to_string() });
            loaded.incomplete.insert(dir.to_owned());
            return loaded;
        }
    };
    files.sort();
    for file in files {
        match read_file(&file) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(message) => {
                loaded.errors.push(ObjectError { file: file.clone(), object: "file".into(), message });
                loaded.incomplete.insert(file);
            }
        }
    }
    loaded
}

/// Reads one regular file of at most [`MAX_FILE_SIZE`] bytes.
fn read_file(path: &Path) -> Result<String, String> {
    // Follows symbolic links (a mounted ConfigMap's files are links into `..data/`), but never opens a FIFO or a
    // device: opening a FIFO blocks until someone writes to it.
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    let too_large = || format!("larger than the {} MiB a config file may be", MAX_FILE_SIZE >> 20);
    if metadata.len() > MAX_FILE_SIZE {
        return Err(too_large());
    }
    // The file may grow between the check and the read: never read past the limit.
    let mut text = String::new();
    std::fs::File::open(path).and_then(|file| file.take(MAX_FILE_SIZE + 1).read_to_string(&mut text)).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(text)
}

/// Parses the documents of one file into `loaded`.
pub fn load_text(file: &Path, text: &str, loaded: &mut Loaded) {
    let error = |object: String, message: String| ObjectError { file: file.to_owned(), object, message };
    let scanned = scan::scan(text);
    let read = scanned.documents.len();
    for (index, document) in scanned.documents.into_iter().enumerate() {
        // Each document is parsed alone, from its own text: never through serde_yaml_ng's multi-document iterator.
        let parsed = document.text.map_err(|e| e.to_string()).and_then(|text| serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}")));
        let value = match parsed {
            Ok(Value::Null) => continue, // an empty document (e.g. a trailing `---`)
            Ok(value) => value,
            Err(message) => {
                loaded.errors.push(error(format!("document {}", index + 1), message));
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
    if let Some(stopped) = scanned.stopped {
        loaded.errors.push(error(format!("document {}", read + 1), format!("{stopped}; the rest of the file is not read")));
        loaded.incomplete.insert(file.to_owned());
    }
}

/// An object the Kubernetes API served that keel cannot accept: `object` names it (`Kind namespace/name`) when it
/// has a name, `message` the field and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}: {message}", object.as_deref().unwrap_or("an object without a name"))]
pub struct InvalidObject {
    pub object: Option<String>,
    pub message: String,
}

/// One object as the Kubernetes API serves it (JSON), parsed and checked exactly as a document of a config file
/// is: the API and the directory are two inputs of one translation.
pub fn object_from_json(value: &serde_json::Value) -> Result<Object, InvalidObject> {
    let value: Value = serde_yaml_ng::to_value(value).map_err(|e| InvalidObject { object: None, message: format!("not an object: {e}") })?;
    parse_object(&value)
        .and_then(|object| {
            crate::translate::check(&crate::translate::Mesh::default(), &object).map_err(|e| (Some(object.reference().to_string()), e))?;
            Ok(object)
        })
        .map_err(|(object, message)| InvalidObject { object, message })
}

/// Turns one document into an [`Object`]; on error, the object's name (when it has one) and the message.
fn parse_object(value: &Value) -> Result<Object, (Option<String>, String)> {
    let kind = value.get("kind").and_then(Value::as_str).ok_or((None, "field `kind`: missing".to_owned()))?;
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default");
    let label = name.map(|n| format!("{kind} {namespace}/{n}"));
    let fail = |message: String| (label.clone(), message);
    if name.is_none_or(str::is_empty) {
        return Err(fail("field `metadata.name`: missing".into()));
    }
    let checks = [("metadata.namespace", names::not_a_label(namespace)), ("metadata.name", name.and_then(names::not_a_subdomain))];
    if let Some((field, why)) = checks.into_iter().find_map(|(field, why)| Some((field, why?))) {
        return Err(fail(format!("field `{field}`: {why}")));
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
        // Only for the certificates of Gateways' TLS servers (`credentialName`).
        "Secret" => Object::Secret(typed(value).map_err(fail)?),
        "EndpointSlice" => {
            expect_group(&["discovery.k8s.io"])?;
            Object::EndpointSlice(typed(value).map_err(fail)?)
        }
        "ServiceEntry" => {
            expect_group(&["networking.istio.io"])?;
            let entry: crate::objects::ServiceEntry = typed(value).map_err(fail)?;
            if let Some((i, why)) = entry.spec.hosts.iter().enumerate().find_map(|(i, h)| Some((i, names::not_a_host(h)?))) {
                return Err(fail(format!("field `spec.hosts[{i}]`: {why}")));
            }
            Object::ServiceEntry(entry)
        }
        "AuthorizationPolicy" => {
            expect_group(&["security.istio.io"])?;
            Object::AuthorizationPolicy(typed(value).map_err(fail)?)
        }
        "PeerAuthentication" => {
            expect_group(&["security.istio.io"])?;
            Object::PeerAuthentication(typed(value).map_err(fail)?)
        }
        "RequestAuthentication" => {
            expect_group(&["security.istio.io"])?;
            Object::RequestAuthentication(typed(value).map_err(fail)?)
        }
        "VirtualService" => {
            expect_version(NETWORKING_VERSIONS)?;
            Object::VirtualService(typed(value).map_err(fail)?)
        }
        "DestinationRule" => {
            expect_version(NETWORKING_VERSIONS)?;
            Object::DestinationRule(typed(value).map_err(fail)?)
        }
        "Gateway" => {
            expect_version(NETWORKING_VERSIONS)?;
            Object::Gateway(typed(value).map_err(fail)?)
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

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {ports: [{port: 80}]}\n";

    /// A fresh directory holding `files`.
    fn dir_with(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    /// `load_dir` in a thread of its own: a loader that spins or blows up fails the test instead of hanging it.
    fn load_dir_within_5s(dir: &Path) -> Loaded {
        let (done, result) = std::sync::mpsc::channel();
        let dir = dir.to_owned();
        std::thread::spawn(move || done.send(load_dir(&dir)));
        result.recv_timeout(std::time::Duration::from_secs(5)).expect("load_dir returns within 5 s")
    }

    fn messages(loaded: &Loaded) -> Vec<String> {
        loaded.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_syntax_error_is_reported_once_with_its_position_and_the_other_files_load() {
        let dir = dir_with("syntax", &[("bad.yaml", "x: [{a: 1]"), ("good.yaml", SERVICE)]);
        let loaded = load_dir_within_5s(&dir);
        let messages = messages(&loaded);
        assert_eq!(messages.len(), 1, "{messages:#?}");
        assert!(loaded.errors[0].file.ends_with("bad.yaml"), "{messages:?}");
        assert!(messages[0].contains("bad.yaml: document 1: not YAML: did not find expected ',' or '}' at line 1 column 10"), "{}", messages[0]);
        assert_eq!(loaded.objects.len(), 1, "good.yaml's service loads");
        assert!(loaded.objects[0].0.ends_with("good.yaml"));
        assert_eq!(loaded.incomplete, BTreeSet::from([dir.join("bad.yaml")]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_documents_before_a_syntax_error_load_and_the_error_names_its_document() {
        let loaded = load(&format!("{SERVICE}---\nx: [{{a: 1]\n---\n{SERVICE}"));
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(messages(&loaded), ["dir/config.yaml: document 2: not YAML: did not find expected ',' or '}' at line 6 column 10, while parsing a flow mapping at line 6 column 5; the rest of the file is not read"]);
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_unread() {
        // Valid YAML (one comment) of the limit plus one byte.
        let big = format!("{SERVICE}#{}", " ".repeat(MAX_FILE_SIZE as usize - SERVICE.len()));
        let dir = dir_with("size", &[("big.yaml", &big), ("good.yaml", SERVICE)]);
        let loaded = load_dir_within_5s(&dir);
        assert_eq!(messages(&loaded), [format!("{}: file: larger than the 4 MiB a config file may be", dir.join("big.yaml").display())]);
        assert_eq!(loaded.objects.len(), 1);
        assert!(loaded.incomplete.contains(&dir.join("big.yaml")));
        // At the limit exactly, the file is read.
        std::fs::write(dir.join("big.yaml"), &big[..big.len() - 1]).unwrap();
        let loaded = load_dir_within_5s(&dir);
        assert!(loaded.errors.is_empty(), "{:?}", messages(&loaded));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_is_not_opened() {
        let dir = dir_with("fifo", &[("good.yaml", SERVICE)]);
        let status = std::process::Command::new("mkfifo").arg(dir.join("pipe.yaml")).status().unwrap();
        assert!(status.success());
        let loaded = load_dir_within_5s(&dir);
        assert_eq!(messages(&loaded), [format!("{}: file: not a regular file", dir.join("pipe.yaml").display())]);
        assert_eq!(loaded.objects.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deep_nesting_is_refused_and_the_documents_before_it_load() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let loaded = load(&format!("{SERVICE}---\nx: {deep}\n"));
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(
            messages(&loaded),
            ["dir/config.yaml: document 2: nested more than 64 levels deep at line 6 column 67; the rest of the file is not read"]
        );
    }

    #[test]
    fn an_alias_bomb_is_refused_without_being_expanded_and_the_next_document_loads() {
        // "Billion laughs": 9 levels of 10 aliases each, 10^9 strings once expanded.
        let mut bomb = String::from("a0: &a0 [lol]\n");
        for level in 1..10 {
            bomb += &format!("a{level}: &a{level} [{}]\n", vec![format!("*a{}", level - 1); 10].join(", "));
        }
        let dir = dir_with("bomb", &[("bomb.yaml", &format!("{bomb}---\n{SERVICE}"))]);
        let loaded = load_dir_within_5s(&dir);
        assert_eq!(loaded.objects.len(), 1, "the document after the bomb loads");
        let messages = messages(&loaded);
        assert_eq!(messages.len(), 1, "{messages:#?}");
        assert!(
            messages[0].ends_with(
                "bomb.yaml: document 1: YAML alias at line 2 column 10: keel-control does not expand aliases (write the value out in full)"
            ),
            "{}",
            messages[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
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
kind: Service
metadata: {name: catalog, namespace: istioinactio@n}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec: {hosts: ["api.example.com", "bad host"]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x}
"#,
        );
        assert_eq!(loaded.objects.len(), 1, "the valid Pod still loads");
        let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert!(messages[0].starts_with("dir/config.yaml: Service demo/broken: field `spec.ports[0].port`"), "{}", messages[0]);
        assert!(messages[1].contains("AuthorizationPolicy default/typo") && messages[1].contains("actoin"), "{}", messages[1]);
        assert!(messages[2].contains("Gizmo default/g: field `kind`"), "{}", messages[2]);
        // Found by fuzzing: a namespace no API server accepts reached keel in a service hostname, which keel NACKed.
        assert!(messages[3].contains("Service istioinactio@n/catalog: field `metadata.namespace`"), "{}", messages[3]);
        assert!(messages[4].contains("ServiceEntry default/ext: field `spec.hosts[1]`"), "{}", messages[4]);
        assert!(messages[5].contains("document 7: field `metadata.name`: missing"), "{}", messages[5]);
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
        assert!(
            messages[0].contains("VirtualService default/reviews: field `apiVersion`: \"networking.istio.io/v2\" is not a known version"),
            "{}",
            messages[0]
        );
        assert!(messages[1].contains("DestinationRule default/reviews: field `apiVersion`"), "{}", messages[1]);
    }
}
