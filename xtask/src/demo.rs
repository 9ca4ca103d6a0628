//! `cargo xtask demo`: release build, then hand the terminal over to keel-demo (from tests/).

use std::process::Command;

use anyhow::Result;

use crate::{
    build, run,
    setup::{self, Needs},
    ws,
};

/// Returns only on error: on success this process becomes keel-demo, so its exit code is ours.
pub fn demo(control_plane: bool, kubernetes: bool) -> Result<()> {
    let nightly = setup::ensure(Needs { packages: true, nextest: false })?;
    build::cargo_build(true, nightly)?;
    let release = ws::target_dir().join("release");
    let mut demo = Command::new(release.join("keel-demo"));
    demo.arg("--keel").arg(release.join("keel")).arg("--podapp").arg(release.join("podapp")).arg("--keel-control").arg(release.join("keel-control"));
    if control_plane {
        demo.arg("--control-plane");
    }
    if kubernetes {
        demo.arg("--kubernetes");
    }
    Err(run::exec(&mut demo))
}
