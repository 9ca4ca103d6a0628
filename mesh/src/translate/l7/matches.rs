//! VirtualService `match` → Envoy RouteMatch, as Istio translates it: the URI to the path specifier, each header,
//! `method`, `authority` and `scheme` (as the `:method`, `:authority`, `:scheme` pseudo-headers) to a header matcher,
//! `withoutHeaders` to inverted matchers, `queryParams` to query parameter matchers.
use std::collections::BTreeMap;

use keel_proto::{
    matcher::{string_matcher::MatchPattern, RegexMatcher, StringMatcher},
    route::{
        header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier, route_match::PathSpecifier, HeaderMatcher,
        QueryParameterMatcher, RouteMatch,
    },
};

use crate::objects::{HeaderMatch, HttpMatchRequest, StringMatch};

/// The match of a route without conditions: every path.
pub fn any_path() -> RouteMatch {
    RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }
}

pub fn route_match(request: &HttpMatchRequest) -> RouteMatch {
    let path_specifier = Some(match &request.uri {
        Some(StringMatch::Exact(path)) => PathSpecifier::Path(path.clone()),
        Some(StringMatch::Prefix(prefix)) => PathSpecifier::Prefix(prefix.clone()),
        Some(StringMatch::Regex(pattern)) => PathSpecifier::SafeRegex(regex(pattern)),
        None => PathSpecifier::Prefix("/".into()),
    });
    let mut headers = header_matchers(&request.headers, false);
    headers.extend(header_matchers(&request.without_headers, true));
    for (pseudo, value) in [(":method", &request.method), (":authority", &request.authority), (":scheme", &request.scheme)] {
        if let Some(value) = value {
            headers.push(HeaderMatcher {
                name: pseudo.into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(value))),
                ..Default::default()
            });
        }
    }
    let query_parameters = request
        .query_params
        .iter()
        .map(|(name, value)| QueryParameterMatcher {
            name: name.clone(),
            // Istio reads `exact: ""` as "the parameter is present" (e.g. `?debug`).
            query_parameter_match_specifier: Some(match value {
                StringMatch::Exact(v) if v.is_empty() => QueryParameterMatchSpecifier::PresentMatch(true),
                _ => QueryParameterMatchSpecifier::StringMatch(string_matcher(value)),
            }),
        })
        .collect();
    RouteMatch {
        path_specifier,
        // Envoy matches paths case-sensitively unless told otherwise; only `ignoreUriCase` says otherwise.
        case_sensitive: request.ignore_uri_case.then_some(false),
        headers,
        query_parameters,
        runtime_fraction: None,
    }
}

/// Istio's header match forms: a value match, or `{}` for "present"; `invert` turns either into its negation
/// (`withoutHeaders`: absent, or not equal).
fn header_matchers(headers: &BTreeMap<String, HeaderMatch>, invert: bool) -> Vec<HeaderMatcher> {
    headers
        .iter()
        .map(|(name, matcher)| HeaderMatcher {
            name: name.to_ascii_lowercase(),
            invert_match: invert,
            header_match_specifier: Some(match matcher {
                HeaderMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
                HeaderMatch::Value(value) => HeaderMatchSpecifier::StringMatch(string_matcher(value)),
            }),
            ..Default::default()
        })
        .collect()
}

pub fn string_matcher(value: &StringMatch) -> StringMatcher {
    let match_pattern = match value {
        StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => MatchPattern::SafeRegex(regex(v)),
    };
    StringMatcher { match_pattern: Some(match_pattern), ignore_case: false }
}

/// RE2 is Envoy's only engine, and its default; no engine is named.
pub fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher { regex: pattern.to_owned(), ..Default::default() }
}
