//! Workload certificates on demand. The first request for an identity starts a task that owns everything about
//! it: it generates a key (which never leaves keel), asks the provider, then renews at half-life, retrying
//! failures with backoff while the old certificate still serves. Callers never fetch themselves, so any number of
//! connections waiting for the same identity cause one request to the CA. Expired certificates are never served.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, Context as _};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{sync::watch, sync::Notify, task::AbortHandle};
use tracing::{info, warn};

use super::{
    certificate::{rfc3339, WorkloadCertificate},
    provider::CertificateProvider,
    Identity,
};

/// One certificate as `keel pc` (the config dump) shows it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CertificateEntry {
    pub identity: String,
    pub state: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
}

/// One certificate held, by the SPIFFE identity it proves (the health metrics report when it expires).
#[derive(Clone, Debug)]
pub struct CertificateExpiry {
    pub identity: String,
    pub not_after: SystemTime,
}

/// What istiod issues by default.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A cheap handle: clones share the cache and the refresh tasks.
#[derive(Clone)]
pub struct CertificateManager {
    inner: Arc<Inner>,
}

/// One line of `keel pc certs`.
pub type CertificateStatus = CertificateEntry;

struct Inner {
    provider: Arc<dyn CertificateProvider>,
    validity: Duration,
    slots: Mutex<HashMap<Identity, Arc<Slot>>>,
}

/// Everything about one identity, shared between callers and its refresh task.
struct Slot {
    state: Mutex<SlotState>,
    /// Bumped after every attempt, so waiters learn its outcome from `state`.
    attempts: watch::Sender<u64>,
    /// Cuts the task's sleep short when a caller finds the certificate expired before its scheduled renewal
    /// (a suspended node, a clock step).
    wake: Notify,
    task: OnceLock<AbortHandle>,
}

#[derive(Default)]
struct SlotState {
    current: Option<Arc<WorkloadCertificate>>,
    in_flight: bool,
    /// Why the last attempt failed; cleared by a success.
    last_error: Option<String>,
    /// Set by `forget`, for callers still waiting on this slot.
    forgotten: bool,
}

impl SlotState {
    fn usable(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current.as_ref().filter(|c| !c.is_expired()).cloned()
    }
}

impl CertificateManager {
    /// `validity` is what keel asks the CA for (`DEFAULT_VALIDITY` in production; tests ask for seconds).
    pub fn new(provider: Arc<dyn CertificateProvider>, validity: Duration) -> CertificateManager {
        CertificateManager { inner: Arc::new(Inner { provider, validity, slots: Mutex::new(HashMap::new()) }) }
    }

    /// A valid certificate for `id`: the cached one, or the outcome of the fetch in progress (starting one, and
    /// the renewals after it, on first use). Fails at once when the last attempt failed and nothing valid is
    /// held, rather than making a connection wait through the retry backoff.
    pub async fn certificate(&self, id: &Identity) -> anyhow::Result<Arc<WorkloadCertificate>> {
        let slot = self.slot(id);
        // Subscribed before looking, so an attempt finishing in between is not missed.
        let mut attempts = slot.attempts.subscribe();
        {
            let state = slot.state.lock().unwrap();
            if let Some(cert) = state.usable() {
                return Ok(cert);
            }
            if !state.in_flight {
                if let Some(error) = &state.last_error {
                    return Err(anyhow!("no valid certificate for {id}: {error}"));
                }
                slot.wake.notify_one();
            }
        }
        attempts.changed().await.map_err(|_| anyhow!("the certificate for {id} is no longer managed"))?;
        let state = slot.state.lock().unwrap();
        if state.forgotten {
            return Err(anyhow!("the certificate for {id} is no longer managed"));
        }
        state.usable().ok_or_else(|| {
            let reason = state.last_error.as_deref().unwrap_or("the new certificate has already expired");
            anyhow!("no valid certificate for {id}: {reason}")
        })
    }

    /// The valid certificate held for `id`, if any; never waits (rustls resolves certificates synchronously).
    pub fn current(&self, id: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let slot = self.inner.slots.lock().unwrap().get(id).cloned()?;
        let state = slot.state.lock().unwrap();
        state.usable()
    }

    /// Stops renewing `id` and drops its certificate (its last pod left the node).
    pub fn forget(&self, id: &Identity) {
        if let Some(slot) = self.inner.slots.lock().unwrap().remove(id) {
            slot.stop();
            info!(identity = %id, "certificate no longer needed: renewal stopped");
        }
    }

    /// When each certificate held expires (the health metrics), by identity; identities without one are left out.
    pub fn expiries(&self) -> Vec<CertificateExpiry> {
        let slots: Vec<(Identity, Arc<Slot>)> = self.inner.slots.lock().unwrap().iter().map(|(id, slot)| (id.clone(), slot.clone())).collect();
        slots
            .into_iter()
            .filter_map(|(id, slot)| {
                let not_after = slot.state.lock().unwrap().current.as_ref()?.not_after;
                Some(CertificateExpiry { identity: id.to_string(), not_after })
            })
            .collect()
    }

    /// For `keel pc certs`, sorted by identity. State is `expired` when the certificate held has expired,
    /// `refreshing` while a request is in flight, `failed: <reason>` when the last one failed (the certificate
    /// shown, if any, still serves), `valid` otherwise.
    pub fn snapshot(&self) -> Vec<CertificateStatus> {
        let slots: Vec<(Identity, Arc<Slot>)> = self.inner.slots.lock().unwrap().iter().map(|(id, slot)| (id.clone(), slot.clone())).collect();
        let mut entries: Vec<(Identity, CertificateStatus)> = slots
            .into_iter()
            .map(|(id, slot)| {
                let state = slot.state.lock().unwrap();
                let cert = state.current.as_ref();
                let status = match (cert, state.in_flight, &state.last_error) {
                    (Some(c), _, _) if c.is_expired() => "expired".to_owned(),
                    (_, true, _) => "refreshing".to_owned(),
                    (_, false, Some(error)) => format!("failed: {error}"),
                    _ => "valid".to_owned(),
                };
                let entry = CertificateEntry {
                    identity: id.to_string(),
                    state: status,
                    serial: cert.map(|c| c.serial.clone()).unwrap_or_default(),
                    not_before: cert.map(|c| rfc3339(c.not_before)).unwrap_or_default(),
                    not_after: cert.map(|c| rfc3339(c.not_after)).unwrap_or_default(),
                };
                (id, entry)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter().map(|(_, e)| e).collect()
    }

    /// The slot for `id`, created with its refresh task on first use.
    fn slot(&self, id: &Identity) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap();
        if let Some(slot) = slots.get(id) {
            return slot.clone();
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState { in_flight: true, ..Default::default() }),
            attempts: watch::Sender::new(0),
            wake: Notify::new(),
            task: OnceLock::new(),
        });
        let task = tokio::spawn(refresh_loop(slot.clone(), self.inner.provider.clone(), id.clone(), self.inner.validity));
        let _ = slot.task.set(task.abort_handle());
        slots.insert(id.clone(), slot.clone());
        slot
    }
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager").field("validity", &self.inner.validity).finish_non_exhaustive()
    }
}

impl Slot {
    /// Ends the refresh task and wakes whoever still waits for its next attempt, which will never come.
    fn stop(&self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
        let mut state = self.state.lock().unwrap();
        state.forgotten = true;
        state.in_flight = false;
        drop(state);
        self.attempts.send_modify(|n| *n += 1);
    }
}

impl Drop for Inner {
    /// The tasks hold their slot, not the manager: without this they would renew forever for nobody.
    fn drop(&mut self) {
        for slot in self.slots.get_mut().unwrap().values() {
            slot.stop();
        }
    }
}

/// Fetches, then renews at half-life for as long as the identity is managed.
async fn refresh_loop(slot: Arc<Slot>, provider: Arc<dyn CertificateProvider>, id: Identity, validity: Duration) {
    let mut backoff = BACKOFF_START;
    loop {
        slot.state.lock().unwrap().in_flight = true;
        let outcome = fetch(provider.as_ref(), &id, validity).await;
        let sleep = {
            let mut state = slot.state.lock().unwrap();
            state.in_flight = false;
            match outcome {
                Ok(cert) => {
                    let received = SystemTime::now();
                    let renew = renewal_time(&cert, received);
                    info!(identity = %id, serial = %cert.serial, not_after = %rfc3339(cert.not_after), renew_at = %rfc3339(renew), "workload certificate issued");
                    state.current = Some(Arc::new(cert));
                    state.last_error = None;
                    backoff = BACKOFF_START;
                    renew.duration_since(received).unwrap_or_default()
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    let serving = state.usable().is_some();
                    warn!(identity = %id, error = %reason, retry_in_ms = backoff.as_millis() as u64, serving_old_certificate = serving, "workload certificate request failed");
                    state.last_error = Some(reason);
                    let wait = jittered(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            }
        };
        slot.attempts.send_modify(|n| *n += 1);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = slot.wake.notified() => {}
        }
    }
}

/// Half-life, as Istio renews; but never sooner than half of what is left from receipt, because CAs backdate
/// `not_before` for clock skew (keel-control by 5 min), which for short validities puts half-life in the past
/// and would renew in a tight loop.
fn renewal_time(cert: &WorkloadCertificate, received: SystemTime) -> SystemTime {
    let remaining = cert.not_after.duration_since(received).unwrap_or_default();
    cert.refresh_at().max(received + remaining / 2)
}

async fn fetch(provider: &dyn CertificateProvider, id: &Identity, validity: Duration) -> anyhow::Result<WorkloadCertificate> {
    let (key, csr) = generate_key_and_csr(id)?;
    let chain = provider.issue(id, csr, validity).await?;
    WorkloadCertificate::from_pem(id, &chain, key).context("the CA's response")
}

/// A fresh ECDSA P-256 key and its CSR as Istio's clients make it: empty subject, the identity as the only
/// (URI) SAN. The CA decides what it certifies; this only proves possession of the key.
pub(crate) fn generate_key_and_csr(id: &Identity) -> anyhow::Result<(PrivateKeyDer<'static>, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the workload key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().context("the identity is not a valid URI")?)];
    let csr = params.serialize_request(&key).context("building the CSR")?.pem().context("encoding the CSR")?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((der, csr))
}

/// ±50 %, so identities (and nodes) that failed together do not retry together.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::identity::provider::{
        tests::{identity, local_ca},
        IssueFuture, LocalCa,
    };

    /// A local CA that counts requests, takes its time, and fails on demand.
    struct FakeCa {
        ca: LocalCa,
        calls: AtomicUsize,
        delay: Duration,
        failing: AtomicBool,
    }

    impl FakeCa {
        fn new(name: &str, delay: Duration) -> Arc<FakeCa> {
            Arc::new(FakeCa { ca: local_ca(name, "cluster.local"), calls: AtomicUsize::new(0), delay, failing: AtomicBool::new(false) })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl CertificateProvider for FakeCa {
        fn issue<'a>(&'a self, identity: &'a Identity, csr_pem: String, validity: Duration) -> IssueFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                if self.failing.load(Ordering::SeqCst) {
                    anyhow::bail!("CA unavailable");
                }
                self.ca.issue(identity, csr_pem, validity).await
            })
        }
    }

    fn sleep_id() -> Identity {
        identity("cluster.local", "demo", "sleep")
    }

    /// Polls `condition` every 50 ms until it holds or `limit` passes.
    async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch() {
        let ca = FakeCa::new("manager-herd", Duration::from_millis(300));
        let manager = CertificateManager::new(ca.clone(), DEFAULT_VALIDITY);
        let id = sleep_id();
        let requests = (0..16).map(|_| {
            let (manager, id) = (manager.clone(), id.clone());
            tokio::spawn(async move { manager.certificate(&id).await.unwrap().serial.clone() })
        });
        let serials: Vec<String> = futures_join(requests).await;
        assert_eq!(ca.calls(), 1, "one request to the CA for sixteen callers");
        assert!(serials.iter().all(|s| *s == serials[0]));
        assert_eq!(manager.current(&id).unwrap().serial, serials[0]);
        assert_eq!(manager.certificate(&id).await.unwrap().serial, serials[0], "cached");
        assert_eq!(ca.calls(), 1);
        let snapshot = manager.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!((snapshot[0].identity.as_str(), snapshot[0].state.as_str()), ("spiffe://cluster.local/ns/demo/sa/sleep", "valid"));
        assert_eq!(snapshot[0].serial, serials[0]);
        assert!(snapshot[0].not_after.ends_with('Z'));
    }

    async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for handle in handles.collect::<Vec<_>>() {
            out.push(handle.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn short_lived_certificates_are_renewed_before_they_expire() {
        let ca = FakeCa::new("manager-rotate", Duration::ZERO);
        let manager = CertificateManager::new(ca.clone(), Duration::from_secs(3));
        let id = sleep_id();
        let first = manager.certificate(&id).await.unwrap();
        let renewed = eventually(Duration::from_secs(5), || manager.current(&id).is_some_and(|c| c.serial != first.serial)).await;
        assert!(renewed, "a new certificate within the first one's validity");
        assert!(SystemTime::now() < first.not_after + Duration::from_millis(100), "renewed before the first expired");
        assert!(manager.current(&id).unwrap().not_after >= first.not_after);
    }

    #[tokio::test]
    async fn a_failing_ca_leaves_the_old_certificate_serving_until_it_expires() {
        let ca = FakeCa::new("manager-fail", Duration::ZERO);
        let manager = CertificateManager::new(ca.clone(), Duration::from_secs(4));
        let id = sleep_id();
        let first = manager.certificate(&id).await.unwrap();
        ca.failing.store(true, Ordering::SeqCst);

        let failed = eventually(Duration::from_secs(4), || manager.snapshot()[0].state.starts_with("failed: ")).await;
        assert!(failed, "{:?}", manager.snapshot());
        assert!(manager.snapshot()[0].state.contains("CA unavailable"));
        if !first.is_expired() {
            assert_eq!(manager.current(&id).unwrap().serial, first.serial, "the old certificate still serves");
            assert_eq!(manager.certificate(&id).await.unwrap().serial, first.serial);
        }

        let expired = eventually(Duration::from_secs(6), || first.is_expired()).await;
        assert!(expired);
        assert!(manager.current(&id).is_none(), "an expired certificate is never served");
        let err = manager.certificate(&id).await.unwrap_err();
        assert!(format!("{err:#}").contains("CA unavailable"), "{err:#}");
        assert_eq!(manager.snapshot()[0].state, "expired");
        assert!(ca.calls() >= 2, "it kept retrying");

        // The CA comes back: the retry loop picks a new certificate up on its own.
        ca.failing.store(false, Ordering::SeqCst);
        let recovered = eventually(Duration::from_secs(8), || manager.current(&id).is_some()).await;
        assert!(recovered, "{:?}", manager.snapshot());
        assert_eq!(manager.snapshot()[0].state, "valid");
    }

    #[tokio::test]
    async fn a_first_fetch_that_fails_reports_the_reason() {
        let ca = FakeCa::new("manager-first-fail", Duration::ZERO);
        ca.failing.store(true, Ordering::SeqCst);
        let manager = CertificateManager::new(ca.clone(), DEFAULT_VALIDITY);
        let err = manager.certificate(&sleep_id()).await.unwrap_err();
        assert!(format!("{err:#}").contains("CA unavailable"), "{err:#}");
        let again = manager.certificate(&sleep_id()).await.unwrap_err();
        assert!(format!("{again:#}").contains("CA unavailable"), "fails fast while backing off: {again:#}");
        assert_eq!(ca.calls(), 1);
        assert!(manager.snapshot()[0].state.starts_with("failed: "));
    }

    #[tokio::test]
    async fn a_certificate_for_another_identity_is_refused() {
        struct Liar(LocalCa);
        impl CertificateProvider for Liar {
            fn issue<'a>(&'a self, _: &'a Identity, csr_pem: String, validity: Duration) -> IssueFuture<'a> {
                let other = identity("cluster.local", "demo", "admin");
                let chain = self.0.authority().issue(&csr_pem, &other.to_string(), validity);
                Box::pin(std::future::ready(chain))
            }
        }
        let manager = CertificateManager::new(Arc::new(Liar(local_ca("manager-liar", "cluster.local"))), DEFAULT_VALIDITY);
        let err = manager.certificate(&sleep_id()).await.unwrap_err();
        assert!(format!("{err:#}").contains("sa/admin"), "{err:#}");
        assert!(manager.current(&sleep_id()).is_none());
    }

    #[tokio::test]
    async fn forget_stops_renewal() {
        let ca = FakeCa::new("manager-forget", Duration::ZERO);
        let manager = CertificateManager::new(ca.clone(), Duration::from_secs(2));
        let id = sleep_id();
        manager.certificate(&id).await.unwrap();
        manager.forget(&id);
        assert!(manager.current(&id).is_none());
        assert!(manager.snapshot().is_empty());
        let calls = ca.calls();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(ca.calls(), calls, "no renewal after forget");
    }

    #[tokio::test]
    async fn forget_releases_callers_waiting_for_a_fetch() {
        let ca = FakeCa::new("manager-forget-waiting", Duration::from_secs(5));
        let manager = CertificateManager::new(ca.clone(), DEFAULT_VALIDITY);
        let waiting = {
            let manager = manager.clone();
            tokio::spawn(async move { manager.certificate(&sleep_id()).await })
        };
        assert!(eventually(Duration::from_secs(2), || ca.calls() == 1).await);
        manager.forget(&sleep_id());
        let outcome = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("released at once").unwrap();
        assert!(format!("{:#}", outcome.unwrap_err()).contains("no longer managed"));
    }

    #[test]
    fn renewal_is_at_half_life_or_half_the_remaining_life_whichever_is_later() {
        let ca = local_ca("manager-renewal", "cluster.local");
        let id = sleep_id();
        let (key, csr) = generate_key_and_csr(&id).unwrap();
        let chain = ca.authority().issue(&csr, &id.to_string(), DEFAULT_VALIDITY).unwrap();
        let cert = WorkloadCertificate::from_pem(&id, &chain, key).unwrap();
        let received = SystemTime::now();
        let renew = renewal_time(&cert, received);
        assert!(renew >= cert.refresh_at(), "never before half-life");
        assert!(renew.duration_since(cert.refresh_at()).unwrap() <= Duration::from_secs(5 * 60), "a day's validity: about half-life");
        // Received after its half-life (backdating made it so): half of what is left, not at once.
        let late = cert.refresh_at() + Duration::from_secs(60);
        let remaining = cert.not_after.duration_since(late).unwrap();
        assert_eq!(renewal_time(&cert, late), late + remaining / 2);
    }

    #[test]
    fn the_csr_has_an_empty_subject_and_only_the_identity() {
        let id = sleep_id();
        let (_, csr) = generate_key_and_csr(&id).unwrap();
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert!(params.params.distinguished_name.iter().next().is_none());
        assert_eq!(params.params.subject_alt_names, vec![SanType::URI(id.to_string().try_into().unwrap())]);
    }
}
