//! A real `keel-control` in the lab: serving delta ADS and the CA API from a config directory the test writes,
//! with one node token per lab node. In a single-node lab it listens on 127.0.0.1:15012 of the node namespace
//! (where keel runs); in a multi-node lab on its node's wire address, so every node's keel can reach it.

use super::process::{self, ChildGuard};
use super::sys::{self, Placement};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const CONTROL_ADDR: &str = "127.0.0.1:15012";
/// keel-control's port, on loopback (single node) or on a node's wire address (multi-node).
pub const CONTROL_PORT: u16 = 15012;
/// The node name a single-node lab's keel claims (and its token maps to); its Pod objects name it as `nodeName`.
/// Node k of a multi-node lab is `lab-node-<k>`.
pub const NODE_NAME: &str = "lab-node";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Who may connect: a node name and the file its keel reads its token from.
#[derive(Debug, Clone)]
pub(super) struct NodeCredentials {
    pub name: String,
    pub token_file: PathBuf,
}

impl NodeCredentials {
    /// `lab-node-token` for `lab-node`: a token that says whose it is makes control-plane logs readable.
    fn token(&self) -> String {
        format!("{}-token", self.name)
    }
}

pub(super) struct ControlSpec<'a> {
    pub bin: &'a Path,
    pub netns: &'a Path,
    pub cgroup: &'a Path,
    /// The lab dir: CA, tokens file and log go here.
    pub dir: &'a Path,
    pub config_dir: &'a Path,
    pub listen: SocketAddr,
    /// Every node of the lab, index order.
    pub nodes: Vec<NodeCredentials>,
    /// More `keel-control serve` flags.
    pub extra_args: &'a [&'a str],
    /// Gateway pods (`<namespace>/<name>`) that get a token of their own (their pod's view and identity).
    pub gateways: &'a [&'a str],
}

pub struct ControlPlane {
    child: ChildGuard,
    pub ca_dir: PathBuf,
    /// Node 0's token file (see [`ControlPlane::token_file_for`]).
    pub token_file: PathBuf,
    listen: SocketAddr,
    nodes: Vec<NodeCredentials>,
    /// Gateway pod → its token file.
    gateway_tokens: Vec<(String, PathBuf)>,
}

impl ControlPlane {
    pub(super) fn start(spec: ControlSpec<'_>) -> Result<ControlPlane> {
        if !spec.bin.is_file() {
            bail!("keel-control binary not found at {} (build it, or set KEEL_CONTROL_BIN)", spec.bin.display());
        }
        let ca_dir = spec.dir.join("ca");
        let tokens = spec.dir.join("control-tokens");
        // `<token> <node-name>` per line: each node's keel authenticates as itself.
        let mut lines: String = spec.nodes.iter().map(|n| format!("{} {}\n", n.token(), n.name)).collect();
        let mut gateway_tokens = Vec::new();
        for pod in spec.gateways {
            let token = format!("gateway-token-{}", pod.replace('/', "-"));
            let file = spec.dir.join(format!("{}.token", token));
            std::fs::write(&file, format!("{token}\n")).with_context(|| format!("writing {}", file.display()))?;
            lines.push_str(&format!("{token} {} gateway={pod}\n", spec.nodes[0].name));
            gateway_tokens.push((pod.to_string(), file));
        }
        std::fs::write(&tokens, lines).with_context(|| format!("writing {}", tokens.display()))?;
        for n in &spec.nodes {
            std::fs::write(&n.token_file, format!("{}\n", n.token())).with_context(|| format!("writing {}", n.token_file.display()))?;
        }
        let mut cmd = Command::new(spec.bin);
        cmd.args(["serve", "--listen", &spec.listen.to_string()])
            .arg("--config-dir")
            .arg(spec.config_dir)
            .arg("--tokens")
            .arg(&tokens)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(spec.extra_args);
        let _fds = sys::place(&mut cmd, &Placement { netns: Some(spec.netns), cgroup: Some(spec.cgroup) })?;
        let mut child = process::spawn_logged("keel-control", &mut cmd, &spec.dir.join("keel-control.log"))?;
        child.wait_for_line(READY_TIMEOUT, |line| line.contains("serving delta ADS"))?;
        Ok(ControlPlane { child, ca_dir, token_file: spec.nodes[0].token_file.clone(), listen: spec.listen, nodes: spec.nodes, gateway_tokens })
    }

    /// keel's flags for following this control plane, on node 0 (the only node of a single-node lab).
    pub fn keel_args(&self) -> Vec<String> {
        self.keel_args_for(0)
    }

    /// keel's flags for following this control plane from node `node`: the address every node reaches, the CA
    /// root, and that node's token and `--node-name`. Panics for a node the lab does not have (a test bug).
    pub fn keel_args_for(&self, node: usize) -> Vec<String> {
        let creds = self.node_credentials(node);
        let mut args = self.follow_args(&creds.token_file);
        args.extend(["--node-name".into(), creds.name.clone()]);
        args
    }

    /// The address every node reaches, the CA root, and the token in `token_file`.
    fn follow_args(&self, token_file: &Path) -> Vec<String> {
        vec![
            "--xds-address".into(),
            format!("https://{}", self.listen),
            "--xds-root".into(),
            self.ca_dir.join("root-cert.pem").display().to_string(),
            "--xds-token-file".into(),
            token_file.display().to_string(),
        ]
    }

    /// `keel gateway`'s flags for following this control plane as gateway pod `pod` (`<namespace>/<name>`, given
    /// when the control plane was started; panics otherwise, a test bug).
    pub fn gateway_args(&self, pod: &str) -> Vec<String> {
        let (_, token_file) = self.gateway_tokens.iter().find(|(p, _)| p == pod).unwrap_or_else(|| panic!("no gateway token for {pod}"));
        self.follow_args(token_file)
    }

    /// Node `node`'s token file (panics like [`ControlPlane::keel_args_for`]).
    pub fn token_file_for(&self, node: usize) -> &Path {
        &self.node_credentials(node).token_file
    }

    fn node_credentials(&self, node: usize) -> &NodeCredentials {
        self.nodes.get(node).unwrap_or_else(|| panic!("the lab has {} node(s); there is no node {node}", self.nodes.len()))
    }

    /// Where keel-control listens (inside the namespace of the node it was started on).
    pub fn addr(&self) -> SocketAddr {
        self.listen
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
