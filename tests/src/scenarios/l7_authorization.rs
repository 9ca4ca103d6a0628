//! AuthorizationPolicy on HTTP attributes, enforced by the destination's keel: keel-control on node 0 sends each
//! policy's L4 half (ztunnel's `Authorization`) and its HTTP half (keel's `HttpAuthorization`); the keel on node 1,
//! where `web` runs, serves web's HTTP port as HTTP and decides every request. Callers: `client` on node 0 (its
//! keel's L7 engine, over HBONE), `neighbour` on node 1 (same node), and an independent HBONE client that skips
//! every keel of its own (tests/hbone/hbone_probe.py). Each check is an outcome at the caller (status, body)
//! and in the destination keel's records: its metrics (`reporter="destination"`), refusals and access log.

use super::hbone_wire::{issue, require_python_h2, Probe};
use super::traffic_management::{grep, metric_value};
use super::*;
use crate::lab::{mesh_config, workspace_root, ControlPlane, Keel, Pod};
use serde_json::json;
use std::path::PathBuf;

const VIP: &str = "10.96.0.40";
/// What a policy change may take to reach keel.
const CONFIG_PROPAGATION: Duration = Duration::from_millis(1200);
const PROBE_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/probe";
/// Envoy's RBAC answer, which keel gives too.
const DENIED: &str = "RBAC: access denied";

fn web_service() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports:\n  - {{name: http-web, port: 80, targetPort: 8080}}\n"
    )
}

/// GET on /items and below, for the three callers allowed to read; nothing else (ALLOW semantics).
const READS: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-reads, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep, cluster.local/ns/default/sa/neighbour, cluster.local/ns/default/sa/probe]}}]\n    to: [{operation: {methods: [GET], paths: ['/items*']}}]\n";

/// Refuses any request carrying `x-block: yes`, whoever sends it.
const BLOCK_HEADER: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-block-header, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules:\n  - when: [{key: 'request.headers[x-block]', values: ['yes']}]\n";

struct Web<'a> {
    config_dir: PathBuf,
    base: Vec<String>,
    client: &'a Pod,
    other: &'a Pod,
    neighbour: &'a Pod,
    web: &'a Pod,
    keels: &'a [Keel],
}

impl Web<'_> {
    fn apply(&self, policies: &[&str]) -> Result<()> {
        let mut objects = self.base.clone();
        objects.extend(policies.iter().map(|p| p.to_string()));
        mesh_config::write(&self.config_dir, "mesh.yaml", &objects)?;
        std::thread::sleep(CONFIG_PROPAGATION);
        Ok(())
    }

    /// `requests` requests from `from` to `http://web<path>` through the service VIP.
    fn load(&self, from: &Pod, method: &str, path: &str, requests: u32, extra: &[&str]) -> Result<Value> {
        let (url, connect, requests) = (format!("http://web{path}"), format!("{VIP}:80"), requests.to_string());
        let mut args = vec!["--url", &url, "--connect", &connect, "--requests", &requests, "--method", method];
        args.extend_from_slice(extra);
        let v = from.http_load(&args)?;
        if !v["statuses"].is_object() {
            bail!("http-load gave no result: {v}");
        }
        Ok(v)
    }

    /// Every one of `requests` requests (`"METHOD /path"`) answered `status`; a 403 must carry Envoy's RBAC body.
    fn expect(&self, from: &Pod, request: &str, requests: u32, status: u16, extra: &[&str], what: &str) -> Result<()> {
        let (method, path) = request.split_once(' ').context("a request is \"METHOD /path\"")?;
        let v = self.load(from, method, path, requests, extra)?;
        let got = v.pointer(&format!("/statuses/{status}")).and_then(Value::as_u64).unwrap_or(0);
        if got != u64::from(requests) {
            bail!("{what}: {method} {path} from {} wanted {requests} × {status}, got {v}", from.name);
        }
        if status == 403 && v.pointer(&format!("/bodies/{DENIED}")).and_then(Value::as_u64) != Some(u64::from(requests)) {
            bail!("{what}: the 403s do not carry {DENIED:?}: {v}");
        }
        Ok(())
    }
}

/// `keel explain` on `keel` for a connection from `from` to `to` (and `request`, with `extra` flags): its JSON
/// answer, after checking the verdict it gives is `outcome` for `reason`, exactly.
fn explained(keel: &Keel, from: &Pod, to: &str, request: Option<&str>, extra: &[&str], outcome: &str, reason: &str) -> Result<Value> {
    let from = from.qualified();
    let mut args = vec!["explain", "--from", from.as_str(), "--to", to, "-o", "json"];
    if let Some(request) = request {
        args.extend(["--http", request]);
    }
    args.extend_from_slice(extra);
    let answer: Value = serde_json::from_str(&keel.cli(&args)?)?;
    if answer["verdict"]["outcome"] != outcome || answer["verdict"]["reason"] != reason {
        bail!("keel explain {args:?}: want {outcome} ({reason}), got {}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(answer)
}

fn request_refusals(keel: &Keel) -> Result<u64> {
    Ok(keel.stats()?["refused"]["request_policy"].as_u64().unwrap_or(0))
}

/// Waits (access-log lines are written in batches) for a JSON line of `keel` whose `fields` have these values.
fn logged(keel: &Keel, fields: &[(&str, Value)]) -> bool {
    let matches =
        |line: &str| serde_json::from_str::<Value>(line).is_ok_and(|v| fields.iter().all(|(k, want)| v.get(*k).is_some_and(|got| got == want)));
    (0..30).any(|_| {
        keel.log().lines().any(matches) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    })
}

pub fn http_policies_are_enforced_per_request_by_the_destination() {
    with_nodes("l7-authz", 2, |lab| {
        require_python_h2()?;
        let client = lab.node(0).add_pod("client")?;
        let other = lab.node(0).add_pod("other")?;
        let probe_pod = lab.node(0).add_pod("probe")?;
        let web = lab.node(1).add_pod("web")?;
        let neighbour = lab.node(1).add_pod("neighbour")?;
        let config_dir = lab.dir().join("mesh");
        let base = vec![
            mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
            mesh_config::pod_object(&other, "other", &[("app", "other")]),
            mesh_config::pod_object(&neighbour, "neighbour", &[("app", "neighbour")]),
            mesh_config::pod_object(&web, "web", &[("app", "web")]),
            web_service(),
        ];
        mesh_config::write(&config_dir, "mesh.yaml", &base)?;
        let control = lab.start_control_on(0, &config_dir)?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[0].enroll(&other)?;
        keels[1].enroll(&web)?;
        keels[1].enroll(&neighbour)?;
        // The probe pod is not enrolled: it speaks HBONE itself, with a mesh certificate of its own.
        let _servers = [web.http_serve(8080, "web", &[])?, web.serve(9000, ServeMode::Echo, &[])?];
        let w = Web { config_dir, base, client: &client, other: &other, neighbour: &neighbour, web: &web, keels: &keels };
        run(&w, lab, &control, &probe_pod).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel (node 1) log tail:\n{}", keels[1].log_tail(40)))
    });
}

fn run(w: &Web, lab: &Lab, control: &ControlPlane, probe_pod: &Pod) -> Result<()> {
    let destination = &w.keels[1];
    // 0. Without policies every request gets through.
    w.expect(w.client, "POST /items", 5, 200, &[], "no policy")?;

    // 1. ALLOW GET /items* for sleep: the same caller's GET passes, its POST and its GET /admin are refused,
    //    each with Envoy's 403, counted by the destination as refusals and as Istio request metrics.
    w.apply(&[READS])?;
    let pc = destination.cli(&["pc", "policies"])?;
    if !pc.lines().any(|l| l.contains("default/web-reads") && l.contains("methods=[GET] paths=[/items*]")) {
        bail!("keel pc policies does not show the policy's HTTP rule:\n{pc}");
    }
    let refused_before = request_refusals(destination)?;
    // `keel explain` on the client's node says beforehand what the requests below then do, and why.
    let source = &w.keels[0];
    let web_identity = "spiffe://cluster.local/ns/default/sa/web";
    let answer =
        explained(source, w.client, "web:80", Some("GET /items"), &[], "allowed", "request GET /items: allowed by ALLOW policy default/web-reads")?;
    let upstream = &answer["upstreams"][0];
    if answer["route"]["virtual_host"].is_null()
        || upstream["path"] != "hbone"
        || upstream["peer_identity"] != web_identity
        || upstream["per_request"] != true
        || upstream["address"] != w.web.addr(8080).to_string()
    {
        bail!("keel explain does not show the route, the HBONE path to web and web's identity: {answer}");
    }
    explained(source, w.client, "web:80", Some("POST /items"), &[], "denied", "request POST /items: no ALLOW policy matched (1 candidates)")?;
    explained(source, w.other, "web.default:80", Some("GET /items"), &[], "denied", "request GET /items: no ALLOW policy matched (1 candidates)")?;
    let text = source.cli(&["explain", "--from", &w.client.qualified(), "--to", "web:80", "--http", "GET /admin"])?;
    if !text.lines().any(|l| l.starts_with("VERDICT") && l.ends_with("denied: request GET /admin: no ALLOW policy matched (1 candidates)")) {
        bail!("keel explain's text does not end with the verdict:\n{text}");
    }
    // `keel pc`, narrowed to web and as JSON: the policy that applies to it, with its HTTP rule.
    let policies: Value = serde_json::from_str(&destination.cli(&["pc", "policies", "--workload", "default/web", "-o", "json"])?)?;
    if policies.as_array().map(Vec::len) != Some(1) || policies[0]["name"] != "default/web-reads" {
        bail!("keel pc policies --workload default/web -o json: want web-reads alone, got {policies}");
    }
    w.expect(w.client, "GET /items", 20, 200, &[], "an allowed read")?;
    w.expect(w.client, "GET /items/42?expand=1", 5, 200, &[], "a read below /items")?;
    w.expect(w.client, "POST /items", 10, 403, &[], "a write by the same caller")?;
    w.expect(w.client, "GET /admin", 5, 403, &[], "a path outside /items")?;
    // The path is decided (and forwarded) normalized: /items/../admin is /admin.
    w.expect(w.client, "GET /items/../admin", 5, 403, &[], "a dot-segment escape from /items")?;
    w.expect(w.other, "GET /items", 5, 403, &[], "a caller the policy does not name")?;
    let refused = request_refusals(destination)? - refused_before;
    if refused != 25 {
        bail!("the destination counted {refused} request_policy refusals, want 25: {}", destination.stats()?);
    }
    let (_, metrics) = destination.admin_get("/metrics")?;
    let reported = |code: &str| {
        metric_value(
            &metrics,
            "istio_requests_total",
            &[("reporter", "destination"), ("response_code", code), ("destination_workload", "web"), ("connection_security_policy", "mutual_tls")],
        )
    };
    if reported("403") < 25.0 || reported("200") < 25.0 {
        bail!("the destination's istio_requests_total does not count the decisions:\n{}", grep(&metrics, "istio_requests_total"));
    }
    let line = |method: &str, status: u16, policy: &str| {
        [("reporter", json!("destination")), ("method", json!(method)), ("response_code", json!(status)), ("policy", json!(policy))]
    };
    let denied_post = line("POST", 403, "no ALLOW policy matched (1 candidates)");
    let mut with_details = denied_post.to_vec();
    with_details.push(("response_code_details", json!("rbac_access_denied_matched_policy[none]")));
    if !logged(destination, &with_details) {
        bail!("no destination access-log line records the denied POST, its decision and Envoy's details for it");
    }
    if !logged(destination, &line("GET", 200, "allowed by ALLOW policy default/web-reads")) {
        bail!("no destination access-log line records the allowed GET and the policy that allowed it");
    }

    // 2. A port that carries no HTTP keeps the L4 meaning, fail closed: the ALLOW's HTTP rule allows nothing there.
    refused_on_port_9000(w, "no ALLOW policy matched (1 candidates)")?;

    // 3. A DENY on a header, next to the ALLOW: the header refuses a request the ALLOW admits.
    w.apply(&[READS, BLOCK_HEADER])?;
    w.expect(w.client, "GET /items", 5, 200, &[], "no x-block header")?;
    explained(
        source,
        w.client,
        "web:80",
        Some("GET /items"),
        &["-H", "x-block: yes"],
        "denied",
        "request GET /items: denied by DENY policy default/web-block-header",
    )?;
    w.expect(w.client, "GET /items", 5, 403, &["--header", "x-block: yes"], "x-block: yes")?;
    let mut header_denied = line("GET", 403, "denied by DENY policy default/web-block-header").to_vec();
    header_denied.push(("response_code_details", json!("rbac_access_denied_matched_policy[ns[default]-policy[web-block-header]]")));
    if !logged(destination, &header_denied) {
        bail!("the header denial is not logged with the DENY policy that decided it");
    }
    // Where no HTTP is parsed, that DENY keeps its L4 part, which has no condition left: it refuses everything
    // (what istiod sends ztunnel for it too).
    refused_on_port_9000(w, "denied by DENY policy default/web-block-header")?;

    // 4. Same node: the neighbour reaches web through node 1's keel without HBONE; the same decisions apply.
    w.expect(w.neighbour, "GET /items", 5, 200, &[], "same-node read")?;
    w.expect(w.neighbour, "DELETE /items/1", 5, 403, &[], "same-node delete")?;

    // 5. A client that skips keel's outbound path: an HBONE tunnel of its own, the request inside it. The
    //    tunnel opens (200) and the request in it is decided like any other.
    let creds = issue(lab, &control.ca_dir, "cluster.local", PROBE_IDENTITY, "probe-creds")?;
    let probe = Probe { pod: probe_pod, script: workspace_root().join("tests/hbone/hbone_probe.py"), ca: control.ca_dir.join("root-cert.pem") };
    let (hbone, app) = (format!("{}:15008", w.web.ip), format!("{}:8080", w.web.ip));
    for (request, status) in [("POST /items", 403), ("GET /items", 200), ("GET /admin", 403)] {
        let answer = probe.run_with(&hbone, &app, "CONNECT", Some(&creds), &["--http-request", request])?;
        if answer["status"] != 200 || answer["http_status"] != status {
            bail!("raw HBONE client, {request}: want CONNECT 200 then HTTP {status}, got {answer}");
        }
        if status == 403 && !answer["received"].as_str().is_some_and(|r| r.ends_with(DENIED)) {
            bail!("raw HBONE client, {request}: the 403 does not carry {DENIED:?}: {answer}");
        }
    }

    // 6. Policies removed: everything passes again (the HTTP half is withdrawn with the policy).
    w.apply(&[])?;
    w.expect(w.other, "POST /admin", 5, 200, &[], "after the policies were removed")?;
    Ok(())
}

/// A connection from the client to web's port 9000 (plain TCP echo, no HTTP) is refused by web's keel with
/// 401 on the CONNECT, decided `why`.
fn refused_on_port_9000(w: &Web, why: &str) -> Result<()> {
    let destination = &w.keels[1];
    explained(&w.keels[0], w.client, &w.web.addr(9000).to_string(), None, &[], "denied", &format!("connection: {why}"))?;
    let since = Since::now(destination)?;
    let sent = w.client.send(w.web.addr(9000), 1024, ServeMode::Echo, Duration::from_secs(5))?;
    if sent["ok"] == true {
        bail!("a connection to web's non-HTTP port 9000 got through (want it refused: {why}): {sent}");
    }
    let to = w.web.addr(9000).to_string();
    let record = since.wait_connection("the refused connection to port 9000", |c| c.original_destination == to)?;
    if record.response_status != Some(401) || record.policy.as_deref() != Some(why) {
        bail!("port 9000 was not refused for the stated reason ({why}): {record:?}");
    }
    Ok(())
}

// ---- RequestAuthentication ------------------------------------------------------------------------------------

const ISSUER: &str = "https://issuer.keel.test";

/// A JWT signer: one of the fixture keys under a key id.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    kid: &'static str,
}

impl Signer {
    fn fixture(file: &str, alg: jsonwebtoken::Algorithm, kid: &'static str) -> Result<Signer> {
        let pem = std::fs::read(workspace_root().join("tests/fixtures/jwt").join(file))?;
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem)?,
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?,
        };
        Ok(Signer { key, alg, kid })
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Result<Value> {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg)?;
        jwk.common.key_id = Some(self.kid.into());
        Ok(serde_json::to_value(jwk)?)
    }

    /// A token for `sub` with `extra` claims over the defaults (this issuer, audience `web`, valid 10 minutes).
    fn token(&self, sub: &str, extra: Value) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({"iss": ISSUER, "sub": sub, "aud": "web", "iat": now, "exp": now + 600, "groups": ["dev"]});
        claims.as_object_mut().context("claims")?.extend(extra.as_object().cloned().unwrap_or_default());
        let header = jsonwebtoken::Header { kid: Some(self.kid.into()), ..jsonwebtoken::Header::new(self.alg) };
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

fn key_set(signers: &[&Signer]) -> Result<String> {
    Ok(json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Result<Vec<_>>>()?}).to_string())
}

fn request_authentication(jwks_uri: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: web-jwt, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {jwks_uri}\n    audiences: [web]\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]\n"
    )
}

/// Only alice, and only with a token of the `dev` group.
const ALICE_ONLY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-alice, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {requestPrincipals: ['https://issuer.keel.test/alice']}}]\n    when: [{key: 'request.auth.claims[groups]', values: [dev]}]\n";

pub fn jwts_are_verified_by_the_destination_and_name_the_request_principal() {
    with_nodes("jwt", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let issuer = lab.node(0).add_pod("issuer")?;
        let web = lab.node(1).add_pod("web")?;
        let config_dir = lab.dir().join("mesh");
        let base = vec![
            mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]),
            mesh_config::pod_object(&web, "web", &[("app", "web")]),
            web_service(),
        ];
        // The issuer publishes its key set over plain HTTP from a pod keel-control reaches (not in the mesh).
        let rsa = Signer::fixture("rsa-2048.pem", jsonwebtoken::Algorithm::RS256, "rsa-1")?;
        let ec = Signer::fixture("ec-p256.pem", jsonwebtoken::Algorithm::ES256, "ec-1")?;
        let rotated = Signer::fixture("rsa-2048-rotated.pem", jsonwebtoken::Algorithm::RS256, "rsa-2")?;
        let served = lab.dir().join("issuer");
        std::fs::create_dir_all(&served)?;
        std::fs::write(served.join("jwks.json"), key_set(&[&rsa, &ec])?)?;
        let served_arg = served.display().to_string();
        let mut jwks_server =
            issuer.spawn(&["/usr/bin/python3", "-u", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", &served_arg])?;
        jwks_server.wait_for_line(Duration::from_secs(10), |l| l.contains("Serving HTTP"))?;
        let jwks_uri = format!("http://{}:8000/jwks.json", issuer.ip);
        let mut objects = base.clone();
        objects.push(request_authentication(&jwks_uri));
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        // A short refresh, so a rotated key set is seen within the test.
        let control = lab.start_control_with(0, &config_dir, &["--jwks-refresh-interval-ms", "1000"], &[])?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[0].enroll(&client)?;
        keels[1].enroll(&web)?;
        let _server = web.http_serve(8080, "web", &[])?;
        let w = Web { config_dir, base: objects, client: &client, other: &client, neighbour: &client, web: &web, keels: &keels };
        let signers = Signers { rsa: &rsa, ec: &ec, rotated: &rotated };
        run_jwt(&w, &signers, &served, &jwks_uri).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n---- keel (node 1) log tail:\n{}\n---- keel-control log tail:\n{}",
                keels[1].log_tail(30),
                tail(&control.log(), 20)
            )
        })
    });
}

struct Signers<'a> {
    rsa: &'a Signer,
    ec: &'a Signer,
    rotated: &'a Signer,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run_jwt(w: &Web, s: &Signers, served: &std::path::Path, jwks_uri: &str) -> Result<()> {
    let destination = &w.keels[1];
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let now = jsonwebtoken::get_current_timestamp();
    // keel-control fetched the key set (the first fetch follows the first translation): wait for a valid token to pass.
    let alice = s.rsa.token("alice", json!({}))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.load(w.client, "GET", "/items", 1, &["--header", &bearer(&alice)])?.pointer("/statuses/200").is_none() {
        if std::time::Instant::now() > deadline {
            bail!("a valid RS256 token was never accepted: the key set from {jwks_uri} did not reach keel");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // 1. RequestAuthentication alone: no token passes; valid RS256 and ES256 tokens pass (and are not forwarded:
    //    the application sees no Authorization header, but the claim copied to x-jwt-sub); bad ones are refused
    //    with Envoy's status and reason.
    w.expect(w.client, "GET /items", 3, 200, &[], "no token")?;
    let v = w.load(
        w.client,
        "GET",
        "/items",
        3,
        &["--header", &bearer(&alice), "--record-header", "x-echo-authorization", "--record-header", "x-echo-x-jwt-sub"],
    )?;
    if v.pointer("/statuses/200").and_then(Value::as_u64) != Some(3)
        || v.pointer("/headers/x-echo-authorization/").and_then(Value::as_u64) != Some(3)
        || v.pointer("/headers/x-echo-x-jwt-sub/alice").and_then(Value::as_u64) != Some(3)
    {
        bail!("a verified token must not reach the application, and its sub must (x-jwt-sub): {v}");
    }
    let es = s.ec.token("alice", json!({}))?;
    w.expect(w.client, "GET /items", 3, 200, &["--header", &bearer(&es)], "an ES256 token")?;
    let bad = [
        (s.rsa.token("alice", json!({"exp": now - 600}))?, 401, "Jwt is expired"),
        (s.rsa.token("alice", json!({"iss": "https://elsewhere.test"}))?, 401, "Jwt issuer is not configured"),
        (s.rsa.token("alice", json!({"aud": "bank"}))?, 403, "Audiences in Jwt are not allowed"),
        (
            Signer { kid: "rsa-1", ..Signer::fixture("rsa-2048-rotated.pem", jsonwebtoken::Algorithm::RS256, "rsa-1")? }.token("alice", json!({}))?,
            401,
            "Jwt verification fails",
        ),
    ];
    let refused_before = destination.stats()?["refused"]["request_authentication"].as_u64().unwrap_or(0);
    for (token, status, reason) in &bad {
        let v = w.load(w.client, "GET", "/items", 2, &["--header", &bearer(token)])?;
        if v.pointer(&format!("/statuses/{status}")).and_then(Value::as_u64) != Some(2)
            || v.pointer(&format!("/bodies/{reason}")).and_then(Value::as_u64) != Some(2)
        {
            bail!("a token that should be refused {status} {reason:?}: {v}");
        }
    }
    let refused = destination.stats()?["refused"]["request_authentication"].as_u64().unwrap_or(0) - refused_before;
    if refused != 8 {
        bail!("the destination counted {refused} request_authentication refusals, want 8");
    }

    // 2. With an AuthorizationPolicy on the principal and a claim: alice (group dev) passes, bob and no token are
    //    refused by RBAC, and the destination's access log names the principal.
    w.apply(&[ALICE_ONLY])?;
    w.expect(w.client, "GET /items", 3, 200, &["--header", &bearer(&alice)], "alice")?;
    w.expect(w.client, "GET /items", 3, 403, &["--header", &bearer(&s.rsa.token("bob", json!({}))?)], "bob")?;
    w.expect(w.client, "GET /items", 3, 403, &["--header", &bearer(&s.rsa.token("alice", json!({"groups": ["ops"]}))?)], "alice outside dev")?;
    w.expect(w.client, "GET /items", 3, 403, &[], "no token")?;
    let principal = format!("{ISSUER}/alice");
    if !logged(destination, &[("reporter", json!("destination")), ("response_code", json!(200)), ("request_principal", json!(principal))]) {
        bail!("no destination access-log line names the request principal {principal}");
    }

    // 3. Key rotation at the issuer: the new key set replaces the old within a refresh; new tokens pass, tokens of
    //    the retired key are refused.
    std::fs::write(served.join("jwks.json"), key_set(&[s.rotated])?)?;
    let fresh = s.rotated.token("alice", json!({}))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.load(w.client, "GET", "/items", 1, &["--header", &bearer(&fresh)])?.pointer("/statuses/200").is_none() {
        if std::time::Instant::now() > deadline {
            bail!("a token of the rotated key was never accepted");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    w.expect(w.client, "GET /items", 2, 401, &["--header", &bearer(&alice)], "a token of the retired key")?;
    Ok(())
}
