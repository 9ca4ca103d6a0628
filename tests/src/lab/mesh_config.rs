//! The config directory keel-control (or keel's local mode) reads, written for lab pods: Kubernetes-style Pod and
//! Service objects. Files are replaced atomically (write, then rename), as a config-management tool would, so a
//! reader never sees half a file.

use super::Pod;
use anyhow::{Context, Result};
use std::path::Path;

/// A Pod object for a lab pod, on the node it was added to (`nodeName` = [`Pod::node_name`]).
pub fn pod_object(pod: &Pod, service_account: &str, labels: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{{}}}\nspec:\n  serviceAccountName: {service_account}\n  nodeName: {}\nstatus:\n  podIP: {}\n",
        pod.name,
        pod.namespace,
        labels.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
        pod.node_name,
        pod.ip
    )
}

/// A ClusterIP Service in the lab pods' namespace, one TCP port.
pub fn service_object(name: &str, vip: &str, selector: &[(&str, &str)], port: u16, target_port: u16) -> String {
    service_with_port(name, vip, selector, "tcp-echo", port, target_port)
}

/// The same with one port keel serves as HTTP (named `http-web`).
pub fn http_service_object(name: &str, vip: &str, selector: &[(&str, &str)], port: u16, target_port: u16) -> String {
    service_with_port(name, vip, selector, "http-web", port, target_port)
}

/// The same with one gRPC port (named `grpc-echo`): keel's L7 engine carries it as HTTP/2.
pub fn grpc_service_object(name: &str, vip: &str, selector: &[(&str, &str)], port: u16, target_port: u16) -> String {
    service_with_port(name, vip, selector, "grpc-echo", port, target_port)
}

fn service_with_port(name: &str, vip: &str, selector: &[(&str, &str)], port_name: &str, port: u16, target_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector: {{{}}}\n  ports:\n  - {{name: {port_name}, port: {port}, targetPort: {target_port}}}\n",
        selector.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    )
}

/// Writes `objects` as one multi-document YAML file `dir/name`, replacing it atomically.
pub fn write(dir: &Path, name: &str, objects: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, objects.join("---\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming into {}/{name}", dir.display()))
}
