//! The network configuration on stdin: the spec's fields (`cniVersion`, `name`, `type`, `prevResult`) and
//! keel-cni's own, camelCase as CNI plugin fields are:
//!
//! | field             | default               | meaning                                                   |
//! |-------------------|-----------------------|-----------------------------------------------------------|
//! | `apiSocket`       | `/run/keel/keel.sock` | keel's local API socket                                    |
//! | `enrollTimeoutMs` | 10000                 | how long ADD (and every other call) waits for keel's answer |
//!
//! Other fields (what runtimes add: `runtimeConfig`, `args`, `capabilities`, ...) are ignored, as the spec asks.
use std::{
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{error::CniError, version};

pub const DEFAULT_API_SOCKET: &str = "/run/keel/keel.sock";
pub const DEFAULT_ENROLL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `enrollTimeoutMs` accepted: the runtime's own CNI timeout is a few minutes at most.
pub const MAX_ENROLL_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest configuration read from stdin (a chain's `prevResult` is a few KiB).
pub const MAX_STDIN_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub api_socket: PathBuf,
    pub enroll_timeout: Duration,
    pub prev_result: Option<Value>,
}

/// Reads stdin, at most [`MAX_STDIN_BYTES`].
pub fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    input.take(MAX_STDIN_BYTES + 1).read_to_end(&mut bytes).map_err(CniError::Stdin)?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(CniError::InvalidConfig { field: "(stdin)", reason: format!("larger than {MAX_STDIN_BYTES} bytes") });
    }
    Ok(bytes)
}

/// The `cniVersion` of whatever came on stdin, if any (VERSION's input, and what an error answers in).
pub fn cni_version_of(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CniError {
    CniError::InvalidConfig { field, reason: reason.into() }
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(CniError::Decode)?;
        let Value::Object(fields) = value else { return Err(invalid("(config)", "not a JSON object")) };
        let string = |field: &'static str| -> Result<String, CniError> {
            match fields.get(field) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(other) => Err(invalid(field, format!("{other} is not a non-empty string"))),
                None => Err(invalid(field, "missing")),
            }
        };
        let cni_version = string("cniVersion")?;
        version::check(&cni_version)?;
        let api_socket = match fields.get("apiSocket") {
            None => PathBuf::from(DEFAULT_API_SOCKET),
            Some(Value::String(s)) if Path::new(s).is_absolute() => PathBuf::from(s),
            Some(other) => return Err(invalid("apiSocket", format!("{other} is not an absolute path"))),
        };
        let enroll_timeout = match fields.get("enrollTimeoutMs") {
            None => DEFAULT_ENROLL_TIMEOUT,
            Some(v) => match v.as_u64().map(Duration::from_millis) {
                Some(d) if !d.is_zero() && d <= MAX_ENROLL_TIMEOUT => d,
                _ => {
                    return Err(invalid("enrollTimeoutMs", format!("{v} is not a number of milliseconds in 1..={}", MAX_ENROLL_TIMEOUT.as_millis())))
                }
            },
        };
        let prev_result = match fields.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => return Err(invalid("prevResult", format!("{other} is not a result object"))),
        };
        Ok(NetConf { cni_version, name: string("name")?, plugin_type: string("type")?, api_socket, enroll_timeout, prev_result })
    }
}

/// The pod's addresses in a chain's result: every `ips[].address` (CIDR) on a container interface, that is one
/// whose `interfaces[]` entry has a `sandbox`, or with no interface named (IPAM-style results). Addresses the
/// primary plugin put on host-side interfaces are not the pod's.
pub fn pod_ips(result: &Value) -> Result<Vec<IpAddr>, CniError> {
    let interfaces = result.get("interfaces").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let in_sandbox =
        |index: u64| interfaces.get(index as usize).and_then(|i| i.get("sandbox")).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let Some(ips) = result.get("ips") else { return Ok(Vec::new()) };
    let ips = ips.as_array().ok_or_else(|| invalid("prevResult.ips", format!("{ips} is not a list")))?;
    let mut out = Vec::new();
    for entry in ips {
        let address = entry.get("address").and_then(Value::as_str).ok_or_else(|| invalid("prevResult.ips", format!("{entry} has no address")))?;
        let ip = address.split('/').next().unwrap_or_default();
        let ip: IpAddr = ip.parse().map_err(|_| invalid("prevResult.ips", format!("address {address:?} is not IP/prefix")))?;
        match entry.get("interface").and_then(Value::as_u64) {
            Some(index) if !in_sandbox(index) => continue,
            _ => out.push(ip),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the bridge plugin (with host-local) answers, as the runtime hands it on to the next plugin.
    fn bridge_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [{"interface": 2, "address": "10.244.0.105/24", "gateway": "10.244.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn a_chained_config_with_keel_fields() {
        let config = json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "keel-cni",
            "apiSocket": "/var/run/keel/keel.sock", "enrollTimeoutMs": 2500,
            "runtimeConfig": {"portMappings": []}, "prevResult": bridge_result()
        });
        let conf = NetConf::parse(config.to_string().as_bytes()).unwrap();
        assert_eq!(conf.api_socket, Path::new("/var/run/keel/keel.sock"));
        assert_eq!(conf.enroll_timeout, Duration::from_millis(2500));
        assert_eq!(conf.prev_result, Some(bridge_result()));
        assert_eq!(pod_ips(&bridge_result()).unwrap(), vec!["10.244.0.105".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn defaults_apply_when_keel_fields_are_absent() {
        let conf = NetConf::parse(br#"{"cniVersion": "1.1.0", "name": "n", "type": "keel-cni"}"#).unwrap();
        assert_eq!((conf.api_socket.as_path(), conf.enroll_timeout), (Path::new(DEFAULT_API_SOCKET), DEFAULT_ENROLL_TIMEOUT));
        assert_eq!(conf.prev_result, None);
    }

    #[test]
    fn bad_configs_name_the_field_and_carry_the_spec_code() {
        let cases: [(&str, &str); 6] = [
            (r#"{"name": "n", "type": "keel-cni"}"#, "cniVersion"),
            (r#"{"cniVersion": "1.0.0", "type": "keel-cni"}"#, "name"),
            (r#"{"cniVersion": "1.0.0", "name": "n", "type": "keel-cni", "apiSocket": "run/keel.sock"}"#, "apiSocket"),
            (r#"{"cniVersion": "1.0.0", "name": "n", "type": "keel-cni", "enrollTimeoutMs": 0}"#, "enrollTimeoutMs"),
            (r#"{"cniVersion": "1.0.0", "name": "n", "type": "keel-cni", "enrollTimeoutMs": "10s"}"#, "enrollTimeoutMs"),
            (r#"{"cniVersion": "1.0.0", "name": "n", "type": "keel-cni", "prevResult": []}"#, "prevResult"),
        ];
        for (config, field) in cases {
            match NetConf::parse(config.as_bytes()) {
                Err(CniError::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{config}"),
                other => panic!("{config}: {other:?}"),
            }
        }
        let not_json = NetConf::parse(b"{cniVersion").unwrap_err();
        assert_eq!(not_json.code(), crate::error::code::DECODE_FAILURE);
        let too_new = NetConf::parse(br#"{"cniVersion": "9.0.0", "name": "n", "type": "keel-cni"}"#).unwrap_err();
        assert_eq!(too_new.code(), crate::error::code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn host_side_addresses_are_not_the_pods() {
        let mut result = bridge_result();
        result["ips"] = json!([
            {"interface": 0, "address": "10.244.0.1/24"},
            {"interface": 2, "address": "10.244.0.105/24"},
            {"address": "fd00::5/64"}
        ]);
        assert_eq!(pod_ips(&result).unwrap(), vec!["10.244.0.105".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        result["ips"] = json!([{"address": "10.244.0.300/24"}]);
        assert!(matches!(pod_ips(&result), Err(CniError::InvalidConfig { field: "prevResult.ips", .. })));
        assert_eq!(pod_ips(&json!({"cniVersion": "1.0.0"})).unwrap(), Vec::<IpAddr>::new());
    }

    #[test]
    fn stdin_is_bounded() {
        let big = vec![b' '; MAX_STDIN_BYTES as usize + 1];
        assert!(matches!(read_stdin(big.as_slice()), Err(CniError::InvalidConfig { .. })));
        assert_eq!(cni_version_of(br#"{"cniVersion": "1.0.0"}"#).as_deref(), Some("1.0.0"));
        assert_eq!(cni_version_of(b""), None);
    }
}
