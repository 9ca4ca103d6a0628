//! What an enrollment request names, and its validation: a pod is a network namespace, a cgroup, its IPs and its
//! Kubernetes identity. Validation happens before anything is touched, and every error names the field.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::kubelet_pods;

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
    /// The pod's Kubernetes UID, when the request named it (keel then found `cgroup` from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// keel found `netns` itself from the pod's processes (a `/proc/PID/ns/net` path): a restarted keel finds it
    /// again from `uid`, since by then that PID may be gone or belong to another process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub netns_discovered: bool,
    pub ips: Vec<IpAddr>,
    /// The pod's own connection budgets, over keel's defaults.
    #[serde(default, skip_serializing_if = "PodBudgets::is_default")]
    pub budgets: PodBudgets,
}

/// A pod's budgets where they differ from keel's defaults (the same for every pod), from its annotations
/// `keel.dev/max-connections`, `keel.dev/connections-per-second`, `keel.dev/bytes-per-second` and `keel.dev/weight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodBudgets {
    /// Captured connections the pod may have open at once (keel's default: `--max-connections-per-pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// New captured connections per second (a token bucket holding one second's worth; default: no rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_second: Option<u32>,
    /// Bytes per second keel relays for the pod, both directions of all its connections together (a token
    /// bucket holding one second's worth; default: no limit). See [`crate::fair_share`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// The pod's weight in keel's worker time when pods compete for it (default 1: equal shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

pub const MAX_CONNECTIONS_ANNOTATION: &str = "keel.dev/max-connections";
pub const CONNECTIONS_PER_SECOND_ANNOTATION: &str = "keel.dev/connections-per-second";
pub const BYTES_PER_SECOND_ANNOTATION: &str = "keel.dev/bytes-per-second";
pub const WEIGHT_ANNOTATION: &str = "keel.dev/weight";
/// The largest connection budget accepted (beyond it a budget limits nothing a node can carry anyway).
const MAX_BUDGET: u64 = 1_000_000;
/// Bandwidth budgets from 1 KiB/s to 100 GB/s.
const BANDWIDTH_RANGE: std::ops::RangeInclusive<u64> = 1024..=100_000_000_000;
const WEIGHT_RANGE: std::ops::RangeInclusive<u64> = 1..=100;

/// Bytes per second as an annotation writes them: a whole number with an optional suffix, decimal (`k`, `M`,
/// `G`: 1000s) or binary (`Ki`, `Mi`, `Gi`: 1024s), as Kubernetes quantities are written.
fn parse_bytes_per_second(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let unit: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(unit)
}

impl PodBudgets {
    pub fn is_default(&self) -> bool {
        *self == PodBudgets::default()
    }

    /// The budgets a pod's annotations set; an annotation that is no number from 1 to 1,000,000 is left out,
    /// with a warning naming it (the default applies).
    pub fn from_annotations(annotations: &std::collections::BTreeMap<String, String>) -> (PodBudgets, Vec<String>) {
        let mut warnings = Vec::new();
        let mut read = |name: &str, parse: fn(&str) -> Option<u64>, range: std::ops::RangeInclusive<u64>| {
            let value = annotations.get(name)?;
            match parse(value) {
                Some(n) if range.contains(&n) => Some(n),
                _ => {
                    warnings.push(format!(
                        "annotation {name}: {value:?} is not a number from {} to {}; keel's default applies",
                        range.start(),
                        range.end()
                    ));
                    None
                }
            }
        };
        let plain = |text: &str| text.trim().parse::<u64>().ok();
        let budgets = PodBudgets {
            max_connections: read(MAX_CONNECTIONS_ANNOTATION, plain, 1..=MAX_BUDGET).map(|n| n as usize),
            connections_per_second: read(CONNECTIONS_PER_SECOND_ANNOTATION, plain, 1..=MAX_BUDGET).map(|n| n as u32),
            bytes_per_second: read(BYTES_PER_SECOND_ANNOTATION, parse_bytes_per_second, BANDWIDTH_RANGE),
            weight: read(WEIGHT_ANNOTATION, plain, WEIGHT_RANGE).map(|n| n as u32),
        };
        (budgets, warnings)
    }

    fn validate(&self) -> Result<(), InvalidPod> {
        let in_range = |n: u64| (1..=MAX_BUDGET).contains(&n);
        if self.max_connections.is_some_and(|n| !in_range(n as u64)) {
            return Err(invalid("budgets.max_connections", format!("a number from 1 to {MAX_BUDGET}")));
        }
        if self.connections_per_second.is_some_and(|n| !in_range(u64::from(n))) {
            return Err(invalid("budgets.connections_per_second", format!("a number from 1 to {MAX_BUDGET}")));
        }
        if self.bytes_per_second.is_some_and(|n| !BANDWIDTH_RANGE.contains(&n)) {
            let (low, high) = (BANDWIDTH_RANGE.start(), BANDWIDTH_RANGE.end());
            return Err(invalid("budgets.bytes_per_second", format!("a number from {low} to {high}")));
        }
        if self.weight.is_some_and(|n| !WEIGHT_RANGE.contains(&u64::from(n))) {
            let (low, high) = (WEIGHT_RANGE.start(), WEIGHT_RANGE.end());
            return Err(invalid("budgets.weight", format!("a number from {low} to {high}")));
        }
        Ok(())
    }
}

/// An `enroll` request as it arrives on the API: the pod's cgroup is given (`cgroup`) or found from its Kubernetes
/// UID (`uid`), and with a `uid` the network namespace may be left for keel to find too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub namespace: String,
    pub name: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "PodBudgets::is_default")]
    pub budgets: PodBudgets,
}

impl EnrollRequest {
    /// The pod spec this request names, its cgroup (and, when not given, its netns) found from `uid` below
    /// `cgroup_root` and in `proc_root`. Errors name the field; the spec still needs [`PodSpec::validate`].
    pub fn resolve(self, cgroup_root: &Path, proc_root: &Path) -> Result<PodSpec, InvalidPod> {
        let by_uid = |uid: &str| kubelet_pods::pod_cgroup(cgroup_root, uid).map(|c| c.path).map_err(|e| invalid("uid", e.to_string()));
        let cgroup = match (self.cgroup, &self.uid) {
            (Some(cgroup), None) => cgroup,
            (None, Some(uid)) => by_uid(uid)?,
            (Some(cgroup), Some(uid)) => {
                let found = by_uid(uid)?;
                if found != cgroup {
                    return Err(invalid("cgroup", format!("{} is not pod uid {uid}'s cgroup ({})", cgroup.display(), found.display())));
                }
                cgroup
            }
            (None, None) => return Err(invalid("cgroup", "give the pod's `cgroup` or its Kubernetes `uid`")),
        };
        let (netns, netns_discovered) = match (self.netns, &self.uid) {
            (Some(netns), _) => (netns, false),
            (None, Some(_)) => (kubelet_pods::pod_netns(&cgroup, proc_root).map_err(|e| invalid("netns", e.to_string()))?.path, true),
            (None, None) => return Err(invalid("netns", "required unless the pod's `uid` is given")),
        };
        Ok(PodSpec {
            namespace: self.namespace,
            name: self.name,
            service_account: self.service_account,
            netns,
            cgroup,
            uid: self.uid,
            netns_discovered,
            ips: self.ips,
            budgets: self.budgets,
        })
    }
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
        self.budgets.validate()?;
        check_dns_label("namespace", &self.namespace)?;
        check_dns_subdomain("name", &self.name)?;
        check_dns_subdomain("service_account", &self.service_account)?;
        if let Some(uid) = &self.uid {
            kubelet_pods::check_uid(uid).map_err(|e| invalid("uid", e.to_string()))?;
        }
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
            uid: None,
            netns_discovered: false,
            ips: vec!["10.244.0.11".parse().unwrap()],
            budgets: PodBudgets::default(),
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

    #[test]
    fn a_persisted_spec_of_an_older_keel_still_reads() {
        let json = r#"{"namespace":"default","name":"a","service_account":"default","netns":"/x","cgroup":"/y","ips":["10.0.0.1"]}"#;
        let spec: PodSpec = serde_json::from_str(json).unwrap();
        assert_eq!((spec.uid, spec.netns_discovered), (None, false));
    }

    const UID: &str = "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11";

    fn request() -> EnrollRequest {
        EnrollRequest {
            namespace: "default".into(),
            name: "pod-a".into(),
            service_account: "default".into(),
            netns: None,
            cgroup: None,
            uid: None,
            ips: vec!["10.244.0.11".parse().unwrap()],
            budgets: PodBudgets::default(),
        }
    }

    /// A cgroup root holding one BestEffort pod (systemd driver) with process 4242, and a /proc with that process.
    struct FakeNode(PathBuf);

    impl FakeNode {
        fn new(test: &str) -> FakeNode {
            let root = std::env::temp_dir().join(format!("keel-pods-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let slice = format!("kubepods-besteffort-pod{}.slice", UID.replace('-', "_"));
            let pod = root.join("cg/kubepods.slice/kubepods-besteffort.slice").join(slice);
            std::fs::create_dir_all(pod.join("cri-containerd-a.scope")).unwrap();
            std::fs::write(pod.join("cgroup.procs"), "").unwrap();
            std::fs::write(pod.join("cri-containerd-a.scope/cgroup.procs"), "4242\n").unwrap();
            std::fs::create_dir_all(root.join("proc/4242/ns")).unwrap();
            std::fs::write(root.join("proc/4242/ns/net"), "").unwrap();
            FakeNode(root)
        }
        fn cgroup_root(&self) -> PathBuf {
            self.0.join("cg")
        }
        fn proc_root(&self) -> PathBuf {
            self.0.join("proc")
        }
        fn pod_cgroup(&self) -> PathBuf {
            self.cgroup_root().join(format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice", UID.replace('-', "_")))
        }
    }

    impl Drop for FakeNode {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_uid_resolves_the_cgroup_and_the_netns() {
        let node = FakeNode::new("resolve");
        let spec = EnrollRequest { uid: Some(UID.into()), ..request() }.resolve(&node.cgroup_root(), &node.proc_root()).unwrap();
        assert_eq!(spec.cgroup, node.pod_cgroup());
        assert_eq!(spec.netns, node.proc_root().join("4242/ns/net"));
        assert!(spec.netns_discovered);
        assert_eq!(spec.uid.as_deref(), Some(UID));

        let given = EnrollRequest { uid: Some(UID.into()), netns: Some("/var/run/netns/cni-1".into()), ..request() };
        let spec = given.resolve(&node.cgroup_root(), &node.proc_root()).unwrap();
        assert_eq!((spec.netns, spec.netns_discovered), ("/var/run/netns/cni-1".into(), false), "a given netns is kept");
    }

    #[test]
    fn the_existing_form_with_a_cgroup_still_works() {
        let node = FakeNode::new("cgroup-form");
        let form = EnrollRequest { netns: Some("/proc/self/ns/net".into()), cgroup: Some(node.pod_cgroup()), ..request() };
        let spec = form.resolve(&node.cgroup_root(), &node.proc_root()).unwrap();
        assert_eq!((spec.cgroup, spec.uid), (node.pod_cgroup(), None));
    }

    #[test]
    fn resolution_errors_name_the_field() {
        let node = FakeNode::new("errors");
        let resolve = |r: EnrollRequest| r.resolve(&node.cgroup_root(), &node.proc_root()).map(drop).map_err(field_of);
        assert_eq!(resolve(EnrollRequest { netns: Some("/x".into()), ..request() }), Err("cgroup"));
        assert_eq!(resolve(EnrollRequest { cgroup: Some(node.pod_cgroup()), ..request() }), Err("netns"));
        let unknown = EnrollRequest { uid: Some("11111111-2222-3333-4444-555555555555".into()), ..request() };
        let err = unknown.resolve(&node.cgroup_root(), &node.proc_root()).unwrap_err();
        assert!(err.to_string().starts_with("field `uid`: pod uid 11111111-2222-3333-4444-555555555555: no cgroup"), "{err}");
        let elsewhere = EnrollRequest { uid: Some(UID.into()), cgroup: Some(node.cgroup_root()), netns: Some("/x".into()), ..request() };
        assert_eq!(resolve(elsewhere), Err("cgroup"), "a cgroup that is not the uid's is refused");
        std::fs::write(node.pod_cgroup().join("cri-containerd-a.scope/cgroup.procs"), "").unwrap();
        assert_eq!(resolve(EnrollRequest { uid: Some(UID.into()), ..request() }), Err("netns"), "no process: no netns");
    }

    #[test]
    fn budgets_come_from_the_annotations_and_bad_values_are_named() {
        let annotations = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (budgets, warnings) =
            PodBudgets::from_annotations(&annotations(&[(MAX_CONNECTIONS_ANNOTATION, "64"), (CONNECTIONS_PER_SECOND_ANNOTATION, " 50 ")]));
        assert_eq!(budgets, PodBudgets { max_connections: Some(64), connections_per_second: Some(50), ..Default::default() });
        assert!(warnings.is_empty());
        let (budgets, warnings) = PodBudgets::from_annotations(&annotations(&[(BYTES_PER_SECOND_ANNOTATION, "20Mi"), (WEIGHT_ANNOTATION, "3")]));
        assert_eq!(budgets, PodBudgets { bytes_per_second: Some(20 << 20), weight: Some(3), ..Default::default() });
        assert!(warnings.is_empty());
        assert_eq!(PodBudgets::from_annotations(&annotations(&[(BYTES_PER_SECOND_ANNOTATION, "5M")])).0.bytes_per_second, Some(5_000_000));
        let (budgets, warnings) = PodBudgets::from_annotations(&annotations(&[(BYTES_PER_SECOND_ANNOTATION, "10 mbit"), (WEIGHT_ANNOTATION, "0")]));
        assert!(budgets.is_default());
        assert_eq!(
            warnings,
            [
                format!("annotation {BYTES_PER_SECOND_ANNOTATION}: \"10 mbit\" is not a number from 1024 to 100000000000; keel's default applies"),
                format!("annotation {WEIGHT_ANNOTATION}: \"0\" is not a number from 1 to 100; keel's default applies"),
            ]
        );
        let (budgets, warnings) = PodBudgets::from_annotations(&annotations(&[(CONNECTIONS_PER_SECOND_ANNOTATION, "lots")]));
        assert!(budgets.is_default());
        assert_eq!(
            warnings,
            [format!("annotation {CONNECTIONS_PER_SECOND_ANNOTATION}: \"lots\" is not a number from 1 to 1000000; keel's default applies")]
        );
        let zero = PodSpec { budgets: PodBudgets { max_connections: Some(0), ..Default::default() }, ..spec() };
        let err = zero.validate(Path::new("/sys/fs/cgroup")).unwrap_err();
        assert!(err.to_string().contains("budgets.max_connections"), "{err}");
        let slow = PodSpec { budgets: PodBudgets { bytes_per_second: Some(10), ..Default::default() }, ..spec() };
        assert!(slow.validate(Path::new("/sys/fs/cgroup")).unwrap_err().to_string().contains("budgets.bytes_per_second"));
        // Persisted and read back; absent when default.
        let json = serde_json::to_value(PodSpec { budgets: PodBudgets { connections_per_second: Some(5), ..Default::default() }, ..spec() }).unwrap();
        assert_eq!(json["budgets"], serde_json::json!({"connections_per_second": 5}));
        assert!(serde_json::to_value(spec()).unwrap().get("budgets").is_none());
    }
}
