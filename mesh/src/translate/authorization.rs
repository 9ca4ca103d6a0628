//! AuthorizationPolicy → what node proxies enforce, in two halves under one name (`<ns>/<name>`):
//!
//! - `istio.security.Authorization`, the L4 half, built exactly as istiod builds it for ztunnel: an ALLOW rule that
//!   needs HTTP attributes is dropped (it allows nothing), a DENY rule keeps its L4 part (it denies more);
//! - `keel.security.HttpAuthorization`, only for a policy with HTTP attributes: every rule complete, so the
//!   destination's keel, which parses HTTP on ports that carry it, decides each request with the policy as written.
//!
//! Scope, action and dry-run live in the L4 half; the HTTP half only replaces its rules for a request.
use std::net::IpAddr;

use keel_proto::{
    http_security::{path_match, request_condition, ClaimPath, HttpAuthorization, HttpClause, HttpMatch, HttpRule, PathMatch, RequestCondition},
    security::{self, Action, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch},
};

use super::{ip_bytes, Mesh};
use crate::objects::{AuthorizationPolicy, Condition, Operation, Source};

/// What an AuthorizationPolicy means for node proxies.
pub(super) enum NodePolicy {
    /// Enforced: the L4 half, the HTTP half if the policy has HTTP attributes, and warnings that say what a proxy
    /// that sees no HTTP makes of those.
    Enforced { l4: security::Authorization, http: Option<HttpAuthorization>, warnings: Vec<String> },
    /// Nothing for node proxies to enforce; the text says why.
    NoEffect(&'static str),
}

pub(super) fn authorization(mesh: &Mesh, policy: &AuthorizationPolicy) -> Result<NodePolicy, String> {
    let spec = &policy.spec;
    if !spec.target_refs.is_empty() {
        // istiod sends node proxies nothing for these: they bind the waypoint or gateway they name. Applied by
        // selector instead (there is none), they would become namespace-wide policies on every pod.
        return Ok(NodePolicy::NoEffect("a policy with targetRefs binds the waypoint or gateway it names: node proxies enforce none of it"));
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => return Ok(NodePolicy::NoEffect("AUDIT policies have no effect on node proxies")),
        "CUSTOM" => return Err("field spec.action: CUSTOM (external authorization) is not supported".into()),
        other => return Err(format!("field spec.action: {other:?} is not ALLOW, DENY, AUDIT or CUSTOM")),
    };
    // An empty `matchLabels` selects every workload, as no selector does (Istio reads both the same way).
    let selects_some = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    let scope = match (selects_some, policy.metadata.namespace == mesh.root_namespace) {
        (true, _) => Scope::WorkloadSelector,
        (false, true) => Scope::Global,
        (false, false) => Scope::Namespace,
    };
    let namespace = policy.metadata.namespace.as_str();
    let mut warnings = Vec::new();
    let mut l4_rules = Vec::new();
    let mut http_rules = Vec::new();
    let mut any_http = false;
    for (i, rule) in spec.rules.iter().enumerate() {
        let mut l4 = Vec::new();
        let mut http = Vec::new();
        let mut http_only = false;
        if !rule.from.is_empty() {
            let (mut l4_matches, mut http_matches) = (Vec::new(), Vec::new());
            for (j, from) in rule.from.iter().enumerate() {
                let at = |field: &str| format!("field spec.rules[{i}].from[{j}].source.{field}");
                let (connection, request) = source_match(&from.source, namespace, at)?;
                http_only |= request.is_some();
                l4_matches.push(connection.clone());
                http_matches.push(HttpMatch { connection: Some(connection), ..request.unwrap_or_default() });
            }
            l4.push(Clause { matches: l4_matches });
            http.push(HttpClause { matches: http_matches });
        }
        if !rule.to.is_empty() {
            let (mut l4_matches, mut http_matches) = (Vec::new(), Vec::new());
            for (j, to) in rule.to.iter().enumerate() {
                let at = |field: &str| format!("field spec.rules[{i}].to[{j}].operation.{field}");
                let (connection, request) = operation_match(&to.operation, at)?;
                http_only |= request.is_some();
                l4_matches.push(connection.clone());
                http_matches.push(HttpMatch { connection: Some(connection), ..request.unwrap_or_default() });
            }
            l4.push(Clause { matches: l4_matches });
            http.push(HttpClause { matches: http_matches });
        }
        for (j, condition) in rule.when.iter().enumerate() {
            let at = format!("field spec.rules[{i}].when[{j}]");
            let m = condition_match(condition).map_err(|e| format!("{at}: {e}"))?;
            match &m.connection {
                Some(connection) => l4.push(Clause { matches: vec![connection.clone()] }),
                None => http_only = true,
            }
            http.push(HttpClause { matches: vec![m] });
        }
        http_rules.push(HttpRule { clauses: http });
        any_http |= http_only;
        if http_only {
            // A proxy that sees no HTTP fails closed as Istio does: an ALLOW rule that needs HTTP attributes is
            // dropped (allows nothing); a DENY rule keeps its L4 part only (denies more, never less).
            warnings.push(format!(
                "rule {i} uses HTTP attributes: enforced per request by the destination's keel on ports that carry HTTP; \
                 elsewhere (and by proxies that see no HTTP) {}",
                if action == Action::Allow { "the rule is dropped" } else { "it is enforced on its L4 part only" }
            ));
            if action == Action::Allow {
                continue;
            }
        }
        l4_rules.push(Rule { clauses: l4 });
    }
    let (name, namespace) = (policy.metadata.name.clone(), policy.metadata.namespace.clone());
    let http = any_http.then(|| HttpAuthorization { name: name.clone(), namespace: namespace.clone(), rules: http_rules });
    let l4 = security::Authorization { name, namespace, scope: scope as i32, action: action as i32, rules: l4_rules, dry_run: false };
    Ok(NodePolicy::Enforced { l4, http, warnings })
}

/// A `from` source: its connection part, and its request part if it has one (request principals, remote IPs).
fn source_match(s: &Source, namespace: &str, at: impl Fn(&str) -> String) -> Result<(Match, Option<HttpMatch>), String> {
    let by_service_account_only = s.principals.is_empty() && s.namespaces.is_empty();
    if !s.service_accounts.is_empty() && !by_service_account_only {
        return Err(at("serviceAccounts: cannot be set with principals or namespaces"));
    }
    let connection = Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        source_ips: cidrs(&s.ip_blocks).map_err(|e| format!("{}: {e}", at("ipBlocks")))?,
        not_source_ips: cidrs(&s.not_ip_blocks).map_err(|e| format!("{}: {e}", at("notIpBlocks")))?,
        service_accounts: service_accounts(&s.service_accounts, namespace).map_err(|e| format!("{}: {e}", at("serviceAccounts")))?,
        not_service_accounts: service_accounts(&s.not_service_accounts, namespace).map_err(|e| format!("{}: {e}", at("notServiceAccounts")))?,
        ..Default::default()
    };
    let request = HttpMatch {
        request_principals: strings(&s.request_principals),
        not_request_principals: strings(&s.not_request_principals),
        remote_ips: cidrs(&s.remote_ip_blocks).map_err(|e| format!("{}: {e}", at("remoteIpBlocks")))?,
        not_remote_ips: cidrs(&s.not_remote_ip_blocks).map_err(|e| format!("{}: {e}", at("notRemoteIpBlocks")))?,
        ..Default::default()
    };
    Ok((connection, (request != HttpMatch::default()).then_some(request)))
}

/// A `to` operation: its ports, and its request part if it has one (hosts, methods, paths).
fn operation_match(op: &Operation, at: impl Fn(&str) -> String) -> Result<(Match, Option<HttpMatch>), String> {
    let connection = Match {
        destination_ports: ports(&op.ports).map_err(|e| format!("{}: {e}", at("ports")))?,
        not_destination_ports: ports(&op.not_ports).map_err(|e| format!("{}: {e}", at("notPorts")))?,
        ..Default::default()
    };
    // Hosts compare without regard to case: patterns are lowercased here, the request's authority by the proxy.
    let hosts = |v: &[String]| v.iter().map(|h| string_match(&h.to_ascii_lowercase())).collect();
    let request = HttpMatch {
        hosts: hosts(&op.hosts),
        not_hosts: hosts(&op.not_hosts),
        methods: strings(&op.methods),
        not_methods: strings(&op.not_methods),
        paths: paths(&op.paths).map_err(|e| format!("{}: {e}", at("paths")))?,
        not_paths: paths(&op.not_paths).map_err(|e| format!("{}: {e}", at("notPaths")))?,
        ..Default::default()
    };
    Ok((connection, (request != HttpMatch::default()).then_some(request)))
}

/// The condition keys of https://istio.io/latest/docs/reference/config/security/conditions/, as an HTTP match:
/// one on the connection (what ztunnel evaluates too) has only `connection` set. Unknown keys are refused rather
/// than ignored: a condition read as no condition would widen an ALLOW rule.
fn condition_match(c: &Condition) -> Result<HttpMatch, String> {
    let (values, not_values) = (strings(&c.values), strings(&c.not_values));
    let request = |attribute| HttpMatch {
        conditions: vec![RequestCondition { attribute: Some(attribute), values: values.clone(), not_values: not_values.clone() }],
        ..Default::default()
    };
    let connection = |m: Match| HttpMatch { connection: Some(m), ..Default::default() };
    let key = c.key.as_str();
    Ok(match key {
        "source.ip" => connection(Match { source_ips: cidrs(&c.values)?, not_source_ips: cidrs(&c.not_values)?, ..Default::default() }),
        "source.namespace" => connection(Match { namespaces: values, not_namespaces: not_values, ..Default::default() }),
        "source.principal" => connection(Match { principals: values, not_principals: not_values, ..Default::default() }),
        "destination.ip" => {
            connection(Match { destination_ips: cidrs(&c.values)?, not_destination_ips: cidrs(&c.not_values)?, ..Default::default() })
        }
        "destination.port" => {
            connection(Match { destination_ports: ports(&c.values)?, not_destination_ports: ports(&c.not_values)?, ..Default::default() })
        }
        "remote.ip" => HttpMatch { remote_ips: cidrs(&c.values)?, not_remote_ips: cidrs(&c.not_values)?, ..Default::default() },
        "request.auth.principal" => request(request_condition::Attribute::Principal(())),
        "request.auth.audiences" => request(claim(&["aud"])),
        "request.auth.presenter" => request(claim(&["azp"])),
        "connection.sni" => request(request_condition::Attribute::ServerName(())),
        _ => {
            if let Some(name) = bracketed(key, "request.headers") {
                let [name] = name.as_slice() else { return Err(format!("key {key:?}: one header name in brackets")) };
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("key {key:?}: {name:?} is not a header name"))?;
                request(request_condition::Attribute::Header(name.to_ascii_lowercase()))
            } else if let Some(path) = bracketed(key, "request.auth.claims") {
                request(claim(&path.iter().map(String::as_str).collect::<Vec<_>>()))
            } else if key.starts_with("experimental.") {
                return Err(format!("key {key:?}: experimental keys are not supported"));
            } else {
                return Err(format!("key {key:?} is not a condition key Istio defines"));
            }
        }
    })
}

fn claim(segments: &[&str]) -> request_condition::Attribute {
    request_condition::Attribute::Claim(ClaimPath { segments: segments.iter().map(|s| (*s).to_owned()).collect() })
}

/// `prefix[a][b]...` → `["a", "b"]`; `None` if `key` is not `prefix` followed by non-empty bracketed segments.
fn bracketed(key: &str, prefix: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut segments = Vec::new();
    while !rest.is_empty() {
        let (segment, after) = rest.strip_prefix('[')?.split_once(']')?;
        if segment.is_empty() || segment.contains('[') {
            return None;
        }
        segments.push(segment.to_owned());
        rest = after;
    }
    (!segments.is_empty()).then_some(segments)
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

/// Istio's string match syntax: `*` = present, `*x` = suffix, `x*` = prefix, else exact.
pub(super) fn string_match(value: &str) -> StringMatch {
    use security::string_match::MatchType;
    let match_type = if value == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = value.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = value.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(value.to_owned())
    };
    StringMatch { match_type: Some(match_type) }
}

/// Paths: Istio's string syntax, or a template when the path holds `{*}` / `{**}` (whole segments; `{**}` last).
fn paths(values: &[String]) -> Result<Vec<PathMatch>, String> {
    values
        .iter()
        .map(|v| {
            if !v.contains('{') && !v.contains('}') {
                return Ok(PathMatch { kind: Some(path_match::Kind::String(string_match(v))) });
            }
            check_path_template(v)?;
            Ok(PathMatch { kind: Some(path_match::Kind::Template(v.clone())) })
        })
        .collect()
}

/// Istio's path template: starts with `/`; `{*}` and `{**}` are whole segments, `{**}` only the last. Checked
/// here when a policy is read and again by keel when the resource arrives.
pub fn check_path_template(template: &str) -> Result<(), String> {
    let Some(rest) = template.strip_prefix('/') else { return Err(format!("{template:?}: a path template starts with '/'")) };
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let operator = segment.contains(['{', '}']);
        if operator && *segment != "{*}" && *segment != "{**}" {
            return Err(format!("{template:?}: `{{*}}` and `{{**}}` must be whole path segments"));
        }
        if *segment == "{**}" && i + 1 != segments.len() {
            return Err(format!("{template:?}: `{{**}}` must be the last segment"));
        }
    }
    Ok(())
}

pub(super) fn cidrs(values: &[String]) -> Result<Vec<security::Address>, String> {
    values
        .iter()
        .map(|v| {
            let net: ipnet::IpNet =
                v.parse().or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from)).map_err(|_| format!("{v:?} is not an IP or CIDR"))?;
            Ok(security::Address { address: ip_bytes(&net.network()), length: net.prefix_len() as u32 })
        })
        .collect()
}

fn ports(values: &[String]) -> Result<Vec<u32>, String> {
    values
        .iter()
        .map(|v| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p as u32),
            _ => Err(format!("{v:?} is not a port number")),
        })
        .collect()
}

/// `<namespace>/<name>`, or a bare name in the policy's own namespace.
fn service_accounts(values: &[String], namespace: &str) -> Result<Vec<ServiceAccountMatch>, String> {
    values
        .iter()
        .map(|v| {
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v));
            if ns.is_empty() || sa.is_empty() || sa.contains('/') || sa.contains('*') || ns.contains('*') {
                return Err(format!("{v:?} is not <namespace>/<service account> (no wildcards)"));
            }
            Ok(ServiceAccountMatch { namespace: ns.to_owned(), service_account: sa.to_owned() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use keel_proto::security::string_match::MatchType;

    use super::*;
    use crate::{
        source::{load_text, Loaded},
        translate::translate,
    };

    fn policy(spec: &str) -> Result<NodePolicy, String> {
        let yaml = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\nspec: {spec}\n");
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), &yaml, &mut loaded);
        // Loading checks each object: a refused one is reported there.
        if let Some(error) = loaded.errors.first() {
            return Err(error.message.clone());
        }
        let crate::objects::Object::AuthorizationPolicy(p) = &loaded.objects[0].1 else { panic!("not a policy") };
        authorization(&Mesh::default(), p)
    }

    fn enforced(spec: &str) -> (security::Authorization, Option<HttpAuthorization>) {
        match policy(spec) {
            Ok(NodePolicy::Enforced { l4, http, .. }) => (l4, http),
            Ok(NodePolicy::NoEffect(why)) => panic!("no effect: {why}"),
            Err(e) => panic!("{e}"),
        }
    }

    fn exact(s: &str) -> StringMatch {
        StringMatch { match_type: Some(MatchType::Exact(s.into())) }
    }

    #[test]
    fn a_policy_with_http_attributes_gets_its_whole_rules_in_the_http_half() {
        let (l4, http) = enforced(
            "{rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/web]}}], \
             to: [{operation: {methods: [GET], paths: ['/items*', '/v1/{*}/reviews/{**}'], hosts: [Shop.Example]}}], \
             when: [{key: 'request.headers[X-Tenant]', values: [blue]}, {key: source.namespace, values: [demo]}, \
                    {key: 'request.auth.claims[groups][0]', notValues: [guest]}]}]}",
        );
        // The L4 half drops the ALLOW rule (a proxy without HTTP admits nothing by it) ...
        assert!(l4.rules.is_empty());
        // ... the HTTP half keeps it whole: from, to, and the three conditions, each its own clause.
        let http = http.expect("an HTTP half");
        assert_eq!((http.name.as_str(), http.namespace.as_str(), http.rules.len()), ("p", "demo", 1));
        let clauses = &http.rules[0].clauses;
        assert_eq!(clauses.len(), 5);
        assert_eq!(clauses[0].matches[0].connection.as_ref().unwrap().principals, vec![exact("cluster.local/ns/demo/sa/web")]);
        let to = &clauses[1].matches[0];
        assert_eq!(to.methods, vec![exact("GET")]);
        assert_eq!(to.hosts, vec![exact("shop.example")], "hosts compare without case");
        assert_eq!(to.paths[0].kind, Some(path_match::Kind::String(StringMatch { match_type: Some(MatchType::Prefix("/items".into())) })));
        assert_eq!(to.paths[1].kind, Some(path_match::Kind::Template("/v1/{*}/reviews/{**}".into())));
        assert_eq!(clauses[2].matches[0].conditions[0].attribute, Some(request_condition::Attribute::Header("x-tenant".into())));
        assert_eq!(clauses[3].matches[0].connection.as_ref().unwrap().namespaces, vec![exact("demo")]);
        let claim = &clauses[4].matches[0].conditions[0];
        assert_eq!(claim.attribute, Some(claim_of(&["groups", "0"])));
        assert_eq!((claim.values.len(), claim.not_values.clone()), (0, vec![exact("guest")]));
    }

    fn claim_of(path: &[&str]) -> request_condition::Attribute {
        claim(path)
    }

    #[test]
    fn a_policy_without_http_attributes_has_no_http_half_and_deny_keeps_its_l4_part() {
        let (l4, http) = enforced("{rules: [{to: [{operation: {ports: ['8080']}}]}]}");
        assert!(http.is_none());
        assert_eq!(l4.rules.len(), 1);
        let (l4, http) = enforced("{action: DENY, rules: [{from: [{source: {namespaces: [other]}}], to: [{operation: {methods: [POST]}}]}]}");
        assert_eq!(l4.rules[0].clauses.len(), 2, "the L4 part: the source, and a port-less operation that matches any");
        assert!(http.is_some());
    }

    #[test]
    fn service_accounts_are_namespaced_names() {
        let (l4, _) = enforced("{rules: [{from: [{source: {serviceAccounts: [web, other/api], notServiceAccounts: [demo/bad]}}]}]}");
        let m = &l4.rules[0].clauses[0].matches[0];
        let sa = |ns: &str, name: &str| ServiceAccountMatch { namespace: ns.into(), service_account: name.into() };
        assert_eq!(m.service_accounts, vec![sa("demo", "web"), sa("other", "api")]);
        assert_eq!(m.not_service_accounts, vec![sa("demo", "bad")]);
    }

    #[test]
    fn what_cannot_be_enforced_as_written_is_refused_naming_the_field() {
        for (spec, field) in [
            ("{rules: [{when: [{key: request.foo, values: [x]}]}]}", "spec.rules[0].when[0]: key \"request.foo\""),
            ("{rules: [{when: [{key: 'experimental.envoy.filters.a[b]', values: [x]}]}]}", "spec.rules[0].when[0]: key"),
            ("{rules: [{when: [{key: 'request.headers[a][b]', values: [x]}]}]}", "spec.rules[0].when[0]"),
            ("{rules: [{when: [{key: 'request.headers[a b]', values: [x]}]}]}", "is not a header name"),
            ("{rules: [{to: [{operation: {paths: ['/a/{**}/b']}}]}]}", "spec.rules[0].to[0].operation.paths"),
            ("{rules: [{to: [{operation: {notPaths: ['/a{*}']}}]}]}", "spec.rules[0].to[0].operation.notPaths"),
            ("{rules: [{from: [{source: {remoteIpBlocks: [nope]}}]}]}", "spec.rules[0].from[0].source.remoteIpBlocks"),
            ("{rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]}", "source.serviceAccounts"),
            ("{rules: [{from: [{source: {serviceAccounts: [a], namespaces: [x]}}]}]}", "cannot be set with principals or namespaces"),
        ] {
            let Err(e) = policy(spec) else { panic!("{spec}: accepted") };
            assert!(e.contains(field), "{spec}: {e}");
        }
    }

    #[test]
    fn the_http_half_is_published_under_the_policy_name() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: reads, namespace: demo}\n\
                    spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n";
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let r = translate(&Mesh::default(), &objects).unwrap();
        assert!(r.authorizations.contains_key("demo/reads") && r.http_authorizations.contains_key("demo/reads"));
    }
}
