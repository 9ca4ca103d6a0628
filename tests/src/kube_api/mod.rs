//! A stand-in for the Kubernetes API server, and the handle the suites drive it with.
//!
//! No kube-apiserver can be installed on our build machines, so keel's Kubernetes mode (kube-rs controllers in
//! keel-control and the keel node agent, `kubectl apply` of deploy/) is tested against `kube-stand-in`: a process
//! speaking the Kubernetes REST protocol faithfully for the kinds keel uses, and refusing what the real server
//! would refuse, so drift shows.
//!
//! Covered: HTTPS with a CA and kubeconfig written at start; bearer tokens (401 otherwise); legacy discovery
//! (`/version`, `/api`, `/apis`, resource lists with short names); core/v1 Pods, Services, Namespaces, Nodes,
//! ServiceAccounts, ConfigMaps, Secrets, Events; events.k8s.io Events; EndpointSlices; Leases; TokenReviews (create);
//! DaemonSets, Deployments; PodDisruptionBudgets; RBAC; PriorityClasses; CustomResourceDefinitions (creating one
//! serves its kind); Istio's VirtualService, DestinationRule, ServiceEntry (networking.istio.io v1, v1beta1,
//! v1alpha3), AuthorizationPolicy, PeerAuthentication (security.istio.io v1, v1beta1). Verbs get, list (limit and
//! continue), watch (bookmarks, `sendInitialEvents`, 410 Gone past the retained window or a compaction), create,
//! update (409 on a stale resourceVersion), patch (merge, JSON patch, server-side apply), delete (preconditions,
//! finalizers; graceful pod deletion on the harness's request), `/status` subresources; label and field selectors;
//! strict decoding of builtin kinds into their k8s-openapi types (unknown fields named in a 400); name and label
//! validation (422); Status objects shaped like the real ones; persistence across restarts.
//!
//! Deliberately not: authorization (RBAC objects are stored, not enforced: every valid token may do everything),
//! admission and defaulting (no clusterIP allocation, no default ServiceAccount, no schema defaults), strategic
//! merge patch (415: use server-side apply), field ownership in server-side apply (applied fields are merged over
//! the object; removed fields stay), OpenAPI documents, aggregated discovery, protobuf, deletecollection, dry run,
//! CRD schema validation of custom resources (their spec is kept as JSON), and garbage collection by owner.

mod handle;
pub mod kubeconfig;
pub mod server;

pub use handle::{KubeApi, KubeApiOptions};
pub use server::tokens::TokenSpec as ServiceAccountToken;
