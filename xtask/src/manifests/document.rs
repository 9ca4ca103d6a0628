//! One manifest document: a typed Kubernetes object and the comments written with it.

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Namespace, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    Metadata as _, Resource as _,
};

/// Declares [`Object`] over the kinds deploy/ uses, with the dispatch from apiVersion/kind to the typed struct that
/// both serialization and [`super::schema`] rely on.
macro_rules! objects {
    ($($kind:ident),+ $(,)?) => {
        /// Every kind deploy/ installs. Adding a kind here is all the schema check needs to accept it.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($kind(Box<$kind>),)+
        }

        impl Object {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Object::$kind(_) => $kind::KIND,)+
                }
            }

            pub fn name(&self) -> &str {
                match self {
                    $(Object::$kind(o) => o.metadata().name.as_deref().unwrap_or_default(),)+
                }
            }

            pub fn namespace(&self) -> Option<&str> {
                match self {
                    $(Object::$kind(o) => o.metadata().namespace.as_deref(),)+
                }
            }

            /// The object as a YAML value (k8s-openapi's own serialization: apiVersion and kind included).
            pub fn to_yaml_value(&self) -> Result<serde_yaml_ng::Value, serde_yaml_ng::Error> {
                match self {
                    $(Object::$kind(o) => serde_yaml_ng::to_value(o),)+
                }
            }

            /// Reads a document of a known apiVersion/kind into its typed struct; `None` for any other kind.
            pub fn from_json(
                api_version: &str,
                kind: &str,
                value: serde_json::Value,
            ) -> Option<Result<Object, serde_json::Error>> {
                $(
                    if api_version == $kind::API_VERSION && kind == $kind::KIND {
                        return Some(serde_json::from_value::<$kind>(value).map(|o| Object::$kind(Box::new(o))));
                    }
                )+
                None
            }

            /// The typed object back as JSON, to compare with what was read.
            pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(Object::$kind(o) => serde_json::to_value(o),)+
                }
            }

            /// Every (apiVersion, kind) known.
            pub fn known_kinds() -> Vec<(&'static str, &'static str)> {
                vec![$(($kind::API_VERSION, $kind::KIND),)+]
            }
        }

        $(
            impl From<$kind> for Object {
                fn from(o: $kind) -> Object {
                    Object::$kind(Box::new(o))
                }
            }
        )+
    };
}

objects!(
    Namespace,
    ServiceAccount,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    Service,
    DaemonSet,
    Deployment,
    PodDisruptionBudget,
    CustomResourceDefinition
);

/// A comment placed on the line above the `nth` line (0-based) of the document whose trimmed text is `line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: String,
    pub nth: usize,
    pub text: String,
}

impl Note {
    pub fn above(line: impl Into<String>, text: impl Into<String>) -> Note {
        Note { line: line.into(), nth: 0, text: text.into() }
    }

    pub fn above_nth(line: impl Into<String>, nth: usize, text: impl Into<String>) -> Note {
        Note { line: line.into(), nth, text: text.into() }
    }
}

/// An object with the prose that explains it: a header above the document and notes next to its fields.
#[derive(Debug, Clone)]
pub struct Document {
    pub object: Object,
    /// Paragraphs written as comments above the document.
    pub header: Vec<String>,
    pub notes: Vec<Note>,
}

impl Document {
    pub fn new(object: impl Into<Object>, header: impl IntoIterator<Item = impl Into<String>>) -> Document {
        Document { object: object.into(), header: header.into_iter().map(Into::into).collect(), notes: Vec::new() }
    }

    pub fn with_notes(mut self, notes: impl IntoIterator<Item = Note>) -> Document {
        self.notes.extend(notes);
        self
    }

    /// `Kind namespace/name`, as errors and comparisons name documents.
    pub fn id(&self) -> String {
        object_id(&self.object)
    }
}

pub fn object_id(object: &Object) -> String {
    match object.namespace() {
        Some(ns) => format!("{} {ns}/{}", object.kind(), object.name()),
        None => format!("{} {}", object.kind(), object.name()),
    }
}
