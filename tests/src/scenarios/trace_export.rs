//! Spans exported over OTLP to a real receiver (the OpenTelemetry project's generated service, `podapp
//! otlp-receive`, in a pod of its own): node 0's keel exports over gRPC, node 1's over HTTP/protobuf. A request that
//! arrives with a W3C trace context gets keel's SERVER span as a child of the caller's span and keel's CLIENT span
//! as a child of that, and the application sees keel's CLIENT span as its parent; B3 callers are continued the same
//! way; attributes carry Envoy's names. With the receiver gone, traffic is unaffected and keel's memory stays flat.
use super::*;
use crate::lab::{mesh_config, Backend, ChildGuard, ControlPlane};
use std::collections::BTreeMap;

const VIP: &str = "10.96.0.60";
const HOST: &str = "web.default.svc.cluster.local";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "a3ce929d0e0e47364bf92f3577b34da6";
const B3_CALLER_SPAN: &str = "1122334455667788";

pub fn spans_reach_an_otlp_receiver_and_an_outage_costs_nothing() {
    with_nodes("otlp", 2, |lab| {
        let client = lab.node(0).add_pod("sleep")?;
        let near = lab.node(1).add_pod("near")?;
        let web = lab.node(1).add_pod("web")?;
        let collector = lab.node(0).add_pod("collector")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
                mesh_config::pod_object(&near, "near", &[("app", "near")]),
                mesh_config::pod_object(&web, "web", &[("app", "web"), ("version", "v1")]),
                mesh_config::http_service_object("web", VIP, &[("app", "web")], 80, 8080),
            ],
        )?;
        let control = lab.start_control_on(0, &config_dir)?;
        let mut receiver = start_receiver(&collector)?;
        let grpc = format!("http://{}:4317", collector.ip);
        let http = format!("http://{}:4318/v1/traces", collector.ip);
        let tracing = |endpoint: &str, protocol: &str| -> Vec<String> {
            ["--tracing-otlp-endpoint", endpoint, "--tracing-otlp-protocol", protocol, "--tracing-sampling", "100"].map(str::to_owned).to_vec()
        };
        let keels = start_keels(lab, &control, [tracing(&grpc, "grpc"), tracing(&http, "http-protobuf")])?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&near)?;
        keels[1].enroll(&web)?;
        let _web = web.http_serve(8080, "web", &[])?;
        run(&client, &near, &mut receiver, &keels[0]).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel (node 0) log tail:\n{}", keels[0].log_tail(20)))
    });
}

/// The OTLP receiver (`podapp otlp-receive`) in `pod`, listening on 4317 (gRPC) and 4318 (HTTP/protobuf).
fn start_receiver(pod: &Pod) -> Result<ChildGuard> {
    let mut receiver = pod.spawn(&[pod.podapp_path().display().to_string(), "otlp-receive".into()])?;
    receiver.wait_for_line(Duration::from_secs(10), |l| l.contains("listening"))?;
    Ok(receiver)
}

/// keel on nodes 0 and 1 following `control`, each with its own extra flags, ready.
fn start_keels(lab: &Lab, control: &ControlPlane, extra: [Vec<String>; 2]) -> Result<[Keel; 2]> {
    let args = |node: usize| -> Vec<String> {
        let mut args = control.keel_args_for(node);
        args.extend(extra[node].iter().cloned());
        args
    };
    let (args0, args1) = (args(0), args(1));
    let keels = [
        lab.start_keel_on(0, Backend::Ebpf, &args0.iter().map(String::as_str).collect::<Vec<_>>())?,
        lab.start_keel_on(1, Backend::Ebpf, &args1.iter().map(String::as_str).collect::<Vec<_>>())?,
    ];
    keels.iter().try_for_each(wait_ready)?;
    Ok(keels)
}

fn request(client: &Pod, headers: &[&str], requests: u32) -> Result<Value> {
    let connect = format!("{VIP}:80");
    let count = requests.to_string();
    let mut args =
        vec!["--url", "http://web/items", "--connect", &connect, "--requests", &count, "--concurrency", "4", "--record-header", "x-echo-traceparent"];
    for h in headers {
        args.extend(["--header", h]);
    }
    let v = client.http_load(&args)?;
    if v["statuses"]["200"].as_u64() != Some(u64::from(requests)) {
        bail!("want {requests} × 200 through keel: {v}");
    }
    Ok(v)
}

/// The spans the receiver printed so far.
fn spans(receiver: &ChildGuard) -> Vec<Value> {
    receiver.log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|v| v.get("span").cloned()).collect()
}

/// Waits (the exporters batch every second) for the spans of `trace`, SERVER (kind 2) and CLIENT (kind 3).
fn wait_for_trace(receiver: &ChildGuard, trace: &str) -> Result<(Value, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let of_trace: Vec<Value> = spans(receiver).into_iter().filter(|s| s["trace_id"] == trace).collect();
        let kind = |k: u64| of_trace.iter().find(|s| s["kind"] == k).cloned();
        if let (Some(server), Some(client)) = (kind(2), kind(3)) {
            if of_trace.len() != 2 {
                bail!("one request should make two spans of trace {trace}, got {of_trace:#?}");
            }
            return Ok((server, client));
        }
        if std::time::Instant::now() > deadline {
            bail!("no SERVER and CLIENT spans of trace {trace} within 15 s; received: {:#?}", spans(receiver));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn run(client: &Pod, near: &Pod, receiver: &mut ChildGuard, keel0: &Keel) -> Result<()> {
    // W3C: keel continues the caller's trace; over gRPC from node 0.
    let traceparent = format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01");
    let v = request(client, &[&traceparent], 1)?;
    let (server, span) = wait_for_trace(receiver, TRACE)?;
    let checks: [(&str, bool); 9] = [
        ("exported over gRPC", server["via"] == "grpc" && span["via"] == "grpc"),
        ("SERVER span's parent is the caller's span", server["parent_span_id"] == CALLER_SPAN),
        ("CLIENT span's parent is the SERVER span", span["parent_span_id"] == server["span_id"]),
        ("named after the service as Envoy names it", server["name"] == format!("{HOST}:80/*") && span["name"] == server["name"]),
        ("http.method and http.status_code", attribute(&span, "http.method") == "GET" && attribute(&span, "http.status_code") == 200),
        ("upstream_cluster", attribute(&span, "upstream_cluster") == format!("outbound|80||{HOST}").as_str()),
        ("istio.canonical_service of the caller's workload", attribute(&server, "istio.canonical_service") == "sleep"),
        ("peer.address of the CLIENT span is the endpoint", attribute(&span, "peer.address").as_str().is_some_and(|a| a.ends_with(":8080"))),
        ("http.url and response_flags", attribute(&span, "http.url") == "http://web/items" && attribute(&span, "response_flags") == "-"),
    ];
    for (what, ok) in checks {
        if !ok {
            bail!("{what}: SERVER {server:#}\nCLIENT {span:#}");
        }
    }
    // The application sees keel's CLIENT span as its caller.
    let seen: BTreeMap<String, u64> = serde_json::from_value(v["headers"]["x-echo-traceparent"].clone())?;
    let want = format!("00-{TRACE}-{}-01", span["span_id"].as_str().unwrap_or_default());
    if seen.keys().collect::<Vec<_>>() != [&want] {
        bail!("the application should see traceparent {want}, saw {seen:?}");
    }

    // B3 (what the Bookinfo guides forward): continued the same way; over HTTP/protobuf from node 1.
    let b3 = [format!("x-b3-traceid: {B3_TRACE}"), format!("x-b3-spanid: {B3_CALLER_SPAN}"), "x-b3-sampled: 1".to_owned()];
    request(near, &b3.iter().map(String::as_str).collect::<Vec<_>>(), 1)?;
    let (server, span) = wait_for_trace(receiver, B3_TRACE)?;
    if server["via"] != "http" || server["parent_span_id"] != B3_CALLER_SPAN || span["parent_span_id"] != server["span_id"] {
        bail!("B3 caller over HTTP/protobuf: SERVER {server:#}\nCLIENT {span:#}");
    }
    // A caller that said "not sampled" is not exported.
    let unsampled = "c0ffee00c0ffee00c0ffee00c0ffee00";
    request(client, &[&format!("traceparent: 00-{unsampled}-{CALLER_SPAN}-00")], 1)?;
    // Two export intervals: had it been exported, it would have arrived.
    std::thread::sleep(Duration::from_secs(2));

    // The collector goes away: requests are unaffected, and keel's memory stays flat while it drops spans.
    receiver.kill();
    let rss = || -> Result<f64> {
        let (_, metrics) = keel0.admin_get("/metrics")?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.trim().parse::<f64>().ok())
            .context("no process_resident_memory_bytes in keel's metrics")
    };
    request(client, &[], 500)?;
    let before = rss()?;
    request(client, &[], 3000)?;
    let after = rss()?;
    if after - before > 16.0 * MIB as f64 {
        bail!("keel's resident memory grew from {before} to {after} bytes over 3000 requests with the collector down");
    }
    if spans(receiver).iter().any(|s| s["trace_id"] == unsampled) {
        bail!("a request its caller marked not sampled was exported");
    }
    Ok(())
}

// ---- One trace across four keel hops and two apps ---------------------------------------------------------------

const FRONT_VIP: &str = "10.96.0.61";
const BACK_VIP: &str = "10.96.0.62";
/// Every GET allowed, namespace-wide: a policy with HTTP rules, so the destination keels serve front's and back's
/// ports as HTTP and are hops of the trace too.
const GETS_ONLY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gets-only, namespace: default}\nspec:\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n";
const CHAIN_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// sleep (node 0) → front (node 1), which calls back (node 0) forwarding the trace headers as the Bookinfo apps
/// do: keel 0 (source), keel 1 (front's destination side), keel 1 (front's own call, source), keel 0 (back's
/// destination side) each make a SERVER and a CLIENT span, and the eight form one chain under the caller's span,
/// each reported by the workload whose side it is. Node 0's keel also makes a span per L4 connection
/// (`--tracing-l4-connections`): one relayed to an address outside the mesh, one refused by the policy (which
/// allows only HTTP GETs, so nothing on a port that carries no HTTP), with its response flag and the decision.
pub fn a_request_through_two_apps_is_one_trace_across_four_keel_hops() {
    with_nodes("otlp-chain", 2, |lab| {
        let client = lab.node(0).add_pod("sleep")?;
        let front = lab.node(1).add_pod("front")?;
        let back = lab.node(0).add_pod("back")?;
        let collector = lab.node(0).add_pod("collector")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[
                mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
                mesh_config::pod_object(&front, "front", &[("app", "front")]),
                mesh_config::pod_object(&back, "back", &[("app", "back")]),
                mesh_config::http_service_object("front", FRONT_VIP, &[("app", "front")], 80, 8080),
                mesh_config::http_service_object("back", BACK_VIP, &[("app", "back")], 80, 8080),
                GETS_ONLY.to_owned(),
            ],
        )?;
        let control = lab.start_control_on(0, &config_dir)?;
        let receiver = start_receiver(&collector)?;
        let grpc = format!("http://{}:4317", collector.ip);
        let tracing = ["--tracing-otlp-endpoint", &grpc, "--tracing-sampling", "100"].map(str::to_owned).to_vec();
        let mut node0 = tracing.clone();
        node0.push("--tracing-l4-connections".into());
        let keels = start_keels(lab, &control, [node0, tracing])?;
        keels[0].enroll(&client)?;
        keels[0].enroll(&back)?;
        keels[1].enroll(&front)?;
        let back_connect = format!("{BACK_VIP}:80");
        let _back = back.http_serve(8080, "back", &[])?;
        let _front = front.http_serve(8080, "front", &["--forward-to", "http://back/items", "--forward-connect", &back_connect])?;
        let _outside = collector.serve(9001, ServeMode::Echo, &[])?;
        let _back_tcp = back.serve(9000, ServeMode::Echo, &[])?;
        chain(&client, &receiver).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel (node 1) log tail:\n{}", keels[1].log_tail(20)))?;
        connection_spans(&client, &back, &collector, &receiver)
    });
}

fn connection_spans(client: &Pod, back: &Pod, outside: &Pod, receiver: &ChildGuard) -> Result<()> {
    let relayed = client.send(outside.addr(9001), 4096, ServeMode::Echo, Duration::from_secs(5))?;
    if relayed["ok"] != true {
        bail!("a connection to an address outside the mesh should be relayed: {relayed}");
    }
    let refused = client.send(back.addr(9000), 1024, ServeMode::Echo, Duration::from_secs(5))?;
    if refused["ok"] == true {
        bail!("a connection to back's non-HTTP port should be refused (only HTTP GETs are allowed): {refused}");
    }
    // SERVER (2) for the side that accepted the connection, CLIENT (3) for the side that dialled.
    let named = |name: String, kind: u64| -> Result<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(span) = spans(receiver).into_iter().find(|s| s["name"] == name.as_str() && s["kind"] == kind) {
                return Ok(span);
            }
            if std::time::Instant::now() > deadline {
                bail!("no span named {name:?} within 15 s; received: {:#?}", spans(receiver));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let ok = named(format!("tcp {}", outside.addr(9001)), 3)?;
    if ok["status_code"] == 2 || attribute(&ok, "bytes_sent") != 4096 || attribute(&ok, "keel.path") != "direct" {
        bail!("the relayed connection's span should be a CLIENT span with its bytes and path: {ok:#}");
    }
    // Refused on the destination side (back, on the same node): its inbound span says why.
    let denied = named(format!("tcp {}", back.addr(9000)), 2)?;
    if denied["status_code"] != 2
        || attribute(&denied, "response_flags") != "UAEX"
        || attribute(&denied, "istio.canonical_service") != "back"
        || attribute(&denied, "keel.policy") != "no ALLOW policy matched (1 candidates)"
    {
        bail!("the refused connection's span should be an error with Envoy's UAEX flag and the decision, reported by back: {denied:#}");
    }
    Ok(())
}

fn chain(client: &Pod, receiver: &ChildGuard) -> Result<()> {
    let connect = format!("{FRONT_VIP}:80");
    let traceparent = format!("traceparent: 00-{CHAIN_TRACE}-{CALLER_SPAN}-01");
    let v = client.http_load(&[
        "--url",
        "http://front/items",
        "--connect",
        &connect,
        "--requests",
        "1",
        "--header",
        &traceparent,
        "--record-header",
        "x-forwarded-status",
    ])?;
    if v["statuses"]["200"] != 1 || v["headers"]["x-forwarded-status"]["200"] != 1 {
        bail!("sleep → front → back: want 200 from front after back answered it 200, got {v}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let of_trace: Vec<Value> = spans(receiver).into_iter().filter(|s| s["trace_id"] == CHAIN_TRACE).collect();
        if of_trace.len() >= 8 || std::time::Instant::now() > deadline {
            break of_trace;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if spans.len() != 8 {
        bail!("want 8 spans of trace {CHAIN_TRACE} (a SERVER and a CLIENT per keel hop), got {}: {spans:#?}", spans.len());
    }
    // Walk the chain from the caller's span: each span has exactly one child, kinds alternate SERVER, CLIENT.
    let mut parent = CALLER_SPAN.to_owned();
    let mut walked = Vec::new();
    for hop in 0..8 {
        let children: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == parent.as_str()).collect();
        let want_kind = if hop % 2 == 0 { 2 } else { 3 };
        match children.as_slice() {
            [child] if child["kind"] == want_kind => {
                walked.push((child["name"].as_str().unwrap_or_default().to_owned(), attribute(child, "istio.canonical_service").clone()));
                parent = child["span_id"].as_str().unwrap_or_default().to_owned();
            }
            _ => bail!(
                "hop {hop}: want one {} span under {parent}, got {children:#?}\nall: {spans:#?}",
                if want_kind == 2 { "SERVER" } else { "CLIENT" }
            ),
        }
    }
    // Who reported each hop: the caller's side, front's destination side, front's own call, back's destination side.
    let reporters: Vec<&str> = walked.iter().step_by(2).map(|(_, service)| service.as_str().unwrap_or_default()).collect();
    if reporters != ["sleep", "front", "front", "back"] {
        bail!("the hops should be reported by sleep, front, front, back; got {walked:?}");
    }
    let names: Vec<&str> = walked.iter().step_by(2).map(|(name, _)| name.as_str()).collect();
    if names[0] != "front.default.svc.cluster.local:80/*" || names[2] != "back.default.svc.cluster.local:80/*" {
        bail!("the source hops should be named after the service and port they call: {walked:?}");
    }
    Ok(())
}
