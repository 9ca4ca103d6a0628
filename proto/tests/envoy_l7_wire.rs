//! Wire contract of the Envoy L7 subset (see ENVOY-SUBSET.md): field numbers and enum values are pinned by
//! decoding hand-encoded bytes, as an Envoy control plane would send them, including fields outside the subset
//! (which must be skipped, not fail the decode); then whole resources round-trip.
//!
//! The bytes are built from (field number, wire type) pairs written out below, so each number is stated once, next
//! to the Envoy field it stands for.

use keel_proto::{cluster, core, endpoint, fault, fault_common, hcm, listener, matcher, route, tls, types};
use prost::Message;
use prost_types::{Any, Duration};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A varint field: tag, value.
fn v(field: u64, value: u64) -> Vec<u8> {
    [varint(field << 3 | VARINT), varint(value)].concat()
}

/// A length-delimited field (string, bytes, message, packed repeated): tag, length, body.
fn ld(field: u64, body: &[u8]) -> Vec<u8> {
    [varint(field << 3 | LEN), varint(body.len() as u64), body.to_vec()].concat()
}

/// A double field: tag, 8 bytes little-endian.
fn f64_field(field: u64, x: f64) -> Vec<u8> {
    [varint(field << 3 | FIXED64), x.to_le_bytes().to_vec()].concat()
}

/// google.protobuf.UInt32Value / UInt64Value { value = 1 }.
fn wrapped(n: u64) -> Vec<u8> {
    v(1, n)
}

/// google.protobuf.Duration { seconds = 1, nanos = 2 }.
fn secs(s: u64) -> Vec<u8> {
    v(1, s)
}

fn millis(ms: u64) -> Vec<u8> {
    [v(1, ms / 1000), v(2, (ms % 1000) * 1_000_000)].concat()
}

fn dur(s: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds: s, nanos })
}

/// A few tags checked byte for byte, as the existing test in src/lib.rs does for the workload API.
#[test]
fn tags_byte_for_byte() {
    let a = route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster("c".into())),
        timeout: dur(1, 0),
        ..Default::default()
    };
    // cluster = 1 (0x0a), timeout = 8 (0x42) { seconds = 1 }.
    assert_eq!(a.encode_to_vec(), [0x0a, 1, b'c', 0x42, 2, 0x08, 1]);

    let c = cluster::Cluster { lb_policy: cluster::cluster::LbPolicy::Maglev as i32, ..Default::default() };
    // lb_policy = 6 (0x30), MAGLEV = 5.
    assert_eq!(c.encode_to_vec(), [0x30, 5]);

    let h = route::HeaderMatcher {
        name: "x".into(),
        invert_match: true,
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    };
    // name = 1, present_match = 7 (0x38), invert_match = 8 (0x40).
    assert_eq!(h.encode_to_vec(), [0x0a, 1, b'x', 0x38, 1, 0x40, 1]);

    let cla = endpoint::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![endpoint::LocalityLbEndpoints { priority: 1, ..Default::default() }],
    };
    // cluster_name = 1, endpoints = 2 (0x12) { priority = 5 (0x28) }.
    assert_eq!(cla.encode_to_vec(), [0x0a, 1, b'c', 0x12, 2, 0x28, 1]);
}

#[test]
fn route_action_decodes_envoy_bytes_and_skips_unknown_fields() {
    let retry = [
        ld(1, b"5xx,connect-failure"),                                // retry_on
        ld(2, &wrapped(3)),                                           // num_retries
        ld(3, &millis(250)),                                          // per_try_timeout
        ld(5, &ld(1, b"envoy.retry_host_predicates.previous_hosts")), // retry_host_predicate { name }
        v(6, 5),                                                      // host_selection_retry_max_attempts
        ld(7, &[varint(503), varint(504)].concat()),                  // retriable_status_codes, packed
        ld(8, &[ld(1, &millis(25)), ld(2, &millis(250))].concat()),   // retry_back_off { base, max }
        ld(11, &ld(1, &ld(1, b"Retry-After"))),                       // rate_limited_retry_back_off: not in the subset
    ]
    .concat();
    let weighted = [
        ld(1, &[ld(1, b"v1"), ld(2, &wrapped(80))].concat()), // clusters { name, weight }
        ld(
            1,
            &[
                ld(1, b"v2"),
                ld(2, &wrapped(20)),
                ld(4, &ld(1, &[ld(1, b"x-canary"), ld(2, b"1")].concat())), // request_headers_to_add { header }
                ld(6, b"server"),                                           // response_headers_to_remove
            ]
            .concat(),
        ),
        ld(3, &wrapped(100)), // total_weight
    ]
    .concat();
    let hash = [
        ld(1, &ld(1, b"x-user")), // header { header_name }
        v(4, 1),                  // terminal
    ]
    .concat();
    let bytes = [
        ld(3, &weighted),                                                  // weighted_clusters
        ld(5, b"/v2/"),                                                    // prefix_rewrite
        ld(6, b"reviews.example"),                                         // host_rewrite_literal
        ld(8, &secs(2)),                                                   // timeout
        ld(9, &retry),                                                     // retry_policy
        ld(15, &hash),                                                     // hash_policy
        ld(15, &ld(3, &v(1, 1))),                                          // hash_policy { connection_properties { source_ip } }
        ld(17, &ld(2, b"GET")),                                            // cors: not in the subset
        ld(25, &ld(1, b"websocket")),                                      // upgrade_configs: not in the subset
        ld(30, &[ld(1, b"mirror"), ld(3, &ld(1, &v(1, 10)))].concat()),    // request_mirror_policies
        ld(32, &[ld(1, &ld(2, b"^/a/(.*)$")), ld(2, b"/b/\\1")].concat()), // regex_rewrite
        ld(36, &[ld(1, &secs(3)), ld(2, &secs(0))].concat()),              // max_stream_duration
        v(38, 1),                                                          // append_x_forwarded_host: not in the subset
    ]
    .concat();

    let a = route::RouteAction::decode(bytes.as_slice()).expect("RouteAction decodes");
    use route::route_action::{hash_policy, ClusterSpecifier, HostRewriteSpecifier};
    let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else { panic!("{:?}", a.cluster_specifier) };
    assert_eq!(w.clusters.len(), 2);
    assert_eq!((w.clusters[0].name.as_str(), w.clusters[0].weight), ("v1", Some(80)));
    assert_eq!((w.clusters[1].name.as_str(), w.clusters[1].weight), ("v2", Some(20)));
    let added = w.clusters[1].request_headers_to_add[0].header.as_ref().unwrap();
    assert_eq!((added.key.as_str(), added.value.as_str()), ("x-canary", "1"));
    assert_eq!(w.clusters[1].response_headers_to_remove, ["server"]);
    assert_eq!(w.total_weight, Some(100));
    assert_eq!(a.prefix_rewrite, "/v2/");
    assert_eq!(a.host_rewrite_specifier, Some(HostRewriteSpecifier::HostRewriteLiteral("reviews.example".into())));
    assert_eq!(a.timeout, dur(2, 0));

    let r = a.retry_policy.as_ref().expect("retry_policy");
    assert_eq!(r.retry_on, "5xx,connect-failure");
    assert_eq!(r.num_retries, Some(3));
    assert_eq!(r.per_try_timeout, dur(0, 250_000_000));
    assert_eq!(r.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts");
    assert_eq!(r.host_selection_retry_max_attempts, 5);
    assert_eq!(r.retriable_status_codes, [503, 504]);
    let backoff = r.retry_back_off.as_ref().expect("retry_back_off");
    assert_eq!((backoff.base_interval, backoff.max_interval), (dur(0, 25_000_000), dur(0, 250_000_000)));

    assert_eq!(a.hash_policy.len(), 2);
    assert_eq!(a.hash_policy[0].policy_specifier, Some(hash_policy::PolicySpecifier::Header(hash_policy::Header { header_name: "x-user".into() })));
    assert!(a.hash_policy[0].terminal);
    assert_eq!(
        a.hash_policy[1].policy_specifier,
        Some(hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true }))
    );

    let m = &a.request_mirror_policies[0];
    assert_eq!(m.cluster, "mirror");
    assert_eq!(m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()).map(|p| p.numerator), Some(10));
    let rw = a.regex_rewrite.as_ref().expect("regex_rewrite");
    assert_eq!(rw.pattern.as_ref().map(|p| p.regex.as_str()), Some("^/a/(.*)$"));
    assert_eq!(rw.substitution, "/b/\\1");
    let msd = a.max_stream_duration.as_ref().expect("max_stream_duration");
    assert_eq!((msd.max_stream_duration, msd.grpc_timeout_header_max), (dur(3, 0), dur(0, 0)));

    // cluster = 1 and cluster_header = 2 share the oneof with weighted_clusters = 3.
    let a = route::RouteAction::decode(ld(1, b"outbound|80||reviews").as_slice()).unwrap();
    assert_eq!(a.cluster_specifier, Some(ClusterSpecifier::Cluster("outbound|80||reviews".into())));
    let a = route::RouteAction::decode(ld(2, b"x-cluster").as_slice()).unwrap();
    assert_eq!(a.cluster_specifier, Some(ClusterSpecifier::ClusterHeader("x-cluster".into())));
    // A cluster specifier outside the subset (cluster_specifier_plugin = 37) leaves the oneof empty.
    let a = route::RouteAction::decode(ld(37, b"plugin").as_slice()).unwrap();
    assert_eq!(a.cluster_specifier, None);
}

#[test]
fn route_match_and_matchers_decode_envoy_bytes() {
    use route::header_matcher::HeaderMatchSpecifier as H;
    use route::route_match::PathSpecifier;
    let string_exact = |s: &[u8]| ld(1, s); // StringMatcher { exact = 1 }
    let headers = [
        // string_match = 13 { exact }, invert_match = 8, treat_missing_header_as_empty = 14
        ld(6, &[ld(1, b"end-user"), ld(13, &string_exact(b"jason")), v(8, 1), v(14, 1)].concat()),
        // present_match = 7 set to false: the header must be absent
        ld(6, &[ld(1, b"x-debug"), v(7, 0)].concat()),
        // the older forms: prefix_match = 9, safe_regex_match = 11 { regex = 2 }, range_match = 6 { start, end }
        ld(6, &[ld(1, b"a"), ld(9, b"pre")].concat()),
        ld(6, &[ld(1, b"b"), ld(11, &ld(2, b"v[0-9]+"))].concat()),
        ld(6, &[ld(1, b"c"), ld(6, &[v(1, 10), v(2, 20)].concat())].concat()),
        // exact_match = 4, suffix_match = 10, contains_match = 12
        ld(6, &[ld(1, b":method"), ld(4, b"GET")].concat()),
        ld(6, &[ld(1, b"d"), ld(10, b"suf")].concat()),
        ld(6, &[ld(1, b"e"), ld(12, b"mid")].concat()),
    ]
    .concat();
    let query = [
        // string_match = 5 { prefix = 2, ignore_case = 6 }
        ld(7, &[ld(1, b"q"), ld(5, &[ld(2, b"ab"), v(6, 1)].concat())].concat()),
        // present_match = 6
        ld(7, &[ld(1, b"flag"), v(6, 1)].concat()),
    ]
    .concat();
    let bytes = [
        ld(1, b"/api"),  // prefix
        ld(4, &v(1, 0)), // case_sensitive = false
        headers,
        query,
        ld(8, &[]),                                  // grpc: not in the subset
        ld(9, &ld(1, &[v(1, 5), v(2, 1)].concat())), // runtime_fraction { default_value }
    ]
    .concat();
    let m = route::RouteMatch::decode(bytes.as_slice()).expect("RouteMatch decodes");
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    assert_eq!(m.case_sensitive, Some(false));
    let h = &m.headers;
    assert_eq!(h.len(), 8);
    assert_eq!(h[0].name, "end-user");
    let Some(H::StringMatch(sm)) = &h[0].header_match_specifier else { panic!("{:?}", h[0]) };
    assert_eq!(sm.match_pattern, Some(matcher::string_matcher::MatchPattern::Exact("jason".into())));
    assert!(h[0].invert_match && h[0].treat_missing_header_as_empty);
    assert_eq!(h[1].header_match_specifier, Some(H::PresentMatch(false)));
    assert_eq!(h[2].header_match_specifier, Some(H::PrefixMatch("pre".into())));
    let Some(H::SafeRegexMatch(re)) = &h[3].header_match_specifier else { panic!("{:?}", h[3]) };
    assert_eq!(re.regex, "v[0-9]+");
    assert_eq!(h[4].header_match_specifier, Some(H::RangeMatch(types::Int64Range { start: 10, end: 20 })));
    assert_eq!(h[5].header_match_specifier, Some(H::ExactMatch("GET".into())));
    assert_eq!(h[6].header_match_specifier, Some(H::SuffixMatch("suf".into())));
    assert_eq!(h[7].header_match_specifier, Some(H::ContainsMatch("mid".into())));
    let q = &m.query_parameters;
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let Some(Q::StringMatch(sm)) = &q[0].query_parameter_match_specifier else { panic!("{:?}", q[0]) };
    assert_eq!(sm.match_pattern, Some(matcher::string_matcher::MatchPattern::Prefix("ab".into())));
    assert!(sm.ignore_case);
    assert_eq!(q[1].query_parameter_match_specifier, Some(Q::PresentMatch(true)));
    let rf = m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()).expect("runtime_fraction");
    assert_eq!((rf.numerator, rf.denominator), (5, types::fractional_percent::DenominatorType::TenThousand as i32));

    // The other path specifiers: path = 2, safe_regex = 10, path_separated_prefix = 14.
    let m = route::RouteMatch::decode(ld(2, b"/exact").as_slice()).unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Path("/exact".into())));
    let m = route::RouteMatch::decode(ld(10, &ld(2, b"/v[12]/.*")).as_slice()).unwrap();
    let Some(PathSpecifier::SafeRegex(re)) = m.path_specifier else { panic!() };
    assert_eq!(re.regex, "/v[12]/.*");
    let m = route::RouteMatch::decode(ld(14, b"/api").as_slice()).unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::PathSeparatedPrefix("/api".into())));
    // StringMatcher's other patterns: suffix = 3, safe_regex = 5, contains = 7.
    use matcher::string_matcher::MatchPattern as P;
    let s = |b: Vec<u8>| matcher::StringMatcher::decode(b.as_slice()).unwrap().match_pattern;
    assert_eq!(s(ld(3, b"z")), Some(P::Suffix("z".into())));
    assert_eq!(s(ld(7, b"z")), Some(P::Contains("z".into())));
    assert!(matches!(s(ld(5, &ld(2, b"z+"))), Some(P::SafeRegex(r)) if r.regex == "z+"));
}

#[test]
fn route_configuration_with_fault_redirect_and_direct_response() {
    let delay = [
        ld(3, &secs(2)),              // fixed_delay
        ld(4, &[v(1, 100)].concat()), // percentage { numerator 100, HUNDRED }
    ]
    .concat();
    let abort = [
        v(2, 503),                   // http_status
        ld(3, &[v(1, 50)].concat()), // percentage { numerator 50 }
    ]
    .concat();
    let http_fault = [ld(1, &delay), ld(2, &abort), ld(3, b"not-in-subset")].concat();
    let any = [ld(1, keel_proto::HTTP_FAULT_TYPE_URL.as_bytes()), ld(2, &http_fault)].concat(); // google.protobuf.Any
    let per_filter = [ld(1, b"envoy.filters.http.fault"), ld(2, &any)].concat(); // map entry { key, value }
    let routed = [
        ld(14, b"dark-launch"),                                                        // name
        ld(1, &ld(1, b"/")),                                                           // match { prefix }
        ld(2, &ld(1, b"outbound|9080|v2|reviews.default.svc.cluster.local")),          // route { cluster }
        ld(9, &ld(1, &[ld(1, b"x-req"), ld(2, b"1")].concat())),                       // request_headers_to_add
        ld(10, &[ld(1, &[ld(1, b"x-resp"), ld(2, b"2")].concat()), v(3, 2)].concat()), // response_headers_to_add, OVERWRITE_IF_EXISTS_OR_ADD
        ld(11, b"x-powered-by"),                                                       // response_headers_to_remove
        ld(12, b"cookie"),                                                             // request_headers_to_remove
        ld(13, &per_filter),                                                           // typed_per_filter_config
        ld(4, &ld(1, b"istio")),                                                       // metadata: not in the subset
        ld(5, &ld(1, b"reviews:9080/*")),                                              // decorator: not in the subset
    ]
    .concat();
    let redirect = [ld(1, &ld(1, b"/old")), ld(3, &[v(4, 1), ld(1, b"new.example"), v(8, 8443), ld(2, b"/new"), v(3, 3), v(6, 1)].concat())].concat();
    let direct = [ld(1, &ld(2, b"/health")), ld(7, &[v(1, 418), ld(2, &ld(3, b"teapot"))].concat())].concat();
    let vhost = [
        ld(1, b"reviews.default.svc.cluster.local:9080"), // name
        ld(2, b"reviews"),                                // domains
        ld(2, b"reviews.default.svc.cluster.local"),
        ld(3, &routed), // routes
        ld(3, &redirect),
        ld(3, &direct),
        ld(7, &ld(1, &[ld(1, b"x-vh"), ld(2, b"1")].concat())),         // request_headers_to_add
        ld(10, &ld(1, &[ld(1, b"x-vh-resp"), ld(3, b"raw")].concat())), // response_headers_to_add { header { raw_value } }
        ld(11, b"x-a"),                                                 // response_headers_to_remove
        ld(13, b"x-b"),                                                 // request_headers_to_remove
        v(14, 1),                                                       // include_request_attempt_count: not in the subset
        ld(16, &ld(1, b"5xx")),                                         // retry_policy
    ]
    .concat();
    let bytes = [ld(1, b"9080"), ld(2, &vhost), v(7, 0), v(14, 1)].concat(); // name, virtual_hosts, +2 unknown

    let rc = route::RouteConfiguration::decode(bytes.as_slice()).expect("RouteConfiguration decodes");
    assert_eq!(rc.name, "9080");
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.name, "reviews.default.svc.cluster.local:9080");
    assert_eq!(vh.domains, ["reviews", "reviews.default.svc.cluster.local"]);
    assert_eq!(vh.request_headers_to_add[0].header.as_ref().unwrap().key, "x-vh");
    assert_eq!(vh.response_headers_to_add[0].header.as_ref().unwrap().raw_value, b"raw");
    assert_eq!(vh.response_headers_to_remove, ["x-a"]);
    assert_eq!(vh.request_headers_to_remove, ["x-b"]);
    assert_eq!(vh.retry_policy.as_ref().unwrap().retry_on, "5xx");
    assert_eq!(vh.routes.len(), 3);

    let r = &vh.routes[0];
    assert_eq!(r.name, "dark-launch");
    let Some(route::route::Action::Route(a)) = &r.action else { panic!("{:?}", r.action) };
    assert_eq!(
        a.cluster_specifier,
        Some(route::route_action::ClusterSpecifier::Cluster("outbound|9080|v2|reviews.default.svc.cluster.local".into()))
    );
    assert_eq!(r.request_headers_to_add[0].header.as_ref().unwrap().value, "1");
    assert_eq!(r.response_headers_to_add[0].append_action, core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    assert_eq!(r.response_headers_to_remove, ["x-powered-by"]);
    assert_eq!(r.request_headers_to_remove, ["cookie"]);
    let any = &r.typed_per_filter_config["envoy.filters.http.fault"];
    assert_eq!(any.type_url, keel_proto::HTTP_FAULT_TYPE_URL);
    let f = fault::HttpFault::decode(any.value.as_slice()).expect("HTTPFault decodes");
    let d = f.delay.as_ref().expect("delay");
    assert_eq!(d.fault_delay_secifier, Some(fault_common::fault_delay::FaultDelaySecifier::FixedDelay(Duration { seconds: 2, nanos: 0 })));
    assert_eq!(d.percentage.as_ref().map(|p| (p.numerator, p.denominator)), Some((100, 0)));
    let ab = f.abort.as_ref().expect("abort");
    assert_eq!(ab.error_type, Some(fault::fault_abort::ErrorType::HttpStatus(503)));
    assert_eq!(ab.percentage.as_ref().map(|p| p.numerator), Some(50));
    // gRPC aborts use grpc_status = 5.
    let ab = fault::FaultAbort::decode(v(5, 14).as_slice()).unwrap();
    assert_eq!(ab.error_type, Some(fault::fault_abort::ErrorType::GrpcStatus(14)));

    let Some(route::route::Action::Redirect(rd)) = &vh.routes[1].action else { panic!() };
    use route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    assert_eq!(rd.scheme_rewrite_specifier, Some(SchemeRewriteSpecifier::HttpsRedirect(true)));
    assert_eq!((rd.host_redirect.as_str(), rd.port_redirect), ("new.example", 8443));
    assert_eq!(rd.path_rewrite_specifier, Some(PathRewriteSpecifier::PathRedirect("/new".into())));
    assert_eq!(rd.response_code, RedirectResponseCode::TemporaryRedirect as i32);
    assert!(rd.strip_query);

    let Some(route::route::Action::DirectResponse(dr)) = &vh.routes[2].action else { panic!() };
    assert_eq!(dr.status, 418);
    assert_eq!(dr.body.as_ref().unwrap().specifier, Some(core::data_source::Specifier::InlineString("teapot".into())));
}

#[test]
fn cluster_decodes_envoy_bytes() {
    let bytes = [
        ld(1, b"outbound|9080|v1|reviews.default.svc.cluster.local"), // name
        v(2, 3),                                                      // type = EDS
        ld(3, &[ld(1, &ld(3, &[])), ld(2, b"svc-v1")].concat()),      // eds_cluster_config { eds_config { ads }, service_name }
        ld(4, &secs(10)),                                             // connect_timeout
        v(6, 1),                                                      // lb_policy = LEAST_REQUEST
        ld(9, &wrapped(1)),                                           // max_requests_per_connection
        // circuit_breakers { thresholds { priority, max_connections, max_pending_requests, max_requests, max_retries,
        // track_remaining (not in the subset) } }
        ld(10, &ld(1, &[v(1, 0), ld(2, &wrapped(100)), ld(3, &wrapped(10)), ld(4, &wrapped(200)), ld(5, &wrapped(4)), v(6, 1)].concat())),
        ld(14, &v(2, 100)), // http2_protocol_options (its own fields are skipped)
        ld(
            19,
            &[
                ld(1, &wrapped(3)),    // consecutive_5xx
                ld(2, &secs(1)),       // interval
                ld(3, &secs(30)),      // base_ejection_time
                ld(4, &wrapped(50)),   // max_ejection_percent
                ld(5, &wrapped(100)),  // enforcing_consecutive_5xx
                ld(6, &wrapped(0)),    // enforcing_success_rate
                ld(10, &wrapped(2)),   // consecutive_gateway_failure
                ld(11, &wrapped(100)), // enforcing_consecutive_gateway_failure
                v(12, 1),              // split_external_local_origin_errors
                ld(13, &wrapped(4)),   // consecutive_local_origin_failure
                ld(14, &wrapped(100)), // enforcing_consecutive_local_origin_failure
            ]
            .concat(),
        ), // outlier_detection
        ld(24, &ld(1, b"envoy.transport_sockets.tls")), // transport_socket: not in the subset
        // common_lb_config { healthy_panic_threshold { value }, locality_weighted_lb_config }
        ld(27, &[ld(1, &f64_field(1, 25.0)), ld(3, &[])].concat()),
        ld(36, &ld(1, b"envoy.extensions.upstreams.http.v3.HttpProtocolOptions")), // typed_extension_protocol_options: skipped
        ld(37, &ld(1, &wrapped(3))),                                               // least_request_lb_config { choice_count }
    ]
    .concat();
    let c = cluster::Cluster::decode(bytes.as_slice()).expect("Cluster decodes");
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};
    assert_eq!(c.name, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)));
    let eds = c.eds_cluster_config.as_ref().expect("eds_cluster_config");
    assert_eq!(eds.service_name, "svc-v1");
    assert!(matches!(
        eds.eds_config.as_ref().and_then(|s| s.config_source_specifier.as_ref()),
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(c.connect_timeout, dur(10, 0));
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
    assert_eq!(c.max_requests_per_connection, Some(1));
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.priority, core::RoutingPriority::Default as i32);
    assert_eq!((t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries), (Some(100), Some(10), Some(200), Some(4)));
    assert!(c.http2_protocol_options.is_some());
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!((od.consecutive_5xx, od.interval, od.base_ejection_time), (Some(3), dur(1, 0), dur(30, 0)));
    assert_eq!((od.max_ejection_percent, od.enforcing_consecutive_5xx, od.enforcing_success_rate), (Some(50), Some(100), Some(0)));
    assert_eq!((od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure), (Some(2), Some(100)));
    assert!(od.split_external_local_origin_errors);
    assert_eq!((od.consecutive_local_origin_failure, od.enforcing_consecutive_local_origin_failure), (Some(4), Some(100)));
    let common = c.common_lb_config.as_ref().unwrap();
    assert_eq!(common.healthy_panic_threshold, Some(types::Percent { value: 25.0 }));
    assert!(matches!(
        common.locality_config_specifier,
        Some(cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));
    assert_eq!(c.lb_config, Some(LbConfig::LeastRequestLbConfig(cluster::cluster::LeastRequestLbConfig { choice_count: Some(3) })));

    // The other LB configs and the enum values of LbPolicy and DiscoveryType.
    let c =
        cluster::Cluster::decode([v(6, 2), ld(23, &[ld(1, &wrapped(2048)), v(3, 1), ld(4, &wrapped(4096))].concat())].concat().as_slice()).unwrap();
    assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
    let Some(LbConfig::RingHashLbConfig(rh)) = c.lb_config else { panic!() };
    assert_eq!((rh.minimum_ring_size, rh.hash_function, rh.maximum_ring_size), (Some(2048), 1, Some(4096)));
    let c = cluster::Cluster::decode([v(6, 5), ld(52, &ld(1, &wrapped(65537)))].concat().as_slice()).unwrap();
    assert_eq!(c.lb_policy, LbPolicy::Maglev as i32);
    assert_eq!(c.lb_config, Some(LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig { table_size: Some(65537) })));
    assert_eq!([LbPolicy::RoundRobin as i32, LbPolicy::Random as i32], [0, 3]);
    assert_eq!([DiscoveryType::Static as i32, DiscoveryType::StrictDns as i32, DiscoveryType::OriginalDst as i32], [0, 1, 4]);
}

#[test]
fn cluster_load_assignment_decodes_envoy_bytes() {
    let socket = [ld(2, b"10.0.0.7"), v(3, 9080)].concat(); // SocketAddress { address, port_value }
    let lb_endpoint = [
        ld(1, &[ld(1, &ld(1, &socket)), ld(3, b"reviews-v1-0")].concat()), // endpoint { address { socket_address }, hostname }
        v(2, 1),                                                           // health_status = HEALTHY
        ld(3, &ld(1, &[ld(1, b"istio"), ld(2, &[])].concat())),            // metadata { filter_metadata["istio"] }
        ld(4, &wrapped(2)),                                                // load_balancing_weight
    ]
    .concat();
    let locality = [ld(1, b"eu"), ld(2, b"eu-1a"), ld(3, b"rack1")].concat();
    let group = [
        ld(1, &locality),    // locality
        ld(2, &lb_endpoint), // lb_endpoints
        ld(2, &v(2, 3)),     // lb_endpoints { health_status = DRAINING }
        ld(3, &wrapped(7)),  // load_balancing_weight
        v(5, 1),             // priority
        ld(9, &ld(1, &[])),  // metadata: not in the subset
    ]
    .concat();
    let bytes = [ld(1, b"outbound|9080|v1|reviews"), ld(2, &group), ld(4, &ld(3, &wrapped(140)))].concat(); // + policy: skipped
    let cla = endpoint::ClusterLoadAssignment::decode(bytes.as_slice()).expect("ClusterLoadAssignment decodes");
    assert_eq!(cla.cluster_name, "outbound|9080|v1|reviews");
    let g = &cla.endpoints[0];
    assert_eq!(g.locality, Some(core::Locality { region: "eu".into(), zone: "eu-1a".into(), sub_zone: "rack1".into() }));
    assert_eq!((g.load_balancing_weight, g.priority), (Some(7), 1));
    let e = &g.lb_endpoints[0];
    let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!("{e:?}") };
    assert_eq!(ep.hostname, "reviews-v1-0");
    let Some(core::address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.clone()) else { panic!() };
    assert_eq!((sa.address.as_str(), sa.port_specifier), ("10.0.0.7", Some(core::socket_address::PortSpecifier::PortValue(9080))));
    assert_eq!(sa.protocol, core::socket_address::Protocol::Tcp as i32);
    assert_eq!(e.health_status, core::HealthStatus::Healthy as i32);
    assert!(e.metadata.as_ref().unwrap().filter_metadata.contains_key("istio"));
    assert_eq!(e.load_balancing_weight, Some(2));
    assert_eq!(g.lb_endpoints[1].health_status, core::HealthStatus::Draining as i32);
    assert_eq!(
        [core::HealthStatus::Unknown, core::HealthStatus::Unhealthy, core::HealthStatus::Timeout, core::HealthStatus::Degraded].map(|s| s as i32),
        [0, 2, 4, 5]
    );
}

#[test]
fn listener_with_http_connection_manager_decodes_envoy_bytes() {
    let hcm_bytes = [
        v(1, 0),                                                                   // codec_type = AUTO
        ld(2, b"inbound_0.0.0.0_9080"),                                            // stat_prefix
        ld(3, &[ld(1, &[ld(3, &[]), v(6, 2)].concat()), ld(2, b"9080")].concat()), // rds { config_source { ads, V3 }, route_config_name }
        ld(5, &[ld(1, b"envoy.filters.http.fault"), ld(4, &ld(1, keel_proto::HTTP_FAULT_TYPE_URL.as_bytes()))].concat()),
        ld(
            5,
            &[ld(1, b"envoy.filters.http.router"), ld(4, &ld(1, b"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")), v(6, 0)]
                .concat(),
        ),
        ld(13, &ld(1, b"envoy.access_loggers.file")), // access_log: not in the subset
        ld(24, &secs(300)),                           // stream_idle_timeout: not in the subset
    ]
    .concat();
    let hcm_any = [ld(1, keel_proto::HTTP_CONNECTION_MANAGER_TYPE_URL.as_bytes()), ld(2, &hcm_bytes)].concat();
    let chain = [
        ld(1, &[ld(3, &[ld(1, b"10.0.0.0"), ld(2, &wrapped(8))].concat()), ld(8, &wrapped(9080)), ld(9, b"raw_buffer"), ld(10, b"h2c")].concat()), // filter_chain_match
        ld(3, &[ld(1, b"envoy.filters.network.http_connection_manager"), ld(4, &hcm_any)].concat()), // filters
        ld(6, &ld(1, b"envoy.transport_sockets.tls")),                                               // transport_socket: not in the subset
        ld(7, b"0.0.0.0_9080"),                                                                      // name
    ]
    .concat();
    let bytes = [
        ld(1, b"0.0.0.0_9080"),                                   // name
        ld(2, &ld(1, &[ld(2, b"0.0.0.0"), v(3, 9080)].concat())), // address { socket_address }
        ld(3, &chain),                                            // filter_chains
        ld(4, &v(1, 1)),                                          // use_original_dst: not in the subset
        v(16, 1),                                                 // traffic_direction: not in the subset
        ld(25, &ld(7, b"default")),                               // default_filter_chain { name }
    ]
    .concat();
    let l = listener::Listener::decode(bytes.as_slice()).expect("Listener decodes");
    assert_eq!(l.name, "0.0.0.0_9080");
    assert!(matches!(l.address.as_ref().and_then(|a| a.address.as_ref()), Some(core::address::Address::SocketAddress(s)) if s.address == "0.0.0.0"));
    assert_eq!(l.default_filter_chain.as_ref().map(|c| c.name.as_str()), Some("default"));
    let fc = &l.filter_chains[0];
    assert_eq!(fc.name, "0.0.0.0_9080");
    let m = fc.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.destination_port, Some(9080));
    assert_eq!(m.prefix_ranges, [core::CidrRange { address_prefix: "10.0.0.0".into(), prefix_len: Some(8) }]);
    assert_eq!(m.transport_protocol, "raw_buffer");
    assert_eq!(m.application_protocols, ["h2c"]);
    let f = &fc.filters[0];
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!() };
    assert_eq!(any.type_url, keel_proto::HTTP_CONNECTION_MANAGER_TYPE_URL);
    let h = hcm::HttpConnectionManager::decode(any.value.as_slice()).expect("HttpConnectionManager decodes");
    assert_eq!(h.codec_type, hcm::http_connection_manager::CodecType::Auto as i32);
    assert_eq!(h.stat_prefix, "inbound_0.0.0.0_9080");
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = &h.route_specifier else { panic!() };
    assert_eq!(rds.route_config_name, "9080");
    assert_eq!(rds.config_source.as_ref().map(|s| s.resource_api_version), Some(core::ApiVersion::V3 as i32));
    assert_eq!(h.http_filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["envoy.filters.http.fault", "envoy.filters.http.router"]);
    // route_config = 4: the route table inline.
    let h = hcm::HttpConnectionManager::decode(ld(4, &ld(1, b"inline")).as_slice()).unwrap();
    assert!(matches!(h.route_specifier, Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) if rc.name == "inline"));
}

/// Resources built with the generated types survive encode/decode unchanged (nothing lost in the subset).
#[test]
fn resources_round_trip() {
    use route::route_action::ClusterSpecifier;
    let hv = |k: &str, v: &str| core::HeaderValueOption {
        header: Some(core::HeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
        append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let pct = |n| types::FractionalPercent { numerator: n, denominator: types::fractional_percent::DenominatorType::Hundred as i32 };
    let http_fault = fault::HttpFault {
        delay: Some(fault_common::FaultDelay {
            fault_delay_secifier: Some(fault_common::fault_delay::FaultDelaySecifier::FixedDelay(Duration { seconds: 2, nanos: 0 })),
            percentage: Some(pct(100)),
        }),
        abort: Some(fault::FaultAbort { error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)), percentage: Some(pct(50)) }),
    };
    let rc =
        route::RouteConfiguration {
            name: "9080".into(),
            virtual_hosts: vec![route::VirtualHost {
                name: "reviews:9080".into(),
                domains: vec!["reviews".into(), "reviews:9080".into()],
                routes: vec![route::Route {
                    name: "canary".into(),
                    r#match: Some(route::RouteMatch {
                        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                        headers: vec![route::HeaderMatcher {
                            name: "end-user".into(),
                            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
                                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("jason".into())),
                                ignore_case: false,
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(route::WeightedCluster {
                            clusters: vec![
                                route::weighted_cluster::ClusterWeight { name: "v1".into(), weight: Some(80), ..Default::default() },
                                route::weighted_cluster::ClusterWeight {
                                    name: "v2".into(),
                                    weight: Some(20),
                                    request_headers_to_add: vec![hv("x-canary", "1")],
                                    ..Default::default()
                                },
                            ],
                            total_weight: None,
                        })),
                        timeout: dur(1, 0),
                        retry_policy: Some(route::RetryPolicy {
                            retry_on: "5xx,retriable-status-codes".into(),
                            num_retries: Some(3),
                            per_try_timeout: dur(0, 300_000_000),
                            retriable_status_codes: vec![500, 503],
                            retry_back_off: Some(route::retry_policy::RetryBackOff { base_interval: dur(0, 25_000_000), max_interval: None }),
                            ..Default::default()
                        }),
                        request_mirror_policies: vec![route::route_action::RequestMirrorPolicy {
                            cluster: "v2".into(),
                            runtime_fraction: Some(core::RuntimeFractionalPercent { default_value: Some(pct(10)), runtime_key: String::new() }),
                        }],
                        hash_policy: vec![route::route_action::HashPolicy {
                            policy_specifier: Some(route::route_action::hash_policy::PolicySpecifier::Cookie(
                                route::route_action::hash_policy::Cookie { name: "user".into(), ttl: dur(60, 0), path: "/".into() },
                            )),
                            terminal: false,
                        }],
                        ..Default::default()
                    })),
                    response_headers_to_add: vec![hv("x-served-by", "keel")],
                    typed_per_filter_config: [(
                        "envoy.filters.http.fault".to_string(),
                        Any { type_url: keel_proto::HTTP_FAULT_TYPE_URL.into(), value: http_fault.encode_to_vec() },
                    )]
                    .into(),
                    ..Default::default()
                }],
                retry_policy: Some(route::RetryPolicy { retry_on: "connect-failure".into(), ..Default::default() }),
                ..Default::default()
            }],
        };
    assert_eq!(route::RouteConfiguration::decode(rc.encode_to_vec().as_slice()).unwrap(), rc);
    let any = &rc.virtual_hosts[0].routes[0].typed_per_filter_config["envoy.filters.http.fault"];
    assert_eq!(fault::HttpFault::decode(any.value.as_slice()).unwrap(), http_fault);

    let cla = endpoint::ClusterLoadAssignment {
        cluster_name: "outbound|9080|v1|reviews".into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality { region: "eu".into(), zone: "eu-1a".into(), sub_zone: String::new() }),
            lb_endpoints: vec![endpoint::LbEndpoint {
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address: "10.0.0.7".into(),
                            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(9080)),
                            ..Default::default()
                        })),
                    }),
                    hostname: String::new(),
                })),
                health_status: core::HealthStatus::Healthy as i32,
                metadata: None,
                load_balancing_weight: Some(1),
            }],
            load_balancing_weight: Some(1),
            priority: 0,
        }],
    };
    let c = cluster::Cluster {
        name: "outbound|9080|v1|reviews".into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
                initial_fetch_timeout: None,
                resource_api_version: core::ApiVersion::V3 as i32,
            }),
            service_name: String::new(),
        }),
        connect_timeout: dur(10, 0),
        lb_policy: cluster::cluster::LbPolicy::RingHash as i32,
        circuit_breakers: Some(cluster::CircuitBreakers {
            thresholds: vec![cluster::circuit_breakers::Thresholds { max_connections: Some(1), max_pending_requests: Some(1), ..Default::default() }],
        }),
        outlier_detection: Some(cluster::OutlierDetection { consecutive_5xx: Some(1), base_ejection_time: dur(180, 0), ..Default::default() }),
        lb_config: Some(cluster::cluster::LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
            minimum_ring_size: Some(1024),
            ..Default::default()
        })),
        load_assignment: Some(cla.clone()),
        ..Default::default()
    };
    assert_eq!(endpoint::ClusterLoadAssignment::decode(cla.encode_to_vec().as_slice()).unwrap(), cla);
    assert_eq!(cluster::Cluster::decode(c.encode_to_vec().as_slice()).unwrap(), c);

    let h = hcm::HttpConnectionManager {
        stat_prefix: "inbound_9080".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc.clone())),
        http_filters: vec![hcm::HttpFilter { name: "envoy.filters.http.router".into(), ..Default::default() }],
        ..Default::default()
    };
    let l = listener::Listener {
        name: "0.0.0.0_9080".into(),
        filter_chains: vec![listener::FilterChain {
            filter_chain_match: Some(listener::FilterChainMatch { destination_port: Some(9080), ..Default::default() }),
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
                    type_url: keel_proto::HTTP_CONNECTION_MANAGER_TYPE_URL.into(),
                    value: h.encode_to_vec(),
                })),
            }],
            name: String::new(),
            transport_socket: None,
        }],
        ..Default::default()
    };
    let back = listener::Listener::decode(l.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, l);
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &back.filter_chains[0].filters[0].config_type else { panic!() };
    assert_eq!(hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap(), h);
}

/// The type URLs a node proxy subscribes to are Envoy's.
#[test]
fn type_urls() {
    assert_eq!(keel_proto::LISTENER_TYPE_URL, "type.googleapis.com/envoy.config.listener.v3.Listener");
    assert_eq!(keel_proto::ROUTE_CONFIGURATION_TYPE_URL, "type.googleapis.com/envoy.config.route.v3.RouteConfiguration");
    assert_eq!(keel_proto::CLUSTER_TYPE_URL, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
}

/// A gateway's TLS filter chain as istiod sends it: SNI names, the tls transport socket with a
/// DownstreamTlsContext naming its certificate and CA over SDS, and the Secret resources themselves.
#[test]
fn tls_filter_chain_and_secrets_decode_envoy_bytes() {
    let ads = ld(3, &[]); // ConfigSource.ads = 3 (AggregatedConfigSource {})
    let sds = |name: &str| [ld(1, name.as_bytes()), ld(2, &ads)].concat(); // SdsSecretConfig: name = 1, sds_config = 2
    let common = [
        ld(1, &[v(1, 3), v(2, 4), ld(3, b"ECDHE-RSA-AES128-GCM-SHA256")].concat()), // tls_params: min = 1 (TLSv1_2 = 3), max = 2 (TLSv1_3 = 4), cipher_suites = 3
        ld(4, b"h2"),                                                               // alpn_protocols = 4
        ld(6, &sds("kubernetes://web")),                                            // tls_certificate_sds_secret_configs = 6
        // combined_validation_context = 8: default_validation_context = 1 { match_subject_alt_names = 9 { exact = 1 } },
        // validation_context_sds_secret_config = 2
        ld(8, &[ld(1, &ld(9, &ld(1, b"client.example.com"))), ld(2, &sds("kubernetes://web-cacert"))].concat()),
        ld(15, b"key_log is outside the subset"),
    ]
    .concat();
    // DownstreamTlsContext: common_tls_context = 1, require_client_certificate = 2 (BoolValue), require_sni = 3.
    let context = [ld(1, &common), ld(2, &v(1, 1)), ld(3, &v(1, 0))].concat();
    let socket =
        [ld(1, b"envoy.transport_sockets.tls"), ld(3, &[ld(1, keel_proto::DOWNSTREAM_TLS_CONTEXT_TYPE_URL.as_bytes()), ld(2, &context)].concat())]
            .concat();
    // FilterChain: filter_chain_match = 1 { server_names = 11 }, transport_socket = 6, name = 7.
    let chain = [ld(1, &ld(11, b"web.example.com")), ld(6, &socket), ld(7, b"https.443.https.gw.ns")].concat();
    let decoded = listener::FilterChain::decode(chain.as_slice()).unwrap();
    assert_eq!(decoded.filter_chain_match.unwrap().server_names, ["web.example.com"]);
    let socket = decoded.transport_socket.unwrap();
    assert_eq!(socket.name, keel_proto::TLS_TRANSPORT_SOCKET);
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = socket.config_type else { panic!("typed_config = 3") };
    let context = tls::DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!((context.require_client_certificate, context.require_sni), (Some(true), Some(false)));
    let common = context.common_tls_context.unwrap();
    let params = common.tls_params.unwrap();
    assert_eq!(
        (params.tls_minimum_protocol_version(), params.tls_maximum_protocol_version(), params.cipher_suites.as_slice()),
        (tls::tls_parameters::TlsProtocol::TlSv12, tls::tls_parameters::TlsProtocol::TlSv13, &["ECDHE-RSA-AES128-GCM-SHA256".to_owned()][..])
    );
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes://web");
    let Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(combined)) = common.validation_context_type else {
        panic!("combined = 8")
    };
    assert_eq!(combined.validation_context_sds_secret_config.unwrap().name, "kubernetes://web-cacert");
    assert_eq!(
        combined.default_validation_context.unwrap().match_subject_alt_names[0].match_pattern,
        Some(matcher::string_matcher::MatchPattern::Exact("client.example.com".into()))
    );

    // Secret: name = 1, tls_certificate = 2 { certificate_chain = 1, private_key = 2 } (DataSource inline_bytes = 2),
    // validation_context = 4 { trusted_ca = 1 }.
    let secret = [ld(1, b"kubernetes://web"), ld(2, &[ld(1, &ld(2, b"CHAIN")), ld(2, &ld(2, b"KEY"))].concat())].concat();
    let decoded = tls::Secret::decode(secret.as_slice()).unwrap();
    let Some(tls::secret::Type::TlsCertificate(c)) = decoded.r#type else { panic!("tls_certificate = 2") };
    assert_eq!(c.certificate_chain.unwrap().specifier, Some(core::data_source::Specifier::InlineBytes(b"CHAIN".to_vec())));
    assert_eq!(c.private_key.unwrap().specifier, Some(core::data_source::Specifier::InlineBytes(b"KEY".to_vec())));
    let ca = [ld(1, b"kubernetes://web-cacert"), ld(4, &ld(1, &ld(2, b"CA")))].concat();
    let Some(tls::secret::Type::ValidationContext(v)) = tls::Secret::decode(ca.as_slice()).unwrap().r#type else { panic!("validation_context = 4") };
    assert_eq!(v.trusted_ca.unwrap().specifier, Some(core::data_source::Specifier::InlineBytes(b"CA".to_vec())));
    assert_eq!(keel_proto::SECRET_TYPE_URL, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
}
