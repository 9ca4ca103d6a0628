//! Builds the kernel programs (`ebpf/programs`) for bpfel-unknown-none with aya-build and embeds the object.
//! The toolchain is nightly (`-Z build-std=core`); set KEEL_EBPF_TOOLCHAIN=stable together with
//! to build with stable instead (RUSTC_BOOTSTRAP=1 is set for that inner build) (the fallback `cargo xtask setup` reports).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=KEEL_EBPF_TOOLCHAIN");
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "keel-ebpf")
        .ok_or_else(|| anyhow!("the keel-ebpf package is not in the workspace"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("keel-ebpf manifest has no parent directory"))?.to_string();
    let toolchain_name = std::env::var("KEEL_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain_name.as_deref() {
        None | Some("") | Some("nightly") => Toolchain::Nightly,
        Some(other) => {
            // aya-build adds `-Z build-std=core`, which a stable cargo only accepts with RUSTC_BOOTSTRAP=1.
            // SAFETY: build scripts are single-threaded.
            unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
            Toolchain::Custom(other)
        }
    };
    // aya-build relays every line the inner cargo prints as a `cargo:warning`: without this, each build of keel
    // showed ~80 "warning: keel@0.1.0: Compiling ..." lines. Quiet, the inner cargo prints only what matters
    // (compiler warnings and errors of the eBPF programs), which still reach the outer build's output.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf([Package { name: "keel-ebpf", root_dir: &root_dir, ..Default::default() }], toolchain)
}
