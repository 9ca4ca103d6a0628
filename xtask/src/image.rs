//! `cargo xtask image`: OCI image layouts of keel and keel-control, built offline with umoci.
//!
//! Each image is one layer holding only statically linked binaries (glibc static, `-C target-feature=+crt-static`:
//! no musl target can be installed here) under /usr/local/bin: no shell, no libraries, no CA bundle (keel trusts
//! the mesh root it is given, keel-control the cluster's CA from its ServiceAccount mount). Static glibc still
//! resolves names through /etc/hosts and DNS (/etc/resolv.conf, which the kubelet mounts).
//!
//! Output: `<target dir>/images/<name>/`, an OCI layout with the tag `<workspace version>`; copy it to a registry
//! with e.g. `skopeo copy oci:target/images/keel:0.1.0 docker://registry.example/keel:0.1.0`.

use std::{
    env::consts::ARCH,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _, Result};
use thiserror::Error;

use crate::{
    run::{self, cmd},
    setup::{self, Needs},
    ws,
};

/// The tag of every image: the workspace version (the chart's default image.tag).
pub const TAG: &str = env!("CARGO_PKG_VERSION");
/// Where the binaries sit in the images (the manifests call them there).
pub const BIN_DIR: &str = "usr/local/bin";

/// One image: its binaries and how it runs.
pub struct ImageSpec {
    pub name: &'static str,
    /// The binary the image runs, first in `binaries`.
    pub binaries: Vec<&'static str>,
    /// `uid:gid` the image runs as unless the pod says otherwise.
    pub user: &'static str,
}

/// The images.
pub fn specs() -> Vec<ImageSpec> {
    vec![
        // Root: keel needs capabilities, which Kubernetes grants to root only. keel-cni rides along: the
        // DaemonSet's install-cni init container copies it from the keel image onto the node.
        ImageSpec { name: "keel", binaries: vec!["keel", "keel-cni"], user: "0:0" },
        // keel-control needs nothing of root (the Deployment also says runAsUser 65532).
        ImageSpec { name: "keel-control", binaries: vec!["keel-control"], user: "65532:65532" },
    ]
}

/// The image layout of `name`.
pub fn layout_dir(name: &str) -> PathBuf {
    ws::target_dir().join("images").join(name)
}

pub fn image() -> Result<()> {
    ensure!(run::probe(&mut cmd("umoci", ["--version"])).is_some(), "umoci is missing: run `cargo xtask setup` (Debian package umoci)");
    let triple = host_triple()?;
    let nightly = setup::ensure(Needs { packages: false, nextest: false })?;
    let specs = specs();

    let mut build = cmd("cargo", ["build", "--release", "--target", &triple, "-p", "keel", "-p", "keel-control", "-p", "keel-cni"]);
    for spec in &specs {
        for binary in &spec.binaries {
            build.args(["--bin", binary]);
        }
    }
    // Applies to the target only: build scripts and proc macros stay dynamic, as they must.
    build.env(format!("CARGO_TARGET_{}_RUSTFLAGS", triple.to_uppercase().replace('-', "_")), "-C target-feature=+crt-static");
    if !nightly {
        build.env("KEEL_EBPF_TOOLCHAIN", "stable");
    }
    run::run(&mut build)?;

    let release = ws::target_dir().join(&triple).join("release");
    for spec in &specs {
        for binary in &spec.binaries {
            let path = release.join(binary);
            check_static(&path).with_context(|| format!("{} cannot go into a scratch image", path.display()))?;
        }
        build_layout(spec, &release)?;
        println!("image: {} (tag {TAG}): {}", spec.name, layout_dir(spec.name).display());
    }
    Ok(())
}

fn host_triple() -> Result<String> {
    match ARCH {
        "x86_64" | "aarch64" => Ok(format!("{ARCH}-unknown-linux-gnu")),
        other => bail!("no image build for {other}"),
    }
}

/// The OCI name of the host's architecture.
pub fn oci_architecture() -> &'static str {
    match ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("not an ELF file")]
    NotElf,
    #[error("only 64-bit little-endian ELF is read here")]
    UnsupportedElf,
    #[error("dynamically linked (it names a program interpreter, {0}): it needs a libc the image does not have")]
    Dynamic(String),
    #[error("truncated ELF header or program headers")]
    Truncated,
}

/// Fails unless the ELF file at `path` runs without a dynamic loader (no PT_INTERP program header; a static-pie
/// binary still has PT_DYNAMIC for its own relocations, which is fine).
pub fn check_static(path: &Path) -> Result<()> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).map_err(|_| LinkError::Truncated)?;
    let interp = interpreter(&header, |offset, len| {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    })?;
    match interp {
        Some(interp) => Err(LinkError::Dynamic(interp).into()),
        None => Ok(()),
    }
}

/// The program interpreter an ELF64 LE file names, if any. `read(offset, len)` reads the file.
fn interpreter(header: &[u8; 64], mut read: impl FnMut(u64, usize) -> Option<Vec<u8>>) -> Result<Option<String>, LinkError> {
    const PT_INTERP: u32 = 3;
    if header[..4] != *b"\x7fELF" {
        return Err(LinkError::NotElf);
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(LinkError::UnsupportedElf);
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(header, 0x20), usize::from(u16_at(header, 0x36)), usize::from(u16_at(header, 0x38)));
    if phentsize < 56 {
        return Err(LinkError::Truncated);
    }
    let table = read(phoff, phentsize * phnum).ok_or(LinkError::Truncated)?;
    for entry in table.chunks_exact(phentsize) {
        if u32_at(entry, 0) == PT_INTERP {
            let (offset, size) = (u64_at(entry, 0x08), u64_at(entry, 0x20));
            let size = usize::try_from(size).map_err(|_| LinkError::Truncated)?.min(4096);
            let name = read(offset, size).ok_or(LinkError::Truncated)?;
            return Ok(Some(String::from_utf8_lossy(&name).trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

/// A fresh OCI layout for `spec`: one layer with its binaries, and the image configuration.
fn build_layout(spec: &ImageSpec, release: &Path) -> Result<()> {
    let layout = layout_dir(spec.name);
    if layout.exists() {
        fs::remove_dir_all(&layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    fs::create_dir_all(layout.parent().expect("images dir")).context("creating the images directory")?;
    let staging = ws::target_dir().join("images").join(format!(".{}-rootfs", spec.name));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let bin = staging.join(BIN_DIR);
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for binary in &spec.binaries {
        fs::copy(release.join(binary), bin.join(binary)).with_context(|| format!("copying {binary}"))?;
    }

    let image = format!("{}:{TAG}", layout.display());
    let rootless: &[&str] = if ws::is_root() { &[] } else { &["--rootless"] };
    run::run(cmd("umoci", ["init", "--layout"]).arg(&layout))?;
    run::run(&mut cmd("umoci", ["new", "--image", &image]))?;
    run::run(cmd("umoci", ["insert"]).args(rootless).args(["--image", &image]).arg(&staging).arg("/"))?;
    let entrypoint = format!("/{BIN_DIR}/{}", spec.binaries[0]);
    run::run(cmd("umoci", ["config", "--image", &image]).args([
        "--config.entrypoint",
        &entrypoint,
        "--config.user",
        spec.user,
        "--config.env",
        &format!("PATH=/{BIN_DIR}"),
        "--config.label",
        &format!("org.opencontainers.image.title={}", spec.name),
        "--config.label",
        &format!("org.opencontainers.image.version={TAG}"),
        "--architecture",
        oci_architecture(),
        "--os",
        "linux",
    ]))?;
    run::run(cmd("umoci", ["gc", "--layout"]).arg(&layout))?;
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
