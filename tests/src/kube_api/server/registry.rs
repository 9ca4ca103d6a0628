//! The resources this stand-in serves: builtin kinds (described by their k8s-openapi types, so group, version,
//! kind and scope cannot be mistyped), Istio's networking and security kinds, and kinds registered at run time by
//! creating a CustomResourceDefinition.

use super::status::ApiError;
use super::structural;
use super::validate::{self, NameRule};
use k8s_openapi::api::{apps, authentication, coordination, core, discovery, events, policy, rbac, scheduling};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::any::TypeId;
use std::sync::Arc;

/// What the body of a write to this resource must decode as.
#[derive(Clone)]
pub enum Schema {
    /// A builtin kind: its k8s-openapi type, strictly.
    Typed(fn(&Value) -> Result<(), ApiError>),
    /// A custom resource without a schema (Istio's kinds before their CRDs are installed): strict metadata, spec
    /// kept as JSON.
    Custom,
    /// A custom resource of an installed CRD: strict metadata, and the rest checked against the
    /// `openAPIV3Schema` of the version the object is written at, `(version, schema)`.
    Crd(Arc<Vec<(String, Value)>>),
}

pub struct ResourceType {
    /// `""` for the core group.
    pub group: String,
    /// Served versions, the first is the storage (and preferred) version. Custom resources are converted between
    /// versions by rewriting `apiVersion` only (a CRD's `conversion: None`).
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: writes to the object ignore `status`, writes to `/status` change only it.
    pub status: bool,
    /// Only POST (TokenReview): the request is answered, never stored.
    pub create_only: bool,
    pub schema: Schema,
    pub names: NameRule,
    /// Field selector labels beyond `metadata.name` (and `metadata.namespace` for namespaced kinds).
    pub field_labels: &'static [&'static str],
    /// Registered by a CustomResourceDefinition of this name.
    pub crd: Option<String>,
}

impl ResourceType {
    /// The storage key of this resource, stable across versions.
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        if self.create_only {
            &["create"]
        } else {
            &["create", "delete", "get", "list", "patch", "update", "watch"]
        }
    }

    /// Whether field selectors may use `label` on this resource.
    pub fn supports_field(&self, label: &str) -> bool {
        label == "metadata.name" || (self.namespaced && label == "metadata.namespace") || self.field_labels.contains(&label)
    }
}

pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn builtin<K>(short_names: &[&str], status: bool, field_labels: &'static [&'static str]) -> ResourceType
where
    K: k8s_openapi::Resource + serde::de::DeserializeOwned,
    K::Scope: 'static,
{
    let names = match K::URL_PATH_SEGMENT {
        "namespaces" | "services" => NameRule::Label,
        _ if K::GROUP == "rbac.authorization.k8s.io" => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    };
    ResourceType {
        group: K::GROUP.to_owned(),
        versions: vec![K::VERSION.to_owned()],
        plural: K::URL_PATH_SEGMENT.to_owned(),
        singular: K::KIND.to_ascii_lowercase(),
        kind: K::KIND.to_owned(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status,
        create_only: K::URL_PATH_SEGMENT == "tokenreviews",
        schema: Schema::Typed(validate::typed::<K>),
        names,
        field_labels,
        crd: None,
    }
}

fn istio(group: &str, versions: &[&str], kind: &str, plural: &str, short: &str) -> ResourceType {
    let category = group.replace('.', "-");
    ResourceType {
        group: group.to_owned(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
        plural: plural.to_owned(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.to_owned(),
        namespaced: true,
        short_names: vec![short.to_owned()],
        categories: vec!["istio-io".to_owned(), category],
        status: true,
        create_only: false,
        schema: Schema::Custom,
        names: NameRule::Subdomain,
        field_labels: &[],
        crd: None,
    }
}

impl Registry {
    pub fn builtin() -> Self {
        let net = ["v1", "v1beta1", "v1alpha3"];
        let sec = ["v1", "v1beta1"];
        let types = vec![
            builtin::<core::v1::Pod>(&["po"], true, POD_FIELDS),
            builtin::<core::v1::Service>(&["svc"], true, &[]),
            builtin::<core::v1::Namespace>(&["ns"], true, &["status.phase"]),
            builtin::<core::v1::Node>(&["no"], true, &["spec.unschedulable"]),
            builtin::<core::v1::ServiceAccount>(&["sa"], false, &[]),
            builtin::<core::v1::ConfigMap>(&["cm"], false, &[]),
            builtin::<core::v1::Secret>(&[], false, &["type"]),
            builtin::<core::v1::Event>(&["ev"], false, EVENT_FIELDS),
            builtin::<events::v1::Event>(&["ev"], false, &[]),
            builtin::<discovery::v1::EndpointSlice>(&[], false, &[]),
            builtin::<coordination::v1::Lease>(&[], false, &[]),
            builtin::<authentication::v1::TokenReview>(&[], false, &[]),
            builtin::<apps::v1::DaemonSet>(&["ds"], true, &[]),
            builtin::<apps::v1::Deployment>(&["deploy"], true, &[]),
            builtin::<policy::v1::PodDisruptionBudget>(&["pdb"], true, &[]),
            builtin::<rbac::v1::ClusterRole>(&[], false, &[]),
            builtin::<rbac::v1::ClusterRoleBinding>(&[], false, &[]),
            builtin::<rbac::v1::Role>(&[], false, &[]),
            builtin::<rbac::v1::RoleBinding>(&[], false, &[]),
            builtin::<scheduling::v1::PriorityClass>(&["pc"], false, &[]),
            builtin::<CustomResourceDefinition>(&["crd", "crds"], true, &[]),
            istio("networking.istio.io", &net, "VirtualService", "virtualservices", "vs"),
            istio("networking.istio.io", &net, "DestinationRule", "destinationrules", "dr"),
            istio("networking.istio.io", &net, "ServiceEntry", "serviceentries", "se"),
            istio("networking.istio.io", &net, "Gateway", "gateways", "gw"),
            istio("security.istio.io", &sec, "AuthorizationPolicy", "authorizationpolicies", "ap"),
            istio("security.istio.io", &sec, "PeerAuthentication", "peerauthentications", "pa"),
            istio("security.istio.io", &sec, "RequestAuthentication", "requestauthentications", "ra"),
        ];
        Self { types: types.into_iter().map(Arc::new).collect() }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)).cloned()
    }

    /// The resource serving objects of `apiVersion` + `kind`, with the version named.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<(Arc<ResourceType>, String)> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let t = self.types.iter().find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))?;
        Some((t.clone(), version.to_owned()))
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.key() == key).cloned()
    }

    /// Every (group, versions) served, in registration order, versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            let i = match groups.iter().position(|(g, _)| *g == t.group) {
                Some(i) => i,
                None => {
                    groups.push((t.group.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            for v in &t.versions {
                if !groups[i].1.contains(v) {
                    groups[i].1.push(v.clone());
                }
            }
        }
        groups
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types.iter().filter(|t| t.group == group && t.versions.iter().any(|v| v == version)).cloned().collect()
    }

    /// Serves the kind a CustomResourceDefinition declares (replacing a builtin definition of the same resource,
    /// as installing Istio's own CRDs would). The CRD must be named `<plural>.<group>`.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let text = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (group, plural, kind) = (text("/spec/group"), text("/spec/names/plural"), text("/spec/names/kind"));
        let invalid = |field: &str, detail: String| {
            ApiError::invalid("apiextensions.k8s.io", "CustomResourceDefinition", name, field, "FieldValueInvalid", &detail)
        };
        if name != format!("{plural}.{group}") {
            return Err(invalid("metadata.name", format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group")));
        }
        let served: Vec<&Value> =
            crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten().filter(|v| v["served"] == true).collect();
        // The storage version first: that is the version objects are kept in.
        let mut versions: Vec<String> = served
            .iter()
            .filter(|v| v["storage"] == true)
            .chain(served.iter().filter(|v| v["storage"] != true))
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        versions.dedup();
        if versions.is_empty() {
            return Err(invalid("spec.versions", "Required value: at least one served storage version".to_owned()));
        }
        // apiextensions.k8s.io/v1 requires a structural schema for every version.
        let mut schemas = Vec::new();
        for (i, version) in crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
            let Some(schema) = version.pointer("/schema/openAPIV3Schema") else {
                return Err(invalid(&path, "Required value: schemas are required".to_owned()));
            };
            if let Some(problem) = structural::problems(schema, &path).into_iter().next() {
                let (field, detail) = problem.split_once(": ").unwrap_or((&path, &problem));
                return Err(invalid(field, detail.to_owned()));
            }
            schemas.push((version["name"].as_str().unwrap_or_default().to_owned(), schema.clone()));
        }
        let strings = |p: &str| {
            crd.pointer(p).and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect::<Vec<_>>()
        };
        let status = served.iter().any(|v| v.pointer("/subresources/status").is_some());
        let singular = Some(text("/spec/names/singular")).filter(|s| !s.is_empty()).unwrap_or_else(|| kind.to_ascii_lowercase());
        let resource = ResourceType {
            group: group.clone(),
            versions,
            plural: plural.clone(),
            singular,
            kind,
            namespaced: crd.pointer("/spec/scope").and_then(Value::as_str) == Some("Namespaced"),
            short_names: strings("/spec/names/shortNames"),
            categories: strings("/spec/names/categories"),
            status,
            create_only: false,
            schema: Schema::Crd(Arc::new(schemas)),
            names: NameRule::Subdomain,
            field_labels: &[],
            crd: Some(name.to_owned()),
        };
        self.types.retain(|t| !(t.group == group && t.plural == plural));
        self.types.push(Arc::new(resource));
        Ok(())
    }

    /// Stops serving the kind of CRD `name`; returns its storage key (its objects are deleted with it).
    pub fn unregister_crd(&mut self, name: &str) -> Option<String> {
        let key = self.types.iter().find(|t| t.crd.as_deref() == Some(name)).map(|t| t.key())?;
        self.types.retain(|t| t.crd.as_deref() != Some(name));
        Some(key)
    }
}
