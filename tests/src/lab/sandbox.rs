//! Pods as a container runtime makes them before it calls CNI: a network namespace with only loopback, and a
//! cgroup wherever the test says (kubelet's layouts below the node's cgroup root); no interface and no address
//! until the CNI plugins give it those.

use super::pod::Pod;
use super::{names, Lab};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

impl Lab {
    /// A sandbox on node 0 named `name`, whose processes run in the cgroup `cgroup` (created with its parents; it
    /// must be below the node's cgroup root, where the lab removes it). Its `ip` is unspecified: set it from the
    /// CNI result.
    pub fn add_sandbox(&self, name: &str, cgroup: &Path) -> Result<Pod> {
        let layout = &self.nodes[0];
        names::check_pod_name(name).map_err(anyhow::Error::msg)?;
        if !cgroup.starts_with(&layout.cgroup_root) {
            bail!("sandbox cgroup {} is outside the node's cgroup root {}", cgroup.display(), layout.cgroup_root.display());
        }
        let netns = {
            let mut c = self.created.lock().unwrap();
            if c.pods.iter().any(|p| p == name) {
                bail!("pod {name} already exists in this lab");
            }
            c.pods.push(name.to_string());
            format!("{}-{name}", self.prefix)
        };
        self.add_netns(&netns)?;
        std::fs::create_dir_all(cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        Ok(Pod {
            name: name.to_string(),
            namespace: "default".to_string(),
            ip: Ipv4Addr::UNSPECIFIED,
            netns_path: Path::new("/var/run/netns").join(&netns),
            netns,
            cgroup_path: cgroup.to_path_buf(),
            node: 0,
            node_name: layout.name.clone(),
            podapp: self.bins.podapp.clone(),
            log_dir: self.dir.clone(),
            spawned: self.spawned.clone(),
        })
    }

    /// `<node cgroup root>/<rel>`: where kubelet-style pod cgroups of node 0 go.
    pub fn node_cgroup(&self, rel: &str) -> PathBuf {
        self.nodes[0].cgroup_root.join(rel)
    }
}
