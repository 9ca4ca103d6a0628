//! The set of pods keel serves: enroll opens keel's listeners inside the pod and turns capture on, unenroll turns
//! it off. The set is persisted, so a restarted keel (even after `kill -9`) takes the same pods over again.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context as _};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::{
    capture::{Direction, PodCapture},
    captured,
    data_path::{DataPath, PodContext},
    hbone_server,
    identity::Identity,
    netns::Netns,
    pods::{EnrollRequest, PodName, PodSpec},
    sockets::{self, PodListeners},
};

/// Where processes' network namespaces are found (a netns keel finds itself is `/proc/<pid>/ns/net`).
const PROC_ROOT: &str = "/proc";

struct EnrolledPod {
    spec: PodSpec,
    context: Arc<PodContext>,
    /// Copies of the pod's listeners (the accept loops serve others): the sk_lookup SockHash entry refers to the
    /// inbound one, and a successor keel is handed all three (see `crate::handover`).
    listeners: PodListeners,
    stop: watch::Sender<bool>,
}

pub struct Enrollment {
    data_path: Arc<DataPath>,
    cgroup_root: PathBuf,
    state_file: PathBuf,
    /// An async mutex: enroll/unenroll wait on the kernel and on iptables, one at a time.
    pods: Mutex<BTreeMap<PodName, EnrolledPod>>,
}

impl Enrollment {
    pub fn new(data_path: Arc<DataPath>, cgroup_root: &Path, state_dir: &Path) -> Enrollment {
        Enrollment { data_path, cgroup_root: cgroup_root.to_owned(), state_file: state_dir.join("pods.json"), pods: Mutex::new(BTreeMap::new()) }
    }

    /// Enrolls the pods a previous keel persisted. A pod that is gone meanwhile is dropped with a warning.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let saved: Vec<PodSpec> = match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not a list of pods", self.state_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.state_file.display())),
        };
        let mut restored = 0;
        for spec in saved {
            let name = spec.pod_name();
            let spec = if spec.netns_discovered {
                // The process whose /proc entry named the netns may be gone, or its PID reused: find it again.
                let again = EnrollRequest {
                    namespace: spec.namespace,
                    name: spec.name,
                    service_account: spec.service_account,
                    netns: None,
                    cgroup: None,
                    uid: spec.uid,
                    ips: spec.ips,
                    budgets: spec.budgets,
                };
                match self.resolve(again).await {
                    Ok(spec) => spec,
                    Err(e) => {
                        warn!(pod = %name, error = %format!("{e:#}"), "could not find a restored pod again; dropping it");
                        continue;
                    }
                }
            } else {
                spec
            };
            match self.enroll(spec).await {
                Ok(()) => restored += 1,
                Err(e) => warn!(pod = %name, error = %format!("{e:#}"), "could not restore pod; dropping it"),
            }
        }
        self.persist().await?;
        let enrolled: Vec<(u64, Vec<IpAddr>)> = self.pods.lock().await.values().map(|p| (p.context.netns.cookie(), p.spec.ips.clone())).collect();
        self.data_path.capture.retain(&enrolled).context("releasing pods a previous keel captured")?;
        Ok(restored)
    }

    /// The pod an API request names, its cgroup (and netns, when not given) found from its `uid` if need be.
    pub async fn resolve(&self, request: EnrollRequest) -> anyhow::Result<PodSpec> {
        let cgroup_root = self.cgroup_root.clone();
        // Finding a pod reads a few hundred directories at most: off the async workers all the same.
        Ok(tokio::task::spawn_blocking(move || request.resolve(&cgroup_root, Path::new(PROC_ROOT))).await??)
    }

    /// An API `enroll`: resolves the request, then enrolls the pod.
    pub async fn enroll_request(&self, request: EnrollRequest) -> anyhow::Result<()> {
        let spec = self.resolve(request).await?;
        self.enroll(spec).await
    }

    /// The enrolled pod named `name`, if any.
    pub async fn enrolled(&self, name: &PodName) -> Option<PodSpec> {
        self.pods.lock().await.get(name).map(|p| p.spec.clone())
    }

    /// Enrolls `spec`, first releasing a pod of the same name enrolled with another spec (a sandbox that was
    /// replaced without keel hearing of the old one's end: the new sandbox is the pod now).
    pub async fn enroll_replacing(&self, spec: PodSpec) -> anyhow::Result<()> {
        let name = spec.pod_name();
        if let Some(existing) = self.enrolled(&name).await {
            if existing != spec {
                warn!(pod = %name, old_netns = %existing.netns.display(), new_netns = %spec.netns.display(), "replacing the pod's earlier enrollment");
                self.unenroll(&name).await?;
            }
        }
        self.enroll(spec).await
    }

    pub async fn enroll(&self, spec: PodSpec) -> anyhow::Result<()> {
        spec.validate(&self.cgroup_root)?;
        let name = spec.pod_name();
        let mut pods = self.pods.lock().await;
        if let Some(existing) = pods.get(&name) {
            if existing.spec == spec {
                return Ok(()); // the CNI may repeat itself
            }
            bail!("pod {name} is already enrolled with a different spec; unenroll it first");
        }
        for (other, pod) in pods.iter() {
            if let Some(ip) = spec.ips.iter().find(|ip| pod.spec.ips.contains(ip)) {
                bail!("field `ips`: {ip} already belongs to enrolled pod {other}");
            }
        }
        let enrolled = self.start_pod(spec, None).await.with_context(|| format!("enrolling {name}"))?;
        info!(pod = %name, netns = %enrolled.spec.netns.display(), ips = ?enrolled.spec.ips, "pod enrolled");
        pods.insert(name, enrolled);
        drop(pods);
        self.persist().await
    }

    /// Starts serving a pod: on `listeners` a previous keel handed over, or on new ones opened in the pod.
    async fn start_pod(&self, spec: PodSpec, listeners: Option<PodListeners>) -> anyhow::Result<EnrolledPod> {
        let netns_path = spec.netns.clone();
        let handed_over = listeners.is_some();
        let (netns, listeners) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let netns = Netns::open(&netns_path)?;
            let listeners = match listeners {
                Some(given) => given,
                None => sockets::open_pod_listeners(&netns).context("opening keel's listeners inside the pod (is another keel serving it?)")?,
            };
            Ok((netns, listeners))
        })
        .await??;
        let ip = spec
            .ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .context("field `ips`: no IPv4 address")?;
        let context = Arc::new(PodContext::new(spec.pod_name().to_string(), netns, ip, &self.data_path.limits, spec.budgets));
        {
            let data_path = self.data_path.clone();
            let (spec, context) = (spec.clone(), context.clone());
            let inbound_fd = listeners.inbound.try_clone()?;
            tokio::task::spawn_blocking(move || {
                let capture = PodCapture { spec: &spec, netns: &context.netns, inbound_listener: inbound_fd.as_fd() };
                if handed_over {
                    // Captured already, by the keel that handed it over: kept so, never released on failure.
                    return data_path.capture.adopt(&capture);
                }
                let enrolled = data_path.capture.enroll(&capture);
                if enrolled.is_err() {
                    // Half-applied capture (some map entries, maybe a link) must not outlive the failed request.
                    let _ = data_path.capture.unenroll(&capture);
                }
                enrolled
            })
            .await??;
        }
        self.data_path.bypass.pod_enrolled(&context.name, context.netns.clone());
        let (stop, stopped) = watch::channel(false);
        let copies = listeners.try_clone()?;
        for (listener, direction) in [(listeners.outbound, Direction::Outbound), (listeners.inbound, Direction::Inbound)] {
            let listener = sockets::into_tokio(listener)?;
            tokio::spawn(captured::serve(listener, direction, context.clone(), self.data_path.clone(), stopped.clone()));
        }
        let hbone = sockets::into_tokio(listeners.hbone)?;
        tokio::spawn(hbone_server::serve(hbone, context.clone(), self.data_path.clone(), stopped.clone()));
        Ok(EnrolledPod { spec, context, listeners: copies, stop })
    }

    pub async fn unenroll(&self, name: &PodName) -> anyhow::Result<()> {
        let removed = self.pods.lock().await.remove(name);
        let Some(pod) = removed else { bail!("pod {name} is not enrolled") };
        let ips = pod.spec.ips.clone();
        let pod_ip = pod.context.ip;
        self.stop_pod(pod).await?;
        self.data_path.upstreams.forget(pod_ip);
        info!(pod = %name, "pod unenrolled");
        self.forget_unused_identity(&ips).await;
        self.persist().await
    }

    /// Stops renewing the certificate of the identity the unenrolled pod had, unless another pod here has it.
    async fn forget_unused_identity(&self, ips: &[IpAddr]) {
        let Some(certificates) = &self.data_path.dialer.certificates else { return };
        let snapshot = self.data_path.workloads.snapshot();
        let identity_at = |ip: &IpAddr| snapshot.workloads_by_ip.get(ip).map(|w| Identity::of_workload(w));
        let Some(identity) = ips.iter().find_map(identity_at) else { return };
        let still_used = self.pods.lock().await.values().any(|p| p.spec.ips.iter().filter_map(identity_at).any(|other| other == identity));
        if !still_used {
            certificates.forget(&identity);
        }
    }

    /// Turns capture off first (new connections go straight through), then closes keel's listeners.
    async fn stop_pod(&self, pod: EnrolledPod) -> anyhow::Result<()> {
        let data_path = self.data_path.clone();
        let EnrolledPod { spec, context, listeners, stop } = pod;
        data_path.bypass.pod_left(&data_path.capture, context.netns.cookie()).await;
        let result = tokio::task::spawn_blocking(move || {
            let capture = PodCapture { spec: &spec, netns: &context.netns, inbound_listener: listeners.inbound.as_fd() };
            data_path.capture.unenroll(&capture)
        })
        .await?;
        let _ = stop.send(true);
        result
    }

    /// Serves the pods a previous keel handed over, on their listeners (the same sockets: nothing queued on them is
    /// lost), and persists them; then releases what the capture maps hold of any other pod, as [`Self::restore`].
    pub async fn adopt(&self, handed_over: Vec<(PodSpec, PodListeners)>) -> anyhow::Result<usize> {
        let mut adopted = 0;
        for (spec, listeners) in handed_over {
            let name = spec.pod_name();
            match self.start_pod(spec, Some(listeners)).await {
                Ok(enrolled) => {
                    self.pods.lock().await.insert(name, enrolled);
                    adopted += 1;
                }
                // Its listeners close with this error; the old keel still serves it until the handover completes.
                Err(e) => warn!(pod = %name, error = %format!("{e:#}"), "could not take over pod"),
            }
        }
        self.persist().await?;
        let enrolled: Vec<(u64, Vec<IpAddr>)> = self.pods.lock().await.values().map(|p| (p.context.netns.cookie(), p.spec.ips.clone())).collect();
        self.data_path.capture.retain(&enrolled).context("releasing pods the previous keel captured and this one did not take over")?;
        Ok(adopted)
    }

    /// Copies of every pod's listeners, for a successor keel.
    pub async fn handover_offer(&self) -> anyhow::Result<Vec<(PodSpec, PodListeners)>> {
        let pods = self.pods.lock().await;
        pods.values().map(|p| Ok((p.spec.clone(), p.listeners.try_clone()?))).collect()
    }

    /// Each enrolled pod's connection slots (captured connections, HBONE connections): in use, limit, refused.
    pub async fn throttling(&self) -> Vec<crate::health_metrics::PodThrottling> {
        use crate::health_metrics::PodThrottling;
        let pods = self.pods.lock().await;
        pods.values()
            .flat_map(|p| {
                let c = &p.context;
                let slots = [("connections", &c.connection_slots), ("hbone", &c.hbone_slots)].map(|(kind, slots)| PodThrottling {
                    pod: c.name.clone(),
                    kind,
                    in_use: slots.in_use(),
                    limit: slots.limit(),
                    refused: slots.refused(),
                });
                // A rate has no "held": its limit is per second.
                let rate = c.connection_rate.as_ref().map(|rate| PodThrottling {
                    pod: c.name.clone(),
                    kind: "connections_per_second",
                    in_use: 0,
                    limit: rate.per_second() as usize,
                    refused: rate.refused(),
                });
                slots.into_iter().chain(rate)
            })
            .collect()
    }

    /// Each enrolled pod's bandwidth budget and share of keel's worker time, and what they did.
    pub async fn shares(&self) -> Vec<crate::health_metrics::PodShareReport> {
        let pods = self.pods.lock().await;
        pods.values().map(|p| crate::health_metrics::PodShareReport { pod: p.context.name.clone(), stats: p.context.share.stats() }).collect()
    }

    /// Every enrolled pod's data-path context.
    pub async fn contexts(&self) -> Vec<Arc<PodContext>> {
        self.pods.lock().await.values().map(|p| p.context.clone()).collect()
    }

    pub async fn specs(&self) -> Vec<PodSpec> {
        self.pods.lock().await.values().map(|p| p.spec.clone()).collect()
    }

    /// Stops serving every pod but leaves it captured (a stop before a restart): keel's listeners close and open
    /// HBONE connections get a GOAWAY, so new connections are refused from now on (captured but with no keel to
    /// take them); connections already accepted go on. The state file stays, for the next keel.
    pub async fn stop_serving_all(&self) {
        for (_, pod) in std::mem::take(&mut *self.pods.lock().await) {
            let _ = pod.stop.send(true);
        }
    }

    /// Forgets the persisted pods (on uninstall: the next keel starts with none).
    pub fn forget_all(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.state_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", self.state_file.display())),
            _ => Ok(()),
        }
    }

    /// Releases every pod from capture (on uninstall, or a stop under --fail-open) without forgetting them.
    pub async fn release_all(&self) {
        let pods = std::mem::take(&mut *self.pods.lock().await);
        for (name, pod) in pods {
            if let Err(e) = self.stop_pod(pod).await {
                warn!(pod = %name, error = %format!("{e:#}"), "releasing pod failed");
            }
        }
    }

    /// After every change of the pod set: tells the data path which pods are local, and saves the set.
    async fn persist(&self) -> anyhow::Result<()> {
        let specs = self.specs().await;
        self.data_path.dialer.node_pods.set(specs.iter().flat_map(|p| p.ips.iter().copied()).collect());
        let json = serde_json::to_vec_pretty(&specs)?;
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_file).with_context(|| format!("replacing {}", self.state_file.display()))
    }
}
