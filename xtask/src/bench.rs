//! `cargo xtask bench`: release build, then keel-bench (from tests/) writing into target/bench/<timestamp>/.

use std::process::{Command, ExitCode};

use anyhow::{bail, Result};

use crate::{
    build, run,
    setup::{self, Needs},
    ws,
};

pub fn bench(quick: bool, extra: &[String]) -> Result<ExitCode> {
    if !ws::is_root() {
        bail!("the benchmark builds network namespaces and loads eBPF: run it as root");
    }
    let nightly = setup::ensure(Needs { packages: true, nextest: false })?;
    build::cargo_build(true, nightly)?;
    let stamp = run::capture(Command::new("date").args(["-u", "+%Y%m%d-%H%M%S"]))?;
    let stamp = String::from_utf8_lossy(&stamp.stdout).trim().to_owned();
    let out = ws::target_dir().join("bench").join(stamp);
    let release = ws::target_dir().join("release");
    let mut command = vec!["cargo xtask bench".to_owned()];
    if quick {
        command.push("--quick".into());
    }
    if !extra.is_empty() {
        command.push("--".into());
        command.extend(extra.iter().cloned());
    }
    let mut bench = Command::new(release.join("keel-bench"));
    bench
        .arg("--keel")
        .arg(release.join("keel"))
        .arg("--podapp")
        .arg(release.join("podapp"))
        .arg("--out")
        .arg(&out)
        .args(extra)
        .env("KEEL_BENCH_COMMAND", command.join(" "));
    if quick {
        bench.arg("--quick");
    }
    Ok(run::exit_code(run::status(&mut bench)?))
}
