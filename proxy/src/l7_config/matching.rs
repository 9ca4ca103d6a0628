//! Request matchers compiled from Envoy's RouteMatch: paths (prefix, exact, separated prefix, regex), headers
//! (including the `:method`/`:authority`/`:path` pseudo-headers) and query parameters. Regexes are compiled here,
//! once per config version, and anchored as Envoy's RE2 full match is; matching a request allocates nothing.
use http::HeaderMap;
use keel_proto::{
    matcher::{string_matcher::MatchPattern, RegexMatcher, StringMatcher},
    route::{
        header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier, route_match::PathSpecifier, HeaderMatcher,
        QueryParameterMatcher, RouteMatch,
    },
};
use regex::Regex;

/// What matching looks at: a request's method, authority, path (with query) and headers.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Path and query, as on the request line (`/a/b?x=1`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    fn path(&self) -> &str {
        self.path_and_query.split_once('?').map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }

    /// A header's value, pseudo-headers included; the first value when repeated.
    fn header(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => Some(self.method),
            ":authority" | "host" => Some(self.authority),
            ":path" => Some(self.path_and_query),
            _ => self.headers.get(name).and_then(|v| v.to_str().ok()),
        }
    }
}

fn anchored(field: &str, m: &RegexMatcher) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{})$", m.regex)).map_err(|e| format!("{field}: invalid regex {:?}: {e}", m.regex))
}

/// A compiled `StringMatcher`.
#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct CompiledString {
    kind: StringMatch,
    ignore_case: bool,
}

impl CompiledString {
    pub fn compile(field: &str, m: &StringMatcher) -> Result<CompiledString, String> {
        let lower = |s: &String| if m.ignore_case { s.to_lowercase() } else { s.clone() };
        let kind = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(lower(s)),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(lower(s)),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(lower(s)),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(lower(s)),
            Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(anchored(&format!("{field}.safe_regex"), r)?),
            None => return Err(format!("{field}: no match pattern (or one keel does not support)")),
        };
        Ok(CompiledString { kind, ignore_case: m.ignore_case })
    }

    fn exact(value: &str) -> CompiledString {
        CompiledString { kind: StringMatch::Exact(value.to_owned()), ignore_case: false }
    }

    pub fn matches(&self, value: &str) -> bool {
        let folded;
        let value = if self.ignore_case && !matches!(self.kind, StringMatch::Regex(_)) {
            folded = value.to_lowercase();
            folded.as_str()
        } else {
            value
        };
        match &self.kind {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Contains(s) => value.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    /// A prefix that ends at a path segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
    SeparatedPrefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum HeaderCheck {
    /// `present_match: true` (or no specifier at all): the header is there.
    Present,
    Absent,
    Value(CompiledString),
}

#[derive(Debug)]
struct HeaderMatch {
    name: String,
    check: HeaderCheck,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    /// `None`: the parameter only has to be present.
    value: Option<CompiledString>,
}

/// A compiled `RouteMatch`: all of its conditions must hold.
#[derive(Debug)]
pub struct RequestMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

impl RequestMatcher {
    /// Compiles a RouteMatch; `field` names it in errors (`virtual_hosts[0].routes[2].match`).
    pub fn compile(field: &str, m: &RouteMatch) -> Result<RequestMatcher, String> {
        if m.runtime_fraction.is_some() {
            return Err(format!("{field}.runtime_fraction: not supported"));
        }
        let case_sensitive = m.case_sensitive.unwrap_or(true);
        let fold = |s: &String| if case_sensitive { s.clone() } else { s.to_lowercase() };
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(fold(p)),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(fold(p)),
            Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(anchored(&format!("{field}.safe_regex"), r)?),
            None => return Err(format!("{field}: no path specifier (or one keel does not support)")),
        };
        let headers = m.headers.iter().enumerate().map(|(i, h)| compile_header(&format!("{field}.headers[{i}]"), h)).collect::<Result<_, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| compile_query(&format!("{field}.query_parameters[{i}]"), q))
            .collect::<Result<_, _>>()?;
        Ok(RequestMatcher { path, case_sensitive, headers, query })
    }

    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        self.path_matches(request.path()) && self.headers.iter().all(|h| h.matches(request)) && self.query_matches(request.query())
    }

    fn path_matches(&self, path: &str) -> bool {
        let folded;
        let path = if self.case_sensitive || matches!(self.path, PathMatch::Regex(_)) {
            path
        } else {
            folded = path.to_lowercase();
            &folded
        };
        match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::SeparatedPrefix(p) => path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|q| {
            let value = query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == q.name).then_some(v)
            });
            match (&q.value, value) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(m), Some(v)) => m.matches(v),
            }
        })
    }
}

fn compile_header(field: &str, h: &HeaderMatcher) -> Result<HeaderMatch, String> {
    let check = match &h.header_match_specifier {
        None | Some(HeaderMatchSpecifier::PresentMatch(true)) => HeaderCheck::Present,
        Some(HeaderMatchSpecifier::PresentMatch(false)) => HeaderCheck::Absent,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => HeaderCheck::Value(CompiledString::exact(s)),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => HeaderCheck::Value(CompiledString { kind: StringMatch::Prefix(s.clone()), ignore_case: false }),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => HeaderCheck::Value(CompiledString { kind: StringMatch::Suffix(s.clone()), ignore_case: false }),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            HeaderCheck::Value(CompiledString { kind: StringMatch::Contains(s.clone()), ignore_case: false })
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            HeaderCheck::Value(CompiledString { kind: StringMatch::Regex(anchored(&format!("{field}.safe_regex_match"), r)?), ignore_case: false })
        }
        Some(HeaderMatchSpecifier::StringMatch(s)) => HeaderCheck::Value(CompiledString::compile(&format!("{field}.string_match"), s)?),
        Some(HeaderMatchSpecifier::RangeMatch(_)) => return Err(format!("{field}.range_match: not supported")),
    };
    Ok(HeaderMatch { name: h.name.to_ascii_lowercase(), check, invert: h.invert_match, missing_as_empty: h.treat_missing_header_as_empty })
}

impl HeaderMatch {
    fn matches(&self, request: &RequestView<'_>) -> bool {
        let value = request.header(&self.name).or(if self.missing_as_empty { Some("") } else { None });
        let matched = match (&self.check, value) {
            (HeaderCheck::Present, v) => v.is_some(),
            (HeaderCheck::Absent, v) => v.is_none(),
            (HeaderCheck::Value(m), Some(v)) => m.matches(v),
            // A missing header matches no value matcher, inverted or not (Envoy's rule).
            (HeaderCheck::Value(_), None) => return false,
        };
        matched != self.invert
    }
}

fn compile_query(field: &str, q: &QueryParameterMatcher) -> Result<QueryMatch, String> {
    let value = match &q.query_parameter_match_specifier {
        None | Some(QueryParameterMatchSpecifier::PresentMatch(true)) => None,
        Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(format!("{field}.present_match: false is not supported"));
        }
        Some(QueryParameterMatchSpecifier::StringMatch(s)) => Some(CompiledString::compile(&format!("{field}.string_match"), s)?),
    };
    Ok(QueryMatch { name: q.name.clone(), value })
}
