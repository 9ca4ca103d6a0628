//! `cargo xtask test`: setup if needed, build, then every suite under nextest (as root: the end-to-end
//! suites create network namespaces, cgroups and eBPF attachments).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    build,
    run::{self, cmd},
    setup::{self, secs, Needs},
    ws,
};

pub fn test(nextest_args: &[String]) -> Result<ExitCode> {
    if !ws::is_root() {
        bail!(
            "`cargo xtask test` must run as root: the end-to-end suites create network namespaces, \
             cgroups and eBPF attachments (try `sudo -E cargo xtask test`)"
        );
    }
    let mut timings = Timings::default();

    let start = Instant::now();
    let nightly = setup::ensure(Needs { packages: true, nextest: true })?;
    timings.setup = Some(start.elapsed());

    let start = Instant::now();
    let built = build::cargo_build(false, nightly);
    timings.build = Some(start.elapsed());
    if built.is_err() {
        timings.print();
    }
    built?;

    let debug = ws::target_dir().join("debug");
    let mut nextest = cmd("cargo", ["nextest", "run", "--workspace", "--no-fail-fast"]);
    // keel-ebpf builds only for bpfel-unknown-none (through keel's build script), never for the host.
    nextest.args(["--exclude", "keel-ebpf"]);
    if !nextest_args.iter().any(|a| a.starts_with("--test-threads") || a == "-j") {
        nextest.args(["--test-threads", "2"]);
    }
    nextest
        .args(nextest_args)
        .env("KEEL_BIN", debug.join("keel"))
        .env("KEEL_PODAPP", debug.join("podapp"))
        .env("KEEL_CONTROL_BIN", debug.join("keel-control"))
        .env("KEEL_CNI_BIN", debug.join("keel-cni"))
        .env("KEEL_KUBE_STAND_IN", debug.join("kube-stand-in"));
    let start = Instant::now();
    let status = run::status(&mut nextest)?;
    timings.tests = Some(start.elapsed());
    timings.print();
    Ok(run::exit_code(status))
}

#[derive(Default)]
struct Timings {
    setup: Option<Duration>,
    build: Option<Duration>,
    tests: Option<Duration>,
}

impl Timings {
    fn print(&self) {
        let parts: Vec<String> = [("setup", self.setup), ("build", self.build), ("tests", self.tests)]
            .into_iter()
            .filter_map(|(name, d)| d.map(|d| format!("{name} {}", secs(d))))
            .collect();
        println!("timings: {}", parts.join(", "));
    }
}
