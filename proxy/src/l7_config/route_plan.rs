//! What a route does, compiled once per config version from its Envoy action: forward (to one cluster or a
//! weighted split, with rewrites, timeout, retries, faults, mirrors and hash policies), redirect, or answer
//! directly. Everything a request needs is decided here, so the request path only reads.
use std::time::{Duration, Instant};

use keel_proto::{
    core::data_source::Specifier,
    route::{
        redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
        route::Action,
        route_action::{ClusterSpecifier, HashPolicy, HostRewriteSpecifier},
        route_match::PathSpecifier,
        RedirectAction, Route, WeightedCluster,
    },
};
use regex::Regex;

use super::{
    fault::{fraction, Faults, FAULT_FILTER},
    limits,
    retry::Retries,
};

/// Envoy's route timeout when a route sets none (Istio always sets one; 0 there means "no timeout").
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub enum RoutePlan {
    Forward(Box<ForwardPlan>),
    Redirect(RedirectPlan),
    Direct { status: u16, body: bytes::Bytes },
}

#[derive(Debug)]
pub enum Target {
    Cluster(String),
    Weighted(WeightedCluster),
}

#[derive(Debug)]
pub struct ForwardPlan {
    pub target: Target,
    pub path_rewrite: Option<PathRewrite>,
    pub host_rewrite: Option<String>,
    /// `None`: no timeout.
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub faults: Option<Faults>,
    /// Cluster and the fraction of requests copied to it.
    pub mirrors: Vec<(String, f64)>,
    pub hash_policies: Vec<HashPolicy>,
}

#[derive(Debug)]
pub enum PathRewrite {
    /// Replace the matched prefix.
    Prefix {
        matched: String,
        replacement: String,
    },
    Regex {
        pattern: Regex,
        substitution: String,
    },
}

#[derive(Debug)]
pub struct RedirectPlan {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub full_path: Option<String>,
    pub strip_query: bool,
}

/// Header edits keel would otherwise skip one by one at request time: refused whole instead.
pub fn check_header_edits(field: &str, add: &[keel_proto::core::HeaderValueOption], remove: &[String]) -> Result<(), String> {
    for (i, option) in add.iter().enumerate() {
        let Some(header) = &option.header else { return Err(format!("{field}_to_add[{i}].header: missing")) };
        limits::header_name(&format!("{field}_to_add[{i}].header.key"), &header.key)?;
        if header.raw_value.is_empty() {
            limits::header_value(&format!("{field}_to_add[{i}].header.value"), &header.value)?;
        } else if http::HeaderValue::from_bytes(&header.raw_value).is_err() {
            return Err(format!("{field}_to_add[{i}].header.raw_value: not a valid HTTP header value"));
        }
    }
    for (i, name) in remove.iter().enumerate() {
        limits::header_name(&format!("{field}_to_remove[{i}]"), name)?;
    }
    Ok(())
}

fn path(field: &str, value: &str) -> Result<(), String> {
    match value.parse::<http::uri::PathAndQuery>() {
        Ok(_) if value.starts_with('/') => Ok(()),
        _ => Err(format!("{field}: {value:?} is not a valid path")),
    }
}

fn regex_rewrite(field: &str, pattern: &keel_proto::matcher::RegexMatchAndSubstitute) -> Result<PathRewrite, String> {
    let regex = pattern.pattern.as_ref().ok_or_else(|| format!("{field}.pattern: missing"))?;
    let compiled = Regex::new(&regex.regex).map_err(|e| format!("{field}.pattern: invalid regex {:?}: {e}", regex.regex))?;
    // Envoy substitutions use `\1`; the regex crate uses `${1}`.
    let substitution = Regex::new(r"\\(\d)").expect("static regex").replace_all(&pattern.substitution, "$${$1}").into_owned();
    Ok(PathRewrite::Regex { pattern: compiled, substitution })
}

impl RoutePlan {
    /// `field` names the route (`virtual_hosts[0].routes[2]`) in errors.
    pub fn compile(field: &str, route: &Route) -> Result<RoutePlan, String> {
        let matched_prefix = match route.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
            Some(PathSpecifier::Prefix(p)) | Some(PathSpecifier::PathSeparatedPrefix(p)) => Some(p.clone()),
            _ => None,
        };
        match route.action.as_ref().ok_or_else(|| format!("{field}: no action"))? {
            Action::Route(action) => {
                let target = match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(name)) => Target::Cluster(name.clone()),
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        for (i, c) in w.clusters.iter().enumerate() {
                            let at = format!("{field}.route.weighted_clusters.clusters[{i}]");
                            check_header_edits(&format!("{at}.request_headers"), &c.request_headers_to_add, &c.request_headers_to_remove)?;
                            check_header_edits(&format!("{at}.response_headers"), &c.response_headers_to_add, &c.response_headers_to_remove)?;
                        }
                        Target::Weighted(w.clone())
                    }
                    Some(ClusterSpecifier::ClusterHeader(_)) => {
                        return Err(format!("{field}.route.cluster_header: not supported (cluster or weighted_clusters are)"))
                    }
                    None => return Err(format!("{field}.route: no cluster")),
                };
                let path_rewrite = if let Some(rewrite) = &action.regex_rewrite {
                    Some(regex_rewrite(&format!("{field}.route.regex_rewrite"), rewrite)?)
                } else if !action.prefix_rewrite.is_empty() {
                    path(&format!("{field}.route.prefix_rewrite"), &action.prefix_rewrite)?;
                    let matched = matched_prefix.ok_or_else(|| format!("{field}.route.prefix_rewrite: the route does not match on a prefix"))?;
                    Some(PathRewrite::Prefix { matched, replacement: action.prefix_rewrite.clone() })
                } else {
                    None
                };
                let timeout = match &action.timeout {
                    None => Some(DEFAULT_ROUTE_TIMEOUT),
                    Some(t) => Some(limits::duration(&format!("{field}.route.timeout"), t)?).filter(|d| !d.is_zero()),
                };
                // keel does not read `grpc-timeout` nor cap streams: a limit set here would be silently ignored.
                if action.max_stream_duration.as_ref().is_some_and(|m| *m != Default::default()) {
                    return Err(format!("{field}.route.max_stream_duration: not supported (the route timeout is)"));
                }
                let host_rewrite = match &action.host_rewrite_specifier {
                    None => None,
                    Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                        limits::authority(&format!("{field}.route.host_rewrite_literal"), h)?;
                        Some(h.clone())
                    }
                };
                for (i, policy) in action.hash_policy.iter().enumerate() {
                    let at = format!("{field}.route.hash_policy[{i}]");
                    match &policy.policy_specifier {
                        None => return Err(format!("{at}: no policy keel supports (header, cookie, connection_properties, query_parameter)")),
                        Some(keel_proto::route::route_action::hash_policy::PolicySpecifier::Header(h)) => {
                            limits::header_name(&format!("{at}.header.header_name"), &h.header_name)?
                        }
                        Some(keel_proto::route::route_action::hash_policy::PolicySpecifier::Cookie(c)) => {
                            if !super::action::is_cookie_name(&c.name) {
                                return Err(format!("{at}.cookie.name: {:?} is not a cookie name", c.name));
                            }
                            if let Some(ttl) = &c.ttl {
                                limits::duration(&format!("{at}.cookie.ttl"), ttl)?;
                            }
                            if c.path.bytes().any(|b| !b.is_ascii_graphic() || b == b';') {
                                return Err(format!("{at}.cookie.path: {:?} cannot be a cookie path", c.path));
                            }
                        }
                        Some(_) => {}
                    }
                }
                let retries = action
                    .retry_policy
                    .as_ref()
                    .map(|p| Retries::compile(&format!("{field}.route.retry_policy"), p))
                    .transpose()?
                    .filter(|r| r.num_retries > 0);
                let faults = route
                    .typed_per_filter_config
                    .get(FAULT_FILTER)
                    .map(|any| Faults::decode(&format!("{field}.typed_per_filter_config[{FAULT_FILTER}]"), any))
                    .transpose()?;
                if let Some(other) = route.typed_per_filter_config.keys().find(|k| k.as_str() != FAULT_FILTER) {
                    return Err(format!("{field}.typed_per_filter_config[{other}]: only {FAULT_FILTER} is supported"));
                }
                let mirrors = action
                    .request_mirror_policies
                    .iter()
                    .map(|m| (m.cluster.clone(), m.runtime_fraction.as_ref().map_or(1.0, |f| fraction(f.default_value.as_ref()))))
                    .collect();
                Ok(RoutePlan::Forward(Box::new(ForwardPlan {
                    target,
                    path_rewrite,
                    host_rewrite,
                    timeout,
                    retries,
                    faults,
                    mirrors,
                    hash_policies: action.hash_policy.clone(),
                })))
            }
            Action::Redirect(r) => {
                Ok(RoutePlan::Redirect(RedirectPlan::compile(&format!("{field}.redirect"), r, matched_prefix.unwrap_or_default())?))
            }
            Action::DirectResponse(d) => {
                let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                    None => bytes::Bytes::new(),
                    Some(Specifier::InlineString(s)) => bytes::Bytes::from(s.clone()),
                    Some(Specifier::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
                    Some(_) => return Err(format!("{field}.direct_response.body: only inline_string and inline_bytes are supported")),
                };
                let status = u16::try_from(d.status).ok().filter(|s| (200..600).contains(s));
                Ok(RoutePlan::Direct { status: status.ok_or_else(|| format!("{field}.direct_response.status: {} is not 200-599", d.status))?, body })
            }
        }
    }
}

impl RedirectPlan {
    fn compile(field: &str, r: &RedirectAction, matched_prefix: String) -> Result<RedirectPlan, String> {
        let status = match RedirectResponseCode::try_from(r.response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => 301,
            Ok(RedirectResponseCode::Found) => 302,
            Ok(RedirectResponseCode::SeeOther) => 303,
            Ok(RedirectResponseCode::TemporaryRedirect) => 307,
            Ok(RedirectResponseCode::PermanentRedirect) => 308,
            Err(_) => return Err(format!("{field}.response_code: unknown value {}", r.response_code)),
        };
        // Everything here ends up in the Location header: what cannot be in one is refused now, not answered with
        // a 500 per request.
        let (path, full_path) = match &r.path_rewrite_specifier {
            None => (None, None),
            Some(PathRewriteSpecifier::PathRedirect(p)) => {
                self::path(&format!("{field}.path_redirect"), p)?;
                (None, Some(p.clone()))
            }
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
                self::path(&format!("{field}.prefix_rewrite"), p)?;
                (Some(PathRewrite::Prefix { matched: matched_prefix, replacement: p.clone() }), None)
            }
            Some(PathRewriteSpecifier::RegexRewrite(rr)) => (Some(regex_rewrite(&format!("{field}.regex_rewrite"), rr)?), None),
        };
        if !r.host_redirect.is_empty() {
            limits::authority(&format!("{field}.host_redirect"), &r.host_redirect)?;
        }
        if let Some(SchemeRewriteSpecifier::SchemeRedirect(scheme)) = &r.scheme_rewrite_specifier {
            if scheme.parse::<http::uri::Scheme>().is_err() || scheme.is_empty() {
                return Err(format!("{field}.scheme_redirect: {scheme:?} is not a URI scheme"));
            }
        }
        if u16::try_from(r.port_redirect).is_err() {
            return Err(format!("{field}.port_redirect: {} is not a port", r.port_redirect));
        }
        Ok(RedirectPlan {
            status,
            scheme: match &r.scheme_rewrite_specifier {
                Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
                Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
                _ => None,
            },
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: u16::try_from(r.port_redirect).ok().filter(|p| *p != 0),
            path,
            full_path,
            strip_query: r.strip_query,
        })
    }

    /// The Location for a request (`authority` and `path_and_query` as received).
    pub fn location(&self, authority: &str, path_and_query: &str) -> String {
        let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let path = match (&self.full_path, &self.path) {
            (Some(full), _) => full.clone(),
            (None, Some(rewrite)) => rewrite.apply(path),
            (None, None) => path.to_owned(),
        };
        let (host, port) =
            authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or((authority, None), |(h, p)| (h, Some(p)));
        let host = self.host.as_deref().unwrap_or(host);
        let port = self.port.map(|p| p.to_string()).or(port.map(str::to_owned));
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let mut location = match port {
            Some(p) if !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")) => format!("{scheme}://{host}:{p}{path}"),
            _ => format!("{scheme}://{host}{path}"),
        };
        if let Some(q) = query.filter(|_| !self.strip_query && self.full_path.as_deref().is_none_or(|f| !f.contains('?'))) {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

impl ForwardPlan {
    /// When a request that keel received at `started` times out (`None`: never).
    pub fn deadline(&self, started: Instant) -> Option<Instant> {
        self.timeout.and_then(|t| limits::deadline(started, t))
    }
}

impl PathRewrite {
    /// Rewrites `path` (no query).
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Prefix { matched, replacement } => match path.get(..matched.len()) {
                Some(head) if head.eq_ignore_ascii_case(matched) => format!("{replacement}{}", &path[matched.len()..]),
                _ => path.to_owned(),
            },
            PathRewrite::Regex { pattern, substitution } => pattern.replace_all(path, substitution.as_str()).into_owned(),
        }
    }

    /// Rewrites a path-and-query, keeping the query.
    pub fn apply_to_request(&self, path_and_query: &str) -> String {
        match path_and_query.split_once('?') {
            Some((path, query)) => format!("{}?{query}", self.apply(path)),
            None => self.apply(path_and_query),
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_proto::{
        matcher::{RegexMatchAndSubstitute, RegexMatcher},
        route::{RouteAction, RouteMatch},
    };

    use super::*;

    fn forward(action: RouteAction, m: RouteMatch) -> ForwardPlan {
        let route = Route { r#match: Some(m), action: Some(Action::Route(action)), ..Default::default() };
        match RoutePlan::compile("r", &route).unwrap() {
            RoutePlan::Forward(f) => *f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_regex() {
        let prefix = RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/api/v1".into())), ..Default::default() };
        let plan = forward(
            RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())), prefix_rewrite: "/v2".into(), ..Default::default() },
            prefix.clone(),
        );
        assert_eq!(plan.path_rewrite.unwrap().apply_to_request("/api/v1/items?x=1"), "/v2/items?x=1");
        assert_eq!(plan.timeout, Some(DEFAULT_ROUTE_TIMEOUT));
        let plan = forward(
            RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                regex_rewrite: Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher { regex: "^/users/([0-9]+)$".into(), engine_type: None }),
                    substitution: "/u/\\1".into(),
                }),
                timeout: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                ..Default::default()
            },
            prefix,
        );
        assert_eq!(plan.path_rewrite.unwrap().apply("/users/42"), "/u/42");
        assert_eq!(plan.timeout, None, "0 disables the timeout");
    }

    #[test]
    fn redirects_build_the_location() {
        let plan = RedirectPlan::compile(
            "r",
            &RedirectAction {
                host_redirect: "new.example".into(),
                path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect("/moved".into())),
                response_code: RedirectResponseCode::PermanentRedirect as i32,
                ..Default::default()
            },
            String::new(),
        )
        .unwrap();
        assert_eq!(plan.status, 308);
        assert_eq!(plan.location("old:8080", "/x?q=1"), "http://new.example:8080/moved?q=1");
    }

    fn to_c() -> RouteAction {
        RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())), ..Default::default() }
    }

    fn refused(action: RouteAction) -> String {
        let route = Route { action: Some(Action::Route(action)), ..Default::default() };
        RoutePlan::compile("virtual_hosts[0].routes[0]", &route).unwrap_err()
    }

    #[test]
    fn timeouts_are_checked_and_clamped() {
        let timeout = |seconds| RouteAction { timeout: Some(prost_types::Duration { seconds, nanos: 0 }), ..to_c() };
        // Read as u64 seconds before, and added to the request's start: a panic per request.
        assert!(refused(timeout(i64::MAX)).starts_with("virtual_hosts[0].routes[0].route.timeout: 9223372036854775807s 0ns is not a valid"));
        assert!(refused(timeout(-1)).starts_with("virtual_hosts[0].routes[0].route.timeout: -1s 0ns is negative"), "read as 0 (no timeout) before");
        let plan = forward(timeout(315_576_000_000), RouteMatch::default());
        assert_eq!(plan.timeout, Some(limits::MAX_DURATION));
        assert!(plan.deadline(Instant::now()).is_some());
    }

    #[test]
    fn settings_keel_would_ignore_or_fail_on_per_request_are_refused() {
        let at = "virtual_hosts[0].routes[0]";
        let msd = keel_proto::route::route_action::MaxStreamDuration {
            grpc_timeout_header_max: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(
            refused(RouteAction { max_stream_duration: Some(msd), ..to_c() }),
            format!("{at}.route.max_stream_duration: not supported (the route timeout is)")
        );
        let host = RouteAction { host_rewrite_specifier: Some(HostRewriteSpecifier::HostRewriteLiteral("evil\r\nx: y".into())), ..to_c() };
        assert!(refused(host).starts_with(&format!("{at}.route.host_rewrite_literal: ")));
        assert!(
            refused(RouteAction { hash_policy: vec![HashPolicy::default()], ..to_c() }).starts_with(&format!("{at}.route.hash_policy[0]: no policy"))
        );
        let cookie = |name: &str, seconds: i64, path: &str| {
            use keel_proto::route::route_action::hash_policy::{Cookie, PolicySpecifier};
            let c = Cookie { name: name.into(), ttl: Some(prost_types::Duration { seconds, nanos: 0 }), path: path.into() };
            refused(RouteAction { hash_policy: vec![HashPolicy { policy_specifier: Some(PolicySpecifier::Cookie(c)), terminal: false }], ..to_c() })
        };
        assert_eq!(cookie("a;b", 1, "/"), format!("{at}.route.hash_policy[0].cookie.name: \"a;b\" is not a cookie name"));
        assert!(cookie("user", -1, "/").starts_with(&format!("{at}.route.hash_policy[0].cookie.ttl: -1s 0ns is negative")));
        assert_eq!(cookie("user", 1, "/a; x"), format!("{at}.route.hash_policy[0].cookie.path: \"/a; x\" cannot be a cookie path"));
        let redirect = |r: RedirectAction| RedirectPlan::compile("r.redirect", &r, String::new()).unwrap_err();
        assert!(redirect(RedirectAction { host_redirect: "a b".into(), ..Default::default() }).starts_with("r.redirect.host_redirect: "));
        let path = RedirectAction { path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect("moved".into())), ..Default::default() };
        assert!(redirect(path).starts_with("r.redirect.path_redirect: \"moved\" is not a valid path"));
        let scheme = RedirectAction { scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("ht tp".into())), ..Default::default() };
        assert!(redirect(scheme).starts_with("r.redirect.scheme_redirect: "));
        assert!(redirect(RedirectAction { port_redirect: 70_000, ..Default::default() }).starts_with("r.redirect.port_redirect: 70000"));
    }
}
