//! Traffic management end to end: keel-control on node 0 translates VirtualServices and DestinationRules into
//! Envoy L7 resources; the keel on node 0 terminates the client's HTTP and routes each request to the v1/v2
//! servers on node 1 over HBONE. Every check is a measured outcome at the client (which server answered, with
//! what status, how fast) or in keel's metrics, after rewriting the config the way a user applies YAML.

use super::*;
use crate::lab::{mesh_config, ControlPlane, Keel, Pod};
use std::collections::BTreeMap;

const VIP: &str = "10.96.0.30";
/// What a VirtualService/DestinationRule change may take to reach keel (the issue asks for within a second).
const CONFIG_PROPAGATION: Duration = Duration::from_millis(1200);

/// The catalog service: HTTP on 80 (pods' 8080) and gRPC on 9090.
fn catalog_service() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: catalog, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: catalog}}\n  ports:\n  - {{name: http-web, port: 80, targetPort: 8080}}\n  - {{name: grpc-echo, port: 9090, targetPort: 9090}}\n"
    )
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: catalog, namespace: default}\nspec:\n  host: catalog\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn virtual_service(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: catalog, namespace: default}}\nspec:\n  hosts: [catalog]\n  http:\n{http}")
}

fn destination_rule(traffic_policy: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: catalog, namespace: default}}\nspec:\n  host: catalog\n  trafficPolicy:\n{traffic_policy}  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n")
}

struct Catalog<'a> {
    config_dir: std::path::PathBuf,
    base: Vec<String>,
    client: &'a Pod,
    v1: &'a Pod,
    v2: &'a Pod,
}

/// A tally in http-load's answer (`/statuses/<code>`, `/served_by/<server>`, `/headers/<name>/<value>`): 0 when
/// nothing was tallied under that key (the tallies themselves are checked by [`Catalog::load`]).
fn count(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

impl Catalog<'_> {
    /// Replaces the traffic config and gives it time to reach keel.
    fn apply(&self, traffic: &[&str]) -> Result<()> {
        let mut objects = self.base.clone();
        objects.extend(traffic.iter().map(|o| o.to_string()));
        mesh_config::write(&self.config_dir, "mesh.yaml", &objects)?;
        std::thread::sleep(CONFIG_PROPAGATION);
        Ok(())
    }

    /// `requests` HTTP requests from the client to `catalog` (through its VIP), `extra` podapp flags added.
    fn load(&self, requests: u32, concurrency: u32, extra: &[&str]) -> Result<Value> {
        let (requests, concurrency) = (requests.to_string(), concurrency.to_string());
        let connect = format!("{VIP}:80");
        let mut args = vec!["--url", "http://catalog/items", "--connect", &connect, "--requests", &requests, "--concurrency", &concurrency];
        args.extend_from_slice(extra);
        let v = self.client.http_load(&args)?;
        // `count` reads an absent status, server or header value as 0: right only if the tallies themselves exist.
        if v.get("requests").is_none() || ["statuses", "served_by", "headers"].iter().any(|t| !v[*t].is_object()) {
            bail!("http-load gave no result: {v}");
        }
        Ok(v)
    }

    /// Changes a server's behaviour at run time (straight to the pod: plain L4, not through the routes).
    fn set(&self, server: &Pod, query: &str) -> Result<()> {
        let url = format!("http://{}:8080/__set?{query}", server.ip);
        let v = self.client.http_load(&["--url", &url, "--requests", "1"])?;
        if count(&v, "/statuses/200") != 1 {
            bail!("{}: /__set?{query} failed: {v}", server.name);
        }
        Ok(())
    }
}

fn served(v: &Value, name: &str) -> u64 {
    count(v, &format!("/served_by/{name}"))
}

fn status(v: &Value, code: u16) -> u64 {
    count(v, &format!("/statuses/{code}"))
}

pub(super) fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn virtual_services_and_destination_rules_take_effect() {
    with_nodes("l7", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let v1 = lab.node(1).add_pod("catalog-v1")?;
        let v2 = lab.node(1).add_pod("catalog-v2")?;
        let config_dir = lab.dir().join("mesh");
        let base = vec![
            mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
            mesh_config::pod_object(&v1, "catalog", &[("app", "catalog"), ("version", "v1")]),
            mesh_config::pod_object(&v2, "catalog", &[("app", "catalog"), ("version", "v2")]),
            catalog_service(),
        ];
        let catalog = Catalog { config_dir: config_dir.clone(), base, client: &client, v1: &v1, v2: &v2 };
        catalog.apply(&[])?;
        let control = lab.start_control_on(0, &config_dir)?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&v1)?;
        keels[1].enroll(&v2)?;
        let _servers =
            [v1.http_serve(8080, "v1", &[])?, v2.http_serve(8080, "v2", &[])?, v1.http_serve(9090, "v1", &[])?, v2.http_serve(9090, "v2", &[])?];
        let keel = &keels[0];
        run(&catalog, keel, &control).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel (node 0) log tail:\n{}", keel.log_tail(30)))
    });
}

fn run(c: &Catalog, keel: &Keel, control: &ControlPlane) -> Result<()> {
    // 0. No VirtualService: an HTTP port is still L7, balanced over both versions (least request), over mTLS.
    let v = c.load(200, 4, &[])?;
    if status(&v, 200) != 200 || served(&v, "v1") == 0 || served(&v, "v2") == 0 {
        bail!("default routing: want 200 × 200 spread over v1 and v2, got {v}");
    }
    let (_, metrics) = keel.admin_get("/metrics")?;
    let counted = metric_value(
        &metrics,
        "istio_requests_total",
        &[("reporter", "source"), ("destination_service_name", "catalog"), ("response_code", "200"), ("connection_security_policy", "mutual_tls")],
    );
    if counted < 200.0 {
        bail!("istio_requests_total counted {counted} mTLS 200s to catalog, want ≥ 200:\n{}", grep(&metrics, "istio_requests_total"));
    }
    // Access-log lines are written out in batches (within 20 ms), so give them a moment.
    let logged =
        || keel.log().lines().any(|l| l.contains("request") && l.contains("/items") && l.contains("outbound|80||catalog.default.svc.cluster.local"));
    if !(0..20).any(|_| {
        logged() || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    }) {
        bail!("no access-log line names the request and its cluster");
    }
    // Every request gets an x-request-id and a W3C trace context; a caller's trace is continued, not replaced.
    let traced = c.load(20, 2, &["--record-header", "x-echo-x-request-id", "--record-header", "x-echo-traceparent"])?;
    let distinct =
        |v: &Value, h: &str| v.pointer(&format!("/headers/{h}")).and_then(Value::as_object).map_or(0, |m| m.keys().filter(|k| !k.is_empty()).count());
    if distinct(&traced, "x-echo-x-request-id") != 20 || distinct(&traced, "x-echo-traceparent") != 20 {
        bail!("want 20 distinct request ids and traceparents at the server, got {traced}");
    }
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let joined =
        c.load(5, 1, &["--header", &format!("traceparent: 00-{caller_trace}-00f067aa0ba902b7-01"), "--record-header", "x-echo-traceparent"])?;
    let parents: Vec<String> =
        joined.pointer("/headers/x-echo-traceparent").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    if parents.len() != 5 || !parents.iter().all(|p| p.starts_with(&format!("00-{caller_trace}-")) && !p.contains("00f067aa0ba902b7")) {
        bail!("keel must continue the caller's trace with its own span: {joined}");
    }
    pipelined_requests_are_answered_in_order(c.client)?;
    let routes = keel.cli(&["pc", "routes"])?;
    if !routes.contains("catalog.default.svc.cluster.local") {
        bail!("`keel pc routes` does not list catalog:\n{routes}");
    }

    // 1. Dark launch by header: 100 % of the cohort to v2, everyone else 100 % to v1 (HTTP/1.1 and h2c).
    let dark = virtual_service(
        "  - match:\n    - headers:\n        x-istio-cohort: {exact: internal}\n    route:\n    - destination: {host: catalog, subset: v2}\n  - route:\n    - destination: {host: catalog, subset: v1}\n",
    );
    c.apply(&[SUBSETS, &dark])?;
    let cohort = c.load(200, 4, &["--header", "x-istio-cohort: internal"])?;
    let others = c.load(200, 4, &["--http2"])?;
    if served(&cohort, "v2") != 200 || served(&others, "v1") != 200 {
        bail!("dark launch: cohort {cohort}, others (h2c) {others}");
    }

    // 2. An 80/20 canary split over 2,000 requests lands within ±5 %.
    let split = virtual_service(
        "  - route:\n    - destination: {host: catalog, subset: v1}\n      weight: 80\n    - destination: {host: catalog, subset: v2}\n      weight: 20\n",
    );
    c.apply(&[SUBSETS, &split])?;
    let v = c.load(2000, 8, &[])?;
    let v1_share = served(&v, "v1") as f64 / 2000.0;
    if status(&v, 200) != 2000 || !(0.75..=0.85).contains(&v1_share) {
        bail!("80/20 split: v1 got {:.1} % ({v})", v1_share * 100.0);
    }

    // 3. Retries hide a backend failing half its requests. Alone (subset v1) every try fails with p = 0.5, so
    //    attempts: 3 (four tries) leaves 0.5⁴ = 6.25 % failures; with v2 beside it, Istio's previous_hosts
    //    predicate sends each retry to the endpoint not tried yet, and ≥ 99 % succeed.
    c.set(c.v1, "fail_percent=50")?;
    let route = |subset: &str, extra: &str| virtual_service(&format!("  - route:\n    - destination: {{host: catalog{subset}}}\n{extra}"));
    c.apply(&[SUBSETS, &route(", subset: v1", "    retries: {attempts: 0}\n")])?;
    let without = c.load(400, 4, &[])?;
    if !(140..=260).contains(&status(&without, 500)) {
        bail!("the failing backend does not fail half the time without retries: {without}");
    }
    c.apply(&[SUBSETS, &route(", subset: v1", "    retries: {attempts: 3, retryOn: 5xx}\n")])?;
    let alone = c.load(1000, 4, &[])?;
    if !(900..=975).contains(&status(&alone, 200)) {
        bail!("retries on one endpoint: want ~93.75 % success (four tries at p = 0.5), got {alone}");
    }
    // The access log says why a request was retried: each retried attempt's status, then the attempt count.
    let retried = |l: &str| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["response_code"] == 200
                && v["upstream_request_attempt_count"].as_u64().is_some_and(|n| n >= 2)
                && v["retried_on"].as_str().is_some_and(|r| {
                    r.split(',').count() as u64 + 1 == v["upstream_request_attempt_count"].as_u64().unwrap_or(0) && r.split(',').all(|c| c == "500")
                })
        })
    };
    if !(0..20).any(|_| {
        keel.log().lines().any(retried) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    }) {
        bail!("no access-log line shows a request that succeeded after retrying 500s, with its reasons (retried_on)");
    }
    c.apply(&[SUBSETS, &route("", "    retries: {attempts: 3, retryOn: 5xx}\n")])?;
    let with = c.load(1000, 4, &[])?;
    if status(&with, 200) < 990 {
        bail!("retries: want ≥ 99 % success with attempts: 3, got {with}");
    }
    c.set(c.v1, "fail_percent=0")?;

    // 4. A 2 s delay fault with a 1 s timeout gives 504 after about a second.
    let delayed = virtual_service(
        "  - fault:\n      delay: {percentage: {value: 100}, fixedDelay: 2s}\n    timeout: 1s\n    route:\n    - destination: {host: catalog, subset: v1}\n",
    );
    c.apply(&[SUBSETS, &delayed])?;
    let flagged = |code: &str, flags: &str| -> Result<f64> {
        let (_, metrics) = keel.admin_get("/metrics")?;
        Ok(metric_value(&metrics, "istio_requests_total", &[("reporter", "source"), ("response_code", code), ("response_flags", flags)]))
    };
    // How many more requests keel counted with `code` and `flags` than `before`, once that reaches `want` (a
    // request is counted as it completes, which may trail the client's read of the response a little).
    let flagged_since = |before: f64, code: &str, flags: &str, want: f64| -> Result<f64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let counted = flagged(code, flags)? - before;
            if counted == want || std::time::Instant::now() > deadline {
                return Ok(counted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = flagged("504", "DI,UT")?;
    let v = c.load(8, 4, &[])?;
    let p50 = v.pointer("/latency_ms/p50").and_then(Value::as_f64).unwrap_or(0.0);
    if status(&v, 504) != 8 || !(900.0..1900.0).contains(&p50) {
        bail!("delay 2 s + timeout 1 s: want 8 × 504 after ~1 s, got {v}");
    }
    // Each 504 is keel's route timeout cutting the injected delay short (flags DI,UT), not an upstream's answer.
    let timed_out = flagged_since(before, "504", "DI,UT", 8.0)?;
    if timed_out != 8.0 {
        bail!("delay 2 s + timeout 1 s: istio_requests_total counted {timed_out} 504s flagged DI,UT, want 8");
    }

    // 5. Abort 50 %: 503s within ±5 % over 1,000 requests.
    let abort = virtual_service(
        "  - fault:\n      abort: {percentage: {value: 50}, httpStatus: 503}\n    route:\n    - destination: {host: catalog, subset: v1}\n",
    );
    c.apply(&[SUBSETS, &abort])?;
    let before = flagged("503", "FI")?;
    let v = c.load(1000, 8, &[])?;
    if !(450..=550).contains(&status(&v, 503)) || status(&v, 503) + status(&v, 200) != 1000 {
        bail!("abort 50 %: {v}");
    }
    // Every 503 is the injected abort (flag FI), not an overflow or an unavailable upstream.
    let aborted = flagged_since(before, "503", "FI", status(&v, 503) as f64)?;
    if aborted != status(&v, 503) as f64 {
        bail!("abort 50 %: istio_requests_total counted {aborted} 503s flagged FI for the {} 503s the client saw", status(&v, 503));
    }

    // 6. Mirroring: clients only ever see v1 while v2 receives a copy of every request.
    let mirror = virtual_service(
        "  - route:\n    - destination: {host: catalog, subset: v1}\n    mirror: {host: catalog, subset: v2}\n    mirrorPercentage: {value: 100}\n",
    );
    c.apply(&[SUBSETS, &mirror])?;
    let before = stats_requests(c.client, c.v2)?;
    let v = c.load(200, 4, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let mirrored = stats_requests(c.client, c.v2)? - before;
    if served(&v, "v1") != 200 || mirrored < 190 {
        bail!("mirror: clients must see only v1 ({v}); v2 received {mirrored} copies of 200");
    }

    // 7. Outlier detection: an endpoint answering 5xx is ejected and traffic moves away; after the ejection time
    //    it gets traffic again.
    let outlier = destination_rule("    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}\n");
    c.apply(&[&outlier, &virtual_service("  - route:\n    - destination: {host: catalog}\n    retries: {attempts: 0}\n")])?;
    c.set(c.v1, "fail_percent=100")?;
    let warmup = c.load(40, 1, &[])?;
    let ejected = c.load(100, 2, &[])?;
    if status(&warmup, 500) == 0 || served(&ejected, "v2") != 100 {
        bail!("outlier: v1 fails every request, so it must be ejected: warm-up {warmup}, then {ejected}");
    }
    c.set(c.v1, "fail_percent=0")?;
    std::thread::sleep(Duration::from_millis(3500));
    let back = c.load(100, 2, &[])?;
    if served(&back, "v1") == 0 || status(&back, 200) != 100 {
        bail!("outlier: v1 did not return after its ejection time: {back}");
    }

    // 8. Circuit breaker: one connection, one pending request; the overflow is 503 with the overload header
    //    and response flag UO.
    let breaker = destination_rule(
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n",
    );
    c.apply(&[&breaker, &virtual_service("  - route:\n    - destination: {host: catalog, subset: v1}\n")])?;
    c.set(c.v1, "delay_ms=200")?;
    let v = c.load(30, 10, &["--record-header", "x-envoy-overloaded"])?;
    c.set(c.v1, "delay_ms=0")?;
    if status(&v, 503) == 0 || status(&v, 200) == 0 || count(&v, "/headers/x-envoy-overloaded/true") != status(&v, 503) {
        bail!("circuit breaker: want some 200s and overflow 503s marked x-envoy-overloaded, got {v}");
    }
    let (_, metrics) = keel.admin_get("/metrics")?;
    if metric_value(&metrics, "istio_requests_total", &[("response_code", "503"), ("response_flags", "UO")]) < 1.0 {
        bail!("no istio_requests_total with response_flags UO:\n{}", grep(&metrics, "istio_requests_total"));
    }

    // 9. Least request favours the fast endpoint.
    c.apply(&[SUBSETS, &virtual_service("  - route:\n    - destination: {host: catalog}\n")])?;
    c.set(c.v1, "delay_ms=100")?;
    let v = c.load(300, 8, &[])?;
    c.set(c.v1, "delay_ms=0")?;
    if served(&v, "v2") < 210 {
        bail!("least request: the fast v2 should take most of the load (≥ 70 %), got {v}");
    }

    // 10. Consistent hash on a header keeps each user on one endpoint, and spreads the users over the endpoints
    //    (a "hash" sending everyone to one endpoint would keep each user on one endpoint too). keel's ring hash is
    //    deterministic (SipHash with fixed keys of the header value, on a 1,024-point ring of the endpoints'
    //    addresses 10.244.1.11:8080 and 10.244.1.12:8080), and these six names split 3/3 on it: alice, bob and
    //    frank on v1, carol, dave and erin on v2. The check asks only for ≥ 2 on each side, so it holds for any
    //    hash that spreads, not just this assignment; if the lab's pod addresses change, pick names that split.
    let sticky = destination_rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n");
    c.apply(&[&sticky, &virtual_service("  - route:\n    - destination: {host: catalog}\n")])?;
    let mut users_of: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let v = c.load(40, 2, &["--header", &format!("x-user: {user}")])?;
        let by: Vec<&String> = v["served_by"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
        if by.len() != 1 || status(&v, 200) != 40 {
            bail!("consistent hash: user {user} was served by {by:?} ({v})");
        }
        users_of.entry(by[0].clone()).or_default().push(user);
    }
    let spread = ["v1", "v2"].iter().all(|server| users_of.get(*server).is_some_and(|users| users.len() >= 2));
    if !spread {
        bail!("consistent hash: the six users are not spread over both endpoints (≥ 2 each): {users_of:?}");
    }
    eprintln!("consistent hash: users by endpoint {users_of:?}");

    // 10b. A hash cookie with a TTL (Istio's httpCookie): a request without it gets one set (as Envoy writes it),
    //      and requests carrying it stay on one endpoint.
    let cookie = destination_rule("    loadBalancer:\n      consistentHash: {httpCookie: {name: user, ttl: 60s, path: /}}\n");
    c.apply(&[&cookie, &virtual_service("  - route:\n    - destination: {host: catalog}\n")])?;
    let first = c.load(1, 1, &["--record-header", "set-cookie"])?;
    let set = first["headers"]["set-cookie"].as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_default();
    let value = set.strip_prefix("user=\"").and_then(|rest| rest.strip_suffix("\"; Max-Age=60; Path=/; HttpOnly")).map(str::to_owned);
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        bail!("hash cookie: a request without the cookie must get `Set-Cookie: user=\"…\"; Max-Age=60; Path=/; HttpOnly`: {first}");
    };
    let sticky = c.load(40, 2, &["--header", &format!("cookie: user={value}"), "--record-header", "set-cookie"])?;
    let by: Vec<&String> = sticky["served_by"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    if by.len() != 1 || status(&sticky, 200) != 40 || sticky["headers"]["set-cookie"] != serde_json::json!({"": 40}) {
        bail!("hash cookie: requests carrying it must stay on one endpoint, with no new cookie: {sticky}");
    }

    // 11. gRPC: unary and streaming calls are routed (here to v2 by header) and carry their trailers.
    let grpc = virtual_service(
        "  - match:\n    - headers:\n        x-canary: {exact: \"yes\"}\n    route:\n    - destination: {host: catalog, subset: v2}\n  - route:\n    - destination: {host: catalog, subset: v1}\n",
    );
    c.apply(&[SUBSETS, &grpc])?;
    let connect = format!("{VIP}:9090");
    let unary = c.client.grpc_call(&["--url", "http://catalog:9090/echo.Echo/Unary", "--connect", &connect, "--messages", "1"])?;
    let stream = c.client.grpc_call(&["--url", "http://catalog:9090/echo.Echo/Stream", "--connect", &connect, "--messages", "3"])?;
    if unary["grpc_status"] != "0" || unary["replies"] != serde_json::json!(["v1:hello"]) {
        bail!("gRPC unary: {unary}");
    }
    if stream["grpc_status"] != "0" || stream["replies"].as_array().map(Vec::len) != Some(3) || stream["trailers"]["grpc-message"] != "ok" {
        bail!("gRPC streaming: {stream}");
    }
    let failing = c.client.grpc_call(&["--url", "http://catalog:9090/echo.Echo/Fail", "--connect", &connect])?;
    if failing["grpc_status"] != "14" {
        bail!("gRPC error status not carried in trailers: {failing}");
    }

    // 12. A config change never drops an in-flight request: slow requests keep flowing while routes change.
    c.set(c.v1, "delay_ms=300")?;
    c.set(c.v2, "delay_ms=300")?;
    let during = std::thread::scope(|s| {
        let load = s.spawn(|| c.load(60, 6, &[]));
        let changes = [
            virtual_service("  - route:\n    - destination: {host: catalog, subset: v2}\n"),
            virtual_service("  - route:\n    - destination: {host: catalog, subset: v1}\n"),
        ];
        for change in &changes {
            std::thread::sleep(Duration::from_millis(300));
            c.apply(&[SUBSETS, change])?;
        }
        load.join().expect("load thread")
    })?;
    c.set(c.v1, "delay_ms=0")?;
    c.set(c.v2, "delay_ms=0")?;
    if status(&during, 200) != 60 {
        bail!("requests failed while the routes changed under them: {during}");
    }

    // 13. A bad VirtualService is refused with an error naming it and the field; the old routes keep working.
    let bad = virtual_service("  - match:\n    - uri: {regex: \"(unclosed\"}\n    route:\n    - destination: {host: catalog, subset: v2}\n");
    c.apply(&[SUBSETS, &bad])?;
    let v = c.load(100, 4, &[])?;
    if served(&v, "v1") != 100 {
        bail!("after a bad VirtualService the last good routes (everyone to v1) must stay: {v}");
    }
    let log = control.log();
    if !log.lines().any(|l| l.contains("VirtualService default/catalog") && l.contains("spec.http[0].match[0].uri.regex")) {
        bail!("keel-control did not name the bad VirtualService and its field:\n{}", grep(&log, "catalog"));
    }
    Ok(())
}

/// HTTP/1.1 pipelining: three requests in one write on one connection get three responses, in order.
fn pipelined_requests_are_answered_in_order(client: &Pod) -> Result<()> {
    let script = format!(
        r#"
import json, socket
s = socket.create_connection(("{VIP}", 80), timeout=10)
s.sendall(b"GET /p1 HTTP/1.1\r\nHost: catalog\r\n\r\nGET /p2 HTTP/1.1\r\nHost: catalog\r\n\r\nGET /p3 HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
at = [data.find(('"path":"/p%d"' % i).encode()) for i in (1, 2, 3)]
print(json.dumps({{"responses": data.count(b"HTTP/1.1 200 OK"), "positions": at}}))
"#
    );
    let v = client.run_json(&["/usr/bin/python3", "-c", &script])?;
    let positions: Vec<i64> = v["positions"].as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default();
    if v["responses"] != 3 || positions.len() != 3 || positions.iter().any(|p| *p < 0) || !positions.windows(2).all(|w| w[0] < w[1]) {
        bail!("pipelined HTTP/1.1 requests: want three 200s for /p1, /p2, /p3 in order, got {v}");
    }
    Ok(())
}

/// How many requests `server` has received (its `/__stats`), asked from `client` over plain L4.
fn stats_requests(client: &Pod, server: &Pod) -> Result<u64> {
    let url = format!("http://{}:8080/__stats", server.ip);
    let v = client.http_load(&["--url", &url, "--requests", "1", "--record-header", "x-stats-requests"])?;
    v.pointer("/headers/x-stats-requests")
        .and_then(Value::as_object)
        .and_then(|m| m.keys().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no request count from {}: {v}", server.name))
}

pub(super) fn grep(text: &str, needle: &str) -> String {
    text.lines().filter(|l| l.contains(needle)).take(40).collect::<Vec<_>>().join("\n")
}
