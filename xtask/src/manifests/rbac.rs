//! RBAC rules with the reason for each: the rule goes into the role, the reason into a comment above it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::document::{Document, Note};

/// One permission and why the component needs it.
pub struct Rule {
    /// "" is the core group.
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Limits the rule to these objects (not possible for `create` or `list`/`watch`).
    pub resource_names: &'static [&'static str],
    pub why: &'static str,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    fn policy_rule(&self) -> PolicyRule {
        PolicyRule {
            api_groups: Some(vec![self.api_group.to_owned()]),
            resources: Some(strings(self.resources)),
            verbs: strings(self.verbs),
            resource_names: (!self.resource_names.is_empty()).then(|| strings(self.resource_names)),
            ..PolicyRule::default()
        }
    }
}

/// The reason for each rule, placed above its list item.
fn notes(rules: &[Rule]) -> Vec<Note> {
    rules.iter().enumerate().map(|(i, rule)| Note::above_nth("- apiGroups:", i, rule.why)).collect()
}

pub fn metadata(name: &str, namespace: Option<&str>, app: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
        ..ObjectMeta::default()
    }
}

pub fn service_account(name: &str, namespace: &str, header: &str) -> Document {
    Document::new(ServiceAccount { metadata: metadata(name, Some(namespace), name), ..ServiceAccount::default() }, [header])
}

pub fn cluster_role(name: &str, rules: &[Rule], header: &str) -> Document {
    let role =
        ClusterRole { metadata: metadata(name, None, name), rules: Some(rules.iter().map(Rule::policy_rule).collect()), ..ClusterRole::default() };
    Document::new(role, [header]).with_notes(notes(rules))
}

pub fn role(name: &str, namespace: &str, rules: &[Rule], header: &str) -> Document {
    let role = Role { metadata: metadata(name, Some(namespace), name), rules: Some(rules.iter().map(Rule::policy_rule).collect()) };
    Document::new(role, [header]).with_notes(notes(rules))
}

fn subject(account: &str, namespace: &str) -> Subject {
    Subject { kind: "ServiceAccount".to_owned(), name: account.to_owned(), namespace: Some(namespace.to_owned()), ..Subject::default() }
}

/// Binds the ClusterRole `name` to the ServiceAccount `name` of `namespace`.
pub fn cluster_role_binding(name: &str, namespace: &str) -> Document {
    let binding = ClusterRoleBinding {
        metadata: metadata(name, None, name),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "ClusterRole".to_owned(), name: name.to_owned() },
        subjects: Some(vec![subject(name, namespace)]),
    };
    Document::new(binding, [format!("The ClusterRole {name} for the ServiceAccount {name}, and no one else.")])
}

/// Binds the Role `name` to the ServiceAccount `name`, both in `namespace`.
pub fn role_binding(name: &str, namespace: &str) -> Document {
    let binding = RoleBinding {
        metadata: metadata(name, Some(namespace), name),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "Role".to_owned(), name: name.to_owned() },
        subjects: Some(vec![subject(name, namespace)]),
    };
    Document::new(binding, [format!("The Role {name} for the ServiceAccount {name}, and no one else.")])
}
