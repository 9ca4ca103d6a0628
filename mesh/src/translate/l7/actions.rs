//! The parts of a route's action that translate field by field from a VirtualService http route: retries,
//! fault injection, mirroring, header operations, redirects, direct responses, and the DestinationRule's
//! consistent-hash key.
use std::time::Duration;

use keel_proto::{
    core::{data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent},
    fault::{fault_abort, FaultAbort, HttpFault},
    fault_common::{fault_delay, FaultDelay},
    route::{
        redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
        retry_policy::{retry_host_predicate, RetryHostPredicate},
        route_action::{hash_policy, HashPolicy},
        DirectResponseAction, RedirectAction, RetryPolicy,
    },
    types::{fractional_percent::DenominatorType, FractionalPercent},
};
use prost_types::Any;

use super::clusters::duration;
use crate::objects::{
    HashKey, HeaderOperations, HttpBody, HttpDirectResponse, HttpFaultInjection, HttpRedirect, HttpRetry, LoadBalancerSettings, Percent,
};

/// Istio's retry default for routes without `retries`: two retries of failures that never reached the
/// application (or were refused with 503), on another host.
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// How hard Envoy looks for a host not yet tried, as Istio sets it.
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 5;

/// Istio's percentages (0-100, fractions allowed) as parts per million, the precision it sends.
pub fn fraction(percent: Option<Percent>) -> FractionalPercent {
    let value = percent.map_or(100.0, |p| p.value);
    FractionalPercent { numerator: (value * 10_000.0).round() as u32, denominator: DenominatorType::Million as i32 }
}

pub fn runtime_fraction(percent: Option<Percent>) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent { default_value: Some(fraction(percent)), runtime_key: String::new() }
}

/// `retries` → RetryPolicy; `attempts: 0` turns retries off (no policy), no `retries` gets Istio's default.
pub fn retry_policy(retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let previous_hosts = RetryHostPredicate {
        name: PREVIOUS_HOSTS_PREDICATE.into(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any { type_url: PREVIOUS_HOSTS_TYPE_URL.into(), value: vec![] })),
    };
    let mut policy = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(2),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        ..Default::default()
    };
    let Some(retries) = retries else { return Some(policy) };
    if retries.attempts <= 0 {
        return None;
    }
    policy.num_retries = Some(retries.attempts as u32);
    policy.per_try_timeout = retries.per_try_timeout.map(|d| duration(d.get()));
    if retries.conditions().next().is_some() {
        // Istio lets status codes stand in the list of conditions: they become retriable-status-codes.
        let (codes, conditions): (Vec<&str>, Vec<&str>) = retries.conditions().partition(|c| c.parse::<u32>().is_ok());
        let mut retry_on: Vec<&str> = conditions;
        policy.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        if !policy.retriable_status_codes.is_empty() && !retry_on.contains(&"retriable-status-codes") {
            retry_on.push("retriable-status-codes");
        }
        policy.retry_on = retry_on.join(",");
    }
    Some(policy)
}

/// `fault` → the HTTPFault carried per route under the fault filter's name; a missing percentage means 100 %.
pub fn http_fault(fault: &HttpFaultInjection) -> Any {
    let delay = fault.delay.as_ref().map(|d| FaultDelay {
        percentage: Some(fraction(d.percentage)),
        fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(d.fixed_delay.get()))),
    });
    let abort = fault.abort.as_ref().map(|a| FaultAbort {
        percentage: Some(fraction(a.percentage)),
        error_type: match (&a.http_status, &a.grpc_status) {
            (_, Some(grpc)) => Some(fault_abort::ErrorType::GrpcStatus(grpc_code(grpc))),
            (Some(http), None) => Some(fault_abort::ErrorType::HttpStatus(*http as u32)),
            (None, None) => None,
        },
    });
    use prost::Message as _;
    Any { type_url: keel_proto::HTTP_FAULT_TYPE_URL.into(), value: HttpFault { delay, abort }.encode_to_vec() }
}

/// gRPC status names in code order (the index is the code), as Istio's `grpcStatus` takes them.
pub(crate) const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC status names to their codes; an unknown name is UNKNOWN (2).
fn grpc_code(name: &str) -> u32 {
    name.parse().ok().or_else(|| GRPC_STATUS_NAMES.iter().position(|c| c.eq_ignore_ascii_case(name)).map(|i| i as u32)).unwrap_or(2)
}

/// `set` overwrites, `add` appends, `remove` removes — Istio's header operation semantics.
pub fn headers_to_add(operations: Option<&HeaderOperations>) -> Vec<HeaderValueOption> {
    let Some(ops) = operations else { return vec![] };
    let option = |(key, value): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: key.clone(), value: value.clone(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    ops.set
        .iter()
        .map(|kv| option(kv, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(ops.add.iter().map(|kv| option(kv, HeaderAppendAction::AppendIfExistsOrAdd)))
        .collect()
}

pub fn headers_to_remove(operations: Option<&HeaderOperations>) -> Vec<String> {
    operations.map(|ops| ops.remove.clone()).unwrap_or_default()
}

/// The DestinationRule's consistent-hash key, carried by the routes that lead to the cluster.
pub fn hash_policy(load_balancer: Option<&LoadBalancerSettings>) -> Option<HashPolicy> {
    let key = load_balancer?.consistent_hash.as_ref()?.key().ok()?;
    let policy_specifier = match key {
        HashKey::Header(name) => hash_policy::PolicySpecifier::Header(hash_policy::Header { header_name: name.to_owned() }),
        HashKey::Cookie(cookie) => hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|d| duration(d.get())),
            path: cookie.path.clone().unwrap_or_default(),
        }),
        HashKey::SourceIp => hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true }),
        HashKey::QueryParameter(name) => hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.to_owned() }),
    };
    Some(HashPolicy { policy_specifier: Some(policy_specifier), terminal: false })
}

/// `redirect` → RedirectAction; an unsupported `redirectCode` is a warning and 301 (Istio's default) is used.
pub fn redirect(redirect: &HttpRedirect, warn: &mut dyn FnMut(String)) -> RedirectAction {
    let response_code = match redirect.redirect_code.unwrap_or(301) {
        301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        other => {
            warn(format!("redirect.redirectCode: {other} is not a redirect code Envoy can send: 301 used"));
            RedirectResponseCode::MovedPermanently
        }
    };
    RedirectAction {
        host_redirect: redirect.authority.clone().unwrap_or_default(),
        port_redirect: redirect.port.unwrap_or(0),
        response_code: response_code as i32,
        strip_query: false,
        scheme_rewrite_specifier: redirect.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: redirect.uri.clone().map(PathRewriteSpecifier::PathRedirect),
    }
}

pub fn direct_response(response: &HttpDirectResponse) -> DirectResponseAction {
    let body = response.body.as_ref().map(|b| DataSource {
        specifier: Some(match b {
            HttpBody::String(text) => data_source::Specifier::InlineString(text.clone()),
            HttpBody::Bytes(bytes) => data_source::Specifier::InlineBytes(bytes.clone()),
        }),
    });
    DirectResponseAction { status: response.status, body }
}

/// Istio turns Envoy's 15 s default route timeout off: no `timeout` means none.
pub fn timeout(timeout: Option<Duration>) -> prost_types::Duration {
    duration(timeout.unwrap_or(Duration::ZERO))
}
