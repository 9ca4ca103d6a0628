//! Routing as Envoy does it, for the VirtualService shapes Istio produces: dark launch by header, path forms,
//! query parameters, method/authority pseudo-headers, domain lookup order, and config errors naming the field.
use http::{HeaderMap, HeaderValue};
use keel_proto::{
    matcher::{string_matcher::MatchPattern, RegexMatcher, StringMatcher},
    route::{
        header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier, route, route_action::ClusterSpecifier,
        route_match::PathSpecifier, HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    },
};

use super::{matching::RequestView, route_table::RouteTable};

fn to_cluster(name: &str, m: RouteMatch) -> Route {
    Route {
        name: name.into(),
        r#match: Some(m),
        action: Some(route::Action::Route(RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster(name.into())), ..Default::default() })),
        ..Default::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(PathSpecifier::Prefix(p.into())), ..Default::default() }
}

fn header(name: &str, spec: Option<HeaderMatchSpecifier>, invert: bool) -> HeaderMatcher {
    HeaderMatcher { name: name.into(), header_match_specifier: spec, invert_match: invert, ..Default::default() }
}

fn string(pattern: MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(pattern), ignore_case: false }
}

fn table(hosts: Vec<(&[&str], Vec<Route>)>) -> RouteTable {
    let config = RouteConfiguration {
        name: "8080".into(),
        virtual_hosts: hosts
            .into_iter()
            .map(|(domains, routes)| VirtualHost {
                name: domains[0].into(),
                domains: domains.iter().map(|d| d.to_string()).collect(),
                routes,
                ..Default::default()
            })
            .collect(),
    };
    RouteTable::compile(&config).unwrap()
}

fn routed<'t>(t: &'t RouteTable, authority: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<&'t str> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let request = RequestView { method, authority, path_and_query: path, headers: &map };
    t.route(&request).map(|(_, r)| r.route.name.as_str())
}

#[test]
fn dark_launch_by_header_then_default() {
    let mut to_v2 = prefix("/");
    to_v2.headers.push(header("x-dark-launch", Some(HeaderMatchSpecifier::StringMatch(string(MatchPattern::Exact("v2".into())))), false));
    let t = table(vec![(&["catalog", "catalog:80", "catalog.shop.svc.cluster.local"], vec![to_cluster("v2", to_v2), to_cluster("v1", prefix("/"))])]);
    assert_eq!(routed(&t, "catalog", "GET", "/items", &[("x-dark-launch", "v2")]), Some("v2"));
    assert_eq!(routed(&t, "catalog:80", "GET", "/items", &[("x-dark-launch", "v3")]), Some("v1"));
    assert_eq!(routed(&t, "catalog.shop.svc.cluster.local", "GET", "/", &[]), Some("v1"));
    assert_eq!(routed(&t, "other", "GET", "/", &[]), None, "no virtual host: NR");
}

#[test]
fn path_forms_and_case() {
    let exact = RouteMatch { path_specifier: Some(PathSpecifier::Path("/health".into())), ..Default::default() };
    let separated = RouteMatch { path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/api".into())), ..Default::default() };
    let regex = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher { regex: "/items/[0-9]+".into(), engine_type: None })),
        ..Default::default()
    };
    let insensitive = RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/CaSe".into())), case_sensitive: Some(false), ..Default::default() };
    let t = table(vec![(
        &["*"],
        vec![to_cluster("exact", exact), to_cluster("api", separated), to_cluster("regex", regex), to_cluster("case", insensitive)],
    )]);
    assert_eq!(routed(&t, "x", "GET", "/health?probe=1", &[]), Some("exact"), "the query is not part of the path");
    assert_eq!(routed(&t, "x", "GET", "/health/deep", &[]), None);
    assert_eq!(routed(&t, "x", "GET", "/api", &[]), Some("api"));
    assert_eq!(routed(&t, "x", "GET", "/api/v1", &[]), Some("api"));
    assert_eq!(routed(&t, "x", "GET", "/apix", &[]), None, "a separated prefix stops at a segment boundary");
    assert_eq!(routed(&t, "x", "GET", "/items/42", &[]), Some("regex"));
    assert_eq!(routed(&t, "x", "GET", "/items/42/x", &[]), None, "regexes match the whole path");
    assert_eq!(routed(&t, "x", "GET", "/case/lower", &[]), Some("case"));
}

#[test]
fn headers_pseudo_headers_inversion_and_query() {
    let mut post_only = prefix("/");
    post_only.headers.push(header(":method", Some(HeaderMatchSpecifier::ExactMatch("POST".into())), false));
    let mut not_internal = prefix("/");
    not_internal.headers.push(header("x-internal", None, true));
    let mut query = prefix("/");
    query.query_parameters.push(QueryParameterMatcher {
        name: "version".into(),
        query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(string(MatchPattern::Prefix("2".into())))),
    });
    let mut authority = prefix("/");
    authority.headers.push(header(":authority", Some(HeaderMatchSpecifier::SuffixMatch(".internal".into())), false));
    let t = table(vec![(
        &["*"],
        vec![to_cluster("post", post_only), to_cluster("query", query), to_cluster("authority", authority), to_cluster("external", not_internal)],
    )]);
    assert_eq!(routed(&t, "a", "POST", "/", &[]), Some("post"));
    assert_eq!(routed(&t, "a", "GET", "/?a=1&version=2.1", &[]), Some("query"));
    assert_eq!(routed(&t, "a", "GET", "/?version=1", &[]), Some("external"));
    assert_eq!(routed(&t, "svc.internal", "GET", "/", &[]), Some("authority"));
    assert_eq!(routed(&t, "a", "GET", "/", &[("x-internal", "1")]), None, "inverted presence: the header must be absent");
}

#[test]
fn domains_are_found_in_envoys_order() {
    let t = table(vec![
        (&["*"], vec![to_cluster("any", prefix("/"))]),
        (&["*.example.com"], vec![to_cluster("suffix", prefix("/"))]),
        (&["*.api.example.com"], vec![to_cluster("longer-suffix", prefix("/"))]),
        (&["www.example.com"], vec![to_cluster("exact", prefix("/"))]),
        (&["10.96.0.10:80"], vec![to_cluster("vip-port", prefix("/"))]),
    ]);
    assert_eq!(routed(&t, "www.example.com", "GET", "/", &[]), Some("exact"));
    assert_eq!(routed(&t, "WWW.Example.com:8080", "GET", "/", &[]), Some("exact"), "case-insensitive, port stripped");
    assert_eq!(routed(&t, "v1.api.example.com", "GET", "/", &[]), Some("longer-suffix"));
    assert_eq!(routed(&t, "shop.example.com", "GET", "/", &[]), Some("suffix"));
    assert_eq!(routed(&t, "10.96.0.10:80", "GET", "/", &[]), Some("vip-port"));
    assert_eq!(routed(&t, "elsewhere", "GET", "/", &[]), Some("any"));
}

#[test]
fn config_errors_name_the_field() {
    let bad_regex =
        RouteMatch { path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher { regex: "(".into(), engine_type: None })), ..Default::default() };
    let config = |routes: Vec<Route>, domains: Vec<&str>| RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![VirtualHost { name: "h".into(), domains: domains.into_iter().map(Into::into).collect(), routes, ..Default::default() }],
    };
    let err = RouteTable::compile(&config(vec![to_cluster("a", bad_regex)], vec!["a"])).unwrap_err();
    assert!(err.starts_with("virtual_hosts[0].routes[0].match.safe_regex: invalid regex"), "{err}");
    let err = RouteTable::compile(&config(vec![to_cluster("a", RouteMatch::default())], vec!["a"])).unwrap_err();
    assert!(err.contains("routes[0].match: no path specifier"), "{err}");
    let no_action = Route { r#match: Some(prefix("/")), ..Default::default() };
    let err = RouteTable::compile(&config(vec![no_action], vec!["a"])).unwrap_err();
    assert!(err.contains("routes[0]: no action"), "{err}");
    let err = RouteTable::compile(&config(vec![], vec!["a", "a"])).unwrap_err();
    assert!(err.contains("domains[1]"), "{err}");
}

/// The two halves agree: what keel-control makes of the Istio-in-Action scenarios compiles in keel's engine core
/// (every route table and cluster), and the dark launch routes as the VirtualService says.
mod from_the_control_plane {
    use std::path::Path;

    use http::HeaderMap;
    use keel_mesh::{
        objects::Object,
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };

    use crate::l7_config::{cluster_config::ClusterConfig, matching::RequestView, route_table::RouteTable};

    fn translated(scenario: &str) -> keel_mesh::translate::Resources {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/tests/fixtures/traffic");
        let mut loaded = Loaded::default();
        for file in [fixtures.join("topology.yaml"), fixtures.join("scenarios").join(scenario)] {
            load_text(&file, &std::fs::read_to_string(&file).unwrap(), &mut loaded);
        }
        assert!(loaded.errors.is_empty(), "{scenario}: {:?}", loaded.errors.iter().map(ToString::to_string).collect::<Vec<_>>());
        let objects: Vec<Object> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        translate(&Mesh::default(), &objects).unwrap()
    }

    #[test]
    fn every_scenario_compiles_in_keels_core() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/tests/fixtures/traffic/scenarios");
        let mut scenarios = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let resources = translated(&name);
            assert!(!resources.route_configurations.is_empty(), "{name}: no route configuration");
            for (route_name, config) in &resources.route_configurations {
                RouteTable::compile(config).unwrap_or_else(|e| panic!("{name}: route configuration {route_name}: {e}"));
            }
            for (cluster_name, cluster) in &resources.clusters {
                ClusterConfig::from_cluster(cluster).unwrap_or_else(|e| panic!("{name}: cluster {cluster_name}: {e}"));
            }
            scenarios += 1;
        }
        assert_eq!(scenarios, 9);
    }

    #[test]
    fn the_dark_launch_routes_by_its_header() {
        let resources = translated("dark-launch.yaml");
        let table = RouteTable::compile(&resources.route_configurations["80"]).unwrap();
        let cluster_of = |cohort: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(c) = cohort {
                headers.insert("x-istio-cohort", c.parse().unwrap());
            }
            let request = RequestView { method: "GET", authority: "catalog:80", path_and_query: "/items", headers: &headers };
            let (_, route) = table.route(&request).expect("a route");
            match &route.route.action {
                Some(keel_proto::route::route::Action::Route(action)) => match &action.cluster_specifier {
                    Some(keel_proto::route::route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(cluster_of(Some("internal")), "outbound|80|version-v2|catalog.istioinaction.svc.cluster.local");
        assert_eq!(cluster_of(Some("external")), "outbound|80|version-v1|catalog.istioinaction.svc.cluster.local");
        assert_eq!(cluster_of(None), "outbound|80|version-v1|catalog.istioinaction.svc.cluster.local");
    }
}

#[test]
fn host_header_edits_are_checked_and_host_retries_apply_to_routes_without_their_own() {
    use keel_proto::{
        core::{HeaderValue as EnvoyHeader, HeaderValueOption},
        route::RetryPolicy,
    };

    use super::route_plan::RoutePlan;
    let host = |edit: &dyn Fn(&mut VirtualHost)| {
        let mut vh = VirtualHost { name: "a".into(), domains: vec!["a".into()], routes: vec![to_cluster("c", prefix("/"))], ..Default::default() };
        edit(&mut vh);
        RouteTable::compile(&RouteConfiguration { name: "80".into(), virtual_hosts: vec![vh] })
    };
    let bad = host(&|vh| {
        let header = EnvoyHeader { key: "x-a".into(), value: "line\nbreak".into(), raw_value: vec![] };
        vh.request_headers_to_add = vec![HeaderValueOption { header: Some(header), ..Default::default() }];
    });
    assert_eq!(bad.unwrap_err(), "virtual_hosts[0].request_headers_to_add[0].header.value: \"line\\nbreak\" is not a valid HTTP header value");
    let bad = host(&|vh| vh.routes[0].response_headers_to_remove = vec!["bad name".into()]);
    assert_eq!(bad.unwrap_err(), "virtual_hosts[0].routes[0].response_headers_to_remove[0]: \"bad name\" is not a valid HTTP header name");
    let retried = host(&|vh| vh.retry_policy = Some(RetryPolicy { retry_on: "5xx".into(), num_retries: Some(4), ..Default::default() })).unwrap();
    let RoutePlan::Forward(plan) = &retried.virtual_hosts()[0].routes[0].plan else { panic!("a forwarding route") };
    assert_eq!(plan.retries.as_ref().map(|r| r.num_retries), Some(4), "the host's retry policy was ignored before");
    let refused = host(&|vh| vh.retry_policy = Some(RetryPolicy { retry_on: "5xx".into(), num_retries: Some(1000), ..Default::default() }));
    assert_eq!(refused.unwrap_err(), "virtual_hosts[0].retry_policy.num_retries: 1000 is more than 100");
}
