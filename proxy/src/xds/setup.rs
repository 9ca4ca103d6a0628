//! Turning `keel run`'s xDS flags into a running client: the node identity a control plane sees (ztunnel's
//! format, so istiod would serve keel what it serves ztunnel), the TLS root and the bearer token from files.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use keel_proto::core::Node;
use prost_types::{value::Kind, Struct, Value};
use tokio::sync::watch;

use super::{
    client::{XdsClient, XdsConfig, XdsStatus},
    state::WorkloadStore,
};
use crate::identity::provider::{CaClient, CaClientConfig, CertificateProvider, LocalCa};

#[derive(Clone, Debug)]
pub struct XdsSettings {
    pub address: String,
    pub root_pem: PathBuf,
    pub token_file: PathBuf,
    pub server_name: String,
    pub cluster_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: String,
    pub node_name: String,
    /// `--insecure-control-plane`.
    pub insecure: bool,
}

/// Where keel's workload state comes from.
#[derive(Clone, Debug)]
pub enum WorkloadSource {
    /// A control plane over delta ADS.
    ControlPlane(XdsSettings),
    /// A YAML directory read in-process (no control plane).
    LocalDir(super::local::LocalSettings),
}

impl WorkloadSource {
    /// Starts following the source; with a control plane, the last good state saved in `state_dir` is served
    /// until the control plane answers.
    pub fn start(&self, state_dir: &std::path::Path) -> anyhow::Result<Xds> {
        match self {
            WorkloadSource::ControlPlane(settings) => start(settings, state_dir),
            WorkloadSource::LocalDir(settings) => super::local::start(settings),
        }
    }

    pub fn cluster_id(&self) -> &str {
        match self {
            WorkloadSource::ControlPlane(settings) => &settings.cluster_id,
            WorkloadSource::LocalDir(settings) => &settings.cluster_id,
        }
    }

    /// Where workload certificates come from: the control plane's CA, or (local mode) a CA in istiod's
    /// plugged-in layout on disk, generated there on first start.
    pub fn certificate_provider(&self) -> anyhow::Result<Arc<dyn CertificateProvider>> {
        Ok(match self {
            WorkloadSource::ControlPlane(settings) => Arc::new(CaClient::new(CaClientConfig::from_xds(&xds_config(settings)?))?),
            WorkloadSource::LocalDir(settings) => Arc::new(
                LocalCa::load_or_generate(&settings.ca_dir, &settings.trust_domain)
                    .with_context(|| format!("--ca-dir {}", settings.ca_dir.display()))?,
            ),
        })
    }
}

/// What the daemon keeps of a started source.
pub struct Xds {
    pub store: Arc<WorkloadStore>,
    pub ready: watch::Receiver<bool>,
    pub status: watch::Receiver<XdsStatus>,
}

/// `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local` with NAME, NAMESPACE,
/// INSTANCE_IPS and NODE_NAME metadata.
pub fn node(s: &XdsSettings) -> Node {
    let string = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
    let fields = BTreeMap::from([
        ("NAME".to_owned(), string(&s.pod_name)),
        ("NAMESPACE".to_owned(), string(&s.pod_namespace)),
        ("INSTANCE_IPS".to_owned(), string(&s.instance_ip)),
        ("NODE_NAME".to_owned(), string(&s.node_name)),
    ]);
    Node {
        id: format!("ztunnel~{}~{}.{}~{}.svc.cluster.local", s.instance_ip, s.pod_name, s.pod_namespace, s.pod_namespace),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// The client's settings with the root and token read from their files (the CA client uses the same).
pub fn xds_config(settings: &XdsSettings) -> anyhow::Result<XdsConfig> {
    let root_pem = std::fs::read_to_string(&settings.root_pem).with_context(|| format!("--xds-root: reading {}", settings.root_pem.display()))?;
    let token = std::fs::read_to_string(&settings.token_file)
        .with_context(|| format!("--xds-token-file: reading {}", settings.token_file.display()))?
        .trim()
        .to_owned();
    Ok(XdsConfig {
        address: settings.address.clone(),
        root_pem,
        server_name: settings.server_name.clone(),
        token,
        cluster_id: settings.cluster_id.clone(),
        node: node(settings),
        insecure: settings.insecure,
    })
}

/// Starts the client task; keel serves whatever state it has while the control plane is away: the last good
/// state saved in `state_dir` before the first response, the last one received after.
pub fn start(settings: &XdsSettings, state_dir: &std::path::Path) -> anyhow::Result<Xds> {
    let store = Arc::new(WorkloadStore::default());
    let (mut client, ready, status) = XdsClient::new(xds_config(settings)?, store.clone());
    let path = super::persisted::path_in(state_dir);
    match client.persist_to(path.clone()) {
        Ok(0) => {}
        Ok(loaded) => tracing::info!(loaded, file = %path.display(), "serving the last good xDS state until the control plane answers"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "ignoring the saved xDS state"),
    }
    tokio::spawn(client.run());
    Ok(Xds { store, ready, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_an_ambient_node_proxy() {
        let s = XdsSettings {
            address: String::new(),
            root_pem: PathBuf::new(),
            token_file: PathBuf::new(),
            server_name: String::new(),
            cluster_id: "Kubernetes".into(),
            pod_name: "keel-abcde".into(),
            pod_namespace: "istio-system".into(),
            instance_ip: "10.0.0.5".into(),
            node_name: "node-a".into(),
            insecure: false,
        };
        let n = node(&s);
        assert_eq!(n.id, "ztunnel~10.0.0.5~keel-abcde.istio-system~istio-system.svc.cluster.local");
        let fields = n.metadata.unwrap().fields;
        assert_eq!(fields["NODE_NAME"].kind, Some(Kind::StringValue("node-a".into())));
    }
}
