//! keel-control, the control plane: Deployment, Service, PodDisruptionBudget, ServiceAccount and RBAC.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Affinity, Capabilities, Container, ContainerPort, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec,
            SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, WeightedPodAffinityTerm,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    document::{Document, Note},
    names::*,
    node_agent::{field_env, http_probe, scrape_annotations, value_env},
    rbac::{self, Rule},
    values::Params,
};

pub fn documents(params: &Params) -> Vec<Document> {
    let ns = params.namespace.as_str();
    vec![
        rbac::service_account(
            CONTROL,
            ns,
            "keel-control's identity towards the Kubernetes API (RBAC below). Its pods present no token to anyone else.",
        ),
        rbac::cluster_role(
            CONTROL,
            &CONTROL_RULES,
            "What keel-control may do cluster-wide: read what it translates into the mesh's configuration, report on \
             the Istio objects it cannot accept, and review the tokens its callers present. Read-only everywhere else.",
        ),
        rbac::cluster_role_binding(CONTROL, ns),
        rbac::role(
            CONTROL,
            ns,
            &LEASE_RULES,
            "keel-control's leader election, in its own namespace only: every replica serves xDS and the CA; only the \
             holder of the Lease writes (status conditions, Events).",
        ),
        rbac::role_binding(CONTROL, ns),
        service(params),
        deployment(params),
        disruption_budget(params),
    ]
}

const CONTROL_RULES: [Rule; 9] = [
    Rule {
        api_group: "",
        resources: &["pods", "services", "namespaces", "nodes"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The mesh's workloads and services: pods (Workloads; the CA checks that a pod keel asks for runs on the \
              caller's node), services (VIPs and ports), namespaces (ambient labels), nodes (topology labels → locality).",
    },
    Rule {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The certificates of Gateways' TLS servers (credentialName), as istiod reads them: sent only to the \
              keel gateway pods of the Secret's own namespace whose servers name them, never logged.",
    },
    Rule {
        api_group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "Endpoints of Services without a selector, and the terminating/not-ready state that takes a pod out of \
              load balancing before it goes away.",
    },
    Rule {
        api_group: "networking.istio.io",
        resources: &["virtualservices", "destinationrules", "serviceentries", "gateways"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The Istio traffic objects keel serves.",
    },
    Rule {
        api_group: "networking.istio.io",
        resources: &["virtualservices/status", "destinationrules/status", "serviceentries/status", "gateways/status"],
        verbs: &["update", "patch"],
        resource_names: &[],
        why: "A condition naming the field of an object keel cannot accept (the leader only). Status only: keel-control \
              never changes what users wrote.",
    },
    Rule {
        api_group: "security.istio.io",
        resources: &["authorizationpolicies", "peerauthentications", "requestauthentications"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The Istio security objects keel enforces.",
    },
    Rule {
        api_group: "security.istio.io",
        resources: &["authorizationpolicies/status", "peerauthentications/status", "requestauthentications/status"],
        verbs: &["update", "patch"],
        resource_names: &[],
        why: "As for the traffic objects: a status condition on an object keel cannot accept (the leader only).",
    },
    Rule {
        api_group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        verbs: &["create"],
        resource_names: &[],
        why: "Authenticate xDS and CA callers: the API server validates the projected ServiceAccount token (audience \
              istio-ca) and says whose it is and which pod it is bound to.",
    },
    Rule {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        resource_names: &[],
        why: "Events on Istio objects keel-control rejects or stops serving, in their namespaces (patch: repeated \
              Events are counted in one).",
    },
];

const LEASE_RULES: [Rule; 2] = [
    Rule {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["create"],
        resource_names: &[],
        why: "Create the Lease the first time (RBAC cannot limit create to a name).",
    },
    Rule {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "update", "patch"],
        resource_names: &[CONTROL],
        why: "Read, take and renew the Lease keel-control and no other.",
    },
];

fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), CONTROL.to_owned())])
}

fn service(params: &Params) -> Document {
    let service = Service {
        metadata: rbac::metadata(CONTROL, Some(&params.namespace), CONTROL),
        spec: Some(ServiceSpec {
            selector: Some(selector()),
            ports: Some(vec![ServicePort {
                name: Some("tls-xds".to_owned()),
                port: XDS_PORT,
                target_port: Some(IntOrString::Int(XDS_PORT)),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Document::new(
        service,
        [format!(
            "keel-control's address for the keels: delta ADS and the Istio CA API on {XDS_PORT}, TLS (keel-control's \
             certificate chains to the mesh CA's root). Only ready replicas (caches synced) receive connections."
        )],
    )
}

fn deployment(params: &Params) -> Document {
    let container = Container {
        name: CONTROL.to_owned(),
        image: Some(params.control_image.clone()),
        image_pull_policy: Some(params.pull_policy.clone()),
        args: Some(vec![
            "serve".to_owned(),
            "--kubernetes".to_owned(),
            format!("--listen=0.0.0.0:{XDS_PORT}"),
            format!("--ca-dir={CA_DIR}"),
            format!("--readiness-addr=0.0.0.0:{CONTROL_READINESS_PORT}"),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            value_env("KEEL_LOG", &params.log_level),
            value_env("CA_TRUSTED_NODE_ACCOUNTS", &format!("{}/{KEEL}", params.namespace)),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("tls-xds".to_owned()),
                container_port: XDS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http-monitoring".to_owned()),
                container_port: CONTROL_READINESS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe(CONTROL_READINESS_PATH, CONTROL_READINESS_PORT)),
        resources: Some(params.values.control.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "cacerts".to_owned(),
            mount_path: CA_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: rbac::metadata(CONTROL, Some(&params.namespace), CONTROL),
        spec: Some(DeploymentSpec {
            replicas: Some(params.values.control.replicas),
            selector: LabelSelector { match_labels: Some(selector()), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment { max_surge: Some(IntOrString::Int(1)), max_unavailable: Some(IntOrString::Int(0)) }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([
                        ("app".to_owned(), CONTROL.to_owned()),
                        (DATAPLANE_MODE_LABEL.to_owned(), "none".to_owned()),
                        ("sidecar.istio.io/inject".to_owned(), "false".to_owned()),
                    ])),
                    annotations: Some(scrape_annotations(CONTROL_READINESS_PORT, &[])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL.to_owned()),
                    priority_class_name: Some("system-cluster-critical".to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(CONTROL_UID),
                        run_as_group: Some(CONTROL_UID),
                        fs_group: Some(CONTROL_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    topology_key: "kubernetes.io/hostname".to_owned(),
                                    label_selector: Some(LabelSelector { match_labels: Some(selector()), ..LabelSelector::default() }),
                                    ..PodAffinityTerm::default()
                                },
                            }]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    node_selector: Some(BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())])),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "cacerts".to_owned(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(CA_SECRET.to_owned()),
                            default_mode: Some(0o440),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let notes = [
        Note::above(
            "priorityClassName: system-cluster-critical",
            "The mesh's configuration and certificate authority: keels keep their last good state without it, but new \
             pods get no identity until it is back.",
        ),
        Note::above("podAntiAffinity:", "Replicas on different nodes where possible, so one node going away leaves a replica serving."),
        Note::above(
            "runAsNonRoot: true",
            "No root, no capabilities, read-only root file system: keel-control only serves TCP on unprivileged ports \
             and talks to the API server.",
        ),
        Note::above(
            format!("secretName: {CA_SECRET}"),
            "The mesh CA (istiod's plugged-in layout and Secret name): every replica must sign with the same CA, so it \
             comes from a Secret the installer creates, never generated per replica. keel-control does not start \
             without it (it cannot write to this read-only mount).",
        ),
        Note::above("defaultMode: 288", "0440 in octal: keel-control's user and group (fsGroup) read, no one else."),
        Note::above("readinessProbe:", "Ready once the API caches are synced: a replica does not serve an empty mesh to a keel. No liveness probe."),
        Note::above(
            "- name: CA_TRUSTED_NODE_ACCOUNTS",
            "istiod's setting: the ServiceAccounts allowed to ask for certificates on behalf of pods on their node.",
        ),
    ];
    Document::new(
        deployment,
        ["keel-control, the control plane (istiod's role for keel): watches the Kubernetes API, translates pods, \
             services and the Istio objects into delta xDS for the keels, and issues workload certificates to callers \
             authenticated by TokenReview. Every replica serves; one leader (Lease keel-control) writes status."],
    )
    .with_notes(notes)
}

fn disruption_budget(params: &Params) -> Document {
    let budget = PodDisruptionBudget {
        metadata: rbac::metadata(CONTROL, Some(&params.namespace), CONTROL),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector()), ..LabelSelector::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    Document::new(
        budget,
        ["Voluntary disruptions (node drains) take keel-control replicas down one at a time. maxUnavailable rather \
             than minAvailable, so a single-replica install can still be drained; a replica that is not ready anyway \
             may always be evicted (unhealthyPodEvictionPolicy AlwaysAllow)."],
    )
}
