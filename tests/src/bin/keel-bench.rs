//! `keel-bench`: the benchmark runner behind `cargo xtask bench` (see `keel_tests::bench`).
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use keel_tests::{
    bench::{self, arms, workloads, BenchOptions},
    lab::Binaries,
};

#[derive(Parser)]
#[command(about = "keel's benchmark: capture on one node (direct vs iptables vs eBPF vs eBPF+splice), the path across two \
             nodes (x-direct vs x-keel-plain vs x-keel-hbone), and L7 on one node (l7-direct vs l7-nginx vs l7-keel-l4 vs \
             l7-keel vs l7-keel-meshed)")]
struct Args {
    #[arg(long)]
    keel: Option<PathBuf>,
    #[arg(long)]
    podapp: Option<PathBuf>,
    /// Output directory (report.md, results.json, report.svg).
    #[arg(long)]
    out: PathBuf,
    /// A short smoke run: one repetition of 2-second workloads (≤ 3 minutes). Not for conclusions.
    #[arg(long)]
    quick: bool,
    /// Repetitions (full run; at least 5 for a report worth reading).
    #[arg(long, default_value_t = 9)]
    reps: u32,
    /// Seconds per workload (full run).
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Only these arms (comma-separated): direct, iptables, ebpf, ebpf+splice, x-direct, x-keel-plain, x-keel-hbone,
    /// l7-direct, l7-nginx, l7-keel-l4, l7-keel, l7-keel-meshed.
    #[arg(long, value_delimiter = ',')]
    arms: Vec<String>,
    /// Only these workloads (comma-separated names). The L7 arms run the l7-* workloads, the others the rest.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Instead of the data-path arms: keel-control at cluster scale (API stand-in, one xDS subscriber per node, pod
    /// churn), at a quarter of and at the full size (10,000 pods over 50 nodes); then one real keel holding the full
    /// view and enrolling 110 pods on its node (root); writes control-plane.md.
    #[arg(long)]
    control_plane: bool,
    /// Instead of the data-path arms: keel gateway against nginx as TLS-terminating reverse proxies in front of
    /// the same backend (HTTPS keep-alive over HTTP/1.1 and HTTP/2, and a new TLS connection per request); writes
    /// ingress.md and ingress.json.
    #[arg(long)]
    ingress: bool,
    /// Instead of the data-path arms: one pod's request/response latency alone and while another pod on the node
    /// runs bulk streams, then a connection storm, through keel with fair share on and off, keel with iptables,
    /// and no proxy; writes noisy-neighbour.md and noisy-neighbour.json.
    #[arg(long)]
    noisy_neighbour: bool,
    /// Instead of the data-path arms: requests (keep-alive and a new connection each) across a `keel run
    /// --takeover` halfway through, against the same run without one; writes upgrade.md and upgrade.json.
    #[arg(long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut binaries = Binaries::locate();
    if let Some(keel) = args.keel {
        binaries.keel = keel;
    }
    if let Some(podapp) = args.podapp {
        binaries.podapp = podapp;
    }
    if args.control_plane {
        return control_plane(&binaries, &args.out, args.quick);
    }
    if args.ingress {
        let (reps, seconds) = if args.quick { (1, 2) } else { (args.reps.max(1), args.seconds.max(1)) };
        return ingress(&binaries, &args.out, reps, seconds);
    }
    if args.noisy_neighbour {
        let (reps, seconds) = if args.quick { (1, 2) } else { (args.reps.max(1), args.seconds.max(1)) };
        return noisy_neighbour(&binaries, &args.out, reps, seconds);
    }
    if args.upgrade {
        let (reps, seconds) = if args.quick { (1, 4) } else { (args.reps.max(1), args.seconds.max(1)) };
        return upgrade(&binaries, &args.out, reps, seconds);
    }
    let pick = |names: &[String], name: &str| names.is_empty() || names.iter().any(|n| n == name);
    // A misspelt name must not quietly shrink the run.
    let known_arms: Vec<&str> = arms::ARMS.iter().map(|a| a.name).collect();
    let known_workloads: Vec<&str> = workloads::WORKLOADS.iter().map(|w| w.name).collect();
    for (what, asked, known) in [("arm", &args.arms, &known_arms), ("workload", &args.workloads, &known_workloads)] {
        if let Some(unknown) = asked.iter().find(|n| !known.contains(&n.as_str())) {
            eprintln!("keel-bench: unknown {what} {unknown:?}; known: {}", known.join(", "));
            return ExitCode::FAILURE;
        }
    }
    let arms: Vec<&'static arms::Arm> = arms::ARMS.iter().filter(|a| pick(&args.arms, a.name)).collect();
    let workloads: Vec<&'static workloads::Workload> = workloads::WORKLOADS.iter().filter(|w| pick(&args.workloads, w.name)).collect();
    // Nor may a selection leave an arm with nothing to run.
    if let Some(idle) = arms.iter().find(|a| !workloads.iter().any(|w| w.l7() == a.l7.is_some() && (!w.responder || a.runs_responder()))) {
        eprintln!("keel-bench: arm {} runs none of the selected workloads", idle.name);
        return ExitCode::FAILURE;
    }
    let options = BenchOptions {
        binaries,
        out_dir: args.out.clone(),
        repetitions: if args.quick { 1 } else { args.reps.max(1) },
        seconds: if args.quick { 2 } else { args.seconds.max(1) },
        quick: args.quick,
        arms,
        workloads,
        command: std::env::var("KEEL_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
    };
    let results = match bench::run(&options) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("keel-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match bench::report::write_all(&args.out, &results) {
        Ok(summary) => {
            println!("\n{summary}");
            println!("report: {}", args.out.join("report.md").display());
            // The quick run is a smoke test: every workload must have run without a failure.
            let failed: Vec<String> = results
                .samples
                .iter()
                .filter(|s| !s.ok || s.failures.total() > 0)
                .map(|s| format!("{} / {}: {}", s.arm, s.workload, s.note))
                .collect();
            if args.quick && !failed.is_empty() {
                eprintln!("keel-bench: failures in the smoke run:\n{}", failed.join("\n"));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-bench: writing the report: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn control_plane(binaries: &Binaries, out: &std::path::Path, quick: bool) -> ExitCode {
    use bench::control_plane::{self, FULL, QUARTER, SMOKE};
    let sizes = if quick { vec![SMOKE] } else { vec![QUARTER, FULL] };
    let mut outcomes = Vec::new();
    for (i, scale) in sizes.into_iter().enumerate() {
        eprintln!("keel-bench: control plane, {} pods over {} nodes", scale.pods, scale.nodes);
        match control_plane::run(&binaries.keel_control, &out.join(format!("control-plane-{i}")), scale) {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                eprintln!("keel-bench: control plane at {} pods: {e:#}", scale.pods);
                return ExitCode::FAILURE;
            }
        }
    }
    let (view, pods) = if quick { (SMOKE, 10) } else { (FULL, bench::node_scale::KUBELET_MAX_PODS) };
    eprintln!("keel-bench: one node, {} pods in the view, {pods} pods enrolled", view.pods);
    let node = match bench::node_scale::run(binaries, view, pods) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("keel-bench: one node: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let command = std::env::var("KEEL_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let report = control_plane::markdown(&outcomes, &command) + &bench::node_scale::markdown(&node);
    println!("{report}");
    if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::write(out.join("control-plane.md"), &report)) {
        eprintln!("keel-bench: writing control-plane.md: {e}");
        return ExitCode::FAILURE;
    }
    // Every change must reach every node: a miss is a failure, not a number.
    if outcomes.iter().any(|o| o.missed > 0) {
        eprintln!("keel-bench: some changes never reached some nodes");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// One comparison family's run: its samples, with its report printed and written to `<out>/<name>.md`; `None`
/// (said on stderr) when the run or the writing failed.
fn family<S>(
    name: &str,
    out: &std::path::Path,
    run: impl FnOnce() -> anyhow::Result<Vec<S>>,
    markdown: impl FnOnce(&[S], &str) -> String,
) -> Option<Vec<S>> {
    let samples = match run() {
        Ok(samples) => samples,
        Err(e) => {
            eprintln!("keel-bench: {name}: {e:#}");
            return None;
        }
    };
    let command = std::env::var("KEEL_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let report = markdown(&samples, &command);
    println!("{report}");
    if let Err(e) = std::fs::write(out.join(format!("{name}.md")), &report) {
        eprintln!("keel-bench: writing {name}.md: {e}");
        return None;
    }
    Some(samples)
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn noisy_neighbour(binaries: &Binaries, out: &std::path::Path, reps: u32, seconds: u32) -> ExitCode {
    let run = || bench::noisy_neighbour::run(binaries, out, reps, seconds);
    exit_code(family("noisy-neighbour", out, run, |samples, command| bench::noisy_neighbour::markdown(samples, command, seconds)).is_some())
}

fn upgrade(binaries: &Binaries, out: &std::path::Path, reps: u32, seconds: u32) -> ExitCode {
    let run = || bench::upgrade::run(binaries, out, reps, seconds);
    exit_code(family("upgrade", out, run, |samples, command| bench::upgrade::markdown(samples, command, seconds)).is_some())
}

fn ingress(binaries: &Binaries, out: &std::path::Path, reps: u32, seconds: u32) -> ExitCode {
    let run = || bench::ingress::run(binaries, out, reps, seconds);
    let Some(samples) = family("ingress", out, run, |samples, command| bench::ingress::markdown(samples, command, seconds)) else {
        return ExitCode::FAILURE;
    };
    // Every request must have been answered: a failure is a failed run, not a number.
    let failed: Vec<String> =
        samples.iter().filter(|s| s.failures > 0).map(|s| format!("{} / {} (rep {}): {} failures", s.arm, s.workload, s.rep, s.failures)).collect();
    if !failed.is_empty() {
        eprintln!("keel-bench: ingress: failed requests:\n{}", failed.join("\n"));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
