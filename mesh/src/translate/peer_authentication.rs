//! PeerAuthentication (security.istio.io/v1) → `istio.security.Authorization`: mTLS modes as a node proxy
//! enforces them. A node proxy accepts plaintext and HBONE alike; STRICT means "refuse a connection that has no
//! peer principal", which is a DENY policy matching `not_principals: [presence]` (as istiod emits for ztunnel).
//! PERMISSIVE and DISABLE both mean "admit plaintext" here, so they emit nothing.
//!
//! # Effective mode
//! Istio's precedence, per workload and target port: the port's `portLevelMtls` mode, else the mode of the
//! workload-scoped PeerAuthentication selecting the pod, else the namespace-wide one, else the mesh-wide one (root
//! namespace, no selector), else PERMISSIVE. UNSET (or no `mtls`) at any level inherits the level above. Where
//! Istio expects one policy (one mesh-wide, one namespace-wide per namespace, one per workload) and finds more,
//! Istio takes the oldest; objects carry no creation time here, so the first by name applies, with a warning.
//!
//! # Policies
//! A DENY can only add refusals: a narrower PERMISSIVE cannot take back a broader policy's STRICT. So each level's
//! STRICT is emitted at the broadest scope under which nothing relaxes it, and pushed one level down otherwise:
//! - mesh STRICT and no namespace or workload PeerAuthentication relaxing any port: one GLOBAL
//!   `<root-ns>/istio_converted_static_strict`, and nothing else (every narrower STRICT would repeat it);
//! - otherwise per namespace (of a pod or a PeerAuthentication) whose namespace-level mode is STRICT: one policy
//!   named after the object that decided it, `<ns>/converted_peer_authentication_<name>` or, inherited from the
//!   mesh, `<ns>/istio_converted_static_strict`. Scope NAMESPACE when no workload-scoped PeerAuthentication of the
//!   namespace relaxes a port; else WORKLOAD_SELECTOR, listed by the namespace's pods no such object selects;
//! - in a namespace not covered that way, each workload-scoped PeerAuthentication with a STRICT port becomes
//!   `<ns>/converted_peer_authentication_<name>`, WORKLOAD_SELECTOR, listed by the pods it governs. Its one Match
//!   also names the ports: STRICT by default with `not_destination_ports` for the relaxed ones, or PERMISSIVE by
//!   default with `destination_ports` for the STRICT ones.
//!
//! Every pod thus sees exactly one policy telling where it refuses plaintext, or none. Port-level modes are keyed
//! by target port, which is the port a node proxy evaluates policies on.
use std::collections::{BTreeMap, BTreeSet};

use keel_proto::security::{self, string_match::MatchType, Action, Clause, Match, Rule, Scope, StringMatch};

use super::{selects, Mesh};
use crate::objects::{MtlsSetting, PeerAuthentication, Pod};

const STATIC_STRICT: &str = "istio_converted_static_strict";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unset,
    Strict,
    Permissive,
    Disable,
}

impl Mode {
    fn parse(setting: Option<&MtlsSetting>) -> Result<Mode, String> {
        match setting.and_then(|s| s.mode.as_deref()).unwrap_or("UNSET") {
            "UNSET" => Ok(Mode::Unset),
            "STRICT" => Ok(Mode::Strict),
            "PERMISSIVE" => Ok(Mode::Permissive),
            "DISABLE" => Ok(Mode::Disable),
            other => Err(format!("{other:?} is not UNSET, STRICT, PERMISSIVE or DISABLE")),
        }
    }

    /// Whether plaintext is refused, given whether the level above refuses it.
    fn strict(self, inherited: bool) -> bool {
        match self {
            Mode::Unset => inherited,
            Mode::Strict => true,
            Mode::Permissive | Mode::Disable => false,
        }
    }
}

/// A valid PeerAuthentication, its modes parsed.
struct Parsed<'a> {
    object: &'a PeerAuthentication,
    /// `None` for mesh- and namespace-wide ones; Istio reads an empty `matchLabels` as no selector.
    selector: Option<&'a BTreeMap<String, String>>,
    mode: Mode,
    port_modes: BTreeMap<u16, Mode>,
}

impl<'a> Parsed<'a> {
    fn new(object: &'a PeerAuthentication) -> Result<Parsed<'a>, String> {
        let spec = &object.spec;
        let selector = spec.selector.as_ref().map(|s| &s.match_labels).filter(|labels| !labels.is_empty());
        let mode = Mode::parse(spec.mtls.as_ref()).map_err(|e| format!("field spec.mtls.mode: {e}"))?;
        if selector.is_none() && !spec.port_level_mtls.is_empty() {
            return Err("field spec.portLevelMtls: only a PeerAuthentication with spec.selector.matchLabels can set port modes".into());
        }
        let mut port_modes = BTreeMap::new();
        for (port, setting) in &spec.port_level_mtls {
            if *port == 0 {
                return Err("field spec.portLevelMtls.0: port must be 1-65535".into());
            }
            let mode = Mode::parse(Some(setting)).map_err(|e| format!("field spec.portLevelMtls.{port}.mode: {e}"))?;
            port_modes.insert(*port, mode);
        }
        Ok(Parsed { object, selector, mode, port_modes })
    }

    fn name(&self) -> &'a str {
        &self.object.metadata.name
    }

    fn namespace(&self) -> &'a str {
        &self.object.metadata.namespace
    }

    /// Where a pod governed by this object refuses plaintext, under the namespace-level mode.
    fn strictness(&self, namespace_strict: bool) -> Strictness {
        let default = self.mode.strict(namespace_strict);
        let exceptions = self.port_modes.iter().filter(|(_, mode)| mode.strict(default) != default).map(|(port, _)| *port as u32).collect();
        Strictness { default, exceptions }
    }
}

pub fn check(object: &PeerAuthentication) -> Result<(), String> {
    Parsed::new(object).map(drop)
}

/// Where one workload refuses plaintext: on every port but `exceptions` (`default` STRICT), or only on them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Strictness {
    default: bool,
    exceptions: BTreeSet<u32>,
}

impl Strictness {
    fn everywhere(&self) -> bool {
        self.default && self.exceptions.is_empty()
    }

    fn anywhere(&self) -> bool {
        self.default || !self.exceptions.is_empty()
    }

    /// The rule refusing plaintext where this is STRICT; `None` where nothing is.
    fn deny_plaintext(&self) -> Option<Rule> {
        let without_principal = Match { not_principals: vec![StringMatch { match_type: Some(MatchType::Presence(())) }], ..Default::default() };
        let only_ports = match (self.default, self.exceptions.iter().copied().collect::<Vec<_>>()) {
            (true, relaxed) => Match { not_destination_ports: relaxed, ..without_principal },
            (false, strict) if !strict.is_empty() => Match { destination_ports: strict, ..without_principal },
            (false, _) => return None,
        };
        Some(Rule { clauses: vec![Clause { matches: vec![only_ports] }] })
    }
}

/// The policies the PeerAuthentications of a snapshot translate to.
#[derive(Debug, Default)]
pub struct Translated {
    pub authorizations: Vec<security::Authorization>,
    /// The WORKLOAD_SELECTOR policies each pod (namespace, name) must list.
    attached: BTreeMap<(String, String), Vec<String>>,
    pub warnings: Vec<String>,
}

impl Translated {
    pub fn attached_to(&self, pod: &Pod) -> &[String] {
        self.attached.get(&(pod.metadata.namespace.clone(), pod.metadata.name.clone())).map_or(&[], Vec::as_slice)
    }

    fn emit(&mut self, namespace: &str, name: &str, scope: Scope, strictness: &Strictness) -> Option<String> {
        let rule = strictness.deny_plaintext()?;
        self.authorizations.push(security::Authorization {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope: scope as i32,
            action: Action::Deny as i32,
            rules: vec![rule],
            dry_run: false,
        });
        Some(format!("{namespace}/{name}"))
    }

    fn attach(&mut self, pod: &Pod, policy: &str) {
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        self.attached.entry(key).or_default().push(policy.to_owned());
    }
}

/// The PeerAuthentications of one namespace that apply: at most one namespace-wide, and the workload-scoped ones.
#[derive(Default)]
struct NamespaceLevel<'a> {
    namespace_wide: Option<Parsed<'a>>,
    /// In name order: the first selecting a pod governs it.
    workload_scoped: Vec<Parsed<'a>>,
}

/// `objects` must have passed [`check`]; the others are skipped.
pub fn translate(mesh: &Mesh, objects: &[&PeerAuthentication], pods: &[&Pod]) -> Translated {
    let mut out = Translated::default();
    let mut sorted: Vec<Parsed> = objects.iter().filter_map(|o| Parsed::new(o).ok()).collect();
    sorted.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));

    let mut mesh_wide: Option<Parsed> = None;
    let mut namespaces: BTreeMap<&str, NamespaceLevel> = BTreeMap::new();
    for parsed in sorted {
        let level = namespaces.entry(parsed.namespace()).or_default();
        if parsed.selector.is_some() {
            level.workload_scoped.push(parsed);
            continue;
        }
        // The root namespace's namespace-wide object is the mesh-wide one.
        let slot = if parsed.namespace() == mesh.root_namespace { &mut mesh_wide } else { &mut level.namespace_wide };
        match slot {
            Some(first) => out.warnings.push(format!(
                "PeerAuthentication {}/{}: ignored, {} already sets the {} mode (the first by name applies)",
                parsed.namespace(),
                parsed.name(),
                first.name(),
                if parsed.namespace() == mesh.root_namespace { "mesh-wide" } else { "namespace-wide" },
            )),
            None => *slot = Some(parsed),
        }
    }
    for pod in pods {
        namespaces.entry(&pod.metadata.namespace).or_default();
    }

    let mesh_strict = mesh_wide.as_ref().is_some_and(|p| p.mode.strict(false));
    let namespace_strict = |level: &NamespaceLevel| level.namespace_wide.as_ref().map_or(mesh_strict, |p| p.mode.strict(mesh_strict));
    let relaxed = |level: &NamespaceLevel| {
        let strict = namespace_strict(level);
        strict && level.workload_scoped.iter().any(|p| !p.strictness(strict).everywhere())
    };

    if mesh_strict && namespaces.values().all(|level| namespace_strict(level) && !relaxed(level)) {
        out.emit(&mesh.root_namespace, STATIC_STRICT, Scope::Global, &Strictness { default: true, exceptions: BTreeSet::new() });
        return out;
    }
    for (namespace, level) in &namespaces {
        let strict = namespace_strict(level);
        let governing = governing_objects(namespace, level, pods, &mut out.warnings);
        if strict {
            let name = match &level.namespace_wide {
                Some(p) if p.mode != Mode::Unset => format!("converted_peer_authentication_{}", p.name()),
                _ => STATIC_STRICT.to_owned(),
            };
            let everywhere = Strictness { default: true, exceptions: BTreeSet::new() };
            if !relaxed(level) {
                out.emit(namespace, &name, Scope::Namespace, &everywhere);
                continue;
            }
            if let Some(policy) = out.emit(namespace, &name, Scope::WorkloadSelector, &everywhere) {
                for pod in pods.iter().filter(|p| p.metadata.namespace == *namespace && !governing.contains_key(p.metadata.name.as_str())) {
                    out.attach(pod, &policy);
                }
            }
        }
        for parsed in &level.workload_scoped {
            let strictness = parsed.strictness(strict);
            if !strictness.anywhere() {
                continue;
            }
            let name = format!("converted_peer_authentication_{}", parsed.name());
            if let Some(policy) = out.emit(namespace, &name, Scope::WorkloadSelector, &strictness) {
                for pod in
                    pods.iter().filter(|p| p.metadata.namespace == *namespace && governing.get(p.metadata.name.as_str()) == Some(&parsed.name()))
                {
                    out.attach(pod, &policy);
                }
            }
        }
    }
    out
}

/// Pod name → the name of the workload-scoped PeerAuthentication governing it: the first by name that selects it.
fn governing_objects<'a>(namespace: &str, level: &NamespaceLevel<'a>, pods: &[&'a Pod], warnings: &mut Vec<String>) -> BTreeMap<&'a str, &'a str> {
    let mut governing = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.metadata.namespace == namespace) {
        let selecting: Vec<&str> =
            level.workload_scoped.iter().filter(|p| p.selector.is_some_and(|s| selects(s, &pod.metadata.labels))).map(|p| p.name()).collect();
        if let [first, others @ ..] = selecting.as_slice() {
            if !others.is_empty() {
                warnings.push(format!(
                    "Pod {namespace}/{}: selected by PeerAuthentications {}; {first} applies (the first by name)",
                    pod.metadata.name,
                    selecting.join(", ")
                ));
            }
            governing.insert(pod.metadata.name.as_str(), *first);
        }
    }
    governing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        objects::Object,
        source::{load_text, Loaded},
        translate::{evaluate::admits, translate as translate_all, Resources},
    };

    fn load(yaml: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        loaded
    }

    /// Pods: demo/web (app: web), demo/db (app: db), legacy/old (app: old), istio-system/gw (app: gw).
    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: demo, labels: {app: db}}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy, labels: {app: old}}
status: {podIP: 10.244.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: gw, namespace: istio-system, labels: {app: gw}}
status: {podIP: 10.244.0.13}
"#;

    const WEB: &str = "Kubernetes//Pod/demo/web";
    const DB: &str = "Kubernetes//Pod/demo/db";
    const OLD: &str = "Kubernetes//Pod/legacy/old";
    const GW: &str = "Kubernetes//Pod/istio-system/gw";
    const ALL: [&str; 4] = [WEB, DB, OLD, GW];

    /// `(namespace, name, spec)` → a PeerAuthentication document.
    fn pa(namespace: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n")
    }

    fn translated(peer_authentications: &[String]) -> Resources {
        let loaded = load(&format!("{PODS}{}", peer_authentications.concat()));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<Object> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        translate_all(&Mesh::default(), &objects).unwrap()
    }

    /// Whether `uid` refuses plaintext on `port`, checked against a connection with a principal (always admitted).
    fn strict(r: &Resources, uid: &str, port: u32) -> bool {
        assert!(admits(r, uid, port, Some("cluster.local/ns/demo/sa/client")), "{uid}:{port} refuses an mTLS peer");
        !admits(r, uid, port, None)
    }

    /// `name → (scope, workloads listing it)`, to check the shape alongside the effect.
    fn shape(r: &Resources) -> Vec<(String, Scope, Vec<String>)> {
        r.authorizations
            .iter()
            .map(|(name, a)| {
                let listing = ALL
                    .iter()
                    .filter(|uid| crate::translate::evaluate::workload(r, uid).authorization_policies.contains(name))
                    .map(|uid| uid.rsplit('/').next().unwrap().to_owned())
                    .collect();
                (name.clone(), Scope::try_from(a.scope).unwrap(), listing)
            })
            .collect()
    }

    #[test]
    fn without_peer_authentication_the_mesh_is_permissive() {
        let r = translated(&[]);
        assert!(r.authorizations.is_empty());
        assert!(ALL.iter().all(|uid| !strict(&r, uid, 80)));
    }

    #[test]
    fn mesh_strict_is_one_global_policy() {
        let r = translated(&[pa("istio-system", "default", "{mtls: {mode: STRICT}}")]);
        assert_eq!(shape(&r), [("istio-system/istio_converted_static_strict".to_owned(), Scope::Global, vec![])]);
        let rule = &r.authorizations["istio-system/istio_converted_static_strict"].rules[0];
        assert_eq!(rule.clauses[0].matches[0].not_principals, [StringMatch { match_type: Some(MatchType::Presence(())) }]);
        for uid in ALL {
            assert!(strict(&r, uid, 80) && strict(&r, uid, 15008), "{uid}");
        }
    }

    #[test]
    fn a_namespace_permissive_under_mesh_strict_admits_plaintext_there_only() {
        let r = translated(&[pa("istio-system", "default", "{mtls: {mode: STRICT}}"), pa("legacy", "open", "{mtls: {mode: PERMISSIVE}}")]);
        assert!(!strict(&r, OLD, 80), "the namespace overrides the mesh");
        assert!(strict(&r, WEB, 80) && strict(&r, DB, 5432) && strict(&r, GW, 80), "other namespaces keep the mesh's STRICT");
        assert_eq!(
            shape(&r),
            [
                ("demo/istio_converted_static_strict".to_owned(), Scope::Namespace, vec![]),
                ("istio-system/istio_converted_static_strict".to_owned(), Scope::Namespace, vec![]),
            ],
            "no GLOBAL policy: it would deny in legacy too"
        );
    }

    #[test]
    fn a_workload_strict_with_a_permissive_port() {
        let r = translated(&[pa(
            "demo",
            "db-strict",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {9090: {mode: PERMISSIVE}}}",
        )]);
        assert!(strict(&r, DB, 5432) && !strict(&r, DB, 9090), "the port-level mode overrides the workload's");
        assert!(!strict(&r, WEB, 5432) && !strict(&r, OLD, 5432), "others keep the mesh default, PERMISSIVE");
        assert_eq!(shape(&r), [("demo/converted_peer_authentication_db-strict".to_owned(), Scope::WorkloadSelector, vec!["db".to_owned()])]);
        assert_eq!(r.authorizations["demo/converted_peer_authentication_db-strict"].rules[0].clauses[0].matches[0].not_destination_ports, [9090]);
    }

    #[test]
    fn port_keys_may_be_quoted_as_the_kubernetes_api_writes_them() {
        let quoted = translated(&[pa(
            "demo",
            "db",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {\"9090\": {mode: PERMISSIVE}}}",
        )]);
        assert!(strict(&quoted, DB, 5432) && !strict(&quoted, DB, 9090));
        let from_api = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "db"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "portLevelMtls": {"9090": {"mode": "STRICT"}, "http": {"mode": "STRICT"}}}});
        let error = crate::source::object_from_json(&from_api).unwrap_err().to_string();
        assert!(error.contains("spec.portLevelMtls") && error.contains("\"http\" is not a port number"), "{error}");
    }

    #[test]
    fn a_namespace_permissive_with_a_workload_port_strict() {
        let r = translated(&[
            pa("istio-system", "default", "{mtls: {mode: STRICT}}"),
            pa("demo", "default", "{mtls: {mode: PERMISSIVE}}"),
            pa("demo", "db-port", "{selector: {matchLabels: {app: db}}, portLevelMtls: {5432: {mode: STRICT}}}"),
        ]);
        assert!(strict(&r, DB, 5432), "the port is STRICT");
        assert!(!strict(&r, DB, 8080), "the workload's mode is UNSET: the namespace's PERMISSIVE");
        assert!(!strict(&r, WEB, 5432), "the namespace is PERMISSIVE");
        assert!(strict(&r, OLD, 80) && strict(&r, GW, 80), "the mesh is STRICT elsewhere");
        assert_eq!(r.authorizations["demo/converted_peer_authentication_db-port"].rules[0].clauses[0].matches[0].destination_ports, [5432]);
    }

    #[test]
    fn disable_admits_plaintext_and_pushes_the_namespace_policy_down_to_the_other_pods() {
        let r = translated(&[
            pa("istio-system", "default", "{mtls: {mode: STRICT}}"),
            pa("demo", "web-off", "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}"),
        ]);
        assert!(!strict(&r, WEB, 80), "DISABLE admits plaintext, as PERMISSIVE does");
        assert!(strict(&r, DB, 80), "the rest of the namespace keeps the mesh's STRICT");
        assert!(strict(&r, OLD, 80) && strict(&r, GW, 80));
        assert_eq!(
            shape(&r),
            [
                ("demo/istio_converted_static_strict".to_owned(), Scope::WorkloadSelector, vec!["db".to_owned()]),
                ("istio-system/istio_converted_static_strict".to_owned(), Scope::Namespace, vec![]),
                ("legacy/istio_converted_static_strict".to_owned(), Scope::Namespace, vec![]),
            ]
        );
    }

    #[test]
    fn unset_inherits_from_the_scope_above() {
        // Mesh UNSET: the default, PERMISSIVE.
        let r = translated(&[pa("istio-system", "default", "{mtls: {mode: UNSET}}")]);
        assert!(ALL.iter().all(|uid| !strict(&r, uid, 80)));
        // Namespace without mtls and workload UNSET under mesh STRICT: STRICT, but for the port relaxed.
        let r = translated(&[
            pa("istio-system", "default", "{mtls: {mode: STRICT}}"),
            pa("demo", "default", "{}"),
            pa(
                "demo",
                "db",
                "{selector: {matchLabels: {app: db}}, mtls: {mode: UNSET}, portLevelMtls: {9090: {mode: PERMISSIVE}, 5432: {mode: UNSET}}}",
            ),
        ]);
        assert!(strict(&r, WEB, 80) && strict(&r, DB, 5432) && strict(&r, DB, 80));
        assert!(!strict(&r, DB, 9090));
        assert!(r.authorizations.contains_key("demo/istio_converted_static_strict"), "the mesh decided demo's mode: {:?}", r.authorizations.keys());
    }

    #[test]
    fn a_namespace_strict_under_a_permissive_mesh_is_named_after_its_object() {
        let r = translated(&[pa("demo", "lock", "{mtls: {mode: STRICT}}")]);
        assert_eq!(shape(&r), [("demo/converted_peer_authentication_lock".to_owned(), Scope::Namespace, vec![])]);
        assert!(strict(&r, WEB, 80) && strict(&r, DB, 80) && !strict(&r, OLD, 80) && !strict(&r, GW, 80));
    }

    #[test]
    fn conflicts_resolve_to_the_first_by_name_with_a_warning() {
        let r = translated(&[
            pa("demo", "b-strict", "{mtls: {mode: STRICT}}"),
            pa("demo", "a-permissive", "{mtls: {mode: PERMISSIVE}}"),
            pa("legacy", "y-permissive", "{selector: {matchLabels: {app: old}}, mtls: {mode: PERMISSIVE}}"),
            pa("legacy", "x-strict", "{selector: {matchLabels: {app: old}}, mtls: {mode: STRICT}}"),
        ]);
        assert!(!strict(&r, WEB, 80), "a-permissive applies");
        assert!(strict(&r, OLD, 80), "x-strict applies");
        assert!(r.warnings.iter().any(|w| w.contains("demo/b-strict: ignored, a-permissive")), "{:?}", r.warnings);
        assert!(r.warnings.iter().any(|w| w.contains("Pod legacy/old") && w.contains("x-strict applies")), "{:?}", r.warnings);
    }

    /// Every combination of modes at every level, against Istio's precedence written out directly.
    #[test]
    fn the_effective_mode_follows_istio_precedence_in_every_combination() {
        let modes = [None, Some("UNSET"), Some("STRICT"), Some("PERMISSIVE"), Some("DISABLE")];
        let mtls = |mode: Option<&str>| mode.map_or(String::new(), |m| format!("mtls: {{mode: {m}}}, "));
        let resolve = |chain: [Option<&str>; 4]| chain.into_iter().flatten().find(|m| *m != "UNSET") == Some("STRICT");
        for mesh in modes {
            for namespace in modes {
                for workload in modes {
                    for port in modes {
                        let mut objects = vec![pa("istio-system", "mesh", &format!("{{{}}}", mtls(mesh)))];
                        objects.push(pa("demo", "ns", &format!("{{{}}}", mtls(namespace))));
                        let port_level = port.map_or(String::new(), |m| format!("portLevelMtls: {{9090: {{mode: {m}}}}}"));
                        objects.push(pa("demo", "db", &format!("{{selector: {{matchLabels: {{app: db}}}}, {}{port_level}}}", mtls(workload))));
                        let r = translated(&objects);
                        let case = format!("mesh {mesh:?}, namespace {namespace:?}, workload {workload:?}, port {port:?}");
                        assert_eq!(strict(&r, DB, 9090), resolve([port, workload, namespace, mesh]), "db:9090, {case}");
                        assert_eq!(strict(&r, DB, 80), resolve([None, workload, namespace, mesh]), "db:80, {case}");
                        assert_eq!(strict(&r, WEB, 9090), resolve([None, None, namespace, mesh]), "web:9090, {case}");
                        assert_eq!(strict(&r, OLD, 9090), resolve([None, None, None, mesh]), "old:9090, {case}");
                        assert_eq!(strict(&r, GW, 9090), resolve([None, None, None, mesh]), "gw:9090, {case}");
                        let listed = |uid: &&str| crate::translate::evaluate::workload(&r, uid).authorization_policies.len();
                        assert!(ALL.iter().all(|uid| listed(uid) <= 1), "at most one policy per pod, {case}");
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("{mtls: {mode: OPTIONAL}}", "field spec.mtls.mode: \"OPTIONAL\" is not"),
            (
                "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}",
                "field spec.portLevelMtls: only a PeerAuthentication with spec.selector",
            ),
            ("{selector: {matchLabels: {}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}", "field spec.portLevelMtls: only"),
            ("{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}}", "field spec.portLevelMtls.0: port must be 1-65535"),
            ("{selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: strict}}}", "field spec.portLevelMtls.8080.mode: \"strict\""),
            ("{selector: {matchLabels: {app: a}}, portLevelMtls: {70000: {mode: STRICT}}}", "spec.portLevelMtls"),
        ];
        for (spec, expected) in cases {
            let loaded = load(&pa("demo", "pa", spec));
            assert!(loaded.objects.is_empty(), "{spec} was accepted");
            let error = loaded.errors[0].to_string();
            assert!(error.contains("PeerAuthentication demo/pa: ") && error.contains(expected), "{spec}: {error}");
        }
    }
}
