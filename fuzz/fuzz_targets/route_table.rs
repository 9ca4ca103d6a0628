//! A RouteConfiguration compiled into keel's route table, then a request routed by it and the chosen route's
//! action applied (rewrites, redirect location, hash key, weighted pick, header edits).
//! Input: a little-endian u16 length, that many bytes of RouteConfiguration, then the request as lines:
//! method, authority, path and query, then `name\0value` headers.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use keel::l7_config::{
    action::{edit_headers, pick_weighted, request_hash},
    config::decode_route_configuration,
    matching::RequestView,
    route_plan::{RoutePlan, Target},
};
use keel_fuzz::{exercise_plans, header_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((length, rest)) = data.split_first_chunk::<2>() else { return };
    let length = usize::from(u16::from_le_bytes(*length)).min(rest.len());
    let (config, request) = rest.split_at(length);
    let Ok(table) = decode_route_configuration(config) else { return };
    exercise_plans(&table);
    let mut lines = request.splitn(4, |&b| b == b'\n');
    let text = |l: Option<&[u8]>| String::from_utf8_lossy(l.unwrap_or_default()).into_owned();
    let (method, authority, path_and_query) = (text(lines.next()), text(lines.next()), text(lines.next()));
    let mut headers = HeaderMap::new();
    for (name, value) in header_lines(lines.next().unwrap_or_default()) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    let view = RequestView { method: &method, authority: &authority, path_and_query: &path_and_query, headers: &headers };
    let _ = table.virtual_host(&authority);
    let Some((host, route)) = table.route(&view) else { return };
    let mut edited = headers.clone();
    edit_headers(&mut edited, &route.route.request_headers_to_add, &route.route.request_headers_to_remove);
    edit_headers(&mut edited, &host.host.response_headers_to_add, &host.host.response_headers_to_remove);
    match &route.plan {
        RoutePlan::Forward(plan) => {
            let _ = request_hash(&plan.hash_policies, &view, [10, 0, 0, 1].into());
            if let Some(rewrite) = &plan.path_rewrite {
                let _ = rewrite.apply_to_request(&path_and_query);
            }
            if let Target::Weighted(weighted) = &plan.target {
                let _ = pick_weighted(weighted);
            }
        }
        RoutePlan::Redirect(redirect) => {
            let _ = redirect.location(&authority, &path_and_query);
        }
        RoutePlan::Direct { .. } => {}
    }
});
