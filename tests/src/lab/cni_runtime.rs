//! A stand-in for the part of a container runtime that drives CNI (what containerd and CRI-O do through libcni),
//! strict about the protocol: it reads the primary configuration list from a conf dir as the runtime picks it,
//! runs each plugin binary from the bin dir in the node's network namespace with the `CNI_*` environment (and
//! nothing else but `PATH`) and the plugin's network configuration on stdin (`cniVersion` and `name` of the list,
//! `prevResult` from the plugin before), in order for ADD and CHECK and in reverse for DEL, with the cached ADD
//! result as `prevResult` on DEL and CHECK. A plugin's output must be the spec's: a result object on ADD, nothing
//! on success otherwise, an error object `{cniVersion, code, msg}` with a non-zero exit.

use super::sys::{self, Placement};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one plugin call may take (keel-cni's own bound is its `enrollTimeoutMs`).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a runtime knows of a pod sandbox when it calls CNI.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Sandbox {
    /// `CNI_ARGS` as Kubernetes runtimes set it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.container_id, self.uid
        )
    }
}

/// One plugin call and how it ended.
#[derive(Debug, Clone)]
pub struct PluginCall {
    pub plugin: String,
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl PluginCall {
    /// The spec's error object this failed call printed (checked for the required fields).
    pub fn error(&self) -> Result<Value> {
        if self.status.success() {
            bail!("{} {} succeeded; no error object", self.plugin, self.command);
        }
        let v: Value = serde_json::from_str(self.stdout.trim()).with_context(|| {
            format!("{} {} failed ({}) without a JSON error object on stdout: {:?}", self.plugin, self.command, self.status, self.stdout)
        })?;
        if !v["cniVersion"].is_string() || !v["code"].is_u64() || !v["msg"].is_string() {
            bail!("{} {}: not a CNI error object: {v}", self.plugin, self.command);
        }
        Ok(v)
    }
}

/// How a chain call ended: every plugin succeeded (`result` is the last ADD result), or one failed and the chain
/// stopped there.
#[derive(Debug)]
pub struct ChainOutcome {
    pub calls: Vec<PluginCall>,
    pub result: Option<Value>,
}

impl ChainOutcome {
    /// The failed call, if any (always the last).
    pub fn failed(&self) -> Option<&PluginCall> {
        self.calls.last().filter(|c| !c.status.success())
    }
    pub fn ok(&self) -> Result<()> {
        match self.failed() {
            None => Ok(()),
            Some(c) => bail!("{} {} failed ({}): stdout {} stderr {}", c.plugin, c.command, c.status, c.stdout.trim(), c.stderr.trim()),
        }
    }
    pub fn call_of(&self, plugin: &str) -> Option<&PluginCall> {
        self.calls.iter().find(|c| c.plugin == plugin)
    }
}

pub struct CniRuntime {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The host (node) network namespace plugins run in.
    pub node_netns: PathBuf,
    /// ADD results by container id, as libcni caches them for DEL and CHECK.
    cache: Mutex<HashMap<String, Value>>,
}

impl CniRuntime {
    pub fn new(bin_dir: &Path, conf_dir: &Path, node_netns: &Path) -> CniRuntime {
        CniRuntime { bin_dir: bin_dir.into(), conf_dir: conf_dir.into(), node_netns: node_netns.into(), cache: Mutex::default() }
    }

    /// The configuration list the runtime uses: the first `*.conf`, `*.conflist` or `*.json` by name, which must be
    /// a list.
    pub fn conflist(&self) -> Result<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["conf", "conflist", "json"].contains(&e)))
            .collect();
        files.sort();
        let first = files.first().with_context(|| format!("no CNI configuration in {}", self.conf_dir.display()))?;
        let list: Value = serde_json::from_slice(&std::fs::read(first)?).with_context(|| format!("{} is not JSON", first.display()))?;
        if !list["plugins"].is_array() || !list["cniVersion"].is_string() || !list["name"].is_string() {
            bail!("{} is not a configuration list: {list}", first.display());
        }
        Ok(list)
    }

    pub fn add(&self, sandbox: &Sandbox) -> Result<ChainOutcome> {
        let list = self.conflist()?;
        let mut calls = Vec::new();
        let mut prev: Option<Value> = None;
        for plugin in plugins(&list) {
            let call = self.call(&list, plugin, "ADD", Some(sandbox), prev.as_ref())?;
            let ok = call.status.success();
            if ok {
                let result: Value = serde_json::from_str(call.stdout.trim())
                    .with_context(|| format!("{} ADD printed no JSON result: {:?}", call.plugin, call.stdout))?;
                if !result["cniVersion"].is_string() {
                    bail!("{} ADD result has no cniVersion: {result}", call.plugin);
                }
                prev = Some(result);
            }
            calls.push(call);
            if !ok {
                return Ok(ChainOutcome { calls, result: None });
            }
        }
        if let Some(result) = &prev {
            self.cache.lock().unwrap().insert(sandbox.container_id.clone(), result.clone());
        }
        Ok(ChainOutcome { calls, result: prev })
    }

    /// DEL through the whole chain in reverse, every plugin even after a failure (as libcni does not stop there
    /// either for cleanup); the cached result is forgotten only when all succeeded.
    pub fn del(&self, sandbox: &Sandbox) -> Result<ChainOutcome> {
        let list = self.conflist()?;
        let cached = self.cache.lock().unwrap().get(&sandbox.container_id).cloned();
        let mut calls = Vec::new();
        for plugin in plugins(&list).iter().rev() {
            calls.push(self.call(&list, plugin, "DEL", Some(sandbox), cached.as_ref())?);
        }
        let failed = calls.iter().position(|c| !c.status.success());
        if failed.is_none() {
            self.cache.lock().unwrap().remove(&sandbox.container_id);
        }
        // Put the first failure last, where `ChainOutcome::failed` looks.
        if let Some(i) = failed {
            let call = calls.remove(i);
            calls.push(call);
        }
        Ok(ChainOutcome { calls, result: None })
    }

    pub fn check(&self, sandbox: &Sandbox) -> Result<ChainOutcome> {
        let list = self.conflist()?;
        let cached = self.cache.lock().unwrap().get(&sandbox.container_id).cloned().context("CHECK of a sandbox never ADDed")?;
        let mut calls = Vec::new();
        for plugin in plugins(&list) {
            let call = self.call(&list, plugin, "CHECK", Some(sandbox), Some(&cached))?;
            let ok = call.status.success();
            calls.push(call);
            if !ok {
                break;
            }
        }
        Ok(ChainOutcome { calls, result: None })
    }

    /// One plugin of the list called on its own (e.g. STATUS or VERSION of keel-cni).
    pub fn call_plugin(&self, plugin_type: &str, command: &str, sandbox: Option<&Sandbox>, cni_version: &str) -> Result<PluginCall> {
        let list = self.conflist()?;
        let plugin = plugins(&list).iter().find(|p| p["type"] == plugin_type).with_context(|| format!("no {plugin_type} in the list"))?;
        let mut list = list.clone();
        list["cniVersion"] = json!(cni_version);
        self.call(&list, plugin, command, sandbox, None)
    }

    fn call(&self, list: &Value, plugin: &Value, command: &str, sandbox: Option<&Sandbox>, prev: Option<&Value>) -> Result<PluginCall> {
        let plugin_type = plugin["type"].as_str().context("a plugin without a type")?.to_string();
        let mut config: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
        config.insert("cniVersion".into(), list["cniVersion"].clone());
        config.insert("name".into(), list["name"].clone());
        if let Some(prev) = prev {
            config.insert("prevResult".into(), prev.clone());
        }
        let binary = self.bin_dir.join(&plugin_type);
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = sandbox {
            cmd.env("CNI_CONTAINERID", &s.container_id).env("CNI_NETNS", &s.netns).env("CNI_IFNAME", &s.ifname).env("CNI_ARGS", s.cni_args());
        }
        let started = Instant::now();
        let mut child = {
            let _fds = sys::place(&mut cmd, &Placement { netns: Some(&self.node_netns), cgroup: None })?;
            cmd.spawn().with_context(|| format!("running CNI plugin {}", binary.display()))?
        };
        let stdin = Value::Object(config).to_string();
        child.stdin.take().context("stdin")?.write_all(stdin.as_bytes()).with_context(|| format!("writing {plugin_type}'s config"))?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > PLUGIN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("CNI plugin {plugin_type} {command} did not finish within {PLUGIN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        child.stdout.take().context("stdout")?.read_to_string(&mut stdout)?;
        child.stderr.take().context("stderr")?.read_to_string(&mut stderr)?;
        if status.success() && command != "ADD" && command != "VERSION" && !stdout.trim().is_empty() {
            bail!("{plugin_type} {command} succeeded but printed {stdout:?} (the spec: nothing)");
        }
        Ok(PluginCall { plugin: plugin_type, command: command.into(), status, stdout, stderr, elapsed })
    }
}

fn plugins(list: &Value) -> &[Value] {
    list["plugins"].as_array().map(Vec::as_slice).unwrap_or_default()
}
