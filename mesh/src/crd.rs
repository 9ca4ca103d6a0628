//! The CustomResourceDefinitions of the Istio kinds keel reads, for clusters without Istio's own. Each schema is
//! derived (kube's `CustomResource`, schemars) from the very type keel parses that kind's `spec` with, so the API
//! server refuses what keel could never read and a field keel learns appears in the CRD with no second edit.
//!
//! Group, kinds, plural and short names, versions and the stored version are Istio's, so objects written for
//! Istio's CRDs apply unchanged, and a cluster that has Istio's CRDs keeps them (`deploy/` installs these separately:
//! `crds.yaml`, the chart's `crds/`). Like Istio's they carry `helm.sh/resource-policy: keep`: uninstalling keel
//! must not delete every VirtualService in the cluster.
//!
//! What keel keeps untyped (a DestinationRule's `tls`, a policy's `provider`) is an object the API server keeps as
//! written (`x-kubernetes-preserve-unknown-fields`); `status` likewise, as Istio's controllers write it.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::core::crd::{merge_crds, MergeError};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Whatever an Istio controller writes in `status` (conditions, observedGeneration, validation messages).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct IstioStatus(serde_json::Value);

impl JsonSchema for IstioStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IstioStatus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// One kind: a module holding a CustomResource per served version (their spec is the keel type `$spec`, only
/// its schema is used) and `crd()`, the versions merged with Istio's stored version.
macro_rules! istio_kind {
    (
        $module:ident: kind $kind:tt, plural $plural:tt, short $short:tt, group $group:tt, category $category:tt,
        spec $spec:tt, versions [$($version_module:ident $version:tt),+], stored $stored:tt
    ) => {
        pub mod $module {
            use super::*;

            $(
                pub mod $version_module {
                    use super::*;

                    // The value is never read: only the schema of `$spec` matters here.
                    #[doc = concat!("The spec of Istio's ", $kind, ", as keel reads it.")]
                    #[derive(kube::CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
                    #[kube(
                        group = $group,
                        version = $version,
                        kind = $kind,
                        plural = $plural,
                        shortname = $short,
                        category = "istio-io",
                        category = $category,
                        root = "Resource",
                        namespaced,
                        status = "IstioStatus",
                        annotation("helm.sh/resource-policy", "keep"),
                        doc = "An Istio configuration object."
                    )]
                    pub struct Spec(#[schemars(with = $spec)] serde_json::Value);
                }
            )+

            /// Every served version in one CRD, `$stored` stored.
            pub fn crd() -> Result<CustomResourceDefinition, MergeError> {
                use kube::CustomResourceExt;
                let mut crd = merge_crds(vec![$($version_module::Resource::crd()),+], $stored)?;
                for version in &mut crd.spec.versions {
                    if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                        without_defaults(schema);
                    }
                }
                Ok(crd)
            }
        }
    };
}

istio_kind!(virtual_service: kind "VirtualService", plural "virtualservices", short "vs", group "networking.istio.io",
    category "networking-istio-io", spec "crate::objects::VirtualServiceSpec",
    versions [v1 "v1", v1beta1 "v1beta1", v1alpha3 "v1alpha3"], stored "v1alpha3");
istio_kind!(destination_rule: kind "DestinationRule", plural "destinationrules", short "dr", group "networking.istio.io",
    category "networking-istio-io", spec "crate::objects::DestinationRuleSpec",
    versions [v1 "v1", v1beta1 "v1beta1", v1alpha3 "v1alpha3"], stored "v1alpha3");
istio_kind!(gateway: kind "Gateway", plural "gateways", short "gw", group "networking.istio.io",
    category "networking-istio-io", spec "crate::objects::GatewaySpec",
    versions [v1 "v1", v1beta1 "v1beta1", v1alpha3 "v1alpha3"], stored "v1alpha3");
istio_kind!(service_entry: kind "ServiceEntry", plural "serviceentries", short "se", group "networking.istio.io",
    category "networking-istio-io", spec "crate::objects::ServiceEntrySpec",
    versions [v1 "v1", v1beta1 "v1beta1", v1alpha3 "v1alpha3"], stored "v1alpha3");
istio_kind!(authorization_policy: kind "AuthorizationPolicy", plural "authorizationpolicies", short "ap",
    group "security.istio.io", category "security-istio-io", spec "crate::objects::AuthorizationPolicySpec",
    versions [v1 "v1", v1beta1 "v1beta1"], stored "v1beta1");
istio_kind!(request_authentication: kind "RequestAuthentication", plural "requestauthentications", short "ra",
    group "security.istio.io", category "security-istio-io", spec "crate::objects::RequestAuthenticationSpec",
    versions [v1 "v1", v1beta1 "v1beta1"], stored "v1beta1");
istio_kind!(peer_authentication: kind "PeerAuthentication", plural "peerauthentications", short "pa",
    group "security.istio.io", category "security-istio-io", spec "crate::objects::PeerAuthenticationSpec",
    versions [v1 "v1", v1beta1 "v1beta1"], stored "v1beta1");

/// The CRDs of every Istio kind keel reads, in a stable order.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, MergeError> {
    Ok(vec![
        authorization_policy::crd()?,
        destination_rule::crd()?,
        gateway::crd()?,
        peer_authentication::crd()?,
        request_authentication::crd()?,
        service_entry::crd()?,
        virtual_service::crd()?,
    ])
}

/// Drops the `default` schemars writes for every `#[serde(default)]` field: in a CRD a default is written into
/// every stored object by the API server, and Istio's CRDs have none; an absent field means the same to keel.
fn without_defaults(schema: &mut JSONSchemaProps) {
    schema.default = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|properties| properties.values_mut())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.all_of.iter_mut().flatten());
    for child in children {
        without_defaults(child);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => without_defaults(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(without_defaults),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        without_defaults(values);
    }
}
