//! keel, the node agent: its DaemonSet, ServiceAccount and RBAC, every privilege next to the reason for it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            AppArmorProfile, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath, Namespace,
            ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SELinuxOptions, SeccompProfile,
            SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
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
    rbac::{self, Rule},
    values::Params,
};

/// A host directory mounted into a container, and why.
struct HostMount {
    volume: &'static str,
    host_path: &'static str,
    /// `Directory` where the node must already have it (a missing one is a broken node, not something to create).
    host_path_type: &'static str,
    mount_path: &'static str,
    read_only: bool,
    propagation: Option<&'static str>,
    why: &'static str,
}

/// The keel container's host mounts.
const KEEL_HOST_MOUNTS: [HostMount; 4] = [
    HostMount {
        volume: "bpffs",
        host_path: "/sys/fs/bpf",
        host_path_type: "Directory",
        mount_path: "/sys/fs/bpf",
        read_only: false,
        propagation: None,
        why: "bpffs: keel pins its maps and program links under /sys/fs/bpf/keel so that capture outlives a keel restart \
              (pods are refused, never let through in plaintext, while keel is down) and the next keel takes them over. \
              The node must have bpffs mounted there (systemd does); keel does not mount it.",
    },
    HostMount {
        volume: "cgroup",
        host_path: "/sys/fs/cgroup",
        host_path_type: "Directory",
        mount_path: "/sys/fs/cgroup",
        read_only: true,
        propagation: None,
        why: "The node's cgroup v2 hierarchy (the container's own view holds only its cgroup): keel attaches its \
              connect4 and sock_ops programs to it, and finds a pod's processes, hence its network namespace, from the \
              pod's cgroup (kubepods…pod<UID>). Read-only: keel opens directories and reads cgroup.procs, it writes nothing.",
    },
    HostMount {
        volume: "netns",
        host_path: "/var/run/netns",
        host_path_type: "DirectoryOrCreate",
        mount_path: "/var/run/netns",
        read_only: true,
        propagation: Some("HostToContainer"),
        why: "The pods' network namespaces as the container runtime pins them (the CNI plugin passes this path): keel \
              enters a pod's namespace to open its listeners there. Same path as on the host, so the path the runtime \
              gives the CNI plugin is valid in keel. HostToContainer: namespaces pinned after keel started must \
              appear too. Read-only: opening a namespace file to enter it needs no write.",
    },
    HostMount {
        volume: "keel-run",
        host_path: KEEL_RUN_HOST_DIR,
        host_path_type: "DirectoryOrCreate",
        mount_path: KEEL_RUN_DIR,
        read_only: false,
        propagation: None,
        why: "keel's state directory (persisted enrolled pods, last good xDS state; keel keeps it 0700) and its API \
              socket, which the keel-cni plugin on the host calls on every pod ADD/DEL. Under /run on purpose: a tmpfs \
              that a reboot clears, as it clears the pods' network namespaces and the bpffs pins the state describes.",
    },
];

/// The install-cni init container's host mounts.
const CNI_HOST_MOUNTS: [HostMount; 2] = [
    HostMount {
        volume: "cni-bin",
        host_path: "/opt/cni/bin",
        host_path_type: "Directory",
        mount_path: "/host/opt/cni/bin",
        read_only: false,
        propagation: None,
        why: "The node's CNI plugin binaries: install-cni copies keel-cni here, where the container runtime looks for \
              plugins. The node's primary CNI must already be installed.",
    },
    HostMount {
        volume: "cni-conf",
        host_path: "/etc/cni/net.d",
        host_path_type: "Directory",
        mount_path: "/host/etc/cni/net.d",
        read_only: false,
        propagation: None,
        why: "The node's CNI network configuration: install-cni appends keel-cni to the plugin chain of the primary \
              CNI's .conflist, so that every new pod's ADD reaches keel before the pod's containers start.",
    },
];

/// A Linux capability keel adds (after dropping all), and why.
struct Capability {
    name: &'static str,
    why: &'static str,
}

const KEEL_CAPABILITIES: [Capability; 2] = [
    Capability {
        name: "NET_ADMIN",
        why: "NET_ADMIN: attach programs to cgroups (connect4, sock_ops) and network namespaces (sk_lookup), update the \
              sockmap, mark keel's own sockets (SO_MARK) so they are never captured.",
    },
    Capability {
        name: "SYS_ADMIN",
        why: "SYS_ADMIN: setns() into pods' network namespaces (keel's listeners and upstream sockets live there), \
              and bpf() to load programs and create and pin maps. It also stands for CAP_BPF and CAP_PERFMON (the \
              kernel accepts SYS_ADMIN for both), so those are not listed: naming them would grant nothing more, and \
              some container runtimes refuse capability names they do not know.",
    },
];

/// The namespace keel installs into (its own file: Helm creates a release's namespace itself).
pub fn namespace(params: &Params) -> Document {
    let namespace = Namespace { metadata: ObjectMeta { name: Some(params.namespace.clone()), ..ObjectMeta::default() }, ..Namespace::default() };
    Document::new(
        namespace,
        ["The namespace of keel and keel-control (Istio's control-plane namespace). Applying it where Istio is \
          installed changes nothing."],
    )
}

pub fn documents(params: &Params) -> Vec<Document> {
    vec![
        rbac::service_account(
            KEEL,
            &params.namespace,
            "keel's identity towards the Kubernetes API (RBAC below) and towards keel-control, which \
             trusts this account's projected tokens to ask for certificates on behalf of pods on the same node.",
        ),
        rbac::cluster_role(
            KEEL,
            &KEEL_RULES,
            "What keel may do with the Kubernetes API: read the pods of its node and the namespaces (which pods are in \
             the mesh), and mark the pods it captures. Nothing else: workloads, services and policies come from \
             keel-control over xDS.",
        ),
        rbac::cluster_role_binding(KEEL, &params.namespace),
        daemon_set(params),
    ]
}

const KEEL_RULES: [Rule; 3] = [
    Rule {
        api_group: "",
        resources: &["pods"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The pods of keel's node (keel lists and watches with the field selector spec.nodeName=<its node>; RBAC \
              cannot narrow a rule to a field): their ambient labels, phase, IPs and UID decide enrollment, and \
              restart reconciliation compares them with what is captured.",
    },
    Rule {
        api_group: "",
        resources: &["pods"],
        verbs: &["patch"],
        resource_names: &[],
        why: "Annotate a captured pod `ambient.istio.io/redirection: enabled` (and remove it on release), as istio-cni \
              does, so Istio's tooling sees which pods are captured. keel patches only that annotation.",
    },
    Rule {
        api_group: "",
        resources: &["namespaces"],
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        why: "The namespace label istio.io/dataplane-mode=ambient enrolls a namespace's pods.",
    },
];

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The annotations Prometheus' usual Kubernetes pod job keeps and follows (deploy/prometheus/scrape-config.yaml),
/// as Istio's own pods carry them, with `extra` (which must not name them).
pub fn scrape_annotations(port: i32, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut annotations = labels(extra);
    annotations.extend(labels(&[("prometheus.io/scrape", "true"), ("prometheus.io/path", METRICS_PATH)]));
    annotations.insert("prometheus.io/port".to_owned(), port.to_string());
    annotations
}

/// An environment variable from the pod's own fields (Downward API).
pub fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field.to_owned(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..EnvVar::default() }
}

pub fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction { path: Some(path.to_owned()), port: IntOrString::Int(port), ..HTTPGetAction::default() }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// keel's credentials towards keel-control (the node proxy's and the gateway's alike): a projected ServiceAccount
/// token for audience istio-ca, and only the root certificate of the mesh CA Secret, to verify keel-control.
pub fn control_credential_volumes() -> [Volume; 2] {
    [
        Volume {
            name: "istio-token".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECS),
                        path: TOKEN_FILE.to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "keel-control-root".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(CA_SECRET.to_owned()),
                items: Some(vec![KeyToPath { key: ROOT_CERT.to_owned(), path: ROOT_CERT.to_owned(), ..KeyToPath::default() }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

/// Where [`control_credential_volumes`] are mounted (read-only): `--xds-token-file` and `--xds-root` point there.
pub fn control_credential_mounts() -> [VolumeMount; 2] {
    [
        VolumeMount { name: "istio-token".to_owned(), mount_path: TOKEN_DIR.to_owned(), read_only: Some(true), ..VolumeMount::default() },
        VolumeMount {
            name: "keel-control-root".to_owned(),
            mount_path: CONTROL_ROOT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ]
}

fn host_volume(mount: &HostMount) -> Volume {
    Volume {
        name: mount.volume.to_owned(),
        host_path: Some(HostPathVolumeSource { path: mount.host_path.to_owned(), type_: Some(mount.host_path_type.to_owned()) }),
        ..Volume::default()
    }
}

fn host_volume_mount(mount: &HostMount) -> VolumeMount {
    VolumeMount {
        name: mount.volume.to_owned(),
        mount_path: mount.mount_path.to_owned(),
        read_only: mount.read_only.then_some(true),
        mount_propagation: mount.propagation.map(str::to_owned),
        ..VolumeMount::default()
    }
}

fn host_mount_notes(mounts: &[HostMount]) -> impl Iterator<Item = Note> + '_ {
    mounts.iter().map(|m| Note::above(format!("path: {}", m.host_path), m.why))
}

/// SELinux's "super privileged container" type: without it, on SELinux nodes the container type may not touch
/// bpffs, other pods' network namespaces or the host's CNI directories. Ignored where SELinux is off.
fn spc_t() -> SELinuxOptions {
    SELinuxOptions { type_: Some("spc_t".to_owned()), ..SELinuxOptions::default() }
}

fn keel_container(params: &Params) -> Container {
    let xds_address = format!("https://{CONTROL}.{}.svc:{XDS_PORT}", params.namespace);
    Container {
        name: KEEL.to_owned(),
        image: Some(params.keel_image.clone()),
        image_pull_policy: Some(params.pull_policy.clone()),
        args: Some(vec![
            "run".to_owned(),
            "--kubernetes".to_owned(),
            "--takeover".to_owned(),
            "--node-name=$(NODE_NAME)".to_owned(),
            format!("--xds-address={xds_address}"),
            format!("--xds-root={CONTROL_ROOT_DIR}/{ROOT_CERT}"),
            format!("--xds-token-file={TOKEN_DIR}/{TOKEN_FILE}"),
            "--cgroup=/sys/fs/cgroup".to_owned(),
            format!("--readiness-addr=0.0.0.0:{KEEL_READINESS_PORT}"),
            format!("--metrics-addr=0.0.0.0:{KEEL_METRICS_PORT}"),
            format!("--outbound-traffic-policy={}", params.outbound_traffic_policy),
        ]),
        env: Some(vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            value_env("KEEL_LOG", &params.log_level),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("readiness".to_owned()),
                container_port: KEEL_READINESS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http-monitoring".to_owned()),
                container_port: KEEL_METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe(KEEL_READINESS_PATH, KEEL_READINESS_PORT)),
        resources: Some(params.values.keel.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: Some(KEEL_CAPABILITIES.iter().map(|c| c.name.to_owned()).collect()),
            }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            app_armor_profile: Some(AppArmorProfile { type_: "Unconfined".to_owned(), ..AppArmorProfile::default() }),
            se_linux_options: Some(spc_t()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(KEEL_HOST_MOUNTS.iter().map(host_volume_mount).chain(control_credential_mounts()).collect()),
        ..Container::default()
    }
}

fn install_cni_container(params: &Params) -> Container {
    Container {
        name: "install-cni".to_owned(),
        image: Some(params.keel_image.clone()),
        image_pull_policy: Some(params.pull_policy.clone()),
        command: Some(vec![format!("{BIN_DIR}/keel-cni")]),
        args: Some(vec![
            "install".to_owned(),
            "--cni-bin-dir=/host/opt/cni/bin".to_owned(),
            "--cni-conf-dir=/host/etc/cni/net.d".to_owned(),
            format!("--api-socket={KEEL_SOCKET_ON_HOST}"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("10m".to_owned())),
                ("memory".to_owned(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("16Mi".to_owned())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            se_linux_options: Some(spc_t()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(CNI_HOST_MOUNTS.iter().map(host_volume_mount).collect()),
        ..Container::default()
    }
}

fn daemon_set(params: &Params) -> Document {
    let selector = labels(&[("app", KEEL)]);
    let pod_labels = labels(&[("app", KEEL), (DATAPLANE_MODE_LABEL, "none"), ("sidecar.istio.io/inject", "false")]);
    let volumes = KEEL_HOST_MOUNTS.iter().chain(&CNI_HOST_MOUNTS).map(host_volume).chain(control_credential_volumes()).collect();
    let daemon_set = DaemonSet {
        metadata: rbac::metadata(KEEL, Some(&params.namespace), KEEL),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet { max_surge: Some(IntOrString::Int(1)), max_unavailable: Some(IntOrString::Int(0)) }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(scrape_annotations(KEEL_METRICS_PORT, &[("ambient.istio.io/redirection", "disabled")])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(KEEL.to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    host_pid: Some(true),
                    host_network: Some(false),
                    node_selector: Some(labels(&[("kubernetes.io/os", "linux")])),
                    tolerations: Some(params.values.keel.tolerations.clone()),
                    termination_grace_period_seconds: Some(3600),
                    init_containers: Some(vec![install_cni_container(params)]),
                    containers: vec![keel_container(params)],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    };
    let notes = [
        Note::above(
            "maxSurge: 1",
            "Upgrades start the new keel on a node before the old one stops (maxSurge 1, maxUnavailable 0): with \
             --takeover the new one takes the old one's listening sockets in every pod (over the handover socket in \
             /run/keel) and the pinned capture, so no connection is refused; the old one serves what it carries to \
             its end (--drain-max-ms) and exits.",
        ),
        Note::above(
            "priorityClassName: system-node-critical",
            "The node's data plane: evicted last, and preempts other pods to run (as kube-proxy and CNI agents do).",
        ),
        Note::above(
            "hostPID: true",
            "The host PID namespace: a pod's cgroup.procs lists its processes as PIDs of the reader's PID namespace (0 for \
             processes outside it), and keel enters the pod's network namespace through /proc/<pid>/ns/net. With the \
             host's PIDs in keel's own /proc no host /proc mount is needed. It adds little to SYS_ADMIN, which keel has anyway.",
        ),
        Note::above(
            "hostNetwork: false",
            "Not on the host network: keel's listeners (15001, 15006, 15008) live inside each pod's network namespace, \
             and keel reaches keel-control and the API server like any pod.",
        ),
        Note::above(
            "terminationGracePeriodSeconds: 3600",
            "After a handover the old keel serves its open connections to their end, up to --drain-max-ms (an hour, \
             as Envoy's hot restart drains); the grace period lets it. A plain SIGTERM drains for --drain-timeout-ms \
             (5 s) and exits: the grace period is a bound, not a wait.",
        ),
        Note::above("initContainers:", "install-cni copies the keel-cni plugin onto the node and chains it into the node's CNI configuration."),
        Note::above_nth(
            "runAsUser: 0",
            0,
            "root in the container, for the capabilities added above (Kubernetes gives added capabilities to root \
             only). allowPrivilegeEscalation cannot be false with SYS_ADMIN (the API server refuses it), so it is not set.",
        ),
        Note::above_nth("drop:", 0, "Every other capability dropped; not privileged (no host devices, no other capabilities)."),
        Note::above(
            "type: Unconfined",
            "AppArmor: the runtime's default profile denies writes under /sys/fs (except cgroup), which is where keel \
             pins its programs and maps. seccomp stays RuntimeDefault (it allows bpf and setns to SYS_ADMIN).",
        ),
        Note::above_nth("type: spc_t", 0, "SELinux (ignored where it is off): the container type may not touch bpffs or other pods' namespaces."),
        Note::above_nth("type: spc_t", 1, "SELinux (ignored where it is off): the container type may not write the host's CNI directories."),
        Note::above_nth("runAsUser: 0", 1, "root, no capabilities: owner of the root-owned CNI directories it writes, nothing more."),
        Note::above(
            "readinessProbe:",
            "Ready once capture is attached and the workload state is loaded. No liveness probe: restarting keel on a \
             slow probe would refuse every captured pod's new connections until it is back; a crash restarts it anyway.",
        ),
        Note::above(
            "audience: istio-ca",
            "keel's credential towards keel-control (xDS and the CA): a token for this ServiceAccount, bound to this pod \
             (hence to its node), for audience istio-ca only, rotated by the kubelet.",
        ),
        Note::above(
            format!("secretName: {CA_SECRET}"),
            "Only root-cert.pem of the mesh CA Secret, to verify keel-control's serving certificate; the CA's key is not \
             projected. The kubelet reads the Secret: keel's ServiceAccount needs no access to Secrets.",
        ),
        Note::above(
            "ambient.istio.io/redirection: disabled",
            "keel never captures itself (the label istio.io/dataplane-mode=none says the same to Istio's tooling).",
        ),
    ];
    let mut all_notes: Vec<Note> = notes.into_iter().collect();
    all_notes.extend(KEEL_CAPABILITIES.iter().map(|c| Note::above(format!("- {}", c.name), c.why)));
    all_notes.extend(host_mount_notes(&KEEL_HOST_MOUNTS));
    all_notes.extend(host_mount_notes(&CNI_HOST_MOUNTS));
    Document::new(
        daemon_set,
        [
            "keel, the node agent: one per node. It captures the traffic of the node's ambient pods with eBPF, carries \
             it between nodes over HBONE (mTLS), applies the mesh's policies, follows keel-control over delta ADS and \
             watches the Kubernetes API for the pods of its node.",
            "Privileges (each explained next to its field below): capabilities NET_ADMIN and SYS_ADMIN only, not \
             privileged; the host PID namespace; host mounts of bpffs, the cgroup v2 hierarchy, the pods' network \
             namespaces and keel's run directory; AppArmor unconfined, SELinux spc_t, seccomp RuntimeDefault. The \
             install-cni init container writes the node's CNI binary and configuration directories, with no \
             capabilities. Not used: the host network, CAP_NET_RAW (no raw sockets; this image captures with eBPF \
             only and carries no iptables), a host /proc mount.",
            "Tolerations: every taint by default (values keel.tolerations): a node without keel has no mesh.",
            "Outbound traffic policy (values keel.outboundTrafficPolicy, Istio's meshConfig.outboundTrafficPolicy.mode): \
             ALLOW_ANY (the default) relays an enrolled pod's connection to an address that is no service, workload or \
             ServiceEntry host as dialled; REGISTRY_ONLY refuses and counts it.",
        ],
    )
    .with_notes(all_notes)
}
