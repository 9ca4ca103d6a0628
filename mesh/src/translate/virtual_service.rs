//! The semantic rules of a VirtualService, Istio's where Istio has one (weights, the one action per route,
//! retry conditions, fault ranges), so a config Istio refuses is refused here too and the L7 translation can rely
//! on what passed. Regexes are compiled here once, so a bad one is named instead of failing in the proxy.
//! Fields keel accepts but does not apply (CORS, TLS routes, ingress gateways) are warnings, not errors: an Istio
//! config still loads, and the user is told what is ignored.
use std::collections::BTreeMap;

use super::field::{self, error, warning};
use crate::objects::{
    Destination, FaultAbort, FaultDelay, HeaderMatch, HeaderOperations, Headers, HttpAction, HttpDirectResponse, HttpMatchRequest, HttpRedirect,
    HttpRetry, HttpRewrite, HttpRoute, L4MatchAttributes, StringMatch, TcpRoute, TlsRoute, VirtualService,
};

/// Istio's and Envoy's retry conditions (`retryOn`); plain status codes are allowed as well.
const RETRY_CONDITIONS: [&str; 14] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The redirect codes Envoy can answer with.
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

/// Checks one VirtualService; on success, the warnings about what keel accepts without applying.
pub fn check(virtual_service: &VirtualService) -> Result<Vec<String>, String> {
    let spec = &virtual_service.spec;
    let mut warnings = Vec::new();
    check_hosts(&spec.hosts, spec.applies_to_mesh())?;
    if spec.export_to.iter().any(|e| e != "*") {
        warnings.push(warning("spec.exportTo", "ignored: keel applies every VirtualService mesh-wide"));
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        return Err(error("spec", "at least one http, tcp or tls route is required"));
    }
    for (i, route) in spec.http.iter().enumerate() {
        check_http_route(&format!("spec.http[{i}]"), route, &mut warnings)?;
    }
    // Routes are tried in order, so a route without conditions hides every route after it.
    if let Some(catch_all) = spec.http.iter().position(|r| r.matches.is_empty()) {
        if catch_all + 1 < spec.http.len() {
            warnings.push(warning(
                &format!("spec.http[{}]", catch_all + 1),
                format!("never reached: spec.http[{catch_all}] has no match and takes every request"),
            ));
        }
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        check_tcp_route(&format!("spec.tcp[{i}]"), route)?;
    }
    for (i, route) in spec.tls.iter().enumerate() {
        check_tls_route(&format!("spec.tls[{i}]"), route)?;
    }
    // keel's node proxies route mesh TCP by service VIP and port only; `keel gateway` applies tcp and tls routes.
    if spec.applies_to_mesh() {
        for (field, set) in [("spec.tcp", !spec.tcp.is_empty()), ("spec.tls", !spec.tls.is_empty())] {
            if set {
                warnings.push(warning(field, "applied by keel gateway only; mesh traffic is not routed by these routes"));
            }
        }
    }
    Ok(warnings)
}

fn check_hosts(hosts: &[String], applies_to_mesh: bool) -> Result<(), String> {
    if hosts.is_empty() {
        return Err(error("spec.hosts", "at least one host is required"));
    }
    for (i, host) in hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        field::not_empty(&path, host)?;
        // Istio's rule: "*" would capture every request in the mesh.
        if host == "*" && applies_to_mesh {
            return Err(error(&path, "\"*\" is not allowed for routes that apply to the mesh"));
        }
        if let Some(first) = hosts[..i].iter().position(|h| h == host) {
            return Err(error(&path, format!("repeats spec.hosts[{first}]")));
        }
    }
    Ok(())
}

// ---- HTTP -----------------------------------------------------------------------------------------------------

fn check_http_route(path: &str, route: &HttpRoute, warnings: &mut Vec<String>) -> Result<(), String> {
    for (j, request) in route.matches.iter().enumerate() {
        check_match(&format!("{path}.match[{j}]"), request)?;
    }
    match route.action().map_err(|e| error(path, e))? {
        HttpAction::Route(destinations) => {
            for (k, destination) in destinations.iter().enumerate() {
                let at = format!("{path}.route[{k}]");
                check_destination(&format!("{at}.destination"), &destination.destination)?;
                if let Some(headers) = &destination.headers {
                    check_headers(&format!("{at}.headers"), headers)?;
                }
            }
            check_weights(&format!("{path}.route"), destinations.iter().map(|d| d.weight))?;
        }
        HttpAction::Redirect(redirect) => check_redirect(&format!("{path}.redirect"), redirect)?,
        HttpAction::DirectResponse(response) => check_direct_response(&format!("{path}.directResponse"), response)?,
        HttpAction::Delegate(_) => {
            return Err(error(&format!("{path}.delegate"), "delegating to another VirtualService is not supported"));
        }
    }
    if let Some(rewrite) = &route.rewrite {
        if route.redirect.is_some() {
            return Err(error(&format!("{path}.rewrite"), "cannot be combined with redirect"));
        }
        check_rewrite(&format!("{path}.rewrite"), rewrite)?;
    }
    if let Some(retries) = &route.retries {
        check_retries(&format!("{path}.retries"), retries)?;
    }
    if let Some(fault) = &route.fault {
        let at = format!("{path}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            return Err(error(&at, "one of delay or abort is required"));
        }
        if let Some(delay) = &fault.delay {
            check_delay(&format!("{at}.delay"), delay, warnings)?;
        }
        if let Some(abort) = &fault.abort {
            check_abort(&format!("{at}.abort"), abort, warnings)?;
        }
    }
    check_mirroring(path, route, warnings)?;
    if route.cors_policy.is_some() {
        warnings.push(warning(&format!("{path}.corsPolicy"), "not supported yet; ignored"));
    }
    if let Some(headers) = &route.headers {
        check_headers(&format!("{path}.headers"), headers)?;
    }
    Ok(())
}

fn check_match(path: &str, request: &HttpMatchRequest) -> Result<(), String> {
    let single = [("uri", &request.uri), ("scheme", &request.scheme), ("method", &request.method), ("authority", &request.authority)];
    for (name, matcher) in single {
        if let Some(matcher) = matcher {
            check_string_match(&format!("{path}.{name}"), matcher)?;
        }
    }
    check_header_matches(&format!("{path}.headers"), &request.headers)?;
    check_header_matches(&format!("{path}.withoutHeaders"), &request.without_headers)?;
    for (name, matcher) in &request.query_params {
        let at = format!("{path}.queryParams.{name}");
        if name.is_empty() {
            return Err(error(&at, "the parameter name must not be empty"));
        }
        if matches!(matcher, StringMatch::Prefix(_)) {
            return Err(error(&at, "prefix is not supported for query parameters (Istio matches them by exact or regex)"));
        }
        check_string_match(&at, matcher)?;
    }
    if let Some(port) = request.port {
        field::port(&format!("{path}.port"), port)?;
    }
    Ok(())
}

fn check_header_matches(path: &str, headers: &BTreeMap<String, HeaderMatch>) -> Result<(), String> {
    for (name, matcher) in headers {
        let at = format!("{path}.{name}");
        // A leading ':' names a pseudo-header (`:path`, `:method`), which may be matched.
        if !is_header_name(name.strip_prefix(':').unwrap_or(name)) {
            return Err(error(&at, format!("{name:?} is not a header name")));
        }
        if let HeaderMatch::Value(matcher) = matcher {
            check_string_match(&at, matcher)?;
        }
    }
    Ok(())
}

fn check_string_match(path: &str, matcher: &StringMatch) -> Result<(), String> {
    match matcher {
        StringMatch::Regex(pattern) => check_regex(&format!("{path}.regex"), pattern),
        StringMatch::Exact(_) | StringMatch::Prefix(_) => Ok(()),
    }
}

fn check_regex(path: &str, pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(drop).map_err(|e| {
        // The regex crate's message is a multi-line diagram ending in "error: <reason>"; keep the reason.
        let detail = e.to_string();
        let reason = detail.lines().rev().find_map(|line| line.strip_prefix("error: ")).map(str::to_owned);
        error(path, format!("{pattern:?} is not a valid regex: {}", reason.unwrap_or_else(|| detail.replace('\n', " "))))
    })
}

fn check_destination(path: &str, destination: &Destination) -> Result<(), String> {
    field::not_empty(&format!("{path}.host"), &destination.host)?;
    if let Some(subset) = &destination.subset {
        field::not_empty(&format!("{path}.subset"), subset)?;
    }
    if let Some(port) = &destination.port {
        field::port(&format!("{path}.port.number"), port.number)?;
    }
    Ok(())
}

/// Istio's weight rule: each 0-100; with more than one destination they must add up to 100. A single
/// destination takes all traffic whatever its weight says.
fn check_weights(path: &str, weights: impl Iterator<Item = i32>) -> Result<(), String> {
    let weights: Vec<i32> = weights.collect();
    for (k, weight) in weights.iter().enumerate() {
        field::whole_percent(&format!("{path}[{k}].weight"), *weight)?;
    }
    let total: i32 = weights.iter().sum();
    if weights.len() > 1 && total != 100 {
        return Err(error(path, format!("the weights of its {} destinations add up to {total}, not 100", weights.len())));
    }
    Ok(())
}

fn check_headers(path: &str, headers: &Headers) -> Result<(), String> {
    if let Some(operations) = &headers.request {
        check_header_operations(&format!("{path}.request"), operations, true)?;
    }
    if let Some(operations) = &headers.response {
        check_header_operations(&format!("{path}.response"), operations, false)?;
    }
    Ok(())
}

fn check_header_operations(path: &str, operations: &HeaderOperations, on_request: bool) -> Result<(), String> {
    let named = [
        ("set", operations.set.keys().collect::<Vec<_>>()),
        ("add", operations.add.keys().collect()),
        ("remove", operations.remove.iter().collect()),
    ];
    for (operation, names) in named {
        for name in names {
            // Pseudo-headers cannot be edited, except that Istio reads `:authority` set on the request (as it reads
            // `host` there) as a rewrite of the authority.
            let authority_rewrite = on_request && operation == "set" && name == ":authority";
            if !authority_rewrite && !is_header_name(name) {
                return Err(error(&format!("{path}.{operation}"), format!("{name:?} is not a header name that can be edited")));
            }
        }
    }
    for (operation, values) in [("set", &operations.set), ("add", &operations.add)] {
        for (name, value) in values {
            let at = format!("{path}.{operation}.{name}");
            if on_request && operation == "set" && matches!(name.as_str(), ":authority" | "host") {
                field::authority(&at, value)?;
            } else {
                field::header_value(&at, value)?;
            }
        }
    }
    Ok(())
}

/// An HTTP field name: one or more token characters (RFC 9110), so no ':' and no space.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_redirect(path: &str, redirect: &HttpRedirect) -> Result<(), String> {
    if redirect.uri.is_none() && redirect.authority.is_none() && redirect.port.is_none() && redirect.scheme.is_none() {
        return Err(error(path, "one of uri, authority, port or scheme is required"));
    }
    if let Some(port) = redirect.port {
        field::port(&format!("{path}.port"), port)?;
    }
    if let Some(authority) = &redirect.authority {
        field::authority(&format!("{path}.authority"), authority)?;
    }
    if let Some(uri) = &redirect.uri {
        field::uri_path(&format!("{path}.uri"), uri)?;
    }
    if let Some(scheme) = redirect.scheme.as_ref().filter(|s| s.is_empty() || s.parse::<http::uri::Scheme>().is_err()) {
        return Err(error(&format!("{path}.scheme"), format!("{scheme:?} is not a URI scheme")));
    }
    if let Some(code) = redirect.redirect_code {
        if !REDIRECT_CODES.contains(&code) {
            return Err(error(&format!("{path}.redirectCode"), format!("{code} is not 301, 302, 303, 307 or 308")));
        }
    }
    Ok(())
}

fn check_direct_response(path: &str, response: &HttpDirectResponse) -> Result<(), String> {
    if !(200..=599).contains(&response.status) {
        return Err(error(&format!("{path}.status"), format!("{} is not an HTTP status (200-599)", response.status)));
    }
    Ok(())
}

fn check_rewrite(path: &str, rewrite: &HttpRewrite) -> Result<(), String> {
    if let Some(regex_rewrite) = &rewrite.uri_regex_rewrite {
        if rewrite.uri.is_some() {
            return Err(error(path, "only one of uri or uriRegexRewrite may be set"));
        }
        check_regex(&format!("{path}.uriRegexRewrite.match"), &regex_rewrite.pattern)?;
    }
    if let Some(authority) = &rewrite.authority {
        field::not_empty(&format!("{path}.authority"), authority)?;
        field::authority(&format!("{path}.authority"), authority)?;
    }
    if let Some(uri) = rewrite.uri.as_ref().filter(|u| !u.is_empty()) {
        field::uri_path(&format!("{path}.uri"), uri)?;
    }
    Ok(())
}

fn check_retries(path: &str, retries: &HttpRetry) -> Result<(), String> {
    field::non_negative(&format!("{path}.attempts"), retries.attempts)?;
    if retries.attempts > field::MAX_RETRY_ATTEMPTS {
        return Err(error(&format!("{path}.attempts"), format!("{} is more than {} (keel's limit)", retries.attempts, field::MAX_RETRY_ATTEMPTS)));
    }
    for condition in retries.conditions() {
        let is_status = condition.parse::<u32>().is_ok_and(|code| (100..=599).contains(&code));
        if !is_status && !RETRY_CONDITIONS.contains(&condition) {
            return Err(error(
                &format!("{path}.retryOn"),
                format!("{condition:?} is not a retry condition ({}, or an HTTP status code)", RETRY_CONDITIONS.join(", ")),
            ));
        }
    }
    Ok(())
}

fn check_delay(path: &str, delay: &FaultDelay, warnings: &mut Vec<String>) -> Result<(), String> {
    match &delay.percentage {
        Some(percentage) => field::percent(&format!("{path}.percentage.value"), percentage.value),
        None => {
            warnings.push(warning(&format!("{path}.percentage"), "unset, so no request is delayed"));
            Ok(())
        }
    }
}

fn check_abort(path: &str, abort: &FaultAbort, warnings: &mut Vec<String>) -> Result<(), String> {
    match &abort.percentage {
        Some(percentage) => field::percent(&format!("{path}.percentage.value"), percentage.value)?,
        None => warnings.push(warning(&format!("{path}.percentage"), "unset, so no request is aborted")),
    }
    match (abort.http_status, &abort.grpc_status) {
        (Some(status), None) if !(200..=599).contains(&status) => {
            Err(error(&format!("{path}.httpStatus"), format!("{status} is not an HTTP status (200-599)")))
        }
        (None, Some(status)) if !super::l7::GRPC_STATUS_NAMES[1..].contains(&status.as_str()) => Err(error(
            &format!("{path}.grpcStatus"),
            format!("{status:?} is not a gRPC error status name (such as UNAVAILABLE or DEADLINE_EXCEEDED)"),
        )),
        (Some(_), None) | (None, Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err(error(path, "only one of httpStatus or grpcStatus may be set")),
        (None, None) => Err(error(path, "one of httpStatus or grpcStatus is required")),
    }
}

fn check_mirroring(path: &str, route: &HttpRoute, warnings: &mut Vec<String>) -> Result<(), String> {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        return Err(error(path, "only one of mirror or mirrors may be set"));
    }
    if let Some(mirror) = &route.mirror {
        check_destination(&format!("{path}.mirror"), mirror)?;
    }
    if let Some(percentage) = &route.mirror_percentage {
        if route.mirror.is_none() {
            warnings.push(warning(&format!("{path}.mirrorPercentage"), "ignored without mirror"));
        }
        field::percent(&format!("{path}.mirrorPercentage.value"), percentage.value)?;
    }
    for (k, mirror) in route.mirrors.iter().enumerate() {
        let at = format!("{path}.mirrors[{k}]");
        check_destination(&format!("{at}.destination"), &mirror.destination)?;
        if let Some(percentage) = &mirror.percentage {
            field::percent(&format!("{at}.percentage.value"), percentage.value)?;
        }
    }
    Ok(())
}

// ---- TCP ------------------------------------------------------------------------------------------------------

fn check_tcp_route(path: &str, route: &TcpRoute) -> Result<(), String> {
    for (j, attributes) in route.matches.iter().enumerate() {
        check_l4_match(&format!("{path}.match[{j}]"), attributes)?;
    }
    if route.route.is_empty() {
        return Err(error(&format!("{path}.route"), "at least one destination is required"));
    }
    for (k, destination) in route.route.iter().enumerate() {
        check_destination(&format!("{path}.route[{k}].destination"), &destination.destination)?;
    }
    check_weights(&format!("{path}.route"), route.route.iter().map(|d| d.weight))
}

fn check_tls_route(path: &str, route: &TlsRoute) -> Result<(), String> {
    if route.matches.is_empty() {
        return Err(error(&format!("{path}.match"), "at least one match is required"));
    }
    for (j, attributes) in route.matches.iter().enumerate() {
        let at = format!("{path}.match[{j}]");
        if attributes.sni_hosts.is_empty() {
            return Err(error(&format!("{at}.sniHosts"), "at least one SNI host is required"));
        }
        for (k, host) in attributes.sni_hosts.iter().enumerate() {
            if let Some(why) = crate::objects::names::not_a_host(host) {
                return Err(error(&format!("{at}.sniHosts[{k}]"), why));
            }
        }
        check_l4_match(
            &at,
            &L4MatchAttributes {
                destination_subnets: attributes.destination_subnets.clone(),
                port: attributes.port,
                source_labels: attributes.source_labels.clone(),
            },
        )?;
    }
    if route.route.is_empty() {
        return Err(error(&format!("{path}.route"), "at least one destination is required"));
    }
    for (k, destination) in route.route.iter().enumerate() {
        check_destination(&format!("{path}.route[{k}].destination"), &destination.destination)?;
    }
    check_weights(&format!("{path}.route"), route.route.iter().map(|d| d.weight))
}

fn check_l4_match(path: &str, attributes: &L4MatchAttributes) -> Result<(), String> {
    for (k, subnet) in attributes.destination_subnets.iter().enumerate() {
        let is_subnet = subnet.parse::<ipnet::IpNet>().is_ok() || subnet.parse::<std::net::IpAddr>().is_ok();
        if !is_subnet {
            return Err(error(&format!("{path}.destinationSubnets[{k}]"), format!("{subnet:?} is not an IP address or CIDR")));
        }
    }
    if let Some(port) = attributes.port {
        field::port(&format!("{path}.port"), port)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{
        objects::{HeaderMatch, HttpAction, HttpBody, Object, StringMatch},
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };

    fn virtual_service(spec: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: demo}}\nspec: {spec}\n")
    }

    fn load(yaml: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        loaded
    }

    /// The spec loaded alone: its object, or the panic says why not.
    fn valid(spec: &str) -> Object {
        let loaded = load(&virtual_service(spec));
        assert!(loaded.errors.is_empty(), "{spec}: {:?}", loaded.errors);
        loaded.objects.into_iter().next().unwrap().1
    }

    /// Translation warnings of one valid spec.
    fn warnings(spec: &str) -> Vec<String> {
        translate(&Mesh::default(), &[valid(spec)]).unwrap().warnings
    }

    const ROUTE: &str = "route: [{destination: {host: a}}]";

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (format!("{{http: [{{{ROUTE}}}]}}"), "field spec.hosts: at least one host is required"),
            ("{hosts: [a]}".into(), "field spec: at least one http, tcp or tls route is required"),
            (format!("{{hosts: ['*'], http: [{{{ROUTE}}}]}}"), "field spec.hosts[0]: \"*\" is not allowed"),
            (format!("{{hosts: [a, a], http: [{{{ROUTE}}}]}}"), "field spec.hosts[1]: repeats spec.hosts[0]"),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a}, weight: 150}]}]}".into(),
                "field spec.http[0].route[0].weight: 150 must be 0-100",
            ),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a}, weight: 100}, {destination: {host: b}, weight: -1}]}]}".into(),
                "field spec.http[0].route[1].weight: -1 must be 0-100",
            ),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a}, weight: 80}, {destination: {host: b}, weight: 30}]}]}".into(),
                "field spec.http[0].route: the weights of its 2 destinations add up to 110, not 100",
            ),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]}".into(),
                "field spec.http[0].route: the weights of its 2 destinations add up to 0",
            ),
            ("{hosts: [a], http: [{timeout: 1s}]}".into(), "field spec.http[0]: one of route, redirect, directResponse or delegate is required"),
            (
                format!("{{hosts: [a], http: [{{{ROUTE}, redirect: {{uri: /b}}}}]}}"),
                "field spec.http[0]: only one of route, redirect, directResponse or delegate may be set, found route and redirect",
            ),
            (
                "{hosts: [a], http: [{delegate: {name: other}}]}".into(),
                "field spec.http[0].delegate: delegating to another VirtualService is not supported",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{uri: {{regex: '/a(b'}}}}], {ROUTE}}}]}}"),
                "field spec.http[0].match[0].uri.regex: \"/a(b\" is not a valid regex: unclosed group",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{}}, {{headers: {{x-user: {{regex: '[z-a]'}}}}}}], {ROUTE}}}]}}"),
                "field spec.http[0].match[1].headers.x-user.regex: \"[z-a]\" is not a valid regex",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{queryParams: {{v: {{regex: '*'}}}}}}], {ROUTE}}}]}}"),
                "field spec.http[0].match[0].queryParams.v.regex: \"*\" is not a valid regex",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{withoutHeaders: {{x: {{regex: '('}}}}}}], {ROUTE}}}]}}"),
                "field spec.http[0].match[0].withoutHeaders.x.regex",
            ),
            (
                format!("{{hosts: [a], http: [{{rewrite: {{uriRegexRewrite: {{match: '(', rewrite: /}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].rewrite.uriRegexRewrite.match: \"(\" is not a valid regex",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{uri: {{exact: /a, prefix: /b}}}}], {ROUTE}}}]}}"),
                "field `spec.http[0].match[0].uri`: only one of exact, prefix or regex may be set, found exact and prefix",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{method: {{}}}}], {ROUTE}}}]}}"),
                "field `spec.http[0].match[0].method`: one of exact, prefix or regex is required",
            ),
            (
                format!("{{hosts: [a], http: [{{match: [{{queryParams: {{v: {{prefix: x}}}}}}], {ROUTE}}}]}}"),
                "field spec.http[0].match[0].queryParams.v: prefix is not supported for query parameters",
            ),
            (format!("{{hosts: [a], http: [{{match: [{{port: 70000}}], {ROUTE}}}]}}"), "field spec.http[0].match[0].port: 70000 is not a port"),
            (
                format!("{{hosts: [a], http: [{{retries: {{attempts: -1}}, {ROUTE}}}]}}"),
                "field spec.http[0].retries.attempts: -1 must not be negative",
            ),
            (
                format!("{{hosts: [a], http: [{{retries: {{attempts: 101}}, {ROUTE}}}]}}"),
                "field spec.http[0].retries.attempts: 101 is more than 100 (keel's limit)",
            ),
            (
                format!("{{hosts: [a], http: [{{retries: {{attempts: 3, retryOn: '5xx,teapot'}}, {ROUTE}}}]}}"),
                "field spec.http[0].retries.retryOn: \"teapot\" is not a retry condition",
            ),
            (
                format!("{{hosts: [a], http: [{{retries: {{attempts: 3, retryOn: '5xx,999'}}, {ROUTE}}}]}}"),
                "field spec.http[0].retries.retryOn: \"999\" is not a retry condition",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{delay: {{percentage: {{value: 101}}, fixedDelay: 1s}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].fault.delay.percentage.value: 101 is not a percentage (0-100)",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{delay: {{percentage: {{value: 10}}}}}}, {ROUTE}}}]}}"),
                "field `spec.http[0].fault.delay`: missing field `fixedDelay`",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{abort: {{percentage: {{value: -5}}, httpStatus: 503}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].fault.abort.percentage.value: -5 is not a percentage",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{abort: {{percentage: {{value: 50}}, httpStatus: 700}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].fault.abort.httpStatus: 700 is not an HTTP status (200-599)",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{abort: {{percentage: {{value: 50}}}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].fault.abort: one of httpStatus or grpcStatus is required",
            ),
            (
                format!("{{hosts: [a], http: [{{fault: {{abort: {{percentage: {{value: 50}}, grpcStatus: SLOW}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].fault.abort.grpcStatus: \"SLOW\" is not a gRPC error status name",
            ),
            (format!("{{hosts: [a], http: [{{fault: {{}}, {ROUTE}}}]}}"), "field spec.http[0].fault: one of delay or abort is required"),
            (format!("{{hosts: [a], http: [{{timeout: -1s, {ROUTE}}}]}}"), "field `spec.http[0].timeout`: \"-1s\" is negative"),
            (format!("{{hosts: [a], http: [{{timeout: 1 second, {ROUTE}}}]}}"), "field `spec.http[0].timeout`: \"1 second\" is not a duration"),
            (
                format!("{{hosts: [a], http: [{{retries: {{attempts: 2, perTryTimeout: 5}}, {ROUTE}}}]}}"),
                "field `spec.http[0].retries.perTryTimeout`: invalid type: integer `5`, expected a duration string",
            ),
            (
                format!("{{hosts: [a], http: [{{mirror: {{host: b}}, mirrorPercentage: {{value: 150}}, {ROUTE}}}]}}"),
                "field spec.http[0].mirrorPercentage.value: 150 is not a percentage",
            ),
            (
                format!("{{hosts: [a], http: [{{mirror: {{host: b}}, mirrors: [{{destination: {{host: c}}}}], {ROUTE}}}]}}"),
                "field spec.http[0]: only one of mirror or mirrors may be set",
            ),
            ("{hosts: [a], http: [{directResponse: {status: 42}}]}".into(), "field spec.http[0].directResponse.status: 42 is not an HTTP status"),
            (
                "{hosts: [a], http: [{directResponse: {status: 200, body: {string: a, bytes: YQ==}}}]}".into(),
                "field `spec.http[0].directResponse.body`: only one of string or bytes may be set",
            ),
            (
                "{hosts: [a], http: [{directResponse: {status: 200, body: {bytes: '!!'}}}]}".into(),
                "field `spec.http[0].directResponse.body`: bytes: not base64",
            ),
            (
                "{hosts: [a], http: [{redirect: {uri: /b, redirectCode: 200}}]}".into(),
                "field spec.http[0].redirect.redirectCode: 200 is not 301, 302, 303, 307 or 308",
            ),
            ("{hosts: [a], http: [{redirect: {}}]}".into(), "field spec.http[0].redirect: one of uri, authority, port or scheme is required"),
            // What keel's proxy would NACK (a host, path or header value it cannot send) is refused here first.
            ("{hosts: [a], http: [{redirect: {uri: moved}}]}".into(), "field spec.http[0].redirect.uri: \"moved\" is not a valid path"),
            (
                "{hosts: [a], http: [{redirect: {authority: 'a b'}}]}".into(),
                "field spec.http[0].redirect.authority: \"a b\" is not a valid host[:port]",
            ),
            ("{hosts: [a], http: [{redirect: {scheme: 'ht tp'}}]}".into(), "field spec.http[0].redirect.scheme: \"ht tp\" is not a URI scheme"),
            (
                format!("{{hosts: [a], http: [{{rewrite: {{authority: 'a b'}}, {ROUTE}}}]}}"),
                "field spec.http[0].rewrite.authority: \"a b\" is not a valid host[:port]",
            ),
            (
                format!("{{hosts: [a], http: [{{headers: {{request: {{set: {{x-a: \"1\\n2\"}}}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].headers.request.set.x-a: \"1\\n2\" is not a valid HTTP header value",
            ),
            (
                "{hosts: [a], http: [{redirect: {uri: /b}, rewrite: {uri: /c}}]}".into(),
                "field spec.http[0].rewrite: cannot be combined with redirect",
            ),
            (
                format!("{{hosts: [a], http: [{{rewrite: {{uri: /c, uriRegexRewrite: {{match: a, rewrite: b}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].rewrite: only one of uri or uriRegexRewrite may be set",
            ),
            ("{hosts: [a], http: [{route: [{destination: {host: ''}}]}]}".into(), "field spec.http[0].route[0].destination.host: must not be empty"),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a, port: {number: 0}}}]}]}".into(),
                "field spec.http[0].route[0].destination.port.number: 0 is not a port",
            ),
            (
                format!("{{hosts: [a], http: [{{headers: {{request: {{set: {{':path': /b}}}}}}, {ROUTE}}}]}}"),
                "field spec.http[0].headers.request.set: \":path\" is not a header name that can be edited",
            ),
            (
                "{hosts: [a], http: [{route: [{destination: {host: a}, headers: {response: {remove: ['bad header']}}}]}]}".into(),
                "field spec.http[0].route[0].headers.response.remove: \"bad header\" is not a header name that can be edited",
            ),
            (format!("{{hosts: [a], http: [{{retires: {{attempts: 3}}, {ROUTE}}}]}}"), "unknown field `retires`"),
            ("{hosts: [a], tcp: [{match: [{port: 9000}]}]}".into(), "field spec.tcp[0].route: at least one destination is required"),
            (
                "{hosts: [a], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: a}}]}]}".into(),
                "field spec.tcp[0].match[0].destinationSubnets[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
            ),
            (
                "{hosts: [a], tcp: [{route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 40}]}]}".into(),
                "field spec.tcp[0].route: the weights of its 2 destinations add up to 90, not 100",
            ),
        ];
        for (spec, expected) in cases {
            let loaded = load(&virtual_service(&spec));
            assert!(loaded.objects.is_empty(), "{spec} was accepted");
            let error = loaded.errors[0].to_string();
            assert!(error.starts_with("t.yaml: VirtualService demo/vs: ") && error.contains(expected), "{spec}:\n  got  {error}\n  want {expected}");
        }
    }

    #[test]
    fn accepts_every_istio_form_it_reads() {
        let object = valid(
            r#"
  hosts: [reviews, reviews.demo.svc.cluster.local]
  gateways: [mesh]
  exportTo: ["*"]
  http:
  - name: api
    match:
    - uri: {prefix: /api}
      method: {exact: GET}
      headers: {x-canary: {}, ":authority": {regex: "^reviews(:\\d+)?$"}}
      withoutHeaders: {x-debug: {}}
      queryParams: {v: {exact: ""}}
      ignoreUriCase: true
      sourceLabels: {app: web}
      port: 9080
    rewrite: {uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}, authority: reviews-v2}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 100
      headers: {request: {set: {x-route: v2}, add: {x-trace: "1"}, remove: [x-internal]}}
    retries: {attempts: 2, perTryTimeout: 250ms, retryOn: "5xx, 503,connect-failure", retryRemoteLocalities: true}
    timeout: 1.5s
    fault: {abort: {percentage: {value: 0.5}, grpcStatus: UNAVAILABLE}}
    mirrors: [{destination: {host: reviews, subset: v3}, percentage: {value: 10}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: reviews, port: 9080, scheme: https, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {bytes: "SSdtIGEgdGVhcG90"}}
  - route: [{destination: {host: reviews, subset: v1}}]
    headers: {request: {set: {":authority": reviews-v1}}, response: {set: {x-served-by: keel}}}
  tcp:
  - match: [{port: 9090, destinationSubnets: [10.0.0.0/8, 192.168.1.1]}]
    route: [{destination: {host: reviews}, weight: 90}, {destination: {host: ratings}, weight: 10}]
"#,
        );
        let Object::VirtualService(vs) = &object else { panic!() };
        // Only that keel's node proxies do not route mesh TCP by these routes (keel gateway does).
        assert_eq!(
            warnings_of(&object),
            ["VirtualService demo/vs: spec.tcp: applied by keel gateway only; mesh traffic is not routed by these routes"]
        );
        let first = &vs.spec.http[0];
        assert_eq!(first.matches[0].headers["x-canary"], HeaderMatch::Present);
        assert_eq!(first.matches[0].uri, Some(StringMatch::Prefix("/api".into())));
        assert_eq!(first.retries.as_ref().unwrap().conditions().collect::<Vec<_>>(), ["5xx", "503", "connect-failure"]);
        let HttpAction::DirectResponse(teapot) = vs.spec.http[2].action().unwrap() else { panic!() };
        assert_eq!(teapot.body, Some(HttpBody::Bytes(b"I'm a teapot".to_vec())));
    }

    fn warnings_of(object: &Object) -> Vec<String> {
        translate(&Mesh::default(), std::slice::from_ref(object)).unwrap().warnings
    }

    #[test]
    fn accepted_but_unapplied_fields_are_warnings_naming_the_object_and_field() {
        let found = warnings(
            r#"
  hosts: [reviews]
  gateways: [mesh, istio-system/ingress]
  exportTo: ["."]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
    fault: {delay: {fixedDelay: 1s}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /late}}]
    route: [{destination: {host: reviews}}]
  tls:
  - match: [{sniHosts: [reviews]}]
    route: [{destination: {host: reviews}}]
"#,
        );
        let expected = [
            "VirtualService demo/vs: spec.exportTo: ignored",
            "VirtualService demo/vs: spec.http[0].fault.delay.percentage: unset, so no request is delayed",
            "VirtualService demo/vs: spec.http[0].corsPolicy: not supported yet; ignored",
            "VirtualService demo/vs: spec.http[1]: never reached: spec.http[0] has no match",
            "VirtualService demo/vs: spec.tls: applied by keel gateway only",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (warning, expected) in found.iter().zip(expected) {
            assert!(warning.starts_with(expected), "{warning}\n  want {expected}");
        }
        let gateway_only = warnings(&format!("{{hosts: [a.example.com], gateways: [ingress], http: [{{{ROUTE}}}], tls: [{{match: [{{sniHosts: [a.example.com]}}], route: [{{destination: {{host: a}}}}]}}]}}"));
        assert!(gateway_only.is_empty(), "{gateway_only:?}");
    }
}
