//! What an enrollment request names, and its validation: a pod is a network namespace, a cgroup, its IPs and its
//! Kubernetes identity. Validation happens before anything is touched, and every error names the field.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// `namespace/name`: how a pod is addressed in the API, logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An enrollment request as it arrives on the API and as keel persists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The pod's network namespace file (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
    pub ips: Vec<IpAddr>,
}

fn default_service_account() -> String {
    "default".to_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidPod {
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidPod {
    InvalidPod::Field { field, reason: reason.into() }
}

impl PodSpec {
    pub fn pod_name(&self) -> PodName {
        PodName { namespace: self.namespace.clone(), name: self.name.clone() }
    }

    /// Checks the request against the rules of Kubernetes names and keel's capture: `cgroup_root` is the cgroup
    /// keel's hooks are attached to, which the pod's cgroup must be inside of for connect() capture to see it.
    pub fn validate(&self, cgroup_root: &Path) -> Result<(), InvalidPod> {
        check_dns_label("namespace", &self.namespace)?;
        check_dns_subdomain("name", &self.name)?;
        check_dns_subdomain("service_account", &self.service_account)?;
        if self.ips.is_empty() {
            return Err(invalid("ips", "at least one pod IP is required"));
        }
        for ip in &self.ips {
            match ip {
                IpAddr::V4(v4) if v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() => {
                    return Err(invalid("ips", format!("{ip} is not a pod address")));
                }
                IpAddr::V6(_) => {
                    return Err(invalid("ips", format!("{ip}: IPv6 pods are not captured yet (IPv4 only)")));
                }
                _ => {}
            }
        }
        if !self.netns.is_absolute() {
            return Err(invalid("netns", format!("{} is not an absolute path", self.netns.display())));
        }
        if !self.netns.exists() {
            return Err(invalid("netns", format!("{} does not exist", self.netns.display())));
        }
        if !self.cgroup.is_absolute() || !self.cgroup.join("cgroup.procs").exists() {
            return Err(invalid("cgroup", format!("{} is not a cgroup v2 directory", self.cgroup.display())));
        }
        if !self.cgroup.starts_with(cgroup_root) {
            return Err(invalid(
                "cgroup",
                format!("{} is outside {}, the cgroup keel's connect hooks are attached to", self.cgroup.display(), cgroup_root.display()),
            ));
        }
        Ok(())
    }
}

/// RFC 1123 label: what Kubernetes requires of namespace names.
fn check_dns_label(field: &'static str, value: &str) -> Result<(), InvalidPod> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(field, format!("{value:?} must be 1 to 63 characters")));
    }
    let bytes = value.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if !bytes.iter().all(ok_char) || !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(invalid(field, format!("{value:?} must be lower-case alphanumerics and '-', starting and ending alphanumeric")));
    }
    Ok(())
}

/// RFC 1123 subdomain: what Kubernetes requires of pod and service-account names.
fn check_dns_subdomain(field: &'static str, value: &str) -> Result<(), InvalidPod> {
    if value.is_empty() || value.len() > 253 {
        return Err(invalid(field, format!("{value:?} must be 1 to 253 characters")));
    }
    for label in value.split('.') {
        check_dns_label(field, label)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            namespace: "default".into(),
            name: "pod-a".into(),
            service_account: "default".into(),
            netns: "/proc/self/ns/net".into(),
            cgroup: "/nonexistent/cg".into(),
            ips: vec!["10.244.0.11".parse().unwrap()],
        }
    }

    fn field_of(err: InvalidPod) -> &'static str {
        let InvalidPod::Field { field, .. } = err;
        field
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for (ns, ok) in [("default", true), ("kube-system", true), ("", false), ("Upper", false), ("-a", false), ("a_b", false)] {
            assert_eq!(check_dns_label("namespace", ns).is_ok(), ok, "{ns:?}");
        }
        assert!(check_dns_subdomain("name", "web.v1-abc").is_ok());
        assert!(check_dns_subdomain("name", "web..v1").is_err());
        assert!(check_dns_label("namespace", &"a".repeat(64)).is_err());
    }

    #[test]
    fn each_error_names_its_field() {
        let root = Path::new("/sys/fs/cgroup");
        let mut s = spec();
        s.ips.clear();
        assert_eq!(field_of(s.validate(root).unwrap_err()), "ips");
        let mut s = spec();
        s.ips = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(field_of(s.validate(root).unwrap_err()), "ips");
        let mut s = spec();
        s.netns = "relative/ns".into();
        assert_eq!(field_of(s.validate(root).unwrap_err()), "netns");
        let mut s = spec();
        s.netns = "/does/not/exist".into();
        assert_eq!(field_of(s.validate(root).unwrap_err()), "netns");
        assert_eq!(field_of(spec().validate(root).unwrap_err()), "cgroup");
        let mut s = spec();
        s.namespace = "Bad_NS".into();
        assert_eq!(field_of(s.validate(root).unwrap_err()), "namespace");
    }

    #[test]
    fn service_account_defaults_when_absent() {
        let json = r#"{"namespace":"default","name":"a","netns":"/x","cgroup":"/y","ips":["10.0.0.1"]}"#;
        let spec: PodSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.service_account, "default");
    }
}
