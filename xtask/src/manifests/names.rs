//! Names, ports and paths shared by the objects (and by what keel and keel-control expect of them).

/// Where keel installs by default: the namespace Istio users already run their mesh's control plane in
/// (keel-control stands where istiod does).
pub const NAMESPACE: &str = "istio-system";

/// The node agent: DaemonSet, ServiceAccount, ClusterRole(Binding), label `app=keel`.
pub const KEEL: &str = "keel";
/// The ingress gateway (`keel gateway`): Deployment, Service, ServiceAccount, label `app=keel-ingressgateway`
/// (istio-ingressgateway's role; Istio's `istio: ingressgateway` label selects it from a Gateway).
pub const GATEWAY: &str = "keel-ingressgateway";
/// The control plane: Deployment, Service, ServiceAccount, RBAC, PodDisruptionBudget, label `app=keel-control`,
/// and the name of its leader-election Lease.
pub const CONTROL: &str = "keel-control";

/// keel-control: delta ADS and the Istio CA API, TLS (istiod's port).
pub const XDS_PORT: i32 = 15012;
/// keel-control: plain HTTP readiness (`GET /ready`: caches synced, serving).
pub const CONTROL_READINESS_PORT: i32 = 15014;
pub const CONTROL_READINESS_PATH: &str = "/ready";
/// keel: plain HTTP readiness only (`GET /healthz/ready`), on the pod IP, as ztunnel's 15021. keel's admin API
/// (config dump, stats) stays on 127.0.0.1:15000, out of reach of the cluster.
pub const KEEL_READINESS_PORT: i32 = 15021;
pub const KEEL_READINESS_PATH: &str = "/healthz/ready";
/// keel and keel gateway: Prometheus metrics only (`GET /metrics`), on the pod IP, as Istio's 15020.
pub const KEEL_METRICS_PORT: i32 = 15020;
/// Where keel, keel gateway and keel-control (on its monitoring port) serve Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The label (and value) a Gateway's `selector` names to be served by keel's ingress gateway, as Istio's.
pub const GATEWAY_SELECTOR_LABEL: (&str, &str) = ("istio", "ingressgateway");
/// keel gateway: plain HTTP readiness only (`GET /healthz/ready`), on the pod IP, as Istio gateways' status-port.
pub const GATEWAY_STATUS_PORT: i32 = 15021;
/// The ports the gateway's Service exposes, each to the same port of the pod: keel gateway binds a Gateway
/// server's `port.number` in its pod (`targetPort` is not served yet), so Gateways use 80 and 443.
pub const GATEWAY_HTTP_PORT: i32 = 80;
pub const GATEWAY_HTTPS_PORT: i32 = 443;
/// keel gateway's --state-dir (its default): the last good config, kept across a restart of the container.
pub const GATEWAY_STATE_DIR: &str = "/var/lib/keel-gateway";
/// keel gateway's non-root user (and group), Istio's gateways' 1337.
pub const GATEWAY_UID: i64 = 1_337;

/// The Secret holding the mesh CA, in istiod's plugged-in layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
/// `cert-chain.pem`) and under istiod's name, so an existing Istio CA carries over. Every keel-control replica
/// must sign with the same CA, hence a Secret and not a CA generated per replica.
pub const CA_SECRET: &str = "cacerts";
pub const ROOT_CERT: &str = "root-cert.pem";

/// The audience of the projected ServiceAccount tokens keel presents to keel-control (istiod's).
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// Projected token lifetime: the kubelet rotates it at 80 %; keel reads the file again for each new connection.
pub const TOKEN_EXPIRATION_SECS: i64 = 43_200;

// Paths inside the keel container.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "istio-token";
pub const CONTROL_ROOT_DIR: &str = "/var/run/secrets/keel-control";
/// keel's --state-dir and API socket directory (its defaults), and the host directory behind it.
pub const KEEL_RUN_DIR: &str = "/run/keel";
pub const KEEL_RUN_HOST_DIR: &str = "/var/run/keel";
/// keel's API socket as the host (and so the CNI plugin) sees it.
pub const KEEL_SOCKET_ON_HOST: &str = "/var/run/keel/keel.sock";
/// Where the binaries sit in keel's images.
pub const BIN_DIR: &str = "/usr/local/bin";
// Paths inside the keel-control container.
pub const CA_DIR: &str = "/etc/cacerts";

/// keel-control's non-root user (and group): no file in its image or volumes needs root.
pub const CONTROL_UID: i64 = 65_532;

/// The label Istio's ambient mode reads; `none` keeps a pod out of the mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
