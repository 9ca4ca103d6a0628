//! `keel gateway` as the ingress gateway of the Istio-in-Action chapters: a gateway pod on node 0 (not in any
//! keel's capture) runs `keel gateway` with its own token; keel-control sends it the listeners and routes of the
//! Gateway selecting it and the VirtualServices bound to that Gateway; requests for `webapp.istioinaction.io`
//! reach `webapp` on node 1 over HBONE with the gateway's own identity. Checks are what a client sees (status,
//! which server answered) and what node 1's keel recorded (the inbound HBONE stream and its peer identity).
use super::traffic_management::{grep, metric_value};
use super::*;
use crate::lab::{mesh_config, ControlPlane, Keel, Pod};

pub(super) const GATEWAY_POD: &str = "default/ingress";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/default/sa/ingress";

pub(super) const WEBAPP_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: webapp, namespace: default}\nspec:\n  clusterIP: 10.96.0.50\n  selector: {app: webapp}\n  ports:\n  - {name: http-web, port: 80, targetPort: 8080}\n";

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: coolstore-gateway, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [webapp.istioinaction.io]\n  - port: {number: 8081, name: http-redirect, protocol: HTTP}\n    hosts: [secure.istioinaction.io]\n    tls: {httpsRedirect: true}\n";

/// The book's VirtualService bound to the gateway, plus a route with an injected abort (a VirtualService
/// feature served through the gateway by the same L7 engine).
const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: webapp-vs-from-gw, namespace: default}\nspec:\n  hosts: [webapp.istioinaction.io]\n  gateways: [coolstore-gateway]\n  http:\n  - match: [{uri: {prefix: /broken}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: webapp, port: {number: 80}}}]\n  - route: [{destination: {host: webapp, port: {number: 80}}}]\n";

pub fn an_ingress_gateway_serves_virtual_services_bound_to_it_over_hbone() {
    with_nodes("gateway", 2, |lab| {
        let ingress = lab.node(0).add_pod("ingress")?;
        let curl = lab.node(0).add_pod("curl")?;
        let webapp = lab.node(1).add_pod("webapp")?;
        let config_dir = lab.dir().join("mesh");
        let objects = vec![
            mesh_config::pod_object(&ingress, "ingress", &[("istio", "ingressgateway")]),
            mesh_config::pod_object(&webapp, "webapp", &[("app", "webapp")]),
            WEBAPP_SERVICE.to_owned(),
            GATEWAY.to_owned(),
            VIRTUAL_SERVICE.to_owned(),
        ];
        mesh_config::write(&config_dir, "mesh.yaml", &objects)?;
        let control = lab.start_control_with(0, &config_dir, &[], &[GATEWAY_POD])?;
        let keels = lab.start_keels_following(&control, &[])?;
        keels.iter().try_for_each(wait_ready)?;
        keels[1].enroll(&webapp)?;
        let _server = webapp.http_serve(8080, "webapp", &[])?;
        let gateway = start_gateway(lab, &control, &ingress)?;
        run(&curl, &ingress, &keels[1]).map_err(|e| anyhow::anyhow!("{e:#}\n---- keel gateway log:\n{}", tail(&gateway.log(), 30)))
    });
}

pub(super) fn start_gateway_on(lab: &Lab, control: &ControlPlane, pod: &Pod, port: u16) -> Result<crate::lab::process::ChildGuard> {
    lab.start_gateway(control, pod, GATEWAY_POD, port, &[])
}

fn start_gateway(lab: &Lab, control: &ControlPlane, pod: &Pod) -> Result<crate::lab::process::ChildGuard> {
    start_gateway_on(lab, control, pod, 80)
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(curl: &Pod, ingress: &Pod, webapp_keel: &Keel) -> Result<()> {
    let gateway = format!("{}:80", ingress.ip);
    let load = |url: &str, requests: &str| curl.http_load(&["--url", url, "--connect", &gateway, "--requests", requests]);
    let count = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    // 1. The bound host reaches webapp, every request, answered by webapp itself.
    let v = load("http://webapp.istioinaction.io/api/catalog", "20")?;
    if count(&v, "/statuses/200") != 20 || count(&v, "/served_by/webapp") != 20 {
        bail!("through the gateway: want 20 × 200 from webapp, got {v}");
    }
    // ... over HBONE from the gateway, whose own identity node 1's keel verified (the gateway keeps the connection
    // pooled, so it shows in the destination's Istio TCP metrics, which count it when it opens).
    let (_, metrics) = webapp_keel.admin_get("/metrics")?;
    let opened = metric_value(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", GATEWAY_ID),
            ("destination_workload", "webapp"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    if opened < 1.0 {
        bail!("webapp's keel counted no mTLS connection from the gateway's identity:\n{}", grep(&metrics, "istio_tcp_connections_opened_total"));
    }
    // 2. A VirtualService feature applies at the gateway: the abort on /broken.
    let v = load("http://webapp.istioinaction.io/broken", "5")?;
    if count(&v, "/statuses/418") != 5 {
        bail!("the VirtualService's abort on /broken did not apply at the gateway: {v}");
    }
    // 3. httpsRedirect: a 301 to the https:// form of the same request.
    let v = curl.http_load(&[
        "--url",
        "http://secure.istioinaction.io:8081/orders?id=1",
        "--connect",
        &format!("{}:8081", ingress.ip),
        "--requests",
        "3",
        "--record-header",
        "location",
    ])?;
    if count(&v, "/statuses/301") != 3 || count(&v, "/headers/location/https:~1~1secure.istioinaction.io~1orders?id=1") != 3 {
        bail!("httpsRedirect: want 301 to https://secure.istioinaction.io/orders?id=1, got {v}");
    }
    // 4. A host no VirtualService binds to the gateway: 404, never webapp.
    let v = load("http://catalog.istioinaction.io/", "5")?;
    if count(&v, "/statuses/404") != 5 || count(&v, "/served_by/webapp") != 0 {
        bail!("a host the gateway does not serve must get 404: {v}");
    }
    Ok(())
}
