//! [`KubeApi`]: a running `kube-stand-in`, started, restarted and driven by a test (blocking calls; safe to call
//! from inside an async test, as they never touch its runtime).

use super::server::READY_PREFIX;
use super::{kubeconfig, ServiceAccountToken};
use crate::lab::process::{self, ChildGuard};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const BINARY: &str = "kube-stand-in";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run the stand-in.
#[derive(Debug, Clone)]
pub struct KubeApiOptions {
    /// Where to listen (port 0: any free port, kept across restarts).
    pub listen: SocketAddr,
    /// Keep objects and the resourceVersion counter in `<dir>/state.json` across restarts.
    pub persist: bool,
    /// How often watches asking for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Watch events retained (older resourceVersions get 410 Gone).
    pub event_window: usize,
    /// Extra names or addresses for the serving certificate.
    pub sans: Vec<String>,
    /// Log every request to the stand-in's log.
    pub log_requests: bool,
}

impl Default for KubeApiOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            persist: true,
            bookmark_interval: Duration::from_secs(1),
            event_window: 100_000,
            sans: Vec::new(),
            log_requests: true,
        }
    }
}

/// A running stand-in. Dropping it kills the process (by its PID).
pub struct KubeApi {
    bin: PathBuf,
    dir: PathBuf,
    options: KubeApiOptions,
    admin_token: String,
    child: Option<ChildGuard>,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    tokens: Vec<ServiceAccountToken>,
    starts: u32,
}

/// The `kube-stand-in` binary: `$KEEL_KUBE_STAND_IN`, else next to the running executable (an integration test
/// runs from `<target>/<profile>/deps/`), else `<workspace>/target/debug/`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEEL_KUBE_STAND_IN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let beside = exe_dir.iter().flat_map(|d| [Some(d.join(BINARY)), d.parent().map(|up| up.join(BINARY))]).flatten();
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(BINARY);
    beside.into_iter().find(|p| p.is_file()).unwrap_or(fallback)
}

impl KubeApi {
    /// Starts a stand-in keeping its files (CA, kubeconfig, state, logs) in `dir`, with default options.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, KubeApiOptions::default())
    }

    pub fn start_with(dir: &Path, options: KubeApiOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let admin_token = format!("stand-in-admin-{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut api = Self {
            bin: binary(),
            dir: dir.to_path_buf(),
            addr: options.listen,
            options,
            admin_token,
            child: None,
            tls: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            tokens: Vec::new(),
            starts: 0,
        };
        api.resume()?;
        Ok(api)
    }

    /// Starts the process again (after [`KubeApi::stop`]) on the same address, and registers the tokens again.
    pub fn resume(&mut self) -> Result<()> {
        if !self.bin.is_file() {
            bail!("{BINARY} not found at {} (cargo build -p keel-tests --bin {BINARY}, or set KEEL_KUBE_STAND_IN)", self.bin.display());
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--dir").arg(&self.dir).args(["--listen", &self.addr.to_string(), "--admin-token", &self.admin_token]);
        cmd.args(["--bookmark-interval-ms", &self.options.bookmark_interval.as_millis().to_string()]);
        cmd.args(["--event-window", &self.options.event_window.to_string()]);
        for san in &self.options.sans {
            cmd.args(["--san", san]);
        }
        if self.options.persist {
            cmd.arg("--state-file").arg(self.dir.join("state.json"));
        }
        if self.options.log_requests {
            cmd.arg("--log-requests");
        }
        self.starts += 1;
        let log = self.dir.join(format!("{BINARY}.{}.log", self.starts));
        let mut child = process::spawn_logged(BINARY, &mut cmd, &log)?;
        let line = child.wait_for_line(READY_TIMEOUT, |l| l.starts_with(READY_PREFIX))?;
        let url = line[READY_PREFIX.len()..].split_whitespace().next().unwrap_or_default();
        self.addr = url.trim_start_matches("https://").parse().with_context(|| format!("the stand-in's URL in {line:?}"))?;
        self.child = Some(child);
        let mut roots = rustls::RootCertStore::empty();
        for cert in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(self.ca_pem()?.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        self.tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        for token in self.tokens.clone() {
            self.call("PUT", "/stand-in/tokens", &serde_json::to_value(&token)?)?;
        }
        Ok(())
    }

    /// SIGTERM (the stand-in saves its state), then waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM)?;
            if child.wait_timeout(Duration::from_secs(10)).is_none() {
                bail!("{BINARY} did not exit within 10 s of SIGTERM; log:\n{}", process::tail(&child.log(), 20));
            }
        }
        Ok(())
    }

    /// Stops and starts the stand-in on the same address; with `persist`, objects and resourceVersions survive.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.resume()
    }

    /// The admin kubeconfig (for kube-rs `Kubeconfig::read_from`, or `kubectl --kubeconfig`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The address it listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_pem(&self) -> Result<String> {
        let path = self.dir.join("ca.pem");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// This run's log (with `log_requests`, one line per request).
    pub fn log(&self) -> String {
        self.child.as_ref().map(ChildGuard::log).unwrap_or_default()
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let config = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Makes `token` valid (again after a restart): it authenticates API requests (with the API audience) and
    /// TokenReviews. Creates its ServiceAccount when it does not exist yet.
    pub fn register_token(&mut self, token: ServiceAccountToken) -> Result<()> {
        if self.get("v1", "Namespace", None, &token.namespace)?.is_none() {
            self.apply(&json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": token.namespace } }))?;
        }
        if self.get("v1", "ServiceAccount", Some(&token.namespace), &token.service_account)?.is_none() {
            let sa =
                json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": token.service_account, "namespace": token.namespace } });
            self.apply(&sa)?;
        }
        self.call("PUT", "/stand-in/tokens", &serde_json::to_value(&token)?)?;
        self.tokens.retain(|t| t.token != token.token);
        self.tokens.push(token);
        Ok(())
    }

    /// Writes a kubeconfig at `path` for `token` (a registered token): what keel or keel-control is started with.
    pub fn write_kubeconfig(&self, token: &str, path: &Path) -> Result<()> {
        std::fs::write(path, kubeconfig::render(&self.url(), &self.ca_pem()?, token)).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces `object` as it is, status included (as kubelet and users together would make it).
    /// Namespaced objects without a namespace go to `default`. Returns the stored object.
    pub fn apply(&self, object: &Value) -> Result<Value> {
        self.call("POST", "/stand-in/objects", object)
    }

    /// [`KubeApi::apply`] for each document of a YAML stream.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>> {
        let mut applied = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let object: Value = serde::Deserialize::deserialize(doc).context("a YAML document")?;
            if !object.is_null() {
                applied.push(self.apply(&object)?);
            }
        }
        Ok(applied)
    }

    fn reference(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Value {
        json!({ "apiVersion": api_version, "kind": kind, "namespace": namespace.unwrap_or_default(), "name": name })
    }

    /// The stored object, or `None`.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Result<Option<Value>> {
        self.call_optional("/stand-in/get", &Self::reference(api_version, kind, namespace, name))
    }

    /// Removes the object at once (finalizers ignored); false if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Result<bool> {
        Ok(self.call_optional("/stand-in/delete", &Self::reference(api_version, kind, namespace, name))?.is_some())
    }

    /// A graceful deletion, as for a pod kubelet stops: `deletionTimestamp` is set now (a MODIFIED event) and the
    /// object is removed after `grace` (a DELETED event). Returns the object as marked.
    pub fn delete_gracefully(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str, grace: Duration) -> Result<Value> {
        let mut reference = Self::reference(api_version, kind, namespace, name);
        reference["graceMillis"] = json!(grace.as_millis() as u64);
        self.call("POST", "/stand-in/terminate", &reference)
    }

    /// Forgets the watch history and ends every open watch: clients resuming get 410 Gone and relist. Returns the
    /// new resourceVersion.
    pub fn compact(&self) -> Result<u64> {
        let answer = self.call("POST", "/stand-in/compact", &json!({}))?;
        answer["resourceVersion"].as_str().and_then(|v| v.parse().ok()).context("compact: no resourceVersion in the answer")
    }

    fn call_optional(&self, path: &str, body: &Value) -> Result<Option<Value>> {
        match self.request("POST", path, body)? {
            (404, _) => Ok(None),
            (code, v) if (200..300).contains(&code) => Ok(Some(v)),
            (code, v) => bail!("POST {path}: {code} {}", v["message"]),
        }
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        match self.request(method, path, body)? {
            (code, v) if (200..300).contains(&code) => Ok(v),
            (code, v) => bail!("{method} {path}: {code} {}", v["message"]),
        }
    }

    /// One HTTP/1.1 request over TLS with the admin token: (status code, JSON body).
    fn request(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to the stand-in at {addr}"))?;
        tcp.set_read_timeout(Some(CALL_TIMEOUT))?;
        tcp.set_write_timeout(Some(CALL_TIMEOUT))?;
        let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(self.tls.clone(), server_name)?, tcp);
        let body = serde_json::to_vec(body)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.admin_token,
            body.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(&body)?;
        tls.flush()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            let n = match tls.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e).context(format!("{method} {path}: reading the answer")),
            };
            raw.extend_from_slice(&buf[..n]);
            if let Some(answer) = parse_response(&raw) {
                return answer;
            }
            if n == 0 {
                bail!("{method} {path}: the connection closed before a whole answer ({} bytes)", raw.len());
            }
        }
    }
}

/// A complete HTTP/1.1 response with a Content-Length body, or `None` while more bytes are needed.
fn parse_response(raw: &[u8]) -> Option<Result<(u16, Value)>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok()))?;
    let body = raw.get(end + 4..end + 4 + length)?;
    Some(serde_json::from_slice(body).map(|v| (code, v)).map_err(|e| anyhow::anyhow!("the stand-in's answer is not JSON: {e}")))
}
