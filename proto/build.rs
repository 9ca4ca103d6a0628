//! Compiles proto/ into Rust at build time with protox (pure Rust: no system `protoc`) and tonic-prost-build.
//!
//! Why our own .proto files rather than a crate of Envoy's: keel speaks one RPC of Envoy's transport and a handful
//! of its messages; a full Envoy API crate builds thousands of types for that. These files keep Envoy's and Istio's
//! packages, names and field numbers exactly (see ../shared/reference/hbone-and-workload-api.md), which is what the
//! wire depends on; the L7 issue will add the documented subset of the Envoy resource types it consumes.
fn main() -> anyhow::Result<()> {
    let files = [
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/istio/workload/workload.proto",
        "proto/istio/security/authorization.proto",
        "proto/istio/ca/ca.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
