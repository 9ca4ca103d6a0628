//! A real `keel-control` in the lab: serving delta ADS and the CA API on 127.0.0.1:15012 of the node namespace
//! (where keel runs), from a config directory the test writes, with one node token.

use super::process::{self, ChildGuard};
use super::sys::{self, Placement};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const CONTROL_ADDR: &str = "127.0.0.1:15012";
/// The node name the lab's keel claims (and its token maps to); lab Pod objects name it as `nodeName`.
pub const NODE_NAME: &str = "lab-node";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ControlPlane {
    child: ChildGuard,
    pub ca_dir: PathBuf,
    pub token_file: PathBuf,
}

impl ControlPlane {
    pub(super) fn start(bin: &Path, node_netns: &Path, cgroup: &Path, dir: &Path, config_dir: &Path) -> Result<ControlPlane> {
        if !bin.is_file() {
            bail!("keel-control binary not found at {} (build it, or set KEEL_CONTROL_BIN)", bin.display());
        }
        let ca_dir = dir.join("ca");
        let tokens = dir.join("control-tokens");
        let token_file = dir.join("node-token");
        std::fs::write(&tokens, format!("lab-node-token {NODE_NAME}\n"))?;
        std::fs::write(&token_file, "lab-node-token\n")?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", CONTROL_ADDR])
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--tokens")
            .arg(&tokens)
            .arg("--ca-dir")
            .arg(&ca_dir);
        let _fds = sys::place(&mut cmd, &Placement { netns: Some(node_netns), cgroup: Some(cgroup) })?;
        let mut child = process::spawn_logged("keel-control", &mut cmd, &dir.join("keel-control.log"))?;
        child.wait_for_line(READY_TIMEOUT, |line| line.contains("serving delta ADS"))?;
        Ok(ControlPlane { child, ca_dir, token_file })
    }

    /// keel's flags for following this control plane.
    pub fn keel_args(&self) -> Vec<String> {
        vec![
            "--xds-address".into(),
            format!("https://{CONTROL_ADDR}"),
            "--xds-root".into(),
            self.ca_dir.join("root-cert.pem").display().to_string(),
            "--xds-token-file".into(),
            self.token_file.display().to_string(),
            "--node-name".into(),
            NODE_NAME.into(),
        ]
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL, as a crashed or evicted control plane.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn log(&self) -> String {
        self.child.log()
    }
}
