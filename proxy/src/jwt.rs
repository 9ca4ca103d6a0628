//! RequestAuthentication: end-user JWTs on HTTP requests, verified by the destination's keel before the request is
//! authorized (Envoy's `jwt_authn` as Istio configures it). Keys come inline in keel's `RequestAuthentication`
//! resource (keel-control fetched any `jwksUri`); verification is the `jsonwebtoken` crate's.
//!
//! Istio's semantics: a request without a token passes (no principal: only an AuthorizationPolicy can require
//! one); a token that is present must verify, or the request is refused: `401` with jwt_verify_lib's message
//! (`Jwt is expired`, `Jwt verification fails`, `Jwt issuer is not configured`, ...), `403` for an audience it
//! does not allow. A verified token gives the request principal `<iss>/<sub>` and the claims authorization
//! reads; it is removed from the request sent on unless `forwardOriginalToken`, and the payload and claims
//! chosen are copied into headers (after any such header the client sent is removed).
use std::collections::HashSet;

use http::{header, request::Parts, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{decode, decode_header, errors::ErrorKind, jwk::Jwk, DecodingKey, Validation};
use keel_proto::{
    http_security::{self as proto},
    security::Scope,
    workload::Workload,
};

/// Envoy's default clock skew for `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;
/// A longer token is refused unread (Envoy's header limits would refuse it too).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// One RequestAuthentication, with its key sets parsed.
#[derive(Debug)]
pub struct RequestAuthentication {
    pub name: String,
    pub namespace: String,
    scope: Scope,
    workloads: Vec<String>,
    pub providers: Vec<Provider>,
}

/// One `jwtRules` entry.
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    audiences: Vec<String>,
    keys: Vec<Key>,
    /// Where its tokens are looked for.
    locations: Vec<Location>,
    forward_original_token: bool,
    output_payload_to_header: Option<HeaderName>,
    output_claim_to_headers: Vec<(HeaderName, String)>,
    /// For `keel pc`: where the keys came from, how many were usable.
    pub jwks_uri: String,
    pub usable_keys: usize,
}

#[derive(Debug)]
struct Key {
    id: Option<String>,
    key: DecodingKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

/// Parses and checks a resource; errors name the field.
pub fn compile(r: proto::RequestAuthentication) -> Result<RequestAuthentication, String> {
    let scope = Scope::try_from(r.scope).map_err(|_| format!("field `scope`: {} is not a scope", r.scope))?;
    let providers =
        r.rules.into_iter().enumerate().map(|(i, rule)| provider(rule).map_err(|e| format!("field `rules[{i}].{e}"))).collect::<Result<_, _>>()?;
    Ok(RequestAuthentication { name: r.name, namespace: r.namespace, scope, workloads: r.workloads, providers })
}

fn provider(rule: proto::JwtRule) -> Result<Provider, String> {
    let header = |field: &str, name: &str| HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{field}`: {name:?} is not a header name"));
    if rule.issuer.is_empty() {
        return Err("issuer`: empty".into());
    }
    let keys = if rule.jwks.is_empty() { Vec::new() } else { key_set(&rule.jwks).map_err(|e| format!("jwks`: {e}"))? };
    let mut locations = Vec::new();
    for (i, h) in rule.from_headers.iter().enumerate() {
        locations.push(Location::Header { name: header(&format!("from_headers[{i}].name"), &h.name)?, prefix: h.prefix.clone() });
    }
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        // Istio's defaults: `Authorization: Bearer <token>`, then `?access_token=<token>`.
        locations = vec![Location::Header { name: header::AUTHORIZATION, prefix: "Bearer ".into() }, Location::Param("access_token".into())];
    }
    let output_payload_to_header =
        Some(rule.output_payload_to_header.as_str()).filter(|h| !h.is_empty()).map(|h| header("output_payload_to_header", h)).transpose()?;
    let output_claim_to_headers = rule
        .output_claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| Ok((header(&format!("output_claim_to_headers[{i}].header"), &c.header)?, c.claim.clone())))
        .collect::<Result<_, String>>()?;
    Ok(Provider {
        issuer: rule.issuer,
        audiences: rule.audiences,
        usable_keys: keys.len(),
        keys,
        locations,
        forward_original_token: rule.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
        jwks_uri: rule.jwks_uri,
    })
}

/// The usable keys of a JSON Web Key Set. Keys of a type or curve keel cannot verify with are skipped (Envoy
/// skips them too); a set that is not JSON or has no `keys` array is an error.
fn key_set(jwks: &str) -> Result<Vec<Key>, String> {
    let value: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let Some(keys) = value.get("keys").and_then(serde_json::Value::as_array) else {
        return Err("not a JSON Web Key Set (no \"keys\" array)".into());
    };
    Ok(keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter_map(|jwk| Some(Key { id: jwk.common.key_id.clone(), key: DecodingKey::from_jwk(&jwk).ok()? }))
        .collect())
}

impl RequestAuthentication {
    /// Whether it applies to `workload`: mesh-wide, its namespace's, or one whose selector matched it.
    pub fn applies_to(&self, workload: &Workload) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Namespace => self.namespace == workload.namespace,
            Scope::WorkloadSelector => self.namespace == workload.namespace && self.workloads.contains(&workload.uid),
        }
    }
}

/// A request's end user, from its verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct EndUser {
    /// `<iss>/<sub>`.
    pub principal: String,
    pub claims: serde_json::Value,
}

/// Why a request with a token is refused: the status and jwt_verify_lib's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
}

impl Refused {
    fn unauthorized(message: &'static str) -> Refused {
        Refused { status: StatusCode::UNAUTHORIZED, message }
    }
}

/// Verifies the request's token against `providers` (every rule of every RequestAuthentication that applies) and
/// rewrites the request as the verified rule says. `Ok(None)`: no token anywhere a rule looks.
pub fn authenticate<'p>(providers: impl Iterator<Item = &'p Provider> + Clone, request: &mut Parts) -> Result<Option<EndUser>, Refused> {
    // Headers keel writes from a token are never taken from the client.
    for provider in providers.clone() {
        for name in provider.output_payload_to_header.iter().chain(provider.output_claim_to_headers.iter().map(|(h, _)| h)) {
            request.headers.remove(name);
        }
    }
    let found = providers.clone().flat_map(|p| p.locations.iter()).find_map(|location| Some((location.clone(), token_at(location, request)?)));
    let Some((location, token)) = found else { return Ok(None) };
    if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(Refused::unauthorized("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"));
    }
    // Read unverified only to choose the rule (and its keys) that verify it.
    let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&token)
        .ok()
        .and_then(|claims| claims.get("iss").and_then(|i| i.as_str()).map(str::to_owned))
        .ok_or(Refused::unauthorized("Jwt payload is an invalid JSON or has no issuer"))?;
    // The token's issuer picks the rule, among those that look where the token was found.
    let Some(provider) = providers.into_iter().find(|p| p.issuer == issuer && p.locations.contains(&location)) else {
        return Err(Refused::unauthorized("Jwt issuer is not configured"));
    };
    let claims = verify(provider, &token)?;
    let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or_default();
    let user = EndUser { principal: format!("{issuer}/{subject}"), claims };
    if !provider.forward_original_token {
        remove_token(&location, request);
    }
    if let Some(name) = &provider.output_payload_to_header {
        // The token's payload segment is already base64url without padding.
        if let Ok(value) = HeaderValue::from_str(token.split('.').nth(1).unwrap_or_default()) {
            request.headers.insert(name.clone(), value);
        }
    }
    for (name, claim) in &provider.output_claim_to_headers {
        let value = match user.claims.get(claim) {
            Some(serde_json::Value::String(text)) => HeaderValue::from_str(text).ok(),
            Some(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => HeaderValue::from_str(&other.to_string()).ok(),
            _ => None,
        };
        if let Some(value) = value {
            request.headers.insert(name.clone(), value);
        }
    }
    Ok(Some(user))
}

/// Signature (with a key the header's `kid` and `alg` select), `exp`/`nbf` with a minute of clock skew, `aud`.
fn verify(provider: &Provider, token: &str) -> Result<serde_json::Value, Refused> {
    let header = decode_header(token).map_err(|_| Refused::unauthorized("Jwt header is an invalid JSON"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_nbf = true;
    validation.required_spec_claims = HashSet::new();
    validation.set_issuer(&[&provider.issuer]);
    if provider.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&provider.audiences);
    }
    let candidates = provider.keys.iter().filter(|k| header.kid.is_none() || k.id == header.kid).filter(|k| k.key.family() == header.alg.family());
    let mut tried = false;
    for key in candidates {
        tried = true;
        match decode::<serde_json::Value>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidAlgorithm => continue,
                ErrorKind::ExpiredSignature => return Err(Refused::unauthorized("Jwt is expired")),
                ErrorKind::ImmatureSignature => return Err(Refused::unauthorized("Jwt not yet valid")),
                ErrorKind::InvalidAudience => return Err(Refused { status: StatusCode::FORBIDDEN, message: "Audiences in Jwt are not allowed" }),
                ErrorKind::InvalidIssuer => return Err(Refused::unauthorized("Jwt issuer is not configured")),
                _ => return Err(Refused::unauthorized("Jwt verification fails")),
            },
        }
    }
    Err(Refused::unauthorized(if tried { "Jwt verification fails" } else { "Jwks doesn't have key to match kid or alg from Jwt" }))
}

fn token_at(location: &Location, request: &Parts) -> Option<String> {
    match location {
        Location::Header { name, prefix } => request.headers.get_all(name).iter().find_map(|v| {
            let value = v.to_str().ok()?;
            let token = if prefix.is_empty() { value } else { strip_prefix_ignore_case(value, prefix)? };
            Some(token.trim().to_owned()).filter(|t| !t.is_empty())
        }),
        Location::Param(name) => query_pairs(request.uri.query()?).find(|(k, _)| k == name).map(|(_, v)| v.to_owned()).filter(|v| !v.is_empty()),
        Location::Cookie(name) => request
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|cookies| cookies.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| k == name).map(|(_, v)| v.to_owned())),
    }
}

/// `Bearer` is matched without regard to case (RFC 6750 schemes are case-insensitive).
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Takes the verified token out of the request (Istio's default: the application never sees it).
fn remove_token(location: &Location, request: &mut Parts) {
    match location {
        Location::Header { name, .. } => {
            request.headers.remove(name);
        }
        Location::Param(name) => {
            let Some(query) = request.uri.query() else { return };
            let kept: Vec<&str> = query.split('&').filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name).collect();
            let path = request.uri.path();
            let rebuilt = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
            let mut parts = std::mem::take(&mut request.uri).into_parts();
            parts.path_and_query = rebuilt.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                request.uri = uri;
            }
        }
        Location::Cookie(name) => {
            let cookies: Vec<String> = request.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
            request.headers.remove(header::COOKIE);
            let kept: Vec<&str> =
                cookies.iter().flat_map(|c| c.split(';')).map(str::trim).filter(|c| c.split_once('=').is_none_or(|(k, _)| k != name)).collect();
            if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                if !kept.is_empty() {
                    request.headers.insert(header::COOKIE, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, get_current_timestamp, jwk::Jwk, Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const RSA: &str = include_str!("../../tests/fixtures/jwt/rsa-2048.pem");
    const RSA_ROTATED: &str = include_str!("../../tests/fixtures/jwt/rsa-2048-rotated.pem");
    const EC: &str = include_str!("../../tests/fixtures/jwt/ec-p256.pem");
    const ISSUER: &str = "https://issuer.example";

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap()
    }

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
        let header = Header { kid: Some(kid.into()), ..Header::new(alg) };
        encode(&header, &claims, key).unwrap()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"iss": ISSUER, "sub": "alice", "aud": "shop", "exp": get_current_timestamp() + 600, "groups": ["dev"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    fn provider(rule: proto::JwtRule) -> Provider {
        let ec = EncodingKey::from_ec_pem(EC.as_bytes()).unwrap();
        let jwks = json!({"keys": [jwk(&rsa(), Algorithm::RS256, "rsa-1"), jwk(&ec, Algorithm::ES256, "ec-1"), {"kty": "unknown"}]});
        super::provider(proto::JwtRule { issuer: ISSUER.into(), jwks: jwks.to_string(), ..rule }).unwrap()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn a_verified_token_names_the_end_user_and_is_not_forwarded() {
        let p = provider(proto::JwtRule {
            audiences: vec!["shop".into()],
            output_payload_to_header: "x-jwt-payload".into(),
            output_claim_to_headers: vec![proto::ClaimToHeader { header: "x-user".into(), claim: "sub".into() }],
            ..Default::default()
        });
        assert_eq!(p.usable_keys, 2, "the key of an unknown type is skipped");
        let t = token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({})));
        let mut r = request("/items", &[("authorization", &bearer(&t)), ("x-user", "mallory")]);
        let user = authenticate([&p].into_iter(), &mut r).unwrap().unwrap();
        assert_eq!(user.principal, "https://issuer.example/alice");
        assert_eq!(user.claims["groups"], json!(["dev"]));
        assert!(r.headers.get("authorization").is_none(), "the token goes no further");
        assert_eq!(r.headers["x-user"], "alice", "the claim replaces what the client sent");
        assert_eq!(r.headers["x-jwt-payload"], t.split('.').nth(1).unwrap());
        // ES256, from the query parameter, kept with forwardOriginalToken.
        let p = provider(proto::JwtRule { forward_original_token: true, ..Default::default() });
        let ec = EncodingKey::from_ec_pem(EC.as_bytes()).unwrap();
        let t = token(&ec, Algorithm::ES256, "ec-1", claims(json!({})));
        let mut r = request(&format!("/items?a=1&access_token={t}"), &[]);
        assert!(authenticate([&p].into_iter(), &mut r).unwrap().is_some());
        assert!(r.uri.query().unwrap().contains("access_token="));
        let p = provider(proto::JwtRule::default());
        let mut r = request(&format!("/items?a=1&access_token={t}"), &[]);
        authenticate([&p].into_iter(), &mut r).unwrap();
        assert_eq!(r.uri.to_string(), "/items?a=1");
    }

    #[test]
    fn each_bad_token_is_refused_with_envoys_reason() {
        let p = provider(proto::JwtRule { audiences: vec!["shop".into()], ..Default::default() });
        let rotated = EncodingKey::from_rsa_pem(RSA_ROTATED.as_bytes()).unwrap();
        let now = get_current_timestamp();
        let cases = [
            (token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({"exp": now - 120}))), 401, "Jwt is expired"),
            (token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({"nbf": now + 600}))), 401, "Jwt not yet valid"),
            (token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({"iss": "https://other"}))), 401, "Jwt issuer is not configured"),
            (token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({"aud": "bank"}))), 403, "Audiences in Jwt are not allowed"),
            (token(&rotated, Algorithm::RS256, "rsa-1", claims(json!({}))), 401, "Jwt verification fails"),
            (token(&rotated, Algorithm::RS256, "rsa-9", claims(json!({}))), 401, "Jwks doesn't have key to match kid or alg from Jwt"),
            ("not.a.token".to_owned(), 401, "Jwt payload is an invalid JSON or has no issuer"),
            ("only-one-part".to_owned(), 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
        ];
        for (t, status, message) in cases {
            let mut r = request("/", &[("authorization", &bearer(&t))]);
            let refused = authenticate([&p].into_iter(), &mut r).unwrap_err();
            assert_eq!((refused.status.as_u16(), refused.message), (status, message));
        }
        // Within the minute of clock skew an expired token still passes.
        let t = token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({"exp": now - 30})));
        assert!(authenticate([&p].into_iter(), &mut request("/", &[("authorization", &bearer(&t))])).is_ok());
        // No token at all: no end user, not an error.
        assert_eq!(authenticate([&p].into_iter(), &mut request("/", &[])), Ok(None));
    }

    #[test]
    fn a_token_is_only_read_where_its_rule_looks() {
        let p =
            provider(proto::JwtRule { from_headers: vec![proto::JwtHeader { name: "x-token".into(), prefix: String::new() }], ..Default::default() });
        let t = token(&rsa(), Algorithm::RS256, "rsa-1", claims(json!({})));
        // In Authorization, which this rule does not read: no token.
        assert_eq!(authenticate([&p].into_iter(), &mut request("/", &[("authorization", &bearer(&t))])), Ok(None));
        assert!(authenticate([&p].into_iter(), &mut request("/", &[("x-token", &t)])).unwrap().is_some());
    }

    #[test]
    fn key_sets_and_header_names_are_checked_naming_the_field() {
        let bad = |rule: proto::JwtRule| compile(proto::RequestAuthentication { rules: vec![rule], ..Default::default() }).unwrap_err();
        let rule = |jwks: &str| proto::JwtRule { issuer: ISSUER.into(), jwks: jwks.into(), ..Default::default() };
        assert!(bad(rule("{")).contains("rules[0].jwks`: not JSON"));
        assert!(bad(rule("{\"k\": 1}")).contains("rules[0].jwks`: not a JSON Web Key Set"));
        let header = proto::JwtRule { output_payload_to_header: "a b".into(), ..rule("{\"keys\": []}") };
        assert!(bad(header).contains("output_payload_to_header"));
        assert!(bad(proto::JwtRule::default()).contains("issuer"));
    }
}
