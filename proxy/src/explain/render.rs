//! An [`Explanation`] as `keel explain` prints it: one labelled block per step, in the order a connection takes
//! them, the verdict last.
use super::{Explanation, Outcome};

pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let mut block = |label: &str, lines: &[String]| {
        for (i, line) in lines.iter().enumerate() {
            out += &format!("{:<12} {line}\n", if i == 0 { label } else { "" });
        }
    };
    block("SOURCE", std::slice::from_ref(&e.source));
    block("CAPTURE", std::slice::from_ref(&e.capture));
    block("DESTINATION", std::slice::from_ref(&e.destination));
    block("PLAN", std::slice::from_ref(&e.plan));
    if let Some(route) = &e.route {
        block("REQUEST", std::slice::from_ref(&route.request));
        let mut lines = vec![format!(
            "route config {}, virtual host {}, route {}",
            if route.route_config.is_empty() { "-" } else { &route.route_config },
            route.virtual_host.as_deref().unwrap_or("(none)"),
            route.route.as_deref().unwrap_or("(none matched)")
        )];
        if !route.action.is_empty() {
            lines.push(format!("→ {}", route.action));
        }
        lines.extend(route.details.iter().cloned());
        block("ROUTE", &lines);
    }
    for upstream in &e.upstreams {
        let mut lines = vec![format!("{} {} via {}", upstream.address, upstream.workload.as_deref().unwrap_or("(no workload)"), upstream.path)];
        lines.push(upstream.decision.clone());
        lines.extend(upstream.dry_run.iter().cloned());
        block("ENDPOINT", &lines);
    }
    block("IDENTITY", &e.certificates);
    let outcome = match e.verdict.outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::DependsOnEndpoint => "depends on the endpoint",
        Outcome::NotCaptured => "not captured",
    };
    block("VERDICT", &[format!("{outcome}: {}", e.verdict.reason)]);
    out
}
