//! JSON Web Key Sets of RequestAuthentication rules given by `jwksUri`, fetched by keel-control and shipped inline
//! to the proxies (as istiod inlines them for Envoy), so no proxy ever reaches out to an issuer.
//!
//! Translation asks the cache for a URI's key set ([`KeySets`]); the first ask starts fetching it. Each set is
//! fetched again every refresh interval (istiod's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, 20 minutes by default;
//! `keel-control serve --jwks-refresh-interval-ms`), and a change is announced on [`JwksCache::changes`] so the
//! snapshot is recomputed: a rotated key reaches the proxies without any object changing. A failed fetch keeps the
//! last good set and is retried with back-off; a set never fetched ships empty, so its issuer's tokens are refused.
//! URIs no translation asked for during a refresh interval are forgotten.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use keel_mesh::translate::{check_jwks, KeySets};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// A key set larger than this is refused (real ones are a few KiB).
const MAX_KEY_SET_BYTES: usize = 1024 * 1024;
/// Istio's default refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(1);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    refresh: Duration,
    /// A URI was asked for the first time.
    asked: Notify,
    changes: watch::Sender<u64>,
}

struct Entry {
    key_set: Option<String>,
    timeout: Duration,
    next_fetch: Instant,
    failures: u32,
    last_asked: Instant,
}

impl JwksCache {
    pub fn new(refresh: Duration) -> Arc<JwksCache> {
        Arc::new(JwksCache { entries: Mutex::default(), refresh, asked: Notify::new(), changes: watch::channel(0).0 })
    }

    /// Bumped whenever a fetched key set changed: recompute the snapshot.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Fetches what is due, for ever.
    pub async fn run(self: Arc<Self>) {
        let client = match https_client() {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "no HTTPS client for jwksUri fetches: such key sets stay empty (their tokens are refused)");
                return std::future::pending().await;
            }
        };
        loop {
            let due: Vec<(String, Duration)> = {
                let now = Instant::now();
                let mut entries = self.entries.lock().expect("jwks cache poisoned");
                entries.retain(|uri, e| {
                    let kept = now.duration_since(e.last_asked) < self.refresh.max(Duration::from_secs(60)) * 2;
                    if !kept {
                        info!(%uri, "jwksUri no longer used: forgotten");
                    }
                    kept
                });
                entries.iter().filter(|(_, e)| e.next_fetch <= now).map(|(uri, e)| (uri.clone(), e.timeout)).collect()
            };
            for (uri, timeout) in due {
                let fetched = fetch(&client, &uri, timeout).await;
                self.record(&uri, fetched);
            }
            let next = self.entries.lock().expect("jwks cache poisoned").values().map(|e| e.next_fetch).min();
            let sleep = next.map_or(self.refresh, |at| at.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.asked.notified() => {}
            }
        }
    }

    fn record(&self, uri: &str, fetched: Result<String, String>) {
        let mut entries = self.entries.lock().expect("jwks cache poisoned");
        let Some(entry) = entries.get_mut(uri) else { return };
        match fetched {
            Ok(key_set) => {
                entry.failures = 0;
                entry.next_fetch = Instant::now() + self.refresh;
                if entry.key_set.as_deref() != Some(key_set.as_str()) {
                    info!(%uri, "jwksUri key set fetched (new or changed): pushing");
                    entry.key_set = Some(key_set);
                    self.changes.send_modify(|n| *n += 1);
                }
            }
            Err(error) => {
                entry.failures += 1;
                let backoff = FIRST_RETRY.saturating_mul(1 << entry.failures.min(10)).min(self.refresh);
                entry.next_fetch = Instant::now() + backoff;
                warn!(%uri, %error, retry_in_ms = backoff.as_millis() as u64, kept_last_good = entry.key_set.is_some(), "jwksUri fetch failed");
            }
        }
    }
}

impl KeySets for JwksCache {
    fn key_set(&self, uri: &str, timeout: Duration) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("jwks cache poisoned");
        let entry = entries.entry(uri.to_owned()).or_insert_with(|| {
            self.asked.notify_one();
            Entry { key_set: None, timeout, next_fetch: now, failures: 0, last_asked: now }
        });
        entry.last_asked = now;
        entry.timeout = timeout;
        entry.key_set.clone()
    }
}

fn https_client() -> anyhow::Result<HttpsClient> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One GET: 200 with a key set (checked), within `timeout` and [`MAX_KEY_SET_BYTES`].
async fn fetch(client: &HttpsClient, uri: &str, timeout: Duration) -> Result<String, String> {
    let get = async {
        let uri: hyper::Uri = uri.parse().map_err(|e| format!("{e}"))?;
        let response = client.get(uri).await.map_err(|e| format!("{e}"))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_KEY_SET_BYTES).collect().await.map_err(|e| format!("reading the body: {e}"))?;
        let text = String::from_utf8(body.to_bytes().to_vec()).map_err(|_| "the body is not UTF-8".to_owned())?;
        check_jwks(&text)?;
        Ok(text)
    };
    tokio::time::timeout(timeout, get).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
