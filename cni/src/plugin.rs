//! The CNI commands. keel-cni is a chained plugin that changes no interface: ADD passes the chain's `prevResult`
//! through unchanged, once keel has answered that the pod is captured (or that keel leaves it alone).
use serde_json::{json, Value};

use crate::{
    error::{CniError, KeelError},
    invocation::{Command, Invocation},
    keel_api::{decode, CniPod, CniPodRef, KeelApi, PodState, Released},
    netconf::{pod_ips, NetConf},
    version,
};

/// Runs one call: `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing; both exit 0. `keel_for` makes
/// the API client from the configuration (its socket and timeout).
pub fn run<K: KeelApi>(invocation: &Invocation, stdin: &[u8], keel_for: impl Fn(&NetConf) -> K) -> Result<Option<Value>, CniError> {
    if invocation.command == Command::Version {
        return Ok(Some(json!({"cniVersion": version::LATEST, "supportedVersions": version::SUPPORTED})));
    }
    let conf = NetConf::parse(stdin)?;
    let keel = keel_for(&conf);
    match invocation.command {
        Command::Add => add(invocation, &conf, &keel),
        Command::Del => del(invocation, &keel),
        Command::Check => check(invocation, &conf, &keel),
        Command::Status => status(&conf, &keel),
        Command::Gc => {
            version::require("GC", &conf.cni_version, "1.1.0")?;
            // keel releases pods on DEL, and drops those whose netns is gone when it restarts: nothing is left
            // here for a garbage collection to find.
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

fn add(invocation: &Invocation, conf: &NetConf, keel: &impl KeelApi) -> Result<Option<Value>, CniError> {
    let call = invocation.require_pod()?;
    let Some(prev_result) = &conf.prev_result else {
        return Err(CniError::InvalidConfig {
            field: "prevResult",
            reason: "missing: keel-cni is a chained plugin and runs after the plugin that gives the pod its interface".to_owned(),
        });
    };
    let pod = CniPod {
        namespace: call.namespace.clone(),
        name: call.name.clone(),
        uid: call.uid.clone(),
        netns: call.netns.clone(),
        ips: pod_ips(prev_result)?,
        container_id: call.container_id.clone(),
    };
    let answer = keel.call(&json!({ "cni_add": pod })).map_err(|e| CniError::from_keel("capture", &call.pod(), e))?;
    match decode::<PodState>(answer).map_err(CniError::KeelBadAnswer)? {
        PodState::Captured | PodState::NotAmbient { .. } => Ok(Some(prev_result.clone())),
        PodState::NotCaptured { reason } => Err(CniError::KeelBadAnswer(KeelError::BadAnswer(format!("cni_add answered not_captured: {reason}")))),
    }
}

/// Succeeds whenever there is nothing (left) to release: no pod named, keel gone, or the pod unknown to keel.
fn del(invocation: &Invocation, keel: &impl KeelApi) -> Result<Option<Value>, CniError> {
    let (Some(namespace), Some(name)) = (&invocation.k8s.namespace, &invocation.k8s.name) else { return Ok(None) };
    let pod = CniPodRef { namespace: namespace.clone(), name: name.clone(), uid: invocation.k8s.uid.clone() };
    match keel.call(&json!({ "cni_del": pod })) {
        Ok(answer) => decode::<Released>(answer).map(|_| None).map_err(CniError::KeelBadAnswer),
        // keel is not running: it has nothing enrolled to release, and a restarted keel drops pods whose netns
        // is gone.
        Err(KeelError::Unreachable { .. }) => Ok(None),
        Err(e) => Err(CniError::from_keel("release", &format!("{namespace}/{name}"), e)),
    }
}

fn check(invocation: &Invocation, conf: &NetConf, keel: &impl KeelApi) -> Result<Option<Value>, CniError> {
    version::require("CHECK", &conf.cni_version, "0.4.0")?;
    let call = invocation.require_pod()?;
    let Some(prev_result) = &conf.prev_result else {
        return Err(CniError::InvalidConfig { field: "prevResult", reason: "missing (CHECK gets the result of the ADD)".to_owned() });
    };
    let pod = CniPod {
        namespace: call.namespace.clone(),
        name: call.name.clone(),
        uid: call.uid.clone(),
        netns: call.netns.clone(),
        ips: pod_ips(prev_result)?,
        container_id: call.container_id.clone(),
    };
    let answer = keel.call(&json!({ "cni_check": pod })).map_err(|e| CniError::from_keel("check", &call.pod(), e))?;
    match decode::<PodState>(answer).map_err(CniError::KeelBadAnswer)? {
        PodState::Captured | PodState::NotAmbient { .. } => Ok(None),
        PodState::NotCaptured { reason } => Err(CniError::NotCaptured { pod: call.pod(), reason }),
    }
}

/// keel creates its API socket only once it is ready, so an answered `"pods"` means it can serve ADD.
fn status(conf: &NetConf, keel: &impl KeelApi) -> Result<Option<Value>, CniError> {
    version::require("STATUS", &conf.cni_version, "1.1.0")?;
    keel.call(&json!("pods")).map(|_| None).map_err(CniError::KeelNotReady)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use std::{cell::RefCell, collections::HashMap, time::Duration};

    /// A canned answer: a value, or a way to make the error (KeelError is not Clone).
    type Answer = Result<Value, fn() -> KeelError>;

    /// A stand-in for keel: answers each request kind with a canned result and records what it was asked.
    struct FakeKeel {
        answers: HashMap<&'static str, Answer>,
        asked: RefCell<Vec<Value>>,
    }

    impl FakeKeel {
        fn new(answers: &[(&'static str, Answer)]) -> FakeKeel {
            FakeKeel { answers: answers.iter().cloned().collect(), asked: RefCell::new(Vec::new()) }
        }
    }

    impl KeelApi for &FakeKeel {
        fn call(&self, request: &Value) -> Result<Value, KeelError> {
            self.asked.borrow_mut().push(request.clone());
            let kind = match request {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                _ => String::new(),
            };
            match self.answers.get(kind.as_str()) {
                Some(Ok(v)) => Ok(v.clone()),
                Some(Err(make)) => Err(make()),
                None => panic!("unexpected request {request}"),
            }
        }
    }

    fn unreachable() -> KeelError {
        KeelError::Unreachable { socket: "/run/keel/keel.sock".into(), source: std::io::ErrorKind::ConnectionRefused.into() }
    }
    fn timeout() -> KeelError {
        KeelError::Timeout(Duration::from_secs(10))
    }

    const UID: &str = "0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11";

    fn invocation(command: Command) -> Invocation {
        Invocation::from_lookup(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => match command {
                        Command::Add => "ADD",
                        Command::Del => "DEL",
                        Command::Check => "CHECK",
                        Command::Status => "STATUS",
                        Command::Gc => "GC",
                        Command::Version => "VERSION",
                    },
                    "CNI_CONTAINERID" => "4f1e",
                    "CNI_NETNS" => "/var/run/netns/cni-1",
                    "CNI_IFNAME" => "eth0",
                    "CNI_ARGS" => "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11",
                    _ => return None,
                }
                .to_owned(),
            )
        })
        .unwrap()
    }

    fn prev_result() -> Value {
        json!({"cniVersion": "1.0.0",
               "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
               "ips": [{"interface": 1, "address": "10.244.0.105/24", "gateway": "10.244.0.1"}]})
    }

    fn config(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "k8s", "type": "keel-cni", "prevResult": prev_result()}).to_string().into_bytes()
    }

    #[test]
    fn add_asks_keel_and_passes_prev_result_through_unchanged() {
        for state in [json!({"state": "captured"}), json!({"state": "not_ambient", "reason": "namespace kube-system is excluded"})] {
            let keel = FakeKeel::new(&[("cni_add", Ok(state))]);
            let out = run(&invocation(Command::Add), &config("1.0.0"), |_| &keel).unwrap();
            assert_eq!(out, Some(prev_result()));
            assert_eq!(
                keel.asked.borrow().as_slice(),
                [json!({"cni_add": {"namespace": "default", "name": "web-0", "uid": UID, "netns": "/var/run/netns/cni-1",
                        "ips": ["10.244.0.105"], "container_id": "4f1e"}})]
            );
        }
    }

    #[test]
    fn add_fails_with_a_cni_error_when_keel_cannot_capture() {
        let cases: [(Answer, u32); 4] = [
            (Err(unreachable), code::TRY_AGAIN_LATER),
            (Err(timeout), code::KEEL_TIMEOUT),
            (Err(|| KeelError::Refused("field `uid`: pod uid x: no cgroup".into())), code::KEEL_REFUSED),
            (Ok(json!({"state": "sideways"})), code::KEEL_BAD_ANSWER),
        ];
        for (answer, expected) in cases {
            let keel = FakeKeel::new(&[("cni_add", answer)]);
            let err = run(&invocation(Command::Add), &config("1.1.0"), |_| &keel).unwrap_err();
            assert_eq!(err.code(), expected, "{err}");
        }
    }

    #[test]
    fn add_without_prev_result_is_a_config_error_and_asks_nobody() {
        let keel = FakeKeel::new(&[]);
        let bare = br#"{"cniVersion": "1.0.0", "name": "k8s", "type": "keel-cni"}"#;
        let err = run(&invocation(Command::Add), bare, |_| &keel).unwrap_err();
        assert!(matches!(err, CniError::InvalidConfig { field: "prevResult", .. }), "{err}");
    }

    #[test]
    fn del_succeeds_when_there_is_nothing_to_release() {
        for answer in [Ok(json!({"released": true})), Ok(json!({"released": false})), Err(unreachable as fn() -> KeelError)] {
            let keel = FakeKeel::new(&[("cni_del", answer)]);
            assert_eq!(run(&invocation(Command::Del), &config("1.0.0"), |_| &keel).unwrap(), None);
            assert_eq!(keel.asked.borrow()[0], json!({"cni_del": {"namespace": "default", "name": "web-0", "uid": UID}}));
        }
        // A hung keel still holds the pod: the runtime must retry the DEL rather than forget it.
        let keel = FakeKeel::new(&[("cni_del", Err(timeout))]);
        assert_eq!(run(&invocation(Command::Del), &config("1.0.0"), |_| &keel).unwrap_err().code(), code::KEEL_TIMEOUT);
        // A DEL with no pod named (a runtime cleaning up after a failed ADD) has nothing to ask.
        let keel = FakeKeel::new(&[]);
        let anonymous = Invocation::from_lookup(|k| (k == "CNI_COMMAND").then(|| "DEL".to_owned())).unwrap();
        assert_eq!(run(&anonymous, &config("1.0.0"), |_| &keel).unwrap(), None);
    }

    #[test]
    fn check_reports_keels_view() {
        let keel = FakeKeel::new(&[("cni_check", Ok(json!({"state": "captured"})))]);
        assert_eq!(run(&invocation(Command::Check), &config("1.0.0"), |_| &keel).unwrap(), None);
        let keel = FakeKeel::new(&[("cni_check", Ok(json!({"state": "not_captured", "reason": "pod default/web-0 is not enrolled"})))]);
        let err = run(&invocation(Command::Check), &config("1.0.0"), |_| &keel).unwrap_err();
        assert_eq!(err.code(), code::NOT_CAPTURED);
        assert!(err.to_string().contains("is not enrolled"), "{err}");
        let err = run(&invocation(Command::Check), &config("0.3.1"), |_| &keel).unwrap_err();
        assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "CHECK exists from 0.4.0");
    }

    #[test]
    fn status_is_keels_readiness() {
        let keel = FakeKeel::new(&[("pods", Ok(json!([])))]);
        assert_eq!(run(&invocation(Command::Status), &config("1.1.0"), |_| &keel).unwrap(), None);
        let keel = FakeKeel::new(&[("pods", Err(unreachable))]);
        assert_eq!(run(&invocation(Command::Status), &config("1.1.0"), |_| &keel).unwrap_err().code(), code::NOT_AVAILABLE);
    }

    #[test]
    fn version_and_gc() {
        let keel = FakeKeel::new(&[]);
        let out = run(&invocation(Command::Version), br#"{"cniVersion": "1.0.0"}"#, |_| &keel).unwrap().unwrap();
        assert_eq!(out, json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));
        assert_eq!(run(&invocation(Command::Gc), &config("1.1.0"), |_| &keel).unwrap(), None);
        assert!(keel.asked.borrow().is_empty());
    }
}
