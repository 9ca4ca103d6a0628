//! The ingress gateway (Deployment keel-ingressgateway) as committed, and the chart values around it:
//! `gateway.enabled` and `keel.outboundTrafficPolicy`.

use std::{collections::BTreeMap, process::Command};

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::util::intstr::IntOrString};

use super::{helm, helm_template, keel_yaml, ws, Object, CHART_DIR};
use crate::manifests::values::{outbound_traffic_policy_flag, Params, Values};

const DEPLOYMENT: &str = "Deployment istio-system/keel-ingressgateway";
const SERVICE: &str = "Service istio-system/keel-ingressgateway";
const ACCOUNT: &str = "ServiceAccount istio-system/keel-ingressgateway";

/// The gateway Deployment's pod, from keel.yaml.
pub(super) fn pod(objects: &BTreeMap<String, Object>) -> &PodSpec {
    let Some(Object::Deployment(deployment)) = objects.get(DEPLOYMENT) else { panic!("no {DEPLOYMENT}") };
    deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec")
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn the_gateway_runs_keel_gateway_without_root_or_capabilities() {
    let objects = keel_yaml();
    let Some(Object::Deployment(deployment)) = objects.get(DEPLOYMENT) else { panic!("no {DEPLOYMENT}") };
    let spec = deployment.spec.as_ref().expect("spec");
    let pod = pod(&objects);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.init_containers, None);
    let gateway = &pod.containers[0];
    assert_eq!(gateway.image.as_deref(), Some(format!("localhost/keel:{}", env!("CARGO_PKG_VERSION")).as_str()), "the keel image");
    let args = gateway.args.as_deref().expect("args");
    assert_eq!(args[0], "gateway");
    for flag in [
        "--xds-address=https://keel-control.istio-system.svc:15012",
        "--xds-root=/var/run/secrets/keel-control/root-cert.pem",
        "--xds-token-file=/var/run/secrets/tokens/istio-token",
        "--state-dir=/var/lib/keel-gateway",
        "--readiness-addr=0.0.0.0:15021",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
    }
    // --pod-name, --pod-namespace, --instance-ip (required) and --node-name come from the Downward API.
    let env: BTreeMap<&str, &str> = gateway
        .env
        .iter()
        .flatten()
        .map(|e| {
            let from = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
            (e.name.as_str(), from.or(e.value.as_deref()).unwrap_or_default())
        })
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("INSTANCE_IP", "status.podIP"),
            ("KEEL_LOG", "info"),
            ("NODE_NAME", "spec.nodeName"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ])
    );

    // Non-root 1337, nothing to escalate to, no capability, nothing writable but its state.
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!((pod_security.run_as_non_root, pod_security.run_as_user, pod_security.run_as_group), (Some(true), Some(1337), Some(1337)));
    let sysctls: Vec<(&str, &str)> = pod_security.sysctls.iter().flatten().map(|s| (s.name.as_str(), s.value.as_str())).collect();
    assert_eq!(sysctls, [("net.ipv4.ip_unprivileged_port_start", "0")], "ports below 1024 without CAP_NET_BIND_SERVICE");
    let security = gateway.security_context.as_ref().expect("securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_ne!(security.run_as_user, Some(0), "the pod's user stands");
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(capabilities.add, None);
    assert_eq!((pod.host_network, pod.host_pid, pod.host_ipc), (None, None, None));
    assert_eq!(pod.automount_service_account_token, Some(false), "no Kubernetes API token");
    assert_eq!(pod.service_account_name.as_deref(), Some("keel-ingressgateway"));

    // Volumes: the istio-ca token, keel-control's root certificate, an emptyDir for --state-dir; nothing of the host.
    let volumes = pod.volumes.as_deref().expect("volumes");
    assert!(volumes.iter().all(|v| v.host_path.is_none()), "no host path");
    let token = volumes.iter().find(|v| v.name == "istio-token").and_then(|v| v.projected.as_ref()).expect("projected token");
    let token = token.sources.as_ref().and_then(|s| s[0].service_account_token.as_ref()).expect("serviceAccountToken");
    assert_eq!((token.audience.as_deref(), token.path.as_str()), (Some("istio-ca"), "istio-token"));
    let root = volumes.iter().find(|v| v.name == "keel-control-root").and_then(|v| v.secret.as_ref()).expect("keel-control's root");
    assert_eq!(root.secret_name.as_deref(), Some("cacerts"));
    let items: Vec<&str> = root.items.iter().flatten().map(|i| i.key.as_str()).collect();
    assert_eq!(items, ["root-cert.pem"], "not the CA's key");
    assert!(volumes.iter().find(|v| v.name == "state").is_some_and(|v| v.empty_dir.is_some()), "state is an emptyDir");
    let mounts: Vec<String> = gateway
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| format!("{} {}{}", m.name, m.mount_path, if m.read_only == Some(true) { " ro" } else { "" }))
        .collect();
    assert_eq!(
        mounts,
        ["istio-token /var/run/secrets/tokens ro", "keel-control-root /var/run/secrets/keel-control ro", "state /var/lib/keel-gateway"]
    );

    // Selected by Istio's Gateway `selector: {istio: ingressgateway}`; never captured by the node's keel.
    let template_meta = spec.template.metadata.as_ref().expect("pod metadata");
    let labels = template_meta.labels.as_ref().expect("pod labels");
    assert_eq!(labels.get("istio").map(String::as_str), Some("ingressgateway"));
    assert_eq!(labels.get("app").map(String::as_str), Some("keel-ingressgateway"));
    assert_eq!(labels.get("istio.io/dataplane-mode").map(String::as_str), Some("none"));
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    assert_eq!(pairs(selector), [("app", "keel-ingressgateway"), ("istio", "ingressgateway")]);
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the Deployment selects its pods");

    let probe = gateway.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP readiness probe");
    assert_eq!((probe.path.as_deref(), &probe.port), (Some("/healthz/ready"), &IntOrString::Int(15021)));
    assert_eq!(gateway.liveness_probe, None);
    let ports: Vec<(Option<&str>, i32)> = gateway.ports.iter().flatten().map(|p| (p.name.as_deref(), p.container_port)).collect();
    assert_eq!(ports, [(Some("http2"), 80), (Some("https"), 443), (Some("status-port"), 15021), (Some("http-monitoring"), 15020)]);
    // Prometheus finds the metrics port by the annotations the documented scrape config follows.
    let annotations = template_meta.annotations.as_ref().expect("pod annotations");
    assert_eq!(
        [&annotations["prometheus.io/scrape"], &annotations["prometheus.io/port"], &annotations["prometheus.io/path"]],
        ["true", "15020", "/metrics"]
    );

    let resources = gateway.resources.as_ref().expect("resources");
    assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert_eq!(resources.limits, None, "requests only");
    assert_eq!(spec.replicas, Some(1));
}

#[test]
fn the_gateway_service_selects_its_pods_and_exposes_80_and_443() {
    let objects = keel_yaml();
    let Some(Object::Service(service)) = objects.get(SERVICE) else { panic!("no {SERVICE}") };
    let spec = service.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let labels = pod_labels(&objects);
    let selector = spec.selector.as_ref().expect("selector");
    assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "{selector:?} selects {labels:?}");
    assert_eq!(selector.get("istio").map(String::as_str), Some("ingressgateway"));
    let ports: Vec<(&str, i32, Option<&IntOrString>)> =
        spec.ports.iter().flatten().map(|p| (p.name.as_deref().unwrap_or_default(), p.port, p.target_port.as_ref())).collect();
    assert_eq!(
        ports,
        [
            ("status-port", 15021, Some(&IntOrString::Int(15021))),
            ("http2", 80, Some(&IntOrString::Int(80))),
            ("https", 443, Some(&IntOrString::Int(443))),
        ]
    );
    assert!(objects.contains_key(ACCOUNT));
}

fn pod_labels(objects: &BTreeMap<String, Object>) -> BTreeMap<String, String> {
    let Some(Object::Deployment(deployment)) = objects.get(DEPLOYMENT) else { panic!("no {DEPLOYMENT}") };
    deployment.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone()).expect("pod labels")
}

/// The gateway talks to keel-control only: no Role or ClusterRole of its own, and no binding names its account.
#[test]
fn the_gateway_has_no_rbac() {
    let objects = keel_yaml();
    for (id, object) in &objects {
        let subjects = match object {
            Object::ClusterRoleBinding(b) => b.subjects.clone().unwrap_or_default(),
            Object::RoleBinding(b) => b.subjects.clone().unwrap_or_default(),
            Object::ClusterRole(_) | Object::Role(_) => {
                assert_ne!(object.name(), "keel-ingressgateway", "{id}");
                continue;
            }
            _ => continue,
        };
        assert_ne!(object.name(), "keel-ingressgateway", "{id}");
        for subject in subjects {
            assert_ne!(subject.name, "keel-ingressgateway", "{id} binds the gateway's account");
        }
    }
}

#[test]
fn the_outbound_traffic_policy_maps_istio_spelling_to_keel_flags() {
    assert_eq!(outbound_traffic_policy_flag("ALLOW_ANY"), Some("allow-any"));
    assert_eq!(outbound_traffic_policy_flag("REGISTRY_ONLY"), Some("registry-only"));
    assert_eq!(outbound_traffic_policy_flag("allow-any"), None, "Istio's spelling only");
    assert_eq!(Params::plain(&Values::default()).outbound_traffic_policy, "allow-any");
    let objects = keel_yaml();
    let (_, pod) = super::keel_pod(&objects);
    let args = pod.containers[0].args.as_deref().expect("args");
    assert!(args.iter().any(|a| a == "--outbound-traffic-policy=allow-any"), "{args:?}");
}

#[test]
fn helm_outbound_traffic_policy_reaches_keel_and_refuses_other_values() {
    let Some(helm) = helm() else { return };
    let rendered = helm_template(&helm, "istio-system", &["--set", "keel.outboundTrafficPolicy=REGISTRY_ONLY"]);
    let Some(Object::DaemonSet(keel)) = rendered.get("DaemonSet istio-system/keel") else { panic!("no keel DaemonSet") };
    let args = keel.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.containers[0].args.clone()).expect("args");
    let policies: Vec<&String> = args.iter().filter(|a| a.starts_with("--outbound-traffic-policy")).collect();
    assert_eq!(policies, ["--outbound-traffic-policy=registry-only"]);

    for bad in ["registry-only", "DENY", "true"] {
        let out = Command::new(&helm)
            .args(["template", "keel"])
            .arg(ws::root().join(CHART_DIR))
            .args(["--namespace", "istio-system", "--set", &format!("keel.outboundTrafficPolicy={bad}")])
            .output()
            .expect("helm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "keel.outboundTrafficPolicy={bad} rendered:\n{}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains("keel.outboundTrafficPolicy must be ALLOW_ANY or REGISTRY_ONLY"), "{bad}: {stderr}");
    }
}

#[test]
fn helm_gateway_disabled_renders_none_of_its_objects() {
    let Some(helm) = helm() else { return };
    let enabled = helm_template(&helm, "istio-system", &[]);
    let disabled = helm_template(&helm, "istio-system", &["--set", "gateway.enabled=false"]);
    let gateway_ids = [ACCOUNT, SERVICE, DEPLOYMENT];
    for id in gateway_ids {
        assert!(enabled.contains_key(id), "{id} is rendered by default");
    }
    let expected: Vec<&String> = enabled.keys().filter(|id| !gateway_ids.contains(&id.as_str())).collect();
    assert_eq!(disabled.keys().collect::<Vec<_>>(), expected, "everything else is rendered as before");
    for (id, object) in &disabled {
        assert_eq!(Some(object), enabled.get(id), "{id} changed with gateway.enabled=false");
    }
}
