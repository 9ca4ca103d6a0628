//! The semantic rules of a DestinationRule: subsets that can be told apart and select something, one load
//! balancer per policy with one hash key, Envoy's limits on hash tables, and counts and percentages in range.
//! Client TLS that originates TLS (SIMPLE, MUTUAL) must be complete and use only what keel can honour; settings
//! keel accepts without applying (explicit locality distribution, a client selector, exportTo) are warnings.
use super::field::{self, error, warning};
use crate::objects::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule, LoadBalancerSettings, OutlierDetection,
    PortTrafficPolicy, SimpleLb, TrafficPolicy,
};

/// Envoy's bounds: a Maglev table size must be a prime no larger than this, a ring no larger than that.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
const MAX_RING_SIZE: u64 = 8_388_608;

/// Checks one DestinationRule; on success, the warnings about what keel accepts without applying.
pub fn check(rule: &DestinationRule) -> Result<Vec<String>, String> {
    let spec = &rule.spec;
    let mut warnings = Vec::new();
    field::not_empty("spec.host", &spec.host)?;
    if let Some(policy) = &spec.traffic_policy {
        check_traffic_policy("spec.trafficPolicy", policy, &mut warnings)?;
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        field::not_empty(&format!("{path}.name"), &subset.name)?;
        if let Some(first) = spec.subsets[..i].iter().position(|s| s.name == subset.name) {
            return Err(error(&format!("{path}.name"), format!("{:?} repeats spec.subsets[{first}]", subset.name)));
        }
        if subset.labels.is_empty() {
            return Err(error(&format!("{path}.labels"), "a subset needs labels to select its workloads"));
        }
        if let Some(policy) = &subset.traffic_policy {
            check_traffic_policy(&format!("{path}.trafficPolicy"), policy, &mut warnings)?;
        }
    }
    if spec.workload_selector.is_some() {
        warnings.push(warning("spec.workloadSelector", "not supported yet; the rule applies to every client"));
    }
    if spec.export_to.iter().any(|e| e != "*") {
        warnings.push(warning("spec.exportTo", "ignored: keel applies every DestinationRule mesh-wide"));
    }
    Ok(warnings)
}

fn check_traffic_policy(path: &str, policy: &TrafficPolicy, warnings: &mut Vec<String>) -> Result<(), String> {
    check_settings(
        path,
        Settings {
            load_balancer: &policy.load_balancer,
            connection_pool: &policy.connection_pool,
            outlier_detection: &policy.outlier_detection,
            tls: &policy.tls,
        },
        warnings,
    )?;
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}]");
        field::port(&format!("{at}.port.number"), port_policy.port.number)?;
        if let Some(first) = policy.port_level_settings[..i].iter().position(|p| p.port.number == port_policy.port.number) {
            return Err(error(&format!("{at}.port.number"), format!("{} repeats {path}.portLevelSettings[{first}]", port_policy.port.number)));
        }
        check_settings(&at, Settings::of_port(port_policy), warnings)?;
    }
    Ok(())
}

/// The settings a policy and a port-level policy have in common.
struct Settings<'a> {
    load_balancer: &'a Option<LoadBalancerSettings>,
    connection_pool: &'a Option<ConnectionPoolSettings>,
    outlier_detection: &'a Option<OutlierDetection>,
    tls: &'a Option<ClientTlsSettings>,
}

impl<'a> Settings<'a> {
    fn of_port(policy: &'a PortTrafficPolicy) -> Self {
        Settings {
            load_balancer: &policy.load_balancer,
            connection_pool: &policy.connection_pool,
            outlier_detection: &policy.outlier_detection,
            tls: &policy.tls,
        }
    }
}

fn check_settings(path: &str, settings: Settings<'_>, warnings: &mut Vec<String>) -> Result<(), String> {
    if let Some(load_balancer) = settings.load_balancer {
        check_load_balancer(&format!("{path}.loadBalancer"), load_balancer, warnings)?;
    }
    if let Some(pool) = settings.connection_pool {
        check_connection_pool(&format!("{path}.connectionPool"), pool)?;
    }
    if let Some(outlier) = settings.outlier_detection {
        check_outlier_detection(&format!("{path}.outlierDetection"), outlier)?;
    }
    if let Some(tls) = settings.tls {
        check_client_tls(&format!("{path}.tls"), tls, warnings)?;
    }
    Ok(())
}

/// TLS origination is applied only as written: what keel cannot honour (revocation lists, certificates from
/// Kubernetes Secrets) refuses the rule rather than connecting with less verification than asked for.
fn check_client_tls(path: &str, tls: &ClientTlsSettings, warnings: &mut Vec<String>) -> Result<(), String> {
    let at = |field: &str| format!("{path}.{field}");
    if !tls.originates() {
        return Ok(());
    }
    if tls.ca_crl.is_some() {
        return Err(error(&at("caCrl"), "certificate revocation lists are not supported (keel would accept certificates the list revokes)"));
    }
    if tls.credential_name.is_some() {
        return Err(error(
            &at("credentialName"),
            "client TLS from a Kubernetes Secret is not supported (Istio reads it only at gateways); use clientCertificate, privateKey and caCertificates files",
        ));
    }
    for (field, file) in [("clientCertificate", &tls.client_certificate), ("privateKey", &tls.private_key), ("caCertificates", &tls.ca_certificates)]
    {
        if let Some(file) = file {
            if !file.starts_with('/') {
                return Err(error(&at(field), format!("{file:?} is not an absolute path on the proxy's filesystem")));
            }
        }
    }
    if tls.mode == Some(ClientTlsMode::Mutual) {
        for (field, file) in [("clientCertificate", &tls.client_certificate), ("privateKey", &tls.private_key)] {
            if file.is_none() {
                return Err(error(&at(field), "MUTUAL needs a client certificate and its key"));
            }
        }
    } else if tls.client_certificate.is_some() || tls.private_key.is_some() {
        warnings.push(warning(&at("clientCertificate"), "SIMPLE sends no client certificate: ignored"));
    }
    if let Some(sni) = &tls.sni {
        field::not_empty(&at("sni"), sni)?;
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        field::not_empty(&at(&format!("subjectAltNames[{i}]")), san)?;
    }
    if tls.insecure_skip_verify == Some(true) && (tls.ca_certificates.is_some() || !tls.subject_alt_names.is_empty()) {
        warnings.push(warning(&at("insecureSkipVerify"), "the server certificate is not verified: caCertificates and subjectAltNames are ignored"));
    }
    Ok(())
}

fn check_load_balancer(path: &str, load_balancer: &LoadBalancerSettings, warnings: &mut Vec<String>) -> Result<(), String> {
    if load_balancer.simple.is_some() && load_balancer.consistent_hash.is_some() {
        return Err(error(path, "only one of simple or consistentHash may be set"));
    }
    if load_balancer.simple == Some(SimpleLb::LeastConn) {
        warnings.push(warning(&format!("{path}.simple"), "LEAST_CONN is deprecated; read as LEAST_REQUEST"));
    }
    if let Some(hash) = &load_balancer.consistent_hash {
        let at = format!("{path}.consistentHash");
        hash.key().map_err(|e| error(&at, e))?;
        if let Some(name) = &hash.http_header_name {
            field::header_name(&format!("{at}.httpHeaderName"), name)?;
        }
        if let Some(name) = &hash.http_query_parameter_name {
            field::not_empty(&format!("{at}.httpQueryParameterName"), name)?;
        }
        if let Some(cookie) = &hash.http_cookie {
            field::cookie(&format!("{at}.httpCookie"), &cookie.name, cookie.path.as_deref())?;
        }
        check_hash_algorithm(&at, hash)?;
    }
    if let Some(locality) = &load_balancer.locality_lb_setting {
        if !locality.distribute.is_empty() || !locality.failover.is_empty() || !locality.failover_priority.is_empty() {
            warnings.push(warning(
                &format!("{path}.localityLbSetting"),
                "distribute, failover and failoverPriority are not supported yet; ignored (keel prefers the client's locality)",
            ));
        }
    }
    Ok(())
}

/// At most one of ring hash (or its deprecated `minimumRingSize`) and Maglev, within Envoy's bounds.
fn check_hash_algorithm(path: &str, hash: &ConsistentHashLb) -> Result<(), String> {
    let ring_sizes = [
        (format!("{path}.ringHash.minimumRingSize"), hash.ring_hash.as_ref().and_then(|ring| ring.minimum_ring_size)),
        (format!("{path}.minimumRingSize"), hash.minimum_ring_size),
    ];
    if hash.ring_hash.is_some() && hash.minimum_ring_size.is_some() {
        return Err(error(path, "only one of ringHash or the deprecated minimumRingSize may be set"));
    }
    if hash.maglev.is_some() && (hash.ring_hash.is_some() || hash.minimum_ring_size.is_some()) {
        return Err(error(path, "only one of ringHash or maglev may be set"));
    }
    for (at, size) in ring_sizes {
        if let Some(size) = size.filter(|size| *size > MAX_RING_SIZE) {
            return Err(error(&at, format!("{size} is more than {MAX_RING_SIZE}")));
        }
    }
    if let Some(size) = hash.maglev.as_ref().and_then(|maglev| maglev.table_size) {
        if size > MAX_MAGLEV_TABLE_SIZE || !is_prime(size) {
            return Err(error(&format!("{path}.maglev.tableSize"), format!("{size} is not a prime of at most {MAX_MAGLEV_TABLE_SIZE}")));
        }
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn check_connection_pool(path: &str, pool: &ConnectionPoolSettings) -> Result<(), String> {
    let mut limits = Vec::new();
    if let Some(tcp) = &pool.tcp {
        limits.push(("tcp.maxConnections", tcp.max_connections));
        // Envoy and keel refuse a zero connect timeout (the cluster would be NACKed on every node).
        if let Some(timeout) = tcp.connect_timeout {
            field::positive(&format!("{path}.tcp.connectTimeout"), timeout.get())?;
        }
    }
    if let Some(http) = &pool.http {
        limits.extend([
            ("http.http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http.http2MaxRequests", http.http2_max_requests),
            ("http.maxRequestsPerConnection", http.max_requests_per_connection),
            ("http.maxRetries", http.max_retries),
        ]);
    }
    for (name, value) in limits {
        if let Some(value) = value {
            field::non_negative(&format!("{path}.{name}"), value)?;
        }
    }
    Ok(())
}

fn check_outlier_detection(path: &str, outlier: &OutlierDetection) -> Result<(), String> {
    for (name, value) in [("maxEjectionPercent", outlier.max_ejection_percent), ("minHealthPercent", outlier.min_health_percent)] {
        if let Some(value) = value {
            field::whole_percent(&format!("{path}.{name}"), value)?;
        }
    }
    for (name, value) in [("interval", outlier.interval), ("baseEjectionTime", outlier.base_ejection_time)] {
        if let Some(value) = value {
            field::positive(&format!("{path}.{name}"), value.get())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{
        objects::{HashKey, Object, SimpleLb},
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };

    fn destination_rule(spec: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr, namespace: demo}}\nspec: {spec}\n")
    }

    fn load(yaml: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        loaded
    }

    fn valid(spec: &str) -> Object {
        let loaded = load(&destination_rule(spec));
        assert!(loaded.errors.is_empty(), "{spec}: {:?}", loaded.errors);
        loaded.objects.into_iter().next().unwrap().1
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            ("{host: ''}", "field spec.host: must not be empty"),
            ("{subsets: []}", "field `spec`: missing field `host`"),
            ("{host: a, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}", "field spec.subsets[1].name: \"v1\" repeats spec.subsets[0]"),
            ("{host: a, subsets: [{name: v1}]}", "field spec.subsets[0].labels: a subset needs labels"),
            ("{host: a, subsets: [{name: '', labels: {version: v1}}]}", "field spec.subsets[0].name: must not be empty"),
            ("{host: a, trafficPolicy: {loadBalancer: {simple: FASTEST}}}", "field `spec.trafficPolicy.loadBalancer.simple`: unknown variant `FASTEST`"),
            (
                "{host: a, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}}",
                "field spec.trafficPolicy.loadBalancer: only one of simple or consistentHash may be set",
            ),
            ("{host: a, trafficPolicy: {loadBalancer: {consistentHash: {}}}}", "field spec.trafficPolicy.loadBalancer.consistentHash: one of httpHeaderName"),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, useSourceIp: true}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash: only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set, found httpHeaderName and useSourceIp",
            ),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash: only one of ringHash or maglev may be set",
            ),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime of at most 5000011",
            ),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: '', ttl: 0s}}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: \"\" is not a cookie name",
            ),
            (
                "{host: a, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}",
                "field spec.trafficPolicy.connectionPool.tcp.maxConnections: -1 must not be negative",
            ),
            (
                "{host: a, trafficPolicy: {connectionPool: {http: {http2MaxRequests: -5}}}}",
                "field spec.trafficPolicy.connectionPool.http.http2MaxRequests: -5 must not be negative",
            ),
            (
                "{host: a, trafficPolicy: {connectionPool: {tcp: {connectTimeout: soon}}}}",
                "field `spec.trafficPolicy.connectionPool.tcp.connectTimeout`: \"soon\" is not a duration",
            ),
            (
                "{host: a, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}}",
                "field spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be more than 0",
            ),
            ("{host: a, trafficPolicy: {tls: {mode: SIMPLE, caCrl: /etc/crl.pem}}}", "field spec.trafficPolicy.tls.caCrl: certificate revocation lists"),
            ("{host: a, trafficPolicy: {tls: {mode: SIMPLE, credentialName: api-ca}}}", "field spec.trafficPolicy.tls.credentialName: client TLS from a Kubernetes Secret"),
            ("{host: a, trafficPolicy: {tls: {mode: MUTUAL, privateKey: /k.pem}}}", "field spec.trafficPolicy.tls.clientCertificate: MUTUAL needs"),
            ("{host: a, trafficPolicy: {tls: {mode: SIMPLE, caCertificates: ca.pem}}}", "field spec.trafficPolicy.tls.caCertificates: \"ca.pem\" is not an absolute path"),
            ("{host: a, trafficPolicy: {tls: {mode: SIMPLE, sni: ''}}}", "field spec.trafficPolicy.tls.sni: must not be empty"),
            ("{host: a, trafficPolicy: {tls: {mode: PLAIN}}}", "field `spec.trafficPolicy.tls.mode`: unknown variant `PLAIN`"),
            ("{host: a, trafficPolicy: {tls: {mode: SIMPLE, verify: true}}}", "field `spec.trafficPolicy.tls.verify`: unknown field `verify`"),
            (
                "{host: a, trafficPolicy: {outlierDetection: {baseEjectionTime: 0s}}}",
                "field spec.trafficPolicy.outlierDetection.baseEjectionTime: must be more than 0",
            ),
            (
                "{host: a, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}",
                "field spec.trafficPolicy.outlierDetection.maxEjectionPercent: 150 must be 0-100",
            ),
            (
                "{host: a, trafficPolicy: {outlierDetection: {consecutive5xxErrors: -1}}}",
                "field `spec.trafficPolicy.outlierDetection.consecutive5xxErrors`: invalid value: integer `-1`",
            ),
            (
                "{host: a, trafficPolicy: {outlierDetection: {baseEjectionTime: -30s}}}",
                "field `spec.trafficPolicy.outlierDetection.baseEjectionTime`: \"-30s\" is negative",
            ),
            (
                "{host: a, trafficPolicy: {portLevelSettings: [{port: {number: 0}}]}}",
                "field spec.trafficPolicy.portLevelSettings[0].port.number: 0 is not a port",
            ),
            (
                "{host: a, trafficPolicy: {portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]}}",
                "field spec.trafficPolicy.portLevelSettings[1].port.number: 80 repeats spec.trafficPolicy.portLevelSettings[0]",
            ),
            (
                "{host: a, trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {minHealthPercent: 101}}]}}",
                "field spec.trafficPolicy.portLevelSettings[0].outlierDetection.minHealthPercent: 101 must be 0-100",
            ),
            (
                "{host: a, subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: ''}}}}]}",
                "field spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName: must not be empty",
            ),
            // Found by fuzzing: keel refuses a route hashing on a header it cannot name.
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: 'x-use}'}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName: \"x-use}\" is not a valid HTTP header name",
            ),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: 'a;b', ttl: 1s}}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: \"a;b\" is not a cookie name",
            ),
            (
                "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, path: '/a; b', ttl: 1s}}}}}",
                "field spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.path: \"/a; b\" cannot be a cookie path",
            ),
            ("{host: a, trafficPolicy: {loadBalancr: {simple: RANDOM}}}", "unknown field `loadBalancr`"),
        ];
        for (spec, expected) in cases {
            let loaded = load(&destination_rule(spec));
            assert!(loaded.objects.is_empty(), "{spec} was accepted");
            let error = loaded.errors[0].to_string();
            assert!(error.starts_with("t.yaml: DestinationRule demo/dr: ") && error.contains(expected), "{spec}:\n  got  {error}\n  want {expected}");
        }
    }

    #[test]
    fn reads_every_load_balancer_form() {
        for (simple, expected) in [
            ("UNSPECIFIED", SimpleLb::Unspecified),
            ("ROUND_ROBIN", SimpleLb::RoundRobin),
            ("LEAST_REQUEST", SimpleLb::LeastRequest),
            ("RANDOM", SimpleLb::Random),
            ("PASSTHROUGH", SimpleLb::Passthrough),
        ] {
            let Object::DestinationRule(rule) = valid(&format!("{{host: a, trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}}}")) else {
                panic!()
            };
            assert_eq!(rule.spec.traffic_policy.unwrap().load_balancer.unwrap().simple, Some(expected));
        }
        let keys = [
            ("{httpHeaderName: x-user}", HashKey::Header("x-user")),
            ("{useSourceIp: true, maglev: {tableSize: 65537}}", HashKey::SourceIp),
            ("{httpQueryParameterName: user}", HashKey::QueryParameter("user")),
        ];
        for (hash, expected) in keys {
            let Object::DestinationRule(rule) = valid(&format!("{{host: a, trafficPolicy: {{loadBalancer: {{consistentHash: {hash}}}}}}}")) else {
                panic!()
            };
            assert_eq!(rule.spec.traffic_policy.unwrap().load_balancer.unwrap().consistent_hash.unwrap().key(), Ok(expected));
        }
        let Object::DestinationRule(rule) = valid(
            "{host: a, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 1h}, minimumRingSize: 2048}}}}",
        ) else {
            panic!()
        };
        let hash = rule.spec.traffic_policy.unwrap().load_balancer.unwrap().consistent_hash.unwrap();
        let Ok(HashKey::Cookie(cookie)) = hash.key() else { panic!() };
        assert_eq!((cookie.name.as_str(), cookie.ttl.unwrap().get()), ("session", std::time::Duration::from_secs(3600)));
    }

    #[test]
    fn accepted_but_unapplied_settings_are_warnings() {
        let object = valid(
            r#"
  host: reviews
  exportTo: ["."]
  workloadSelector: {matchLabels: {app: web}}
  trafficPolicy:
    loadBalancer:
      simple: LEAST_CONN
      localityLbSetting: {enabled: true, failover: [{from: us-east, to: us-west}]}
    tls: {mode: SIMPLE, clientCertificate: /c.pem}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"#,
        );
        let found = translate(&Mesh::default(), &[object]).unwrap().warnings;
        let expected = [
            "DestinationRule demo/dr: spec.trafficPolicy.loadBalancer.simple: LEAST_CONN is deprecated; read as LEAST_REQUEST",
            "DestinationRule demo/dr: spec.trafficPolicy.loadBalancer.localityLbSetting: distribute, failover and failoverPriority are not supported yet",
            "DestinationRule demo/dr: spec.trafficPolicy.tls.clientCertificate: SIMPLE sends no client certificate: ignored",
            "DestinationRule demo/dr: spec.workloadSelector: not supported yet",
            "DestinationRule demo/dr: spec.exportTo: ignored",
            "DestinationRule demo/dr: tls: TLS origination applies to ServiceEntry hosts, and reviews.demo.svc.cluster.local is none",
        ];
        assert_eq!(found.len(), expected.len(), "ISTIO_MUTUAL is no warning: {found:#?}");
        for (warning, expected) in found.iter().zip(expected) {
            assert!(warning.starts_with(expected), "{warning}\n  want {expected}");
        }
    }
}
