//! A RouteConfiguration compiled once per config version: virtual hosts found by domain the way Envoy finds them
//! (exact, then the longest `*.suffix`, then the longest `prefix*`, then `*`; with the port, then without), and
//! each host's routes in order with their matchers compiled. A request is routed to the first matching route.
use std::{collections::HashMap, sync::Arc};

use keel_proto::route::{route::Action, Route, RouteConfiguration, VirtualHost};

use super::{
    matching::{RequestMatcher, RequestView},
    retry::Retries,
    route_plan::{check_header_edits, RoutePlan},
};

#[derive(Debug)]
pub struct CompiledRoute {
    matcher: RequestMatcher,
    /// The route as configured (header edits are read from it per request).
    pub route: Arc<Route>,
    /// Its action, compiled.
    pub plan: RoutePlan,
}

#[derive(Debug)]
pub struct CompiledVirtualHost {
    pub name: String,
    pub routes: Vec<CompiledRoute>,
    /// Host-level settings (retry policy, header edits) the routes inherit.
    pub host: Arc<VirtualHost>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    pub name: String,
    hosts: Vec<CompiledVirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` stored as `example.`, longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl RouteTable {
    /// Compiles `config`; errors name the field (`virtual_hosts[1].routes[0].match.safe_regex: ...`).
    pub fn compile(config: &RouteConfiguration) -> Result<RouteTable, String> {
        let mut table = RouteTable { name: config.name.clone(), ..Default::default() };
        for (h, host) in config.virtual_hosts.iter().enumerate() {
            let at = format!("virtual_hosts[{h}]");
            check_header_edits(&format!("{at}.request_headers"), &host.request_headers_to_add, &host.request_headers_to_remove)?;
            check_header_edits(&format!("{at}.response_headers"), &host.response_headers_to_add, &host.response_headers_to_remove)?;
            // Envoy's host-wide retries apply to the host's routes that set none of their own.
            let host_retries =
                host.retry_policy.as_ref().map(|p| Retries::compile(&format!("{at}.retry_policy"), p)).transpose()?.filter(|r| r.num_retries > 0);
            let routes = host
                .routes
                .iter()
                .enumerate()
                .map(|(r, route)| {
                    let field = format!("virtual_hosts[{h}].routes[{r}]");
                    let m = route.r#match.as_ref().ok_or_else(|| format!("{field}.match: missing"))?;
                    if route.action.is_none() {
                        return Err(format!("{field}: no action (route, redirect or direct_response) keel supports"));
                    }
                    check_header_edits(&format!("{field}.request_headers"), &route.request_headers_to_add, &route.request_headers_to_remove)?;
                    check_header_edits(&format!("{field}.response_headers"), &route.response_headers_to_add, &route.response_headers_to_remove)?;
                    let mut plan = RoutePlan::compile(&field, route)?;
                    if let (RoutePlan::Forward(forward), Some(Action::Route(action))) = (&mut plan, &route.action) {
                        if action.retry_policy.is_none() {
                            forward.retries = host_retries.clone();
                        }
                    }
                    Ok(CompiledRoute { matcher: RequestMatcher::compile(&format!("{field}.match"), m)?, plan, route: Arc::new(route.clone()) })
                })
                .collect::<Result<Vec<_>, String>>()?;
            for (d, domain) in host.domains.iter().enumerate() {
                let domain = domain.to_ascii_lowercase();
                let taken = if domain == "*" {
                    table.any.replace(h).is_some()
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), h));
                    false
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    table.prefixes.push((prefix.to_owned(), h));
                    false
                } else {
                    table.exact.insert(domain.clone(), h).is_some()
                };
                if taken {
                    return Err(format!("virtual_hosts[{h}].domains[{d}]: {domain:?} is already a domain of another virtual host"));
                }
            }
            table.hosts.push(CompiledVirtualHost { name: host.name.clone(), routes, host: Arc::new(host.clone()) });
        }
        table.suffixes.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table.prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(table)
    }

    /// Every virtual host, in configuration order.
    pub fn virtual_hosts(&self) -> &[CompiledVirtualHost] {
        &self.hosts
    }

    /// The virtual host for an authority (`host` or `host:port`).
    pub fn virtual_host(&self, authority: &str) -> Option<&CompiledVirtualHost> {
        let authority = authority.to_ascii_lowercase();
        // `host:port`, `[v6]:port`; a bare IPv6 address has colons but no port.
        let without_port = authority
            .rsplit_once(':')
            .filter(|(host, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!host.contains(':') || host.ends_with(']')))
            .map(|(host, _)| host.to_owned());
        std::iter::once(authority.as_str())
            .chain(without_port.as_deref())
            .find_map(|candidate| self.lookup(candidate))
            .or(self.any)
            .map(|i| &self.hosts[i])
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let by_suffix = self.suffixes.iter().find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()));
        let by_prefix = self.prefixes.iter().find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()));
        by_suffix.or(by_prefix).map(|(_, i)| *i)
    }

    /// The first route of the request's virtual host that matches it; `None` is Envoy's NR (404).
    pub fn route(&self, request: &RequestView<'_>) -> Option<(&CompiledVirtualHost, &CompiledRoute)> {
        let host = self.virtual_host(request.authority)?;
        host.routes.iter().find(|r| r.matcher.matches(request)).map(|r| (host, r))
    }
}
