//! `cargo xtask build`: the keel daemon, the control plane and the test binaries (podapp, keel-demo).

use anyhow::Result;

use crate::{
    run::{self, cmd},
    setup::{self, Needs},
};

pub fn build(release: bool) -> Result<()> {
    let nightly = setup::ensure(Needs { packages: false, nextest: false })?;
    cargo_build(release, nightly)
}

/// `cargo build [--release] -p keel -p keel-control -p keel-cni -p keel-tests --bins`; without nightly, keel's build script builds
/// the eBPF programs with stable (it reads `KEEL_EBPF_TOOLCHAIN`).
pub fn cargo_build(release: bool, nightly: bool) -> Result<()> {
    let mut build = cmd("cargo", ["build"]);
    if release {
        build.arg("--release");
    }
    build.args(["-p", "keel", "-p", "keel-control", "-p", "keel-cni", "-p", "keel-tests", "--bins"]);
    if !nightly {
        println!("build: no nightly toolchain with rust-src: building the eBPF programs with stable");
        build
            // proxy/build.rs sets RUSTC_BOOTSTRAP=1 for the inner eBPF build when it sees this.
            .env("KEEL_EBPF_TOOLCHAIN", "stable");
    }
    run::run(&mut build)
}
