//! The committed deploy/ files: up to date, valid against the Kubernetes types, least-privilege, and the Helm
//! chart rendering them (real helm, installed by `cargo xtask setup`).

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::PodSpec};

use super::{
    document::{object_id, Object},
    generate, schema, stale_files, Values, CHART_DIR, KEEL_YAML, NAMESPACE_YAML,
};
use crate::{kube_tools, ws};

mod gateway;

fn committed(path: &str) -> String {
    let path = ws::root().join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_or_panic(what: &str, text: &str) -> Vec<Object> {
    schema::parse(text).unwrap_or_else(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{what}:\n{}", errors.join("\n"))
    })
}

fn by_id(objects: Vec<Object>) -> BTreeMap<String, Object> {
    let mut map = BTreeMap::new();
    for object in objects {
        let id = object_id(&object);
        assert!(map.insert(id.clone(), object).is_none(), "{id} appears twice");
    }
    map
}

fn keel_yaml() -> BTreeMap<String, Object> {
    by_id(parse_or_panic(KEEL_YAML, &committed(KEEL_YAML)))
}

/// A tool the test needs: under CI=true a missing one fails the test; elsewhere the test says so and is skipped.
fn require(tool: PathBuf, how: &str) -> Option<PathBuf> {
    if tool.is_file() {
        return Some(tool);
    }
    let message = format!("{} is missing ({how})", tool.display());
    assert!(env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("skipped: {message}");
    None
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command:?} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn committed_files_are_what_the_generator_writes() {
    let files = generate().expect("the generator runs");
    let stale = stale_files(ws::root(), &files);
    assert!(stale.is_empty(), "run `cargo xtask manifests` and commit the result:\n{}", stale.join("\n"));
}

#[test]
fn a_stale_file_is_reported_with_its_first_differing_line() {
    let dir = env::temp_dir().join(format!("keel-manifests-stale-{}", std::process::id()));
    fs::create_dir_all(dir.join("deploy")).unwrap();
    let files = vec![
        super::GeneratedFile { path: "deploy/a.yaml".into(), contents: "a: 1\nb: 2\n".to_owned() },
        super::GeneratedFile { path: "deploy/missing.yaml".into(), contents: "c: 3\n".to_owned() },
    ];
    fs::write(dir.join("deploy/a.yaml"), "a: 1\nb: 3\n").unwrap();
    let stale = stale_files(&dir, &files);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(stale.len(), 2, "{stale:?}");
    assert_eq!(stale[0], "deploy/a.yaml: stale from line 2 on (differs from what the generator writes)");
    assert!(stale[1].starts_with("deploy/missing.yaml: cannot read the committed file"), "{stale:?}");
}

#[test]
fn committed_manifests_read_into_the_kubernetes_types_with_no_field_lost() {
    let objects = keel_yaml();
    let ids: Vec<&str> = objects.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "ClusterRole keel",
            "ClusterRole keel-control",
            "ClusterRoleBinding keel",
            "ClusterRoleBinding keel-control",
            "DaemonSet istio-system/keel",
            "Deployment istio-system/keel-control",
            "Deployment istio-system/keel-ingressgateway",
            "PodDisruptionBudget istio-system/keel-control",
            "Role istio-system/keel-control",
            "RoleBinding istio-system/keel-control",
            "Service istio-system/keel-control",
            "Service istio-system/keel-ingressgateway",
            "ServiceAccount istio-system/keel",
            "ServiceAccount istio-system/keel-control",
            "ServiceAccount istio-system/keel-ingressgateway",
        ]
    );
    let namespace = by_id(parse_or_panic(NAMESPACE_YAML, &committed(NAMESPACE_YAML)));
    assert_eq!(namespace.keys().collect::<Vec<_>>(), ["Namespace istio-system"]);
}

#[test]
fn a_typo_in_the_committed_daemon_set_would_be_refused() {
    // The check the committed file passes, applied to a one-word change of it.
    let text = committed(KEEL_YAML).replacen("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", 1);
    let errors: Vec<String> = schema::parse(&text).expect_err("refused").iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        ["document 13 (DaemonSet istio-system/keel): field .spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem is \
          unknown to the Kubernetes type (dropped when read)"]
    );
}

fn keel_pod(objects: &BTreeMap<String, Object>) -> (&DaemonSet, &PodSpec) {
    let Some(Object::DaemonSet(daemon_set)) = objects.get("DaemonSet istio-system/keel") else { panic!("no keel DaemonSet") };
    let pod = daemon_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec");
    (daemon_set, pod)
}

#[test]
fn the_daemon_set_has_exactly_the_privileges_it_justifies() {
    let objects = keel_yaml();
    let (daemon_set, pod) = keel_pod(&objects);
    let keel = &pod.containers[0];
    let security = keel.security_context.as_ref().expect("securityContext");
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(capabilities.add.as_deref(), Some(&["NET_ADMIN".to_owned(), "SYS_ADMIN".to_owned()][..]));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!((pod.host_network, pod.host_pid, pod.host_ipc), (Some(false), Some(true), None));
    let init = &pod.init_containers.as_ref().expect("install-cni")[0];
    let init_security = init.security_context.as_ref().expect("install-cni securityContext");
    assert_eq!(init_security.capabilities.as_ref().and_then(|c| c.add.as_ref()), None, "install-cni adds no capability");
    assert_eq!(init_security.allow_privilege_escalation, Some(false));

    let host_paths: BTreeMap<&str, &str> =
        pod.volumes.iter().flatten().filter_map(|v| v.host_path.as_ref().map(|h| (v.name.as_str(), h.path.as_str()))).collect();
    let expected = BTreeMap::from([
        ("bpffs", "/sys/fs/bpf"),
        ("cgroup", "/sys/fs/cgroup"),
        ("netns", "/var/run/netns"),
        ("keel-run", "/var/run/keel"),
        ("cni-bin", "/opt/cni/bin"),
        ("cni-conf", "/etc/cni/net.d"),
    ]);
    assert_eq!(host_paths, expected);
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.volume_mounts.iter().flatten().map(|m| format!("{}{}", m.name, if m.read_only == Some(true) { " ro" } else { "" })).collect()
    };
    assert_eq!(mounts(keel), ["bpffs", "cgroup ro", "netns ro", "keel-run", "istio-token ro", "keel-control-root ro"]);
    assert_eq!(mounts(init), ["cni-bin", "cni-conf"], "only install-cni writes the CNI directories");

    let token = pod.volumes.iter().flatten().find(|v| v.name == "istio-token").and_then(|v| v.projected.as_ref()).expect("projected token");
    let token = token.sources.as_ref().and_then(|s| s[0].service_account_token.as_ref()).expect("serviceAccountToken");
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));

    let spec = daemon_set.spec.as_ref().expect("spec");
    let rolling = spec.update_strategy.as_ref().and_then(|u| u.rolling_update.as_ref()).expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!((&rolling.max_surge, &rolling.max_unavailable), (&Some(IntOrString::Int(1)), &Some(IntOrString::Int(0))));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()), "{tolerations:?}");
    let probe = keel.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("readiness probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
    assert!(keel.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
}

#[test]
fn the_comments_explain_every_privilege() {
    let text = committed(KEEL_YAML);
    let lines: Vec<&str> = text.lines().collect();
    let commented = |at: usize| at > 0 && lines[at - 1].trim_start().starts_with('#');
    // Each of these lines grants something (or, for the gateway, says what it is denied); the line just above each
    // of its occurrences must be a comment saying why.
    for line in [
        "- NET_ADMIN",
        "- SYS_ADMIN",
        "hostPID: true",
        "hostNetwork: false",
        "runAsUser: 0",
        "type: Unconfined",
        "path: /sys/fs/bpf",
        "path: /sys/fs/cgroup",
        "path: /var/run/netns",
        "path: /var/run/keel",
        "path: /opt/cni/bin",
        "path: /etc/cni/net.d",
        "audience: istio-ca",
        "secretName: cacerts",
        "automountServiceAccountToken: false",
        "runAsUser: 1337",
        "- name: net.ipv4.ip_unprivileged_port_start",
    ] {
        let found: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == line).map(|(i, _)| i).collect();
        assert!(!found.is_empty(), "{KEEL_YAML} has no `{line}`");
        for at in found {
            assert!(commented(at), "`{line}` at {KEEL_YAML}:{} has no comment above it", at + 1);
        }
    }
    // And every RBAC rule.
    let rules: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == "- apiGroups:").map(|(i, _)| i).collect();
    // keel 3, keel-control 9 + 2 (its Lease Role); the gateway has none.
    assert_eq!(rules.len(), 14, "the RBAC rules of keel.yaml");
    for at in rules {
        assert!(commented(at), "the RBAC rule at {KEEL_YAML}:{} has no comment above it", at + 1);
    }
}

#[test]
fn rbac_is_least_privilege() {
    let objects = keel_yaml();
    let mut rules = BTreeMap::new();
    for (id, object) in &objects {
        let list = match object {
            Object::ClusterRole(r) => r.rules.clone().unwrap_or_default(),
            Object::Role(r) => r.rules.clone().unwrap_or_default(),
            _ => continue,
        };
        for rule in &list {
            let everything = rule.api_groups.iter().flatten().chain(rule.resources.iter().flatten()).chain(&rule.verbs);
            for word in everything {
                assert_ne!(word, "*", "{id}: a wildcard in {rule:?}");
            }
            // Only keel-control reads Secrets (Gateways' credentialName), and never writes them.
            if rule.resources.iter().flatten().any(|r| r == "secrets") {
                assert_eq!(id, "ClusterRole keel-control", "{id}: reads Secrets");
                assert_eq!(rule.verbs, ["get", "list", "watch"], "{id}: {rule:?}");
            }
            for resource in rule.resources.iter().flatten() {
                let group = rule.api_groups.as_ref().map(|g| g.join(",")).unwrap_or_default();
                let entry: &mut Vec<String> = rules.entry(format!("{id}: {group}/{resource}")).or_default();
                entry.extend(rule.verbs.iter().cloned());
            }
        }
    }
    let keel: Vec<String> = rules.iter().filter(|(k, _)| k.starts_with("ClusterRole keel:")).map(|(k, v)| format!("{k} {}", v.join(","))).collect();
    assert_eq!(keel, ["ClusterRole keel: /namespaces get,list,watch", "ClusterRole keel: /pods get,list,watch,patch"]);
    let writes: Vec<String> = rules
        .iter()
        .filter(|(k, v)| k.starts_with("ClusterRole keel-control:") && v.iter().any(|verb| !["get", "list", "watch"].contains(&verb.as_str())))
        .map(|(k, v)| format!("{} {}", k.trim_start_matches("ClusterRole keel-control: "), v.join(",")))
        .collect();
    assert_eq!(
        writes,
        [
            "authentication.k8s.io/tokenreviews create",
            "events.k8s.io/events create,patch",
            "networking.istio.io/destinationrules/status update,patch",
            "networking.istio.io/gateways/status update,patch",
            "networking.istio.io/serviceentries/status update,patch",
            "networking.istio.io/virtualservices/status update,patch",
            "security.istio.io/authorizationpolicies/status update,patch",
            "security.istio.io/peerauthentications/status update,patch",
            "security.istio.io/requestauthentications/status update,patch",
        ],
        "keel-control writes status, events and token reviews only"
    );
    let Some(Object::Role(lease_role)) = objects.get("Role istio-system/keel-control") else { panic!("no lease Role") };
    for rule in lease_role.rules.iter().flatten() {
        assert_eq!(rule.resources.as_deref(), Some(&["leases".to_owned()][..]));
        if rule.verbs.iter().any(|v| v != "create") {
            assert_eq!(rule.resource_names.as_deref(), Some(&["keel-control".to_owned()][..]), "{rule:?}");
        }
    }
}

#[test]
fn values_yaml_reads_back_as_the_defaults() {
    let text = committed(&format!("{CHART_DIR}/values.yaml"));
    let values: Values = serde_yaml_ng::from_str(&text).expect("values.yaml matches the Values struct (unknown keys refused)");
    assert_eq!(values, Values::default());
}

fn helm() -> Option<PathBuf> {
    require(kube_tools::helm(), "run `cargo xtask setup`")
}

fn helm_template(helm: &Path, namespace: &str, extra: &[&str]) -> BTreeMap<String, Object> {
    let mut command = Command::new(helm);
    command.args(["template", "keel"]).arg(ws::root().join(CHART_DIR)).args(["--namespace", namespace]).args(extra);
    by_id(parse_or_panic("helm template", &run(&mut command)))
}

#[test]
fn helm_lint_passes() {
    let Some(helm) = helm() else { return };
    let out = run(Command::new(helm).args(["lint", "--strict"]).arg(ws::root().join(CHART_DIR)));
    assert!(out.contains("1 chart(s) linted, 0 chart(s) failed"), "{out}");
}

#[test]
fn the_default_helm_render_is_keel_yaml() {
    let Some(helm) = helm() else { return };
    let rendered = helm_template(&helm, "istio-system", &[]);
    let plain = keel_yaml();
    assert_eq!(rendered.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>(), "the same objects");
    for (id, object) in &plain {
        assert_eq!(Some(object), rendered.get(id), "{id} differs between helm template and {KEEL_YAML}");
    }
}

#[test]
fn helm_values_reach_their_fields() {
    let Some(helm) = helm() else { return };
    let values = env::temp_dir().join(format!("keel-helm-values-{}.yaml", std::process::id()));
    fs::write(
        &values,
        "image: {hub: registry.example/mesh, tag: '1.2', pullPolicy: Always}\nlogLevel: debug\n\
         keel: {resources: {requests: {cpu: 500m}, limits: {memory: 1Gi}}, tolerations: [{key: dedicated, operator: Equal, value: mesh}]}\n\
         control: {replicas: 3, resources: {requests: {memory: 1Gi}}}\n\
         gateway: {replicas: 4, resources: {requests: {cpu: '1'}}}\n",
    )
    .unwrap();
    let rendered = helm_template(&helm, "mesh", &["--values", &values.to_string_lossy()]);
    fs::remove_file(&values).unwrap();
    let json = |id: &str| rendered.get(id).unwrap_or_else(|| panic!("no {id} in {:?}", rendered.keys())).to_json().unwrap();
    let keel = json("DaemonSet mesh/keel");
    let pod = &keel["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "registry.example/mesh/keel:1.2");
    assert_eq!(pod["initContainers"][0]["image"], "registry.example/mesh/keel:1.2");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(
        pod["containers"][0]["resources"],
        serde_json::json!({"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}),
        "Helm merges a map of values with its defaults"
    );
    assert_eq!(pod["tolerations"], serde_json::json!([{"key": "dedicated", "operator": "Equal", "value": "mesh"}]));
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&"--xds-address=https://keel-control.mesh.svc:15012".into()), "{args:?}");
    assert!(pod["containers"][0]["env"].as_array().unwrap().contains(&serde_json::json!({"name": "KEEL_LOG", "value": "debug"})));
    let control = json("Deployment mesh/keel-control");
    assert_eq!(control["spec"]["replicas"], 3);
    let container = &control["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/mesh/keel-control:1.2");
    assert_eq!(container["resources"], serde_json::json!({"requests": {"cpu": "100m", "memory": "1Gi"}}));
    assert!(container["env"].as_array().unwrap().contains(&serde_json::json!({"name": "CA_TRUSTED_NODE_ACCOUNTS", "value": "mesh/keel"})));
    let gateway = json("Deployment mesh/keel-ingressgateway");
    assert_eq!(gateway["spec"]["replicas"], 4);
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/mesh/keel:1.2");
    assert_eq!(container["resources"], serde_json::json!({"requests": {"cpu": "1", "memory": "128Mi"}}));
    assert!(container["args"].as_array().unwrap().contains(&"--xds-address=https://keel-control.mesh.svc:15012".into()));
    assert!(container["env"].as_array().unwrap().contains(&serde_json::json!({"name": "KEEL_LOG", "value": "debug"})));
    let binding = json("ClusterRoleBinding keel-control");
    assert_eq!(binding["subjects"][0]["namespace"], "mesh");
    assert!(rendered.values().all(|o| o.namespace().is_none_or(|ns| ns == "mesh")), "every namespaced object in the release namespace");
}

/// The flags the manifests pass must exist in the binaries (keel, keel-control, keel-cni): a renamed flag would
/// otherwise be found by a crash-looping DaemonSet.
#[test]
fn the_manifests_use_only_flags_the_binaries_have() {
    let objects = keel_yaml();
    let (_, pod) = keel_pod(&objects);
    let Some(Object::Deployment(control)) = objects.get("Deployment istio-system/keel-control") else { panic!("no keel-control") };
    let control_pod = control.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec");
    let gateway_pod = gateway::pod(&objects);
    let debug = ws::target_dir().join("debug");
    let binary = |env_name: &str, name: &str| env::var_os(env_name).map(PathBuf::from).unwrap_or_else(|| debug.join(name));
    let cni_crate_exists = fs::read_to_string(ws::root().join("Cargo.lock")).unwrap_or_default().contains("name = \"keel-cni\"");
    let checks = [
        (binary("KEEL_BIN", "keel"), &pod.containers[0], true),
        (binary("KEEL_BIN", "keel"), &gateway_pod.containers[0], true),
        (binary("KEEL_CONTROL_BIN", "keel-control"), &control_pod.containers[0], true),
        (binary("KEEL_CNI_BIN", "keel-cni"), &pod.init_containers.as_ref().expect("install-cni")[0], cni_crate_exists),
    ];
    let mut missing = Vec::new();
    for (binary, container, required) in checks {
        if !required && !binary.is_file() {
            eprintln!("skipped: {} (no keel-cni crate yet)", binary.display());
            continue;
        }
        let Some(binary) = require(binary, "build it: `cargo xtask build`") else { continue };
        let args = container.args.clone().unwrap_or_default();
        let subcommand = &args[0];
        let help = run(Command::new(&binary).args([subcommand.as_str(), "--help"]));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap_or_default();
            let known = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|word| word == name);
            if !known {
                missing.push(format!("{} {subcommand}: {name}", binary.display()));
            }
        }
    }
    assert!(missing.is_empty(), "flags in {KEEL_YAML} that the binaries do not have:\n{}", missing.join("\n"));
}
