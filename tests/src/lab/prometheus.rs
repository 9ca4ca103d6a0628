//! A real Prometheus (Debian's `prometheus`) in a lab node's namespace, scraping the lab's keels and keel-control
//! with the job and label layout of keel's documented scrape config (`deploy/prometheus/`), and queried through its
//! HTTP API as Grafana and Kiali query it. Its data lives in the lab's directory; it stops with its guard.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{http, prereqs, process, sys, ChildGuard};

/// Where Prometheus listens inside the node's namespace.
pub const LISTEN: &str = "127.0.0.1:9090";

/// A pod as Prometheus' Kubernetes pod discovery would present it: the `__meta_kubernetes_*` labels of one
/// declared container port. The documented relabeling decides from them what is scraped and how it is labelled.
pub struct DiscoveredPod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub node: &'a str,
    /// The pod's `app` label.
    pub app: &'a str,
    pub ip: std::net::Ipv4Addr,
    pub container_port: u16,
    /// The pod's `prometheus.io/*` annotations, if it has them: port and path.
    pub scrape: Option<(u16, &'a str)>,
}

/// One series of an instant vector.
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    _child: ChildGuard,
    netns: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in the namespace `netns` (and `cgroup`, so the lab's cleanup reaches it) with the scrape
    /// jobs of `scrape_config` (keel's documented file), its Kubernetes discovery replaced by `pods` (the lab has
    /// no API server Prometheus' discovery could list), every `interval`; waits until `expect_up` targets were
    /// scraped up.
    pub fn start(
        dir: &Path,
        (netns, cgroup): (&Path, &Path),
        scrape_config: &Path,
        pods: &[DiscoveredPod<'_>],
        interval: Duration,
        expect_up: usize,
    ) -> Result<Prometheus> {
        prereqs::require_program("prometheus", "apt-get install prometheus; `cargo xtask setup` installs it")?;
        let data = dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let targets = dir.join("prometheus-targets.json");
        std::fs::write(&targets, serde_json::to_string_pretty(&discovered(pods))?)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, lab_config(scrape_config, &targets, interval)?)?;
        let mut cmd = std::process::Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={LISTEN}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn");
        let _fds = sys::place(&mut cmd, &sys::Placement { netns: Some(netns), cgroup: Some(cgroup) })?;
        let child = process::spawn_logged("prometheus", &mut cmd, &dir.join("prometheus.log"))?;
        let prometheus = Prometheus { _child: child, netns: netns.to_owned(), addr: LISTEN.parse().expect("valid") };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = prometheus.query("up == 1").map(|s| s.len()).unwrap_or(0);
            if up == expect_up {
                return Ok(prometheus);
            }
            if Instant::now() > deadline {
                let targets = prometheus.get("/api/v1/targets").unwrap_or_else(|e| format!("{e:#}"));
                bail!("Prometheus scraped {up} targets up within 30 s, want {expect_up}; its targets:\n{targets}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn get(&self, path_and_query: &str) -> Result<String> {
        let addr = self.addr;
        let path = path_and_query.to_owned();
        let (status, body) = sys::in_netns(&self.netns, move || http::get(addr, &path, Duration::from_secs(10)))?;
        if status != 200 {
            bail!("Prometheus answered {status} to {path_and_query}: {body}");
        }
        Ok(body)
    }

    /// An instant query, now.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        self.query_params(&[("query", promql)])
    }

    /// An instant query evaluated at `at` (so a range selector covers exactly `[at - range, at]`).
    pub fn query_at(&self, promql: &str, at: SystemTime) -> Result<Vec<Sample>> {
        let time = format!("{:.3}", at.duration_since(UNIX_EPOCH)?.as_secs_f64());
        self.query_params(&[("query", promql), ("time", &time)])
    }

    fn query_params(&self, params: &[(&str, &str)]) -> Result<Vec<Sample>> {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let body = self.get(&format!("/api/v1/query?{query}"))?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("Prometheus' answer is not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!("query {params:?} failed: {v}");
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") => {}
            other => bail!("query {params:?}: want an instant vector, got {other:?}: {v}"),
        }
        v["data"]["result"]
            .as_array()
            .context("no result array")?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .context("no metric labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = s["value"][1].as_str().context("no value")?.parse::<f64>().context("value is not a number")?;
                Ok(Sample { labels, value })
            })
            .collect()
    }
}

/// The file discovery's target groups: one per pod port, with the labels Kubernetes discovery gives it.
fn discovered(pods: &[DiscoveredPod<'_>]) -> Value {
    let groups: Vec<Value> = pods
        .iter()
        .map(|p| {
            let mut labels = serde_json::json!({
                "__meta_kubernetes_namespace": p.namespace,
                "__meta_kubernetes_pod_name": p.name,
                "__meta_kubernetes_pod_node_name": p.node,
                "__meta_kubernetes_pod_label_app": p.app,
                "__meta_kubernetes_pod_ip": p.ip.to_string(),
            });
            if let Some((port, path)) = p.scrape {
                labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] = "true".into();
                labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] = port.to_string().into();
                labels["__meta_kubernetes_pod_annotation_prometheus_io_path"] = path.into();
            }
            serde_json::json!({"targets": [format!("{}:{}", p.ip, p.container_port)], "labels": labels})
        })
        .collect();
    Value::Array(groups)
}

/// keel's documented scrape config with the lab's interval and, in place of each job's Kubernetes discovery, the
/// file of discovered pods; the relabeling is kept as written.
fn lab_config(scrape_config: &Path, targets: &Path, interval: Duration) -> Result<String> {
    let text = std::fs::read_to_string(scrape_config).with_context(|| format!("reading {}", scrape_config.display()))?;
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML", scrape_config.display()))?;
    let interval = format!("{}ms", interval.as_millis());
    config["global"] =
        serde_yaml_ng::from_str(&format!("{{scrape_interval: {interval}, scrape_timeout: {interval}, evaluation_interval: {interval}}}"))?;
    let jobs = config["scrape_configs"].as_sequence_mut().context("no scrape_configs")?;
    for job in jobs {
        let job = job.as_mapping_mut().context("a scrape config is not a mapping")?;
        if job.remove("kubernetes_sd_configs").is_none() {
            bail!("{}: a job without kubernetes_sd_configs", scrape_config.display());
        }
        let files = serde_yaml_ng::from_str(&format!("[{{files: ['{}'], refresh_interval: 1s}}]", targets.display()))?;
        job.insert("file_sd_configs".into(), files);
    }
    Ok(serde_yaml_ng::to_string(&config)?)
}
