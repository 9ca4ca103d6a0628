//! Compiles proto/ into Rust at build time with protox (pure Rust: no system `protoc`) and tonic-prost-build.
//!
//! Why our own .proto files rather than a crate of Envoy's: keel speaks one RPC of Envoy's transport and a handful
//! of its messages; a full Envoy API crate builds thousands of types for that. These files keep Envoy's and Istio's
//! packages, names and field numbers exactly (see ../shared/reference/hbone-and-workload-api.md), which is what the
//! wire depends on. The L7 resource types (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment and the
//! filter configs they carry) are a documented subset: ENVOY-SUBSET.md lists every message and field kept.
fn main() -> anyhow::Result<()> {
    let files = [
        "proto/envoy/service/discovery/v3/discovery.proto",
        // L7 resources delivered on the same delta ADS stream; their imports (core, type, matcher) come along.
        "proto/envoy/config/listener/v3/listener.proto",
        "proto/envoy/config/route/v3/route.proto",
        "proto/envoy/config/cluster/v3/cluster.proto",
        "proto/envoy/config/endpoint/v3/endpoint.proto",
        // Filter configs carried in Any fields of those resources.
        "proto/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
        "proto/envoy/extensions/filters/http/fault/v3/fault.proto",
        "proto/envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
        // A gateway's TLS servers: the transport socket's context, and the secrets (SDS resources on ADS).
        "proto/envoy/extensions/transport_sockets/tls/v3/tls.proto",
        "proto/istio/workload/workload.proto",
        "proto/istio/security/authorization.proto",
        "proto/istio/ca/ca.proto",
        // keel's own: the HTTP rules of AuthorizationPolicies, next to the L4 ones (see the file).
        "proto/keel/security/http_authorization.proto",
        "proto/keel/security/request_authentication.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Every proto map as a BTreeMap: its encoding is then in key order, the same bytes for the same content. A
        // resource's version is the hash of its bytes, and HashMap's per-instance order made a Workload in two or
        // more Services (or a route with two filter configs) look changed on every recomputation.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
