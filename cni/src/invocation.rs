//! What the runtime passes in the environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and
//! `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..;K8S_POD_INFRA_CONTAINER_ID=..` from Kubernetes
//! runtimes). Read through a lookup function, so tests need no process environment.
use std::path::PathBuf;

use crate::error::CniError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(value: &str) -> Result<Command, CniError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(CniError::UnknownCommand(other.to_owned())),
        })
    }
}

/// The Kubernetes pod a call is about, from `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// The largest `CNI_ARGS` read (a Kubernetes runtime's is a few hundred bytes).
const MAX_CNI_ARGS: usize = 16 * 1024;

impl K8sArgs {
    /// `KEY=VALUE` pairs separated by `;`. Keys other than the Kubernetes ones are ignored (runtimes add their own,
    /// e.g. `IgnoreUnknown=1`); a pair without `=` is an error naming `CNI_ARGS`.
    pub fn parse(cni_args: &str) -> Result<K8sArgs, CniError> {
        if cni_args.len() > MAX_CNI_ARGS {
            return Err(invalid_env("CNI_ARGS", format!("is longer than {MAX_CNI_ARGS} bytes")));
        }
        let mut args = K8sArgs::default();
        for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(invalid_env("CNI_ARGS", format!("has {pair:?}, not KEY=VALUE")));
            };
            let slot = match key {
                "K8S_POD_NAMESPACE" => &mut args.namespace,
                "K8S_POD_NAME" => &mut args.name,
                "K8S_POD_UID" => &mut args.uid,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.infra_container_id,
                _ => continue,
            };
            *slot = Some(value.to_owned()).filter(|v| !v.is_empty());
        }
        Ok(args)
    }

    /// `namespace/name`, when both are known.
    pub fn pod(&self) -> Option<String> {
        Some(format!("{}/{}", self.namespace.as_ref()?, self.name.as_ref()?))
    }
}

/// One plugin call's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub k8s: K8sArgs,
}

impl Invocation {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command = get("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND", "is not set".to_owned()))?;
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        Ok(Invocation {
            command: Command::parse(&command)?,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            k8s: K8sArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
        })
    }

    /// The variables ADD and CHECK cannot do without, all missing ones named at once.
    pub fn require_pod(&self) -> Result<PodCall, CniError> {
        let mut missing = Vec::new();
        if self.container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if self.ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if self.netns.is_none() {
            missing.push("CNI_NETNS");
        }
        for (value, name) in [(&self.k8s.namespace, "K8S_POD_NAMESPACE"), (&self.k8s.name, "K8S_POD_NAME"), (&self.k8s.uid, "K8S_POD_UID")] {
            if value.is_none() {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            return Err(invalid_env(&missing.join(", "), "missing (K8S_* come from CNI_ARGS, set by Kubernetes runtimes)".to_owned()));
        }
        Ok(PodCall {
            container_id: self.container_id.clone().unwrap_or_default(),
            netns: self.netns.clone().unwrap_or_default(),
            namespace: self.k8s.namespace.clone().unwrap_or_default(),
            name: self.k8s.name.clone().unwrap_or_default(),
            uid: self.k8s.uid.clone().unwrap_or_default(),
        })
    }
}

/// What ADD and CHECK know of the pod, every part present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCall {
    pub container_id: String,
    pub netns: PathBuf,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodCall {
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn invalid_env(names: &str, reason: String) -> CniError {
    CniError::InvalidEnvironment { names: names.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                        K8S_POD_INFRA_CONTAINER_ID=4f1e;K8S_POD_UID=0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11";

    #[test]
    fn an_add_as_containerd_sends_it() {
        let inv = Invocation::from_lookup(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "4f1e"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", ARGS),
            ("CNI_PATH", "/opt/cni/bin"),
        ]))
        .unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.k8s.pod().as_deref(), Some("default/web-0"));
        assert_eq!(inv.k8s.infra_container_id.as_deref(), Some("4f1e"));
        let call = inv.require_pod().unwrap();
        assert_eq!((call.uid.as_str(), call.netns.to_str().unwrap()), ("0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11", "/var/run/netns/cni-1"));
    }

    #[test]
    fn missing_variables_are_all_named() {
        let inv = Invocation::from_lookup(env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "K8S_POD_NAMESPACE=default")])).unwrap();
        let err = inv.require_pod().unwrap_err();
        let text = err.to_string();
        for name in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "K8S_POD_NAME", "K8S_POD_UID"] {
            assert!(text.contains(name), "{text}");
        }
        assert!(!text.contains("K8S_POD_NAMESPACE"), "{text}");
        assert_eq!(err.code(), crate::error::code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn bad_commands_and_args_are_refused_naming_the_variable() {
        assert!(matches!(Invocation::from_lookup(env(&[])), Err(CniError::InvalidEnvironment { names, .. }) if names == "CNI_COMMAND"));
        assert!(matches!(Invocation::from_lookup(env(&[("CNI_COMMAND", "ATTACH")])), Err(CniError::UnknownCommand(c)) if c == "ATTACH"));
        let bad_args = Invocation::from_lookup(env(&[("CNI_COMMAND", "DEL"), ("CNI_ARGS", "K8S_POD_NAME")]));
        assert!(matches!(bad_args, Err(CniError::InvalidEnvironment { names, .. }) if names == "CNI_ARGS"));
        assert!(K8sArgs::parse(&"a=b;".repeat(5000)).is_err(), "CNI_ARGS is bounded");
    }

    #[test]
    fn every_command_of_spec_1_1_is_known() {
        for (text, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
            ("VERSION", Command::Version),
        ] {
            assert_eq!(Command::parse(text).unwrap(), command);
        }
    }
}
