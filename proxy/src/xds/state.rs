//! The workload state the data path reads: workloads by uid and IP, services by name and VIP, authorization
//! policies by name. Built from xDS resources converted and validated *outside* any lock, then published as an
//! immutable snapshot (ArcSwap): a connection reads one `Arc` and never waits for a push.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;
use keel_proto::{
    http_security::HttpAuthorization,
    security::Authorization,
    workload::{address, Address, Service, Workload},
};
use prost::Message as _;

use crate::jwt;
use crate::l7_config::{
    cluster_config::ClusterConfig,
    config::{self as l7_config, L7Config, ListenerConfig, LoadAssignment},
    route_table::RouteTable,
    secret::{decode_secret, SecretConfig},
};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub workloads: HashMap<String, Arc<Workload>>,
    pub workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub services: HashMap<String, Arc<Service>>,
    pub services_by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Service name (`<ns>/<hostname>`) → the workloads that list it in their `services` map, sorted by uid so
    /// every snapshot orders them the same way.
    pub endpoints: HashMap<String, Vec<Arc<Workload>>>,
    pub policies: HashMap<String, Arc<Authorization>>,
    /// The HTTP rules of the policies that have some (keel's own type), by the policy's name: requests on ports
    /// that carry HTTP are decided with these instead of the policy's L4 rules.
    pub http_policies: HashMap<String, Arc<HttpAuthorization>>,
    /// RequestAuthentications by `<ns>/<name>`, key sets parsed.
    pub request_authentications: HashMap<String, Arc<jwt::RequestAuthentication>>,
    /// Listeners, routes, clusters and endpoints of the L7 engine.
    pub l7: L7Config,
}

/// A resource of an xDS response, decoded and checked.
#[derive(Clone, Debug)]
pub enum Resource {
    // Boxed: a Workload is several times larger than the other variants, and resources are moved around in Vecs.
    Workload(Box<Workload>),
    Service(Service),
    Policy(Authorization),
    HttpPolicy(HttpAuthorization),
    RequestAuthentication(Arc<jwt::RequestAuthentication>),
    Listener(Arc<ListenerConfig>),
    Routes(Arc<RouteTable>),
    Cluster(Arc<ClusterConfig>),
    LoadAssignment(Arc<LoadAssignment>),
    Secret(Arc<SecretConfig>),
}

/// A resource keel refuses: the NACK's `error_detail` names it and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("resource {name}: {reason}")]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// A service's name as the workload API keys its endpoints: `<namespace>/<hostname>`.
pub fn service_name(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.hostname)
}

pub fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// Why `host` is not a DNS hostname (`*.` wildcards allowed, as in ServiceEntry hosts), if it is not one.
fn not_a_hostname(host: &str) -> Option<&'static str> {
    if host.len() > 253 {
        return Some("is longer than 253 characters");
    }
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut labels = host.split('.');
    if host.starts_with("*.") {
        labels.next();
    }
    if labels.all(label_ok) {
        None
    } else {
        Some("is not a DNS hostname (labels of letters, digits, '-' and '_', 1-63 long)")
    }
}

/// Decodes and validates one `istio.workload.Address`.
pub fn decode_address(name: &str, bytes: &[u8]) -> Result<Resource, Rejected> {
    let reject = |reason: String| Rejected { name: name.to_owned(), reason };
    let address = Address::decode(bytes).map_err(|e| reject(format!("not an istio.workload.Address: {e}")))?;
    match address.r#type {
        Some(address::Type::Workload(w)) => {
            if w.uid.is_empty() {
                return Err(reject("field `workload.uid`: empty".into()));
            }
            if let Some(bad) = w.addresses.iter().find(|a| ip_of(a).is_none()) {
                return Err(reject(format!("field `workload.addresses`: {} bytes is not an IPv4 or IPv6 address", bad.len())));
            }
            Ok(Resource::Workload(Box::new(w)))
        }
        Some(address::Type::Service(s)) => {
            if s.hostname.is_empty() || s.namespace.is_empty() {
                return Err(reject("field `service.hostname`/`service.namespace`: empty".into()));
            }
            // The hostname travels in the HBONE CONNECT's `forwarded: ...;host=` header and in metric labels.
            if let Some(why) = not_a_hostname(&s.hostname) {
                return Err(reject(format!("field `service.hostname`: {:?} {why}", s.hostname)));
            }
            if let Some(bad) = s.addresses.iter().find(|a| ip_of(&a.address).is_none()) {
                return Err(reject(format!("field `service.addresses`: {} bytes is not an IP address", bad.address.len())));
            }
            Ok(Resource::Service(s))
        }
        None => Err(reject("field `type`: neither a workload nor a service".into())),
    }
}

pub fn decode_authorization(name: &str, bytes: &[u8]) -> Result<Resource, Rejected> {
    let reject = |reason: String| Rejected { name: name.to_owned(), reason };
    let policy = Authorization::decode(bytes).map_err(|e| reject(format!("not an istio.security.Authorization: {e}")))?;
    if policy.name.is_empty() || policy.namespace.is_empty() {
        return Err(reject("field `name`/`namespace`: empty".into()));
    }
    check_matches(&policy).map_err(reject)?;
    Ok(Resource::Policy(policy))
}

pub fn decode_http_authorization(name: &str, bytes: &[u8]) -> Result<Resource, Rejected> {
    let reject = |reason: String| Rejected { name: name.to_owned(), reason };
    let policy = HttpAuthorization::decode(bytes).map_err(|e| reject(format!("not a keel.security.HttpAuthorization: {e}")))?;
    if policy.name.is_empty() || policy.namespace.is_empty() {
        return Err(reject("field `name`/`namespace`: empty".into()));
    }
    check_http_matches(&policy).map_err(reject)?;
    Ok(Resource::HttpPolicy(policy))
}

/// Decodes one resource of `type_url` (what a delta response or the local config directory delivers).
pub fn decode(type_url: &str, name: &str, bytes: &[u8]) -> Result<Resource, Rejected> {
    match type_url {
        keel_proto::ADDRESS_TYPE_URL => decode_address(name, bytes),
        keel_proto::AUTHORIZATION_TYPE_URL => decode_authorization(name, bytes),
        keel_proto::HTTP_AUTHORIZATION_TYPE_URL => decode_http_authorization(name, bytes),
        keel_proto::REQUEST_AUTHENTICATION_TYPE_URL => {
            let reject = |reason: String| Rejected { name: name.to_owned(), reason };
            let decoded = keel_proto::http_security::RequestAuthentication::decode(bytes)
                .map_err(|e| reject(format!("not a keel.security.RequestAuthentication: {e}")))?;
            if decoded.name.is_empty() || decoded.namespace.is_empty() {
                return Err(reject("field `name`/`namespace`: empty".into()));
            }
            jwt::compile(decoded).map(|r| Resource::RequestAuthentication(Arc::new(r))).map_err(reject)
        }
        keel_proto::LISTENER_TYPE_URL => l7(name, l7_config::decode_listener(bytes).map(|l| Resource::Listener(Arc::new(l)))),
        keel_proto::SECRET_TYPE_URL => l7(name, decode_secret(bytes).map(|s| Resource::Secret(Arc::new(s)))),
        keel_proto::ROUTE_CONFIGURATION_TYPE_URL => l7(name, l7_config::decode_route_configuration(bytes).map(|r| Resource::Routes(Arc::new(r)))),
        keel_proto::CLUSTER_TYPE_URL => l7(name, l7_config::decode_cluster(bytes).map(|c| Resource::Cluster(Arc::new(c)))),
        keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => {
            l7(name, l7_config::decode_load_assignment(bytes).map(|a| Resource::LoadAssignment(Arc::new(a))))
        }
        other => Err(Rejected { name: name.to_owned(), reason: format!("unknown type URL {other}") }),
    }
}

fn l7(name: &str, decoded: Result<Resource, String>) -> Result<Resource, Rejected> {
    decoded.map_err(|reason| Rejected { name: name.to_owned(), reason })
}

/// A matcher keel could not evaluate would silently match nothing: refuse the policy instead (NACK), so the
/// control plane hears of it and the last good version stays.
fn check_matches(policy: &Authorization) -> Result<(), String> {
    for (r, rule) in policy.rules.iter().enumerate() {
        for (c, clause) in rule.clauses.iter().enumerate() {
            for (m, x) in clause.matches.iter().enumerate() {
                check_match(&format!("rules[{r}].clauses[{c}].matches[{m}]."), x)?;
            }
        }
    }
    Ok(())
}

/// The same for the HTTP rules: their connection part as above, and every request matcher.
fn check_http_matches(policy: &HttpAuthorization) -> Result<(), String> {
    use keel_proto::http_security::{path_match::Kind, request_condition::Attribute};
    for (r, rule) in policy.rules.iter().enumerate() {
        for (c, clause) in rule.clauses.iter().enumerate() {
            for (m, x) in clause.matches.iter().enumerate() {
                let at = |field: &str| format!("rules[{r}].clauses[{c}].matches[{m}].{field}");
                if let Some(connection) = &x.connection {
                    check_match(&at("connection."), connection)?;
                }
                check_strings(&at("hosts"), &x.hosts)?;
                check_strings(&at("not_hosts"), &x.not_hosts)?;
                check_strings(&at("methods"), &x.methods)?;
                check_strings(&at("not_methods"), &x.not_methods)?;
                check_strings(&at("request_principals"), &x.request_principals)?;
                check_strings(&at("not_request_principals"), &x.not_request_principals)?;
                check_cidrs(&at("remote_ips"), &x.remote_ips)?;
                check_cidrs(&at("not_remote_ips"), &x.not_remote_ips)?;
                for (field, paths) in [("paths", &x.paths), ("not_paths", &x.not_paths)] {
                    for (i, path) in paths.iter().enumerate() {
                        match &path.kind {
                            Some(Kind::String(s)) => check_strings(&at(&format!("{field}[{i}]")), std::slice::from_ref(s))?,
                            Some(Kind::Template(t)) => {
                                keel_mesh::translate::check_path_template(t).map_err(|e| format!("field `{}`: {e}", at(&format!("{field}[{i}]"))))?
                            }
                            None => return Err(format!("field `{}`: neither a string nor a template", at(&format!("{field}[{i}]")))),
                        }
                    }
                }
                for (i, condition) in x.conditions.iter().enumerate() {
                    let at = at(&format!("conditions[{i}]"));
                    match &condition.attribute {
                        None => return Err(format!("field `{at}.attribute`: not set (an attribute keel does not know?)")),
                        Some(Attribute::Header(name)) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                            return Err(format!("field `{at}.header`: {name:?} is not a header name"))
                        }
                        Some(Attribute::Claim(path)) if path.segments.is_empty() => return Err(format!("field `{at}.claim`: no segments")),
                        Some(_) => {}
                    }
                    check_strings(&format!("{at}.values"), &condition.values)?;
                    check_strings(&format!("{at}.not_values"), &condition.not_values)?;
                }
            }
        }
    }
    Ok(())
}

/// One L4 match's matchers; `at` is the path to it, ending in `.`.
fn check_match(at: &str, x: &keel_proto::security::Match) -> Result<(), String> {
    check_strings(&format!("{at}namespaces"), &x.namespaces)?;
    check_strings(&format!("{at}not_namespaces"), &x.not_namespaces)?;
    check_strings(&format!("{at}principals"), &x.principals)?;
    check_strings(&format!("{at}not_principals"), &x.not_principals)?;
    check_cidrs(&format!("{at}source_ips"), &x.source_ips)?;
    check_cidrs(&format!("{at}not_source_ips"), &x.not_source_ips)?;
    check_cidrs(&format!("{at}destination_ips"), &x.destination_ips)?;
    check_cidrs(&format!("{at}not_destination_ips"), &x.not_destination_ips)
}

fn check_strings(field: &str, v: &[keel_proto::security::StringMatch]) -> Result<(), String> {
    match v.iter().position(|m| m.match_type.is_none()) {
        Some(i) => Err(format!("field `{field}[{i}]`: no match type (exact, prefix, suffix or presence)")),
        None => Ok(()),
    }
}

fn check_cidrs(field: &str, v: &[keel_proto::security::Address]) -> Result<(), String> {
    for (i, c) in v.iter().enumerate() {
        let max = match c.address.len() {
            4 => 32,
            16 => 128,
            n => return Err(format!("field `{field}[{i}].address`: {n} bytes is not an IPv4 or IPv6 address")),
        };
        if c.length > max {
            return Err(format!("field `{field}[{i}].length`: /{} is longer than /{max}", c.length));
        }
    }
    Ok(())
}

/// The published state and how it changes.
pub struct WorkloadStore {
    current: ArcSwap<Snapshot>,
    /// Held while a new snapshot is built from the current one: the xDS client and a gateway's file secrets
    /// both write, and neither may lose the other's update.
    writer: std::sync::Mutex<()>,
    /// Bumped on every publish: what re-authorization of open connections waits on.
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for WorkloadStore {
    fn default() -> Self {
        WorkloadStore { current: ArcSwap::default(), writer: std::sync::Mutex::new(()), version: tokio::sync::watch::channel(0).0 }
    }
}

impl WorkloadStore {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Notified after each new snapshot is published.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Applies one response in a single step: upserts by resource name, then removals. Writers take turns
    /// (`writer`), so copy-on-write of the maps loses nothing.
    /// Names are unique per type URL only (a Cluster and its ClusterLoadAssignment share one), so removals
    /// name their type.
    pub fn apply(&self, upserts: Vec<(String, Resource)>, removed: &[(String, String)]) {
        let _turn = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = (*self.current.load_full()).clone();
        for (name, resource) in upserts {
            next.remove(resource.type_url(), &name);
            next.insert(name, resource);
        }
        for (type_url, name) in removed {
            next.remove(type_url, name);
        }
        next.index_endpoints();
        next.l7.index();
        self.current.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
    }
}

impl Resource {
    pub fn type_url(&self) -> &'static str {
        match self {
            Resource::Workload(_) | Resource::Service(_) => keel_proto::ADDRESS_TYPE_URL,
            Resource::Policy(_) => keel_proto::AUTHORIZATION_TYPE_URL,
            Resource::HttpPolicy(_) => keel_proto::HTTP_AUTHORIZATION_TYPE_URL,
            Resource::RequestAuthentication(_) => keel_proto::REQUEST_AUTHENTICATION_TYPE_URL,
            Resource::Listener(_) => keel_proto::LISTENER_TYPE_URL,
            Resource::Routes(_) => keel_proto::ROUTE_CONFIGURATION_TYPE_URL,
            Resource::Cluster(_) => keel_proto::CLUSTER_TYPE_URL,
            Resource::LoadAssignment(_) => keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
            Resource::Secret(_) => keel_proto::SECRET_TYPE_URL,
        }
    }
}

impl Snapshot {
    fn insert(&mut self, name: String, resource: Resource) {
        match resource {
            Resource::Workload(w) => {
                let w = Arc::new(*w);
                for ip in w.addresses.iter().filter_map(|a| ip_of(a)) {
                    self.workloads_by_ip.insert(ip, w.clone());
                }
                self.workloads.insert(name, w);
            }
            Resource::Service(s) => {
                let s = Arc::new(s);
                for ip in s.addresses.iter().filter_map(|a| ip_of(&a.address)) {
                    self.services_by_vip.insert(ip, s.clone());
                }
                self.services.insert(name, s);
            }
            Resource::Policy(p) => {
                self.policies.insert(name, Arc::new(p));
            }
            Resource::HttpPolicy(p) => {
                self.http_policies.insert(name, Arc::new(p));
            }
            Resource::RequestAuthentication(r) => {
                self.request_authentications.insert(name, r);
            }
            Resource::Listener(l) => {
                self.l7.listeners.insert(name, l);
            }
            Resource::Routes(r) => {
                self.l7.route_tables.insert(name, r);
            }
            Resource::Cluster(c) => {
                self.l7.cluster_configs.insert(name, c);
            }
            Resource::LoadAssignment(a) => {
                self.l7.load_assignments.insert(name, a);
            }
            Resource::Secret(s) => {
                self.l7.secrets.insert(name, s);
            }
        }
    }

    /// Removes the resource `name` of `type_url` only: names are unique per type URL, not across them (an
    /// Address `shop/api.payments.example` and an Authorization `shop/api.payments.example` are two resources).
    fn remove(&mut self, type_url: &str, name: &str) {
        let l7 = &mut self.l7;
        match type_url {
            keel_proto::ADDRESS_TYPE_URL => self.remove_address(name),
            keel_proto::AUTHORIZATION_TYPE_URL => drop(self.policies.remove(name)),
            keel_proto::HTTP_AUTHORIZATION_TYPE_URL => drop(self.http_policies.remove(name)),
            keel_proto::REQUEST_AUTHENTICATION_TYPE_URL => drop(self.request_authentications.remove(name)),
            keel_proto::LISTENER_TYPE_URL => drop(l7.listeners.remove(name)),
            keel_proto::ROUTE_CONFIGURATION_TYPE_URL => drop(l7.route_tables.remove(name)),
            keel_proto::CLUSTER_TYPE_URL => drop(l7.cluster_configs.remove(name)),
            keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => drop(l7.load_assignments.remove(name)),
            keel_proto::SECRET_TYPE_URL => drop(l7.secrets.remove(name)),
            _ => {}
        }
    }

    /// An Address is a Workload or a Service under one name: a push of either kind replaces the other.
    fn remove_address(&mut self, name: &str) {
        if let Some(w) = self.workloads.remove(name) {
            for ip in w.addresses.iter().filter_map(|a| ip_of(a)) {
                if self.workloads_by_ip.get(&ip).is_some_and(|cur| Arc::ptr_eq(cur, &w)) {
                    self.workloads_by_ip.remove(&ip);
                }
            }
        }
        if let Some(s) = self.services.remove(name) {
            for ip in s.addresses.iter().filter_map(|a| ip_of(&a.address)) {
                if self.services_by_vip.get(&ip).is_some_and(|cur| Arc::ptr_eq(cur, &s)) {
                    self.services_by_vip.remove(&ip);
                }
            }
        }
    }

    /// Endpoints are a property of workloads (their `services` map), so a push of either side can change them:
    /// recomputed per push, off the data path, linear in the number of workloads.
    fn index_endpoints(&mut self) {
        let mut endpoints: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
        for w in self.workloads.values() {
            for service in w.services.keys() {
                endpoints.entry(service.clone()).or_default().push(w.clone());
            }
        }
        for list in endpoints.values_mut() {
            list.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        self.endpoints = endpoints;
    }

    /// Name → version is kept by the client; this lists what the state holds, for `initial_resource_versions`.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.workloads.keys().chain(self.services.keys()).chain(self.policies.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::workload::NetworkAddress;

    fn workload(uid: &str, ip: [u8; 4]) -> Vec<u8> {
        Address { r#type: Some(address::Type::Workload(Workload { uid: uid.into(), addresses: vec![ip.to_vec()], ..Default::default() })) }
            .encode_to_vec()
    }

    #[test]
    fn invalid_resources_are_rejected_naming_the_field() {
        assert!(decode_address("w", &workload("u", [10, 0, 0, 1])).is_ok());
        let bad_ip =
            Address { r#type: Some(address::Type::Workload(Workload { uid: "u".into(), addresses: vec![vec![1, 2, 3]], ..Default::default() })) };
        let err = decode_address("w", &bad_ip.encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("resource w: field `workload.addresses`"), "{err}");
        let err = decode_address("x", b"\xff\xff\xff").unwrap_err();
        assert!(err.reason.contains("not an istio.workload.Address"), "{err}");
        let err = decode_address("e", &Address::default().encode_to_vec()).unwrap_err();
        assert!(err.reason.contains("field `type`"), "{err}");
    }

    #[test]
    fn a_service_hostname_that_is_no_dns_name_is_refused() {
        let service = |hostname: &str| {
            Address {
                r#type: Some(address::Type::Service(Service {
                    name: "s".into(),
                    namespace: "demo".into(),
                    hostname: hostname.into(),
                    ..Default::default()
                })),
            }
            .encode_to_vec()
        };
        for good in ["echo.demo.svc.cluster.local", "*.example.com", "api_v2.internal", "10.0.0.1"] {
            assert!(decode_address("demo/s", &service(good)).is_ok(), "{good}");
        }
        // Found by fuzzing: a newline in the hostname made the HBONE CONNECT's `forwarded` header invalid.
        for bad in ["echo\n.demo", "a b", "x;host=evil", "a..b", "", &"a".repeat(64), &["a"; 130].join(".")] {
            let err = decode_address("demo/s", &service(bad)).unwrap_err();
            assert!(err.reason.contains("field `service.hostname`"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_policy_with_a_matcher_keel_cannot_evaluate_is_refused() {
        use keel_proto::security::{Address as Cidr, Clause, Match, Rule, StringMatch};
        let policy = |m: Match| Authorization {
            name: "p".into(),
            namespace: "demo".into(),
            rules: vec![Rule { clauses: vec![Clause { matches: vec![m] }] }],
            ..Default::default()
        };
        let empty_string_match = policy(Match { principals: vec![StringMatch { match_type: None }], ..Default::default() });
        let err = decode_authorization("demo/p", &empty_string_match.encode_to_vec()).unwrap_err();
        assert!(err.reason.contains("rules[0].clauses[0].matches[0].principals[0]"), "{err}");
        let long_prefix = policy(Match { source_ips: vec![Cidr { address: vec![10, 0, 0, 0], length: 33 }], ..Default::default() });
        let err = decode_authorization("demo/p", &long_prefix.encode_to_vec()).unwrap_err();
        assert!(err.reason.contains("source_ips[0].length"), "{err}");
        let fine = policy(Match { source_ips: vec![Cidr { address: vec![10, 0, 0, 0], length: 8 }], ..Default::default() });
        assert!(decode_authorization("demo/p", &fine.encode_to_vec()).is_ok());
    }

    #[test]
    fn an_http_policy_keel_cannot_evaluate_is_refused_naming_the_field() {
        use keel_proto::http_security::{path_match, request_condition, HttpClause, HttpMatch, HttpRule, PathMatch, RequestCondition};
        let policy = |m: HttpMatch| HttpAuthorization {
            name: "p".into(),
            namespace: "demo".into(),
            rules: vec![HttpRule { clauses: vec![HttpClause { matches: vec![m] }] }],
        };
        let cases = [
            (HttpMatch { methods: vec![keel_proto::security::StringMatch { match_type: None }], ..Default::default() }, "matches[0].methods[0]"),
            (HttpMatch { paths: vec![PathMatch { kind: Some(path_match::Kind::Template("/a/{**}/b".into())) }], ..Default::default() }, "paths[0]"),
            (HttpMatch { paths: vec![PathMatch { kind: None }], ..Default::default() }, "paths[0]"),
            (HttpMatch { conditions: vec![RequestCondition::default()], ..Default::default() }, "conditions[0].attribute"),
            (
                HttpMatch {
                    conditions: vec![RequestCondition { attribute: Some(request_condition::Attribute::Header("a b".into())), ..Default::default() }],
                    ..Default::default()
                },
                "conditions[0].header",
            ),
        ];
        for (m, field) in cases {
            let err = decode_http_authorization("demo/p", &policy(m).encode_to_vec()).unwrap_err();
            assert!(err.reason.contains(field), "{field}: {err}");
        }
        let fine = HttpMatch { paths: vec![PathMatch { kind: Some(path_match::Kind::Template("/a/{*}/{**}".into())) }], ..Default::default() };
        assert!(decode_http_authorization("demo/p", &policy(fine).encode_to_vec()).is_ok());
    }

    #[test]
    fn updates_and_removals_keep_the_indexes_consistent() {
        let store = WorkloadStore::default();
        let w = decode_address("w", &workload("u", [10, 0, 0, 1])).unwrap();
        let svc = Service {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![10, 96, 0, 10] }],
            ..Default::default()
        };
        store.apply(vec![("w".into(), w), ("s".into(), Resource::Service(svc))], &[]);
        let snap = store.snapshot();
        assert!(snap.workloads_by_ip.contains_key(&"10.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(snap.services_by_vip.contains_key(&"10.96.0.10".parse::<IpAddr>().unwrap()));
        // The workload moves to a new IP: the old index entry goes.
        let removed = [(keel_proto::ADDRESS_TYPE_URL.to_owned(), "s".to_owned())];
        store.apply(vec![("w".into(), decode_address("w", &workload("u", [10, 0, 0, 2])).unwrap())], &removed);
        let snap = store.snapshot();
        assert!(!snap.workloads_by_ip.contains_key(&"10.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(snap.workloads_by_ip.contains_key(&"10.0.0.2".parse::<IpAddr>().unwrap()));
        assert!(snap.services.is_empty() && snap.services_by_vip.is_empty());
    }

    #[test]
    fn a_policy_and_an_address_of_the_same_name_are_two_resources() {
        // A ServiceEntry host and an AuthorizationPolicy can both be named `shop/api.payments.example`.
        let name = "shop/api.payments.example";
        let store = WorkloadStore::default();
        let entry = Service {
            name: "api.payments.example".into(),
            namespace: "shop".into(),
            hostname: "api.payments.example".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![240, 240, 0, 1] }],
            ..Default::default()
        };
        let policy = Authorization { name: "api.payments.example".into(), namespace: "shop".into(), ..Default::default() };
        store.apply(vec![(name.into(), Resource::Service(entry.clone()))], &[]);
        store.apply(vec![(name.into(), Resource::Policy(policy.clone()))], &[]);
        let snap = store.snapshot();
        assert!(
            snap.services.contains_key(name) && snap.services_by_vip.contains_key(&"240.240.0.1".parse::<IpAddr>().unwrap()),
            "adding the policy removed the ServiceEntry host"
        );
        assert!(snap.policies.contains_key(name));
        // Editing the ServiceEntry leaves the policy; removing the policy leaves the ServiceEntry.
        store.apply(vec![(name.into(), Resource::Service(entry))], &[]);
        assert!(store.snapshot().policies.contains_key(name), "editing the ServiceEntry removed the policy");
        store.apply(vec![], &[(keel_proto::AUTHORIZATION_TYPE_URL.into(), name.into())]);
        let snap = store.snapshot();
        assert!(!snap.policies.contains_key(name) && snap.services.contains_key(name));
        store.apply(vec![], &[(keel_proto::ADDRESS_TYPE_URL.into(), name.into())]);
        assert!(store.snapshot().services.is_empty());
    }

    #[test]
    fn l7_resources_are_checked_and_a_cluster_and_its_endpoints_share_a_name() {
        use keel_proto::{
            cluster::{
                cluster::{ClusterDiscoveryType, DiscoveryType},
                Cluster,
            },
            endpoint::ClusterLoadAssignment,
            matcher::RegexMatcher,
            route::{
                route, route_action::ClusterSpecifier, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
            },
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL,
        };
        let bad_regex = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "a".into(),
                domains: vec!["a".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher { regex: "(".into(), engine_type: None })),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let err = decode(ROUTE_CONFIGURATION_TYPE_URL, "80", &bad_regex.encode_to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("resource 80: field virtual_hosts[0].routes[0].match"), "{err}");
        let err = decode(LISTENER_TYPE_URL, "0.0.0.0_80", &keel_proto::listener::Listener::default().encode_to_vec()).unwrap_err();
        assert!(err.reason.contains("field `address`"), "{err}");

        let name = "outbound|80||a.default.svc.cluster.local";
        let cluster =
            Cluster { name: name.into(), cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)), ..Default::default() };
        let store = WorkloadStore::default();
        store.apply(
            vec![
                (name.into(), decode(CLUSTER_TYPE_URL, name, &cluster.encode_to_vec()).unwrap()),
                (name.into(), decode(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, name, &ClusterLoadAssignment::default().encode_to_vec()).unwrap()),
            ],
            &[],
        );
        assert!(store.snapshot().l7.clusters.contains_key(name), "a live cluster is built");
        store.apply(vec![], &[(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL.into(), name.into())]);
        let snapshot = store.snapshot();
        assert!(snapshot.l7.cluster_configs.contains_key(name) && !snapshot.l7.load_assignments.contains_key(name), "removal is per type");
    }
}
