//! keel's ingress gateway: `keel gateway` as a Deployment (istio-ingressgateway's role), its Service and
//! ServiceAccount. No RBAC: the gateway talks to keel-control only, never to the Kubernetes API.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
            SecurityContext, Service, ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    document::{Document, Note},
    names::*,
    node_agent::{control_credential_mounts, control_credential_volumes, field_env, http_probe, labels, scrape_annotations, value_env},
    rbac,
    values::Params,
};

/// The sysctl that lets a process without capabilities bind ports below 1024 in its pod's network namespace.
pub const UNPRIVILEGED_PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";

pub fn documents(params: &Params) -> Vec<Document> {
    vec![
        rbac::service_account(
            GATEWAY,
            &params.namespace,
            "The ingress gateway's identity: towards keel-control, whose TokenReview makes a token of this account \
             bound to a pod that some Gateway selects that pod's gateway (its Gateways' listeners, and a certificate \
             for this account's SPIFFE identity, which destination policies see as the caller); no RBAC, since the \
             gateway never calls the Kubernetes API.",
        ),
        service(params),
        deployment(params),
    ]
}

/// The pod labels: Istio's `istio: ingressgateway`, which Gateways' `selector` names, and keel's `app`.
fn selector() -> std::collections::BTreeMap<String, String> {
    labels(&[("app", GATEWAY), GATEWAY_SELECTOR_LABEL])
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.to_owned()), container_port: port, protocol: Some("TCP".to_owned()), ..ContainerPort::default() }
}

fn service(params: &Params) -> Document {
    let service = Service {
        metadata: rbac::metadata(GATEWAY, Some(&params.namespace), GATEWAY),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            selector: Some(selector()),
            ports: Some(vec![
                service_port("status-port", GATEWAY_STATUS_PORT),
                service_port("http2", GATEWAY_HTTP_PORT),
                service_port("https", GATEWAY_HTTPS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Document::new(
        service,
        [format!(
            "The ingress gateway's address outside the cluster (type LoadBalancer, as istio-ingressgateway): \
             {GATEWAY_HTTP_PORT} and {GATEWAY_HTTPS_PORT} to the same ports of the pods, where keel gateway binds the \
             Gateway servers of those port numbers; {GATEWAY_STATUS_PORT} (status-port) answers /healthz/ready, for a \
             load balancer's health check. Only ready pods receive connections."
        )],
    )
}

fn deployment(params: &Params) -> Document {
    let xds_address = format!("https://{CONTROL}.{}.svc:{XDS_PORT}", params.namespace);
    let container = Container {
        name: GATEWAY.to_owned(),
        image: Some(params.keel_image.clone()),
        image_pull_policy: Some(params.pull_policy.clone()),
        args: Some(vec![
            "gateway".to_owned(),
            format!("--xds-address={xds_address}"),
            format!("--xds-root={CONTROL_ROOT_DIR}/{ROOT_CERT}"),
            format!("--xds-token-file={TOKEN_DIR}/{TOKEN_FILE}"),
            format!("--state-dir={GATEWAY_STATE_DIR}"),
            format!("--readiness-addr=0.0.0.0:{GATEWAY_STATUS_PORT}"),
            format!("--metrics-addr=0.0.0.0:{KEEL_METRICS_PORT}"),
        ]),
        env: Some(vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            value_env("KEEL_LOG", &params.log_level),
        ]),
        ports: Some(vec![
            container_port("http2", GATEWAY_HTTP_PORT),
            container_port("https", GATEWAY_HTTPS_PORT),
            container_port("status-port", GATEWAY_STATUS_PORT),
            container_port("http-monitoring", KEEL_METRICS_PORT),
        ]),
        readiness_probe: Some(http_probe(KEEL_READINESS_PATH, GATEWAY_STATUS_PORT)),
        resources: Some(params.values.gateway.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            control_credential_mounts()
                .into_iter()
                .chain([VolumeMount { name: "state".to_owned(), mount_path: GATEWAY_STATE_DIR.to_owned(), ..VolumeMount::default() }])
                .collect(),
        ),
        ..Container::default()
    };
    let mut pod_labels = selector();
    pod_labels.extend(labels(&[(DATAPLANE_MODE_LABEL, "none"), ("sidecar.istio.io/inject", "false")]));
    let deployment = Deployment {
        metadata: rbac::metadata(GATEWAY, Some(&params.namespace), GATEWAY),
        spec: Some(DeploymentSpec {
            replicas: Some(params.values.gateway.replicas),
            selector: LabelSelector { match_labels: Some(selector()), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment { max_surge: Some(IntOrString::Int(1)), max_unavailable: Some(IntOrString::Int(0)) }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(scrape_annotations(KEEL_METRICS_PORT, &[("ambient.istio.io/redirection", "disabled")])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(GATEWAY.to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(GATEWAY_UID),
                        run_as_group: Some(GATEWAY_UID),
                        fs_group: Some(GATEWAY_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
                        sysctls: Some(vec![Sysctl { name: UNPRIVILEGED_PORT_SYSCTL.to_owned(), value: "0".to_owned() }]),
                        ..PodSecurityContext::default()
                    }),
                    node_selector: Some(labels(&[("kubernetes.io/os", "linux")])),
                    containers: vec![container],
                    volumes: Some(
                        control_credential_volumes()
                            .into_iter()
                            .chain([Volume { name: "state".to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }])
                            .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let notes = [
        Note::above(
            "maxSurge: 1",
            "Upgrades start a new gateway pod and wait for it to be ready before stopping an old one (maxSurge 1, \
             maxUnavailable 0): a single replica keeps serving through an upgrade.",
        ),
        Note::above(
            "automountServiceAccountToken: false",
            "No Kubernetes API token: the gateway never calls the API server (its only credential is the istio-ca \
             token below, which the API server accepts for no other audience).",
        ),
        Note::above(
            "runAsNonRoot: true",
            "No root, no capabilities, no privilege escalation, read-only root file system: the gateway serves TCP and \
             writes only its emptyDir state.",
        ),
        Note::above(
            format!("runAsUser: {GATEWAY_UID}"),
            "Istio's gateways' user and group (1337); with fsGroup the kubelet makes the projected token readable to it.",
        ),
        Note::above(
            format!("- name: {UNPRIVILEGED_PORT_SYSCTL}"),
            "keel gateway binds each Gateway server's port.number (80, 443, ...) in its pod, without root or \
             CAP_NET_BIND_SERVICE: this sysctl lets any process bind ports below 1024, in this pod's network \
             namespace only (what Istio's gateway Deployment sets; a safe namespaced sysctl since Kubernetes 1.22, \
             allowed by the kubelet by default).",
        ),
        Note::above_nth("drop:", 0, "Every capability dropped: ports below 1024 come from the pod's sysctl (below), not CAP_NET_BIND_SERVICE."),
        Note::above(
            "readinessProbe:",
            "Ready once keel-control has sent the mesh's configuration over xDS: only then does the Service send it \
             clients. No liveness probe, as for keel.",
        ),
        Note::above(
            "audience: istio-ca",
            "The gateway's credential towards keel-control (xDS and the CA): a token for this ServiceAccount, bound to \
             this pod, for audience istio-ca only, rotated by the kubelet. keel-control serves this pod's Gateways to it \
             because a Gateway's selector matches the pod the token is bound to.",
        ),
        Note::above(
            format!("secretName: {CA_SECRET}"),
            "Only root-cert.pem of the mesh CA Secret, to verify keel-control's serving certificate; the CA's key is not \
             projected. The kubelet reads the Secret: the gateway's ServiceAccount needs no access to Secrets (the \
             Gateways' certificates reach it from keel-control).",
        ),
        Note::above("emptyDir: {}", "--state-dir: the last good configuration, kept across a restart of the container."),
        Note::above(
            "ambient.istio.io/redirection: disabled",
            "The node's keel never captures the gateway, which carries its own mTLS (HBONE) to the mesh's pods \
             (the label istio.io/dataplane-mode=none says the same to Istio's tooling).",
        ),
    ];
    Document::new(
        deployment,
        [
            "keel's ingress gateway: the keel image run as `keel gateway`, istio-ingressgateway's role. It follows \
             keel-control over delta ADS with its pod's view (the listeners and routes of the Gateways whose selector \
             matches the pod label istio=ingressgateway), terminates clients' HTTP and TLS with the L7 engine that \
             routes mesh traffic, and reaches mesh pods over HBONE with its own SPIFFE identity.",
            "Privileges: none. Non-root (1337), no capabilities, no privilege escalation, read-only root file system, \
             seccomp RuntimeDefault; the namespaced sysctl net.ipv4.ip_unprivileged_port_start=0 for ports below 1024; \
             no Kubernetes API access (no RBAC, no API token). Values: gateway.enabled (false: none of these objects), \
             gateway.replicas, gateway.resources (requests only, as keel's).",
        ],
    )
    .with_notes(notes)
}
