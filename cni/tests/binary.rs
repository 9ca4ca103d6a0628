//! The `keel-cni` binary at its edge, as a runtime sees it: environment and stdin in, one JSON object on stdout and
//! the exit code out. (Also what makes `cargo test`/`nextest` build the binary the lab's CNI suite runs.)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn keel_cni() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keel-cni"))
}

/// Runs the plugin with only `env` set and `stdin` on its standard input.
fn plugin(env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(keel_cni())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel-cni runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
    child.wait_with_output().expect("keel-cni ends")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {:?}", String::from_utf8_lossy(&out.stdout)))
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-cni-bin-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version_lists_the_supported_spec_versions() {
    let out = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion": "1.0.0"}"#);
    assert!(out.status.success());
    assert_eq!(stdout_json(&out), json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));
}

#[test]
fn a_failure_is_one_error_object_on_stdout_and_a_non_zero_exit() {
    let config = json!({"cniVersion": "1.0.0", "name": "pods", "type": "keel-cni", "prevResult": {"cniVersion": "1.0.0", "ips": []}});
    let out = plugin(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "K8S_POD_NAMESPACE=default")], &config.to_string());
    assert_eq!(out.status.code(), Some(1));
    let error = stdout_json(&out);
    assert_eq!(error["cniVersion"], "1.0.0", "the error answers in the configuration's version");
    assert_eq!(error["code"], 4);
    let details = error["details"].as_str().unwrap();
    for name in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "K8S_POD_NAME", "K8S_POD_UID"] {
        assert!(details.contains(name), "{details}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("K8S_POD_UID"), "the runtime's log gets the reason too");
}

#[test]
fn add_with_keel_unreachable_fails_the_pod() {
    let dir = temp_dir("unreachable");
    let socket = dir.join("keel.sock");
    let config = json!({"cniVersion": "1.1.0", "name": "pods", "type": "keel-cni", "apiSocket": socket,
                        "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.244.0.5/24"}]}});
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "4f1e"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=0b6c1a52-3c1d-4d58-9b9c-2f0b1e1e8a11"),
    ];
    let out = plugin(&env, &config.to_string());
    assert_eq!(out.status.code(), Some(1));
    let error = stdout_json(&out);
    assert_eq!(error["code"], 11);
    assert!(error["details"].as_str().unwrap().contains(socket.to_str().unwrap()), "{error}");
    // DEL with keel gone has nothing to release: success, nothing printed.
    let mut del_env = vec![("CNI_COMMAND", "DEL")];
    del_env.extend_from_slice(&env[1..]);
    let del = plugin(&del_env, &config.to_string());
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stdout));
    assert!(del.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn install_then_uninstall_on_a_node_layout() {
    let dir = temp_dir("install");
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let primary = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}]});
    std::fs::write(conf.join("10-pods.conflist"), primary.to_string()).unwrap();
    let dirs = ["--cni-bin-dir", bin.to_str().unwrap(), "--cni-conf-dir", conf.to_str().unwrap()];

    let out = Command::new(keel_cni()).arg("install").args(dirs).args(["--enroll-timeout-ms", "3000"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["conflist_changed"], true);
    assert_eq!(std::fs::read(bin.join("keel-cni")).unwrap(), std::fs::read(keel_cni()).unwrap(), "the plugin binary is copied");
    let chained: Value = serde_json::from_slice(&std::fs::read(conf.join("10-pods.conflist")).unwrap()).unwrap();
    assert_eq!(chained["plugins"][1], json!({"type": "keel-cni", "apiSocket": "/run/keel/keel.sock", "enrollTimeoutMs": 3000}));

    let out = Command::new(keel_cni()).arg("uninstall").args(dirs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored: Value = serde_json::from_slice(&std::fs::read(conf.join("10-pods.conflist")).unwrap()).unwrap();
    assert_eq!(restored, primary);
    assert!(!bin.join("keel-cni").exists());

    let out = Command::new(keel_cni()).args(["install", "--enroll-timeout-ms", "0"]).args(dirs).output().unwrap();
    assert!(!out.status.success(), "a zero timeout is refused");
    std::fs::remove_dir_all(&dir).unwrap();
}
