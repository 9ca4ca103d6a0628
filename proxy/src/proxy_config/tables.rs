//! The views as aligned tables, the way `istioctl ztunnel-config` and `istioctl proxy-config` print a proxy's
//! state.
use std::time::SystemTime;

use super::View;
use crate::config_dump::ConfigDump;

pub fn render(view: View, dump: &ConfigDump) -> String {
    match view {
        View::All => View::EACH.iter().map(|&v| format!("== {} ==\n{}", v.title(), render(v, dump))).collect::<Vec<_>>().join("\n"),
        View::Workloads => table(
            &["NAMESPACE", "NAME", "ADDRESS", "NODE", "IDENTITY", "PROTOCOL", "STATUS", "CAPTURED"],
            dump.workloads.iter().map(|w| {
                vec![
                    w.namespace.clone(),
                    w.name.clone(),
                    w.addresses.join(","),
                    w.node.clone(),
                    w.identity.clone(),
                    w.protocol.clone(),
                    w.status.clone(),
                    if w.captured { "yes" } else { "-" }.into(),
                ]
            }),
        ),
        View::Services => table(
            &["NAME", "VIPS", "PORTS", "ENDPOINTS"],
            dump.services
                .iter()
                .map(|s| vec![s.name.clone(), s.vips.join(","), s.ports.join(","), format!("{}/{}", s.healthy_endpoints, s.endpoints)]),
        ),
        View::Policies => table(
            &["NAME", "SCOPE", "ACTION", "RULES", "HTTP RULES"],
            dump.policies.iter().map(|p| {
                let action = if p.dry_run { format!("{} (dry run)", p.action) } else { p.action.clone() };
                let rules = if p.rules.is_empty() { "(none: matches nothing)".into() } else { p.rules.join(" | ") };
                // Without HTTP rules the L4 rules decide requests too.
                let http_rules = if p.http_rules.is_empty() { "-".into() } else { p.http_rules.join(" | ") };
                vec![p.name.clone(), p.scope.clone(), action, rules, http_rules]
            }),
        ),
        View::Certs => table(
            &["IDENTITY", "STATE", "SERIAL", "NOT BEFORE", "NOT AFTER"],
            dump.certificates.iter().map(|c| vec![c.identity.clone(), c.state.clone(), c.serial.clone(), c.not_before.clone(), c.not_after.clone()]),
        ),
        View::Listeners => table(
            &["NAME", "PORT", "SNI", "TLS", "ROUTE CONFIG", "FAULT FILTER"],
            dump.l7
                .listeners
                .iter()
                .map(|l| vec![l.name.clone(), l.port.to_string(), l.server_names.clone(), l.tls.clone(), l.route_config.clone(), yes(l.faults)]),
        ),
        // After `istioctl proxy-config secret`; never the key.
        View::Secrets => table(
            &["RESOURCE NAME", "TYPE", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE", "SUBJECT", "SANS"],
            dump.l7.secrets.iter().map(|s| {
                let sans = if s.sans.is_empty() { "-".into() } else { s.sans.join(",") };
                vec![s.name.clone(), s.kind.clone(), s.serial.clone(), s.not_after.clone(), s.not_before.clone(), s.subject.clone(), sans]
            }),
        ),
        View::Routes => table(
            &["ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "ROUTE", "MATCH", "DESTINATION"],
            dump.l7.routes.iter().map(|r| {
                vec![r.route_config.clone(), r.virtual_host.clone(), r.domains.to_string(), r.name.clone(), r.matches.clone(), r.action.clone()]
            }),
        ),
        View::Clusters => table(
            &[
                "CLUSTER",
                "LB",
                "PROTOCOL",
                "ENDPOINTS",
                "EJECTED",
                "MAX CONNECTIONS",
                "MAX PENDING",
                "MAX REQUESTS",
                "MAX RETRIES",
                "OUTLIER DETECTION",
                "TLS",
            ],
            dump.l7.clusters.iter().map(|c| {
                vec![
                    c.name.clone(),
                    c.lb_policy.clone(),
                    if c.http2 { "HTTP/2" } else { "HTTP/1.1" }.into(),
                    c.endpoints.to_string(),
                    c.ejected.to_string(),
                    c.limits.max_connections.to_string(),
                    c.limits.max_pending_requests.to_string(),
                    c.limits.max_requests.to_string(),
                    c.limits.max_retries.to_string(),
                    yes(c.outlier_detection),
                    if c.tls.is_empty() { "-".into() } else { c.tls.clone() },
                ]
            }),
        ),
        View::Endpoints => table(
            &["ENDPOINT", "OUTLIER CHECK", "ACTIVE", "LOCALITY", "CLUSTER"],
            dump.l7
                .endpoints
                .iter()
                .map(|e| vec![e.address.clone(), e.outlier_check.clone(), e.active_requests.to_string(), e.locality.clone(), e.cluster.clone()]),
        ),
        View::Status => match &dump.xds {
            None => "no workload source: keel runs without a control plane or config directory\n".into(),
            Some(x) => {
                let mut rows = vec![vec!["source".into(), x.source.clone()], vec!["connected".into(), x.connected.to_string()]];
                let mut types: Vec<_> = x.versions.iter().collect();
                types.sort();
                for (type_url, count) in types {
                    rows.push(vec![format!("resources {}", short_type(type_url)), count.to_string()]);
                }
                let now = SystemTime::now();
                for (type_url, responses) in &x.responses {
                    let last = |at: Option<SystemTime>| at.map_or_else(|| "never".into(), |at| ago(now, at));
                    rows.push(vec![
                        format!("responses {}", short_type(type_url)),
                        format!(
                            "{} ACK (last {}), {} NACK (last {})",
                            responses.acks,
                            last(responses.last_ack),
                            responses.nacks,
                            last(responses.last_nack)
                        ),
                    ]);
                }
                rows.push(vec!["last NACK".into(), x.last_nack.clone().unwrap_or_else(|| "-".into())]);
                rows.push(vec!["last error".into(), x.last_error.clone().unwrap_or_else(|| "-".into())]);
                table(&["FIELD", "VALUE"], rows.into_iter())
            }
        },
    }
}

/// `type.googleapis.com/istio.workload.Address` → `Address`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['/', '.']).next().unwrap_or(type_url)
}

/// How long before `now` `at` was, the way a person says it: `12s ago`, `3m ago`, `2h ago`.
fn ago(now: SystemTime, at: SystemTime) -> String {
    let seconds = now.duration_since(at).unwrap_or_default().as_secs();
    match seconds {
        0..120 => format!("{seconds}s ago"),
        120..7200 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

fn yes(on: bool) -> String {
    if on { "yes" } else { "-" }.into()
}

/// Columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_dump::{ConfigDump, ServiceEntry};

    #[test]
    fn tables_align_columns() {
        let dump = ConfigDump {
            services: vec![ServiceEntry {
                name: "demo/echo.demo.svc.cluster.local".into(),
                vips: vec!["10.96.0.10".into()],
                ports: vec!["80→8080".into()],
                endpoints: 2,
                healthy_endpoints: 1,
            }],
            ..Default::default()
        };
        let out = render(View::Services, &dump);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME                              VIPS        PORTS    ENDPOINTS");
        assert_eq!(lines[1], "demo/echo.demo.svc.cluster.local  10.96.0.10  80→8080  1/2");
        assert!(render(View::Status, &dump).starts_with("no workload source"));
    }

    #[test]
    fn people_read_thresholds_and_times_as_they_write_them() {
        use crate::l7_config::dump::{ClusterEntry, ClusterLimits, Threshold};
        let unset = Threshold(u32::MAX);
        let mut dump = ConfigDump::default();
        dump.l7.clusters.push(ClusterEntry {
            name: "outbound|80||web.demo.svc.cluster.local".into(),
            lb_policy: "ROUND_ROBIN".into(),
            http2: false,
            endpoints: 2,
            ejected: 0,
            limits: ClusterLimits { max_connections: Threshold(100), max_pending_requests: unset, max_requests: unset, max_retries: unset },
            outlier_detection: false,
            tls: String::new(),
        });
        let out = render(View::Clusters, &dump);
        assert!(out.lines().nth(1).unwrap().contains("100              unlimited    unlimited     unlimited"), "{out}");
        assert!(!out.contains("4294967295"));
        let json = serde_json::to_value(&dump.l7.clusters[0].limits).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"max_connections": 100, "max_pending_requests": "unlimited", "max_requests": "unlimited", "max_retries": "unlimited"})
        );
        let back: ClusterLimits = serde_json::from_value(json).unwrap();
        assert_eq!(back.max_requests, unset);
        let now = SystemTime::now();
        assert_eq!(ago(now, now - std::time::Duration::from_secs(90)), "90s ago");
        assert_eq!(ago(now, now - std::time::Duration::from_secs(600)), "10m ago");
        assert_eq!(short_type("type.googleapis.com/istio.workload.Address"), "Address");
    }
}
