//! `keel gateway` in a lab pod, following the lab's keel-control with that pod's gateway token.
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{ChildGuard, ControlPlane, Lab, Pod};

impl Lab {
    /// `keel gateway` in `pod` as the gateway pod `pod_name` (`<namespace>/<name>`, given to the control plane at
    /// its start), once its listener on `port` is bound; its admin server on the pod's 127.0.0.1:15000.
    pub fn start_gateway(&self, control: &ControlPlane, pod: &Pod, pod_name: &str, port: u16, extra: &[&str]) -> Result<ChildGuard> {
        let (namespace, name) = pod_name.split_once('/').context("a namespace/name")?;
        let mut argv = vec![self.binaries().keel.display().to_string(), "gateway".into()];
        argv.extend(control.gateway_args(pod_name));
        let state = self.dir().join(format!("gateway-state-{name}"));
        let ip = pod.ip.to_string();
        let state = state.display().to_string();
        argv.extend(
            ["--pod-name", name, "--pod-namespace", namespace, "--instance-ip", &ip, "--state-dir", &state, "--log-format", "json"]
                .map(str::to_owned),
        );
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut child = pod.spawn(&argv)?;
        let bound = |l: &str| l.contains("gateway listener bound") && [",", "}"].iter().any(|end| l.contains(&format!("\"port\":{port}{end}")));
        child.wait_for_line(Duration::from_secs(15), bound)?;
        Ok(child)
    }
}
