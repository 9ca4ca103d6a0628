//! RequestAuthentication → keel's `keel.security.RequestAuthentication` (proto/proto/keel/security/): the JWT
//! rules with their key sets, scoped as Istio scopes it (root namespace without selector: mesh-wide; a namespace
//! without selector: that namespace; a selector: the workloads it matches, listed by uid).
//!
//! Key sets given inline (`jwks`) travel as written; a `jwksUri` is fetched by keel-control (see
//! `keel_control::jwks`), which fills `jwks` before the snapshot is published. A rule that keel could not enforce
//! as written is refused naming its field: no OIDC discovery (neither `jwks` nor `jwksUri`), bad header names.
use keel_proto::{
    http_security::{self as keel, ClaimToHeader, JwtHeader},
    security::Scope,
};

use super::{selects, Mesh};
use crate::objects::{Pod, RequestAuthentication};

/// What a RequestAuthentication means for node proxies.
pub(super) enum NodeRules {
    Enforced(keel::RequestAuthentication),
    /// Nothing for node proxies; the text says why.
    NoEffect(&'static str),
}

/// Checks the fields, one object alone.
pub(super) fn check(mesh: &Mesh, ra: &RequestAuthentication) -> Result<(), String> {
    translate(mesh, ra, &[]).map(drop)
}

/// `pods`: the workload pods of the object's namespace, with their Workload uids (for a selector).
pub(super) fn translate(mesh: &Mesh, ra: &RequestAuthentication, pods: &[(&Pod, String)]) -> Result<NodeRules, String> {
    let spec = &ra.spec;
    if !spec.target_refs.is_empty() {
        return Ok(NodeRules::NoEffect(
            "a RequestAuthentication with targetRefs binds the waypoint or gateway it names: node proxies enforce none of it",
        ));
    }
    let namespace = ra.metadata.namespace.as_str();
    let selector = spec.selector.as_ref().filter(|s| !s.match_labels.is_empty());
    let (scope, workloads) = match selector {
        Some(selector) => (
            Scope::WorkloadSelector,
            pods.iter().filter(|(pod, _)| selects(&selector.match_labels, &pod.metadata.labels)).map(|(_, uid)| uid.clone()).collect(),
        ),
        None if namespace == mesh.root_namespace => (Scope::Global, Vec::new()),
        None => (Scope::Namespace, Vec::new()),
    };
    let rules = spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| jwt_rule(rule).map_err(|e| format!("field spec.jwtRules[{i}].{e}")))
        .collect::<Result<_, _>>()?;
    Ok(NodeRules::Enforced(keel::RequestAuthentication {
        name: ra.metadata.name.clone(),
        namespace: namespace.to_owned(),
        scope: scope as i32,
        workloads,
        rules,
    }))
}

fn jwt_rule(rule: &crate::objects::JwtRule) -> Result<keel::JwtRule, String> {
    let header_name = |field: &str, name: &str| {
        http::HeaderName::from_bytes(name.as_bytes()).map(drop).map_err(|_| format!("{field}: {name:?} is not a header name"))
    };
    let jwks_uri = rule.jwks_uri.clone().unwrap_or_default();
    match (&rule.jwks, jwks_uri.is_empty()) {
        (Some(jwks), _) => check_jwks(jwks).map_err(|e| format!("jwks: {e}"))?,
        (None, false) => {
            let uri: http::Uri = jwks_uri.parse().map_err(|e| format!("jwksUri: {jwks_uri:?}: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!("jwksUri: {jwks_uri:?} is not an http:// or https:// URL"));
            }
        }
        (None, true) => return Err("jwks/jwksUri: neither is set (OpenID Connect discovery from the issuer is not supported)".into()),
    }
    if rule.issuer.is_empty() {
        return Err("issuer: empty".into());
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        header_name(&format!("fromHeaders[{i}].name"), &h.name)?;
    }
    if let Some(i) = rule.from_params.iter().position(String::is_empty) {
        return Err(format!("fromParams[{i}]: empty"));
    }
    if let Some(i) = rule.from_cookies.iter().position(String::is_empty) {
        return Err(format!("fromCookies[{i}]: empty"));
    }
    if let Some(header) = &rule.output_payload_to_header {
        header_name("outputPayloadToHeader", header)?;
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        header_name(&format!("outputClaimToHeaders[{i}].header"), &c.header)?;
        if c.claim.is_empty() {
            return Err(format!("outputClaimToHeaders[{i}].claim: empty"));
        }
    }
    Ok(keel::JwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        jwks: rule.jwks.clone().unwrap_or_default(),
        jwks_uri,
        from_headers: rule.from_headers.iter().map(|h| JwtHeader { name: h.name.to_ascii_lowercase(), prefix: h.prefix.clone() }).collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_original_token: rule.forward_original_token,
        output_payload_to_header: rule.output_payload_to_header.clone().unwrap_or_default().to_ascii_lowercase(),
        output_claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader { header: c.header.to_ascii_lowercase(), claim: c.claim.clone() })
            .collect(),
        jwks_fetch_timeout_ms: rule.timeout.map_or(0, |t| u32::try_from(t.get().as_millis()).unwrap_or(u32::MAX)),
    })
}

/// A key set is a JSON object with a `keys` array of objects (RFC 7517 §5); what each key holds is the proxy's to
/// read (keys it cannot use are skipped there, as Envoy skips them).
pub fn check_jwks(jwks: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("keys").and_then(serde_json::Value::as_array) {
        Some(keys) if keys.iter().all(serde_json::Value::is_object) => Ok(()),
        _ => Err("not a JSON Web Key Set (an object with a \"keys\" array of keys)".into()),
    }
}

/// Where the key sets of `jwksUri` rules come from (keel-control's fetcher): translation is pure, so it leaves
/// them empty and this fills them in before the snapshot is encoded.
pub trait KeySets: Send + Sync {
    /// The key set last fetched from `uri`, if one was; asking for a URI keeps it fetched (and starts it).
    fn key_set(&self, uri: &str, timeout: std::time::Duration) -> Option<String>;
}

/// Fills every `jwksUri` rule's key set from `key_sets`. One not fetched (yet, or ever) stays empty: the proxy
/// then refuses that issuer's tokens, as Envoy does with the placeholder key set istiod sends when a fetch fails.
pub fn inline_key_sets(resources: &mut super::Resources, key_sets: &dyn KeySets) {
    let rules = resources.request_authentications.values_mut().flat_map(|ra| ra.rules.iter_mut());
    for rule in rules.filter(|r| r.jwks.is_empty() && !r.jwks_uri.is_empty()) {
        let timeout = match rule.jwks_fetch_timeout_ms {
            0 => DEFAULT_FETCH_TIMEOUT,
            ms => std::time::Duration::from_millis(ms.into()),
        };
        rule.jwks = key_sets.key_set(&rule.jwks_uri, timeout).unwrap_or_default();
    }
}

/// Istio's default for a rule's `timeout`.
pub const DEFAULT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
