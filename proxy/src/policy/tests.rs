//! The decision end to end, against a snapshot built per test: candidate selection, precedence, every match
//! field and its `not_` form, plaintext peers, dry-run and re-evaluation.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use keel_proto::{
    security::{string_match::MatchType, Action, Address, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch},
    workload::Workload,
};

use super::*;
use crate::{identity::Identity, xds::state::Snapshot};

const DB_UID: &str = "Kubernetes//Pod/shop/db-0";

/// `<ns>/<name>` as the snapshot keys it.
fn policy(key: &str, scope: Scope, action: Action, rules: Vec<Rule>) -> Authorization {
    let (namespace, name) = key.split_once('/').unwrap();
    Authorization { name: name.into(), namespace: namespace.into(), scope: scope as i32, action: action as i32, rules, dry_run: false }
}

/// One rule of one clause of one match: the shape most policies have.
fn only(m: Match) -> Vec<Rule> {
    vec![Rule { clauses: vec![Clause { matches: vec![m] }] }]
}

/// A rule without clauses: matches every connection.
fn everything() -> Vec<Rule> {
    vec![Rule { clauses: vec![] }]
}

fn snapshot(policies: Vec<Authorization>) -> Snapshot {
    let policies: HashMap<_, _> = policies.into_iter().map(|p| (format!("{}/{}", p.namespace, p.name), Arc::new(p))).collect();
    let db = db(&[]);
    Snapshot { policies, workloads: HashMap::from([(DB_UID.to_owned(), Arc::new(db))]), ..Default::default() }
}

/// The destination: shop/db-0, listing `listed` as its selector policies.
fn db(listed: &[&str]) -> Workload {
    Workload {
        uid: DB_UID.into(),
        namespace: "shop".into(),
        service_account: "db".into(),
        addresses: vec![vec![10, 0, 2, 7]],
        authorization_policies: listed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// front/web (mTLS) at 10.0.1.5 → 10.0.2.7:5432.
fn web() -> OpenConnection {
    OpenConnection {
        source_ip: ip("10.0.1.5"),
        source_identity: Some(Identity { trust_domain: "cluster.local".into(), namespace: "front".into(), service_account: "web".into() }),
        destination_ip: ip("10.0.2.7"),
        destination_port: 5432,
        destination_uid: DB_UID.into(),
    }
}

fn plaintext() -> OpenConnection {
    OpenConnection { source_identity: None, ..web() }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Address {
    let net: ipnet::IpNet = s.parse().unwrap();
    let address = match net.network() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    Address { address, length: u32::from(net.prefix_len()) }
}

fn exact(s: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Exact(s.into())) }
}
fn prefix(s: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Prefix(s.into())) }
}
fn suffix(s: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Suffix(s.into())) }
}
fn presence() -> StringMatch {
    StringMatch { match_type: Some(MatchType::Presence(())) }
}
fn sa(namespace: &str, service_account: &str) -> ServiceAccountMatch {
    ServiceAccountMatch { namespace: namespace.into(), service_account: service_account.into() }
}

fn decide<'s>(snapshot: &'s Snapshot, destination: &Workload, connection: &OpenConnection) -> Decision<'s> {
    authorize(snapshot, &connection.attributes(destination))
}

/// Whether `connection` is admitted by a lone ALLOW policy made of `rules`: i.e. whether the rules match.
fn rules_match(rules: Vec<Rule>, connection: &OpenConnection) -> bool {
    let snapshot = snapshot(vec![policy("shop/allow", Scope::Namespace, Action::Allow, rules)]);
    let decision = decide(&snapshot, &db(&[]), connection);
    assert!(matches!(decision.reason, Reason::AllowedBy(_) | Reason::NoAllowMatched { .. }), "{decision}");
    decision.allowed()
}

fn matches(m: Match, connection: &OpenConnection) -> bool {
    rules_match(only(m), connection)
}

// ---- candidates ---------------------------------------------------------------------------------------------

#[test]
fn namespace_global_and_listed_policies_apply_and_nothing_else() {
    let deny_all = |key, scope| policy(key, scope, Action::Deny, everything());
    let cases = [
        (deny_all("shop/deny", Scope::Namespace), &[][..], false),
        (deny_all("other/deny", Scope::Namespace), &[], true),
        (deny_all("istio-system/deny", Scope::Global), &[], false),
        // GLOBAL means every namespace whatever the policy's own namespace.
        (deny_all("other/deny", Scope::Global), &[], false),
        (deny_all("shop/selected", Scope::WorkloadSelector), &[], true),
        (deny_all("shop/selected", Scope::WorkloadSelector), &["shop/selected"], false),
        (deny_all("shop/selected", Scope::WorkloadSelector), &["shop/other-one"], true),
        // Unknown scopes apply nowhere.
        (Authorization { scope: 7, ..deny_all("shop/odd", Scope::Namespace) }, &[], true),
    ];
    for (policy, listed, admitted) in cases {
        let described = format!("{}/{} scope {} listed {listed:?}", policy.namespace, policy.name, policy.scope);
        let snapshot = snapshot(vec![policy]);
        assert_eq!(decide(&snapshot, &db(listed), &web()).allowed(), admitted, "{described}");
    }
}

#[test]
fn a_listed_policy_missing_from_the_snapshot_is_skipped() {
    let snapshot = snapshot(vec![]);
    assert_eq!(decide(&snapshot, &db(&["shop/not-yet"]), &web()).reason, Reason::NoAllowPolicy);
}

#[test]
fn a_policy_is_a_candidate_once_however_it_is_reached() {
    let never = || only(Match { destination_ports: vec![1], ..Default::default() });
    let snapshot = snapshot(vec![
        policy("shop/ns-wide", Scope::Namespace, Action::Allow, never()),
        policy("shop/selected", Scope::WorkloadSelector, Action::Allow, never()),
    ]);
    let listed = db(&["shop/selected", "shop/ns-wide", "shop/selected"]);
    assert_eq!(decide(&snapshot, &listed, &web()).reason, Reason::NoAllowMatched { allow_policies: 2 });
}

// ---- precedence ---------------------------------------------------------------------------------------------

#[test]
fn a_matching_deny_wins_over_a_matching_allow() {
    let snapshot = snapshot(vec![
        policy("shop/allow-all", Scope::Namespace, Action::Allow, everything()),
        policy("shop/block-web", Scope::Namespace, Action::Deny, only(Match { principals: vec![suffix("/sa/web")], ..Default::default() })),
    ]);
    let decision = decide(&snapshot, &db(&[]), &web());
    assert!(!decision.allowed());
    assert_eq!(decision.policy(), Some("shop/block-web"));
    assert_eq!(decision.to_string(), "denied by DENY policy shop/block-web");
}

#[test]
fn without_allow_policies_what_no_deny_matches_is_admitted() {
    let snapshot =
        snapshot(vec![policy("shop/block-80", Scope::Namespace, Action::Deny, only(Match { destination_ports: vec![80], ..Default::default() }))]);
    let decision = decide(&snapshot, &db(&[]), &web());
    assert!(decision.allowed());
    assert_eq!((decision.reason, decision.policy()), (Reason::NoAllowPolicy, None));
    assert_eq!(decide(&Snapshot::default(), &db(&[]), &web()).reason, Reason::NoAllowPolicy);
}

#[test]
fn allow_policies_admit_only_what_one_of_them_matches() {
    let port = |p| only(Match { destination_ports: vec![p], ..Default::default() });
    let snapshot = snapshot(vec![
        policy("shop/http", Scope::Namespace, Action::Allow, port(80)),
        policy("shop/https", Scope::Namespace, Action::Allow, port(443)),
    ]);
    let decision = decide(&snapshot, &db(&[]), &web());
    assert!(!decision.allowed());
    assert_eq!(decision.reason, Reason::NoAllowMatched { allow_policies: 2 });
    assert_eq!(decision.to_string(), "no ALLOW policy matched (2 candidates)");
    let decision = decide(&snapshot, &db(&[]), &OpenConnection { destination_port: 443, ..web() });
    assert_eq!((decision.allowed(), decision.policy()), (true, Some("shop/https")));
}

#[test]
fn when_several_policies_match_the_first_by_name_is_named() {
    let deny = |key| policy(key, Scope::Namespace, Action::Deny, everything());
    let snapshot = snapshot(vec![deny("shop/c"), deny("shop/a"), deny("shop/b")]);
    for _ in 0..5 {
        assert_eq!(decide(&snapshot, &db(&[]), &web()).policy(), Some("shop/a"));
    }
}

#[test]
fn an_allow_policy_without_rules_allows_nothing_and_a_deny_without_rules_denies_nothing() {
    assert!(!rules_match(vec![], &web()));
    let snapshot = snapshot(vec![policy("shop/empty", Scope::Namespace, Action::Deny, vec![])]);
    assert!(decide(&snapshot, &db(&[]), &web()).allowed());
}

#[test]
fn an_unknown_action_is_taken_as_deny() {
    let odd = Authorization { action: 9, ..policy("shop/odd", Scope::Namespace, Action::Allow, everything()) };
    let snapshot = snapshot(vec![odd]);
    assert_eq!(decide(&snapshot, &db(&[]), &web()).reason, Reason::DeniedBy("shop/odd"));
}

// ---- match fields -------------------------------------------------------------------------------------------

#[test]
fn namespaces_match_the_source_namespace() {
    let ns = |values: Vec<StringMatch>, not: Vec<StringMatch>| Match { namespaces: values, not_namespaces: not, ..Default::default() };
    assert!(matches(ns(vec![exact("front")], vec![]), &web()));
    assert!(!matches(ns(vec![exact("back")], vec![]), &web()));
    assert!(matches(ns(vec![prefix("fr"), exact("x")], vec![]), &web()));
    assert!(matches(ns(vec![suffix("ont")], vec![]), &web()));
    assert!(!matches(ns(vec![], vec![exact("front")]), &web()));
    assert!(matches(ns(vec![], vec![exact("back")]), &web()));
    assert!(!matches(ns(vec![exact("front")], vec![prefix("f")]), &web()));
}

#[test]
fn principals_match_the_spiffe_id_without_its_scheme() {
    let p = |values: Vec<StringMatch>| Match { principals: values, ..Default::default() };
    let not = |values: Vec<StringMatch>| Match { not_principals: values, ..Default::default() };
    assert!(matches(p(vec![exact("cluster.local/ns/front/sa/web")]), &web()));
    assert!(!matches(p(vec![exact("spiffe://cluster.local/ns/front/sa/web")]), &web()));
    assert!(!matches(p(vec![exact("cluster.local/ns/front/sa/we")]), &web()));
    assert!(!matches(p(vec![exact("cluster.local/ns/front/sa/web2")]), &web()));
    assert!(matches(p(vec![prefix("cluster.local/ns/front/")]), &web()));
    assert!(matches(p(vec![prefix("cluster.local/ns/fr")]), &web()));
    assert!(!matches(p(vec![prefix("cluster.local/ns/back/")]), &web()));
    assert!(matches(p(vec![suffix("/sa/web")]), &web()));
    assert!(matches(p(vec![suffix("nt/sa/web")]), &web()));
    assert!(!matches(p(vec![suffix("/sa/db")]), &web()));
    assert!(matches(p(vec![presence()]), &web()));
    assert!(matches(p(vec![exact("cluster.local/ns/x/sa/y"), suffix("/sa/web")]), &web()));
    assert!(!matches(not(vec![suffix("/sa/web")]), &web()));
    assert!(matches(not(vec![suffix("/sa/db")]), &web()));
}

#[test]
fn service_accounts_match_namespace_and_name() {
    let sas = |values, not| Match { service_accounts: values, not_service_accounts: not, ..Default::default() };
    assert!(matches(sas(vec![sa("front", "web")], vec![]), &web()));
    assert!(!matches(sas(vec![sa("front", "api")], vec![]), &web()));
    assert!(!matches(sas(vec![sa("back", "web")], vec![]), &web()));
    assert!(matches(sas(vec![sa("back", "web"), sa("front", "web")], vec![]), &web()));
    assert!(!matches(sas(vec![], vec![sa("front", "web")]), &web()));
    assert!(matches(sas(vec![], vec![sa("front", "api")]), &web()));
    assert!(!matches(sas(vec![sa("front", "web")], vec![]), &plaintext()));
}

#[test]
fn source_ips_are_cidrs() {
    let src = |values: &[&str], not: &[&str]| Match {
        source_ips: values.iter().map(|s| cidr(s)).collect(),
        not_source_ips: not.iter().map(|s| cidr(s)).collect(),
        ..Default::default()
    };
    assert!(matches(src(&["10.0.1.0/24"], &[]), &web()));
    assert!(!matches(src(&["10.0.2.0/24"], &[]), &web()));
    assert!(matches(src(&["0.0.0.0/0"], &[]), &web()));
    assert!(matches(src(&["10.0.1.5/32"], &[]), &web()));
    assert!(!matches(src(&["10.0.1.6/32"], &[]), &web()));
    assert!(matches(src(&["10.0.2.0/24", "10.0.0.0/16"], &[]), &web()));
    assert!(!matches(src(&[], &["10.0.0.0/8"]), &web()));
    assert!(matches(src(&[], &["192.168.0.0/16"]), &web()));
    assert!(!matches(src(&["10.0.0.0/8"], &["10.0.1.5/32"]), &web()));

    let v6 = OpenConnection { source_ip: ip("fd00:1::5"), ..web() };
    assert!(matches(src(&["fd00:1::/64"], &[]), &v6));
    assert!(!matches(src(&["fd00:2::/64"], &[]), &v6));
    assert!(!matches(src(&["0.0.0.0/0"], &[]), &v6), "families never mix");
    assert!(!matches(src(&["::/0"], &[]), &web()), "families never mix");
}

#[test]
fn destination_ips_are_cidrs() {
    let dst = |values: &[&str], not: &[&str]| Match {
        destination_ips: values.iter().map(|s| cidr(s)).collect(),
        not_destination_ips: not.iter().map(|s| cidr(s)).collect(),
        ..Default::default()
    };
    assert!(matches(dst(&["10.0.2.7/32"], &[]), &web()));
    assert!(!matches(dst(&["10.0.1.0/24"], &[]), &web()));
    assert!(!matches(dst(&[], &["10.0.2.0/24"]), &web()));
    assert!(matches(dst(&[], &["10.0.1.0/24"]), &web()));
}

#[test]
fn destination_ports_are_exact() {
    let ports = |values: Vec<u32>, not: Vec<u32>| Match { destination_ports: values, not_destination_ports: not, ..Default::default() };
    assert!(matches(ports(vec![80, 5432], vec![]), &web()));
    assert!(!matches(ports(vec![80, 5433], vec![]), &web()));
    assert!(!matches(ports(vec![], vec![5432]), &web()));
    assert!(matches(ports(vec![], vec![80]), &web()));
    // A value past u16 can never be a port.
    assert!(!matches(ports(vec![5432 + 65536], vec![]), &web()));
}

#[test]
fn fields_are_anded_and_values_ored() {
    let m = |namespaces: Vec<StringMatch>, ports: Vec<u32>| Match { namespaces, destination_ports: ports, ..Default::default() };
    assert!(matches(m(vec![exact("front")], vec![5432]), &web()));
    assert!(!matches(m(vec![exact("front")], vec![80]), &web()));
    assert!(!matches(m(vec![exact("back")], vec![5432]), &web()));
    assert!(matches(m(vec![exact("back"), exact("front")], vec![80, 5432]), &web()));
    assert!(matches(Match::default(), &web()), "a match with no field set matches everything");
}

#[test]
fn clauses_are_anded_matches_ored_rules_ored() {
    let ns = |v| Match { namespaces: vec![exact(v)], ..Default::default() };
    let port = |p| Match { destination_ports: vec![p], ..Default::default() };
    let rule = |clauses: Vec<Vec<Match>>| Rule { clauses: clauses.into_iter().map(|matches| Clause { matches }).collect() };
    assert!(rules_match(vec![rule(vec![vec![ns("front")], vec![port(5432)]])], &web()));
    assert!(!rules_match(vec![rule(vec![vec![ns("front")], vec![port(80)]])], &web()));
    assert!(rules_match(vec![rule(vec![vec![port(80), ns("front")]])], &web()));
    assert!(!rules_match(vec![rule(vec![vec![port(80), ns("back")]])], &web()));
    assert!(rules_match(vec![rule(vec![vec![port(80)]]), rule(vec![vec![ns("front")]])], &web()));
    assert!(!rules_match(vec![rule(vec![vec![ns("front")], vec![]])], &web()), "a clause without matches matches nothing");
}

// ---- plaintext peers ----------------------------------------------------------------------------------------

#[test]
fn strict_peer_authentication_refuses_plaintext_only() {
    let strict = policy("shop/strict", Scope::Namespace, Action::Deny, only(Match { not_principals: vec![presence()], ..Default::default() }));
    let snapshot = snapshot(vec![strict]);
    assert_eq!(decide(&snapshot, &db(&[]), &plaintext()).reason, Reason::DeniedBy("shop/strict"));
    assert!(decide(&snapshot, &db(&[]), &web()).allowed());
}

#[test]
fn a_plaintext_peer_matches_no_identity_matcher() {
    assert!(!matches(Match { principals: vec![presence()], ..Default::default() }, &plaintext()));
    assert!(matches(Match { principals: vec![presence()], ..Default::default() }, &web()));
    assert!(!matches(Match { principals: vec![prefix("")], ..Default::default() }, &plaintext()));
    assert!(!matches(Match { namespaces: vec![presence()], ..Default::default() }, &plaintext()));
    assert!(matches(Match { not_namespaces: vec![exact("front")], ..Default::default() }, &plaintext()));
    assert!(matches(Match { not_service_accounts: vec![sa("front", "web")], ..Default::default() }, &plaintext()));
    assert!(matches(Match { source_ips: vec![cidr("10.0.1.0/24")], ..Default::default() }, &plaintext()));
}

// ---- dry-run ------------------------------------------------------------------------------------------------

#[test]
fn a_dry_run_deny_is_reported_not_enforced() {
    let trial = Authorization { dry_run: true, ..policy("shop/block-web", Scope::Namespace, Action::Deny, everything()) };
    let snapshot = snapshot(vec![trial]);
    let decision = decide(&snapshot, &db(&[]), &web());
    assert!(decision.allowed());
    assert_eq!(decision.reason, Reason::NoAllowPolicy);
    assert_eq!(decision.dry_run, [DryRun { policy: "shop/block-web", action: Action::Deny, matched: true }]);
    assert!(!decision.allowed_with_dry_run_enforced());
    assert_eq!(decision.to_string(), "allowed: no ALLOW policy applies; dry-run DENY policy shop/block-web would deny");
}

#[test]
fn a_dry_run_allow_is_not_counted_among_the_enforced_ones() {
    let trial = Authorization {
        dry_run: true,
        ..policy("shop/only-80", Scope::Namespace, Action::Allow, only(Match { destination_ports: vec![80], ..Default::default() }))
    };
    let enforced =
        policy("shop/only-web", Scope::Namespace, Action::Allow, only(Match { principals: vec![suffix("/sa/web")], ..Default::default() }));
    let alone = snapshot(vec![trial.clone()]);
    let decision = decide(&alone, &db(&[]), &web());
    assert_eq!(decision.reason, Reason::NoAllowPolicy);
    assert!(!decision.allowed_with_dry_run_enforced());
    assert_eq!(decision.dry_run[0].to_string(), "dry-run ALLOW policy shop/only-80 would not match");

    let both = snapshot(vec![trial, enforced]);
    let decision = decide(&both, &db(&[]), &web());
    assert_eq!(decision.reason, Reason::AllowedBy("shop/only-web"));
    assert!(decision.allowed_with_dry_run_enforced());
    let decision = decide(&both, &db(&[]), &OpenConnection { destination_port: 80, ..plaintext() });
    assert_eq!(decision.reason, Reason::NoAllowMatched { allow_policies: 1 });
    assert!(decision.allowed_with_dry_run_enforced());
}

#[test]
fn without_dry_run_policies_nothing_is_reported() {
    let snapshot = snapshot(vec![policy("shop/allow-all", Scope::Namespace, Action::Allow, everything())]);
    let decision = decide(&snapshot, &db(&[]), &web());
    assert!(decision.dry_run.is_empty() && decision.dry_run.capacity() == 0);
    assert_eq!(decision.allowed_with_dry_run_enforced(), decision.allowed());
}

// ---- re-evaluation ------------------------------------------------------------------------------------------

#[test]
fn open_connections_are_decided_again_under_a_new_snapshot() {
    let before = snapshot(vec![]);
    let destination = before.workloads[DB_UID].clone();
    let admitted = authorize(&before, &web().attributes(&destination));
    assert!(admitted.allowed());
    let open = OpenConnection::new(&web().attributes(&destination));
    assert_eq!(open, web());
    assert_eq!(open.reauthorize(&before), admitted, "same inputs, same decision");

    let after = snapshot(vec![policy(
        "shop/block-web",
        Scope::Namespace,
        Action::Deny,
        only(Match { principals: vec![suffix("/sa/web")], ..Default::default() }),
    )]);
    assert_eq!(open.reauthorize(&after).reason, Reason::DeniedBy("shop/block-web"));
    assert!(OpenConnection { source_identity: Some(Identity { service_account: "api".into(), ..web().source_identity.unwrap() }), ..web() }
        .reauthorize(&after)
        .allowed());

    let gone = Snapshot { workloads: HashMap::new(), ..after.clone() };
    let decision = open.reauthorize(&gone);
    assert_eq!((decision.allowed(), decision.reason), (false, Reason::DestinationGone));
}

// ---- HTTP requests -------------------------------------------------------------------------------------------

mod requests {
    use http::HeaderMap;
    use keel_proto::http_security::{
        path_match, request_condition, ClaimPath, HttpAuthorization, HttpClause, HttpMatch, HttpRule, PathMatch, RequestCondition,
    };

    use super::*;

    /// A snapshot whose `shop/...` policies are given in both halves: the L4 one (as istiod would send it)
    /// and, for those that have one, the HTTP rules.
    fn with_http(policies: Vec<(Authorization, Option<Vec<HttpMatch>>)>) -> Snapshot {
        let mut http_policies = HashMap::new();
        let mut l4 = Vec::new();
        for (policy, http) in policies {
            if let Some(matches) = http {
                let key = format!("{}/{}", policy.namespace, policy.name);
                let rules = vec![HttpRule { clauses: vec![HttpClause { matches }] }];
                http_policies.insert(key, Arc::new(HttpAuthorization { name: policy.name.clone(), namespace: policy.namespace.clone(), rules }));
            }
            l4.push(policy);
        }
        Snapshot { http_policies, ..snapshot(l4) }
    }

    struct Request {
        method: &'static str,
        path: &'static str,
        host: &'static str,
        headers: HeaderMap,
        principal: Option<&'static str>,
        claims: Option<serde_json::Value>,
    }

    fn get(path: &'static str) -> Request {
        Request { method: "GET", path, host: "db.shop", headers: HeaderMap::new(), principal: None, claims: None }
    }

    fn decide_request<'s>(snapshot: &'s Snapshot, connection: &OpenConnection, r: &Request) -> Decision<'s> {
        let destination = db(&[]);
        let attributes = RequestAttributes {
            method: r.method,
            host: r.host,
            path: r.path,
            headers: &r.headers,
            principal: r.principal,
            claims: r.claims.as_ref(),
            server_name: None,
        };
        authorize_request(snapshot, &connection.attributes(&destination), &attributes)
    }

    fn string_path(m: StringMatch) -> PathMatch {
        PathMatch { kind: Some(path_match::Kind::String(m)) }
    }

    /// ALLOW `GET /items*` for front/web: the example.
    fn reads_for_web() -> (Authorization, Option<Vec<HttpMatch>>) {
        let connection = Match { principals: vec![exact("cluster.local/ns/front/sa/web")], ..Default::default() };
        let m =
            HttpMatch { connection: Some(connection), methods: vec![exact("GET")], paths: vec![string_path(prefix("/items"))], ..Default::default() };
        // The L4 half drops the rule: an ALLOW without rules.
        (policy("shop/reads", Scope::Namespace, Action::Allow, vec![]), Some(vec![m]))
    }

    #[test]
    fn an_allow_with_http_rules_admits_the_requests_it_names_and_only_those() {
        let snapshot = with_http(vec![reads_for_web()]);
        // The connection-level decision fails closed (the rule needs HTTP) ...
        assert!(!decide(&snapshot, &db(&[]), &web()).allowed());
        assert!(needs_requests(&snapshot, &web().attributes(&db(&[]))));
        // ... each request is decided by the rule as written.
        assert_eq!(decide_request(&snapshot, &web(), &get("/items/1")).reason, Reason::AllowedBy("shop/reads"));
        assert_eq!(
            decide_request(&snapshot, &web(), &Request { method: "POST", ..get("/items") }).reason,
            Reason::NoAllowMatched { allow_policies: 1 }
        );
        assert!(!decide_request(&snapshot, &web(), &get("/admin")).allowed());
        // Another caller matches no principal.
        assert!(!decide_request(&snapshot, &plaintext(), &get("/items")).allowed());
    }

    #[test]
    fn a_deny_with_http_rules_denies_its_requests_and_policies_without_them_keep_their_l4_rules() {
        let deny_post = HttpMatch { methods: vec![exact("POST")], ..Default::default() };
        let allow_web = Match { principals: vec![exact("cluster.local/ns/front/sa/web")], ..Default::default() };
        let snapshot = with_http(vec![
            // The L4 half of a DENY on methods keeps its (empty) L4 part: it would deny every connection.
            (policy("shop/no-writes", Scope::Namespace, Action::Deny, everything()), Some(vec![deny_post])),
            (policy("shop/web-only", Scope::Namespace, Action::Allow, only(allow_web)), None),
        ]);
        let decision = decide(&snapshot, &db(&[]), &web());
        assert_eq!(decision.reason, Reason::DeniedBy("shop/no-writes"));
        assert!(!denies_every_request(&snapshot, &decision), "that DENY has HTTP rules: requests decide");
        assert_eq!(decide_request(&snapshot, &web(), &get("/x")).reason, Reason::AllowedBy("shop/web-only"));
        assert_eq!(decide_request(&snapshot, &web(), &Request { method: "POST", ..get("/x") }).reason, Reason::DeniedBy("shop/no-writes"));
        // The L4-only ALLOW still refuses a plaintext caller, request by request.
        assert!(!decide_request(&snapshot, &plaintext(), &get("/x")).allowed());
        // A DENY without HTTP rules that matched settles every request at the connection.
        let snapshot = with_http(vec![(policy("shop/deny-all", Scope::Namespace, Action::Deny, everything()), None), reads_for_web()]);
        assert!(denies_every_request(&snapshot, &decide(&snapshot, &db(&[]), &web())));
    }

    #[test]
    fn hosts_headers_claims_principals_and_remote_ips_match_as_istio_reads_them() {
        let allow = |m: HttpMatch| with_http(vec![(policy("shop/p", Scope::Namespace, Action::Allow, vec![]), Some(vec![m]))]);
        let admitted = |m: HttpMatch, r: &Request| decide_request(&allow(m), &web(), r).allowed();
        // Hosts: lowercased patterns, the authority with or without its port.
        let hosts = || HttpMatch { hosts: vec![exact("db.shop")], ..Default::default() };
        assert!(admitted(hosts(), &Request { host: "db.shop:8080", ..get("/") }));
        assert!(!admitted(hosts(), &Request { host: "other.shop", ..get("/") }));
        // Headers: any value, or any element of a comma-separated one; notValues hold for an absent header.
        let header = |values: Vec<StringMatch>, not_values: Vec<StringMatch>| HttpMatch {
            conditions: vec![RequestCondition { attribute: Some(request_condition::Attribute::Header("x-tenant".into())), values, not_values }],
            ..Default::default()
        };
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", "red, blue".parse().unwrap());
        let tenant = Request { headers, ..get("/") };
        assert!(admitted(header(vec![exact("blue")], vec![]), &tenant));
        assert!(!admitted(header(vec![exact("green")], vec![]), &tenant));
        assert!(!admitted(header(vec![], vec![exact("red")]), &tenant));
        assert!(admitted(header(vec![], vec![exact("red")]), &get("/")));
        assert!(!admitted(header(vec![presence()], vec![]), &get("/")));
        // Claims: nested paths, list claims by any element; no JWT, no claim.
        let claim = |path: &[&str], value| HttpMatch {
            conditions: vec![RequestCondition {
                attribute: Some(request_condition::Attribute::Claim(ClaimPath { segments: path.iter().map(|s| s.to_string()).collect() })),
                values: vec![exact(value)],
                not_values: vec![],
            }],
            ..Default::default()
        };
        let with_jwt = Request {
            claims: Some(serde_json::json!({"groups": ["dev", "ops"], "org": {"team": "db"}})),
            principal: Some("https://issuer/alice"),
            ..get("/")
        };
        assert!(admitted(claim(&["groups"], "ops"), &with_jwt));
        assert!(admitted(claim(&["org", "team"], "db"), &with_jwt));
        assert!(!admitted(claim(&["org", "team"], "web"), &with_jwt));
        assert!(!admitted(claim(&["groups"], "ops"), &get("/")));
        // Request principals: `*` needs a verified token.
        let principals = || HttpMatch { request_principals: vec![presence()], ..Default::default() };
        assert!(admitted(principals(), &with_jwt));
        assert!(!admitted(principals(), &get("/")));
        // Remote IPs: the client's address (the peer: X-Forwarded-For is trusted from no hop).
        let remote = |c: &str| HttpMatch { remote_ips: vec![cidr(c)], ..Default::default() };
        let mut forged = HeaderMap::new();
        forged.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
        assert!(admitted(remote("10.0.1.0/24"), &get("/")));
        assert!(!admitted(remote("192.0.2.0/24"), &Request { headers: forged, ..get("/") }));
    }
}
