//! `cargo xtask lint`: the guard rails CI holds every change to: rustfmt's layout (`rustfmt.toml`) and clippy
//! with the workspace lints (`[workspace.lints]`) and every warning an error.
use std::process::ExitCode;

use anyhow::Result;

use crate::run::{self, cmd};

pub fn lint() -> Result<ExitCode> {
    for component in ["rustfmt", "clippy"] {
        // Minimal toolchain profiles lack them; adding an installed component is a no-op.
        run::run(&mut cmd("rustup", ["component", "add", component]))?;
    }
    let checks: [(&str, &[&str]); 3] = [
        ("cargo fmt (workspace)", &["fmt", "--all", "--check"]),
        ("cargo fmt (fuzz/)", &["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]),
        // keel-ebpf builds only for the BPF target (proxy/build.rs builds it); the rest for the host.
        ("cargo clippy", &["clippy", "--workspace", "--exclude", "keel-ebpf", "--all-targets", "--", "-D", "warnings"]),
    ];
    let mut failed = Vec::new();
    for (name, args) in checks {
        if !run::status(&mut cmd("cargo", args))?.success() {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        println!("lint: rustfmt and clippy clean");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("lint: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
