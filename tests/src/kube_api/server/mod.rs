//! The `kube-stand-in` server: a small, strict stand-in for kube-apiserver speaking the Kubernetes REST protocol
//! (discovery, get/list/watch/create/update/patch/delete, resourceVersion, bookmarks, 410 Gone, selectors,
//! TokenReview) over HTTPS with bearer tokens, for the kinds keel uses. See `tests/src/kube_api/mod.rs`.

mod discovery;
mod handlers;
mod objects;
mod openapi;
mod registry;
mod selector;
pub mod status;
mod store;
mod structural;
mod tls;
pub mod tokens;
mod validate;
mod watch;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;
use tokio::net::TcpListener;

/// The readiness line the server prints once it accepts connections: `kube-stand-in: serving <url> …`.
pub const READY_PREFIX: &str = "kube-stand-in: serving ";

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "kube-stand-in", about = "A small, strict stand-in for the Kubernetes API server, for keel's tests")]
pub struct Options {
    /// Address to listen on (port 0: any free port; the URL is printed and written to the kubeconfig).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Directory for the CA (kept across restarts), the admin kubeconfig (`kubeconfig`) and `admin-token`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Persist objects and the resourceVersion counter here (written atomically shortly after every change and
    /// on SIGTERM/SIGINT) and restore them at start.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// The admin bearer token (all resources, plus the `/stand-in/` admin endpoints). Default: the one in
    /// `<dir>/admin-token`, or a new random one written there.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    #[arg(long, default_value_t = 5000)]
    pub bookmark_interval_ms: u64,
    /// Watch events retained; a watch from a resourceVersion older than them gets 410 Gone.
    #[arg(long, default_value_t = 100_000)]
    pub event_window: usize,
    /// The longest a watch stays open (a client's `timeoutSeconds` is capped to this).
    #[arg(long, default_value_t = 1800)]
    pub max_watch_seconds: u64,
    /// Open watches at most (more are refused with 429 TooManyRequests).
    #[arg(long, default_value_t = 10_000)]
    pub max_watches: usize,
    /// Serve plain HTTP instead of HTTPS (debugging only: kubeconfigs still name the URL).
    #[arg(long)]
    pub plain_http: bool,
    /// Log every request (method, URL, status) to stderr.
    #[arg(long)]
    pub log_requests: bool,
}

pub struct Shared {
    store: Mutex<Store>,
    admin_token: String,
    address: String,
    bookmark_interval: Duration,
    max_watch: Duration,
    max_watches: usize,
    open_watches: std::sync::atomic::AtomicUsize,
    log_requests: bool,
}

impl Shared {
    /// The store. A panic while it was held (a bug) must not wedge every later request, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Writes the state file if anything changed since the last write.
fn save(shared: &Shared, path: &Path) -> Result<()> {
    let snapshot = {
        let mut store = shared.lock();
        if !store.dirty {
            return Ok(());
        }
        store.dirty = false;
        store.snapshot()
    };
    write_atomically(path, &serde_json::to_vec(&snapshot)?)
}

pub async fn run(opts: Options) -> Result<()> {
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let mut store = Store::new(opts.event_window);
    if let Some(path) = opts.state_file.as_deref().filter(|p| p.exists()) {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("{}: not JSON", path.display()))?;
        store.restore(&state).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let token_file = opts.dir.join("admin-token");
    let admin_token = match &opts.admin_token {
        Some(t) => t.clone(),
        None => match std::fs::read_to_string(&token_file) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => random_token()?,
        },
    };
    std::fs::write(&token_file, format!("{admin_token}\n"))?;

    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), addr.ip().to_string(), "kubernetes.default.svc".to_owned()];
    names.extend(opts.sans.iter().cloned());
    names.sort();
    names.dedup();
    let (ca_pem, tls) = tls::serving(&opts.dir, &names)?;
    let url = format!("{}://{addr}", if opts.plain_http { "http" } else { "https" });
    let kubeconfig = opts.dir.join("kubeconfig");
    write_atomically(&kubeconfig, crate::kube_api::kubeconfig::render(&url, &ca_pem, &admin_token).as_bytes())?;

    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        admin_token,
        address: addr.to_string(),
        bookmark_interval: Duration::from_millis(opts.bookmark_interval_ms.max(10)),
        max_watch: Duration::from_secs(opts.max_watch_seconds.max(1)),
        max_watches: opts.max_watches,
        open_watches: Default::default(),
        log_requests: opts.log_requests,
    });
    if let Some(path) = opts.state_file.clone() {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Err(e) = save(&shared, &path) {
                    eprintln!("kube-stand-in: saving state: {e:#}");
                    shared.lock().dirty = true;
                }
            }
        });
    }
    println!("{READY_PREFIX}{url} (kubeconfig {})", kubeconfig.display());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (shared, acceptor, plain) = (shared.clone(), acceptor.clone(), opts.plain_http);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handlers::serve(shared.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if plain {
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            } else if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        });
    }
    if let Some(path) = &opts.state_file {
        save(&shared, path)?;
    }
    println!("kube-stand-in: stopped");
    Ok(())
}
