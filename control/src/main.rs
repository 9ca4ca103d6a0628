//! `keel-control`: reads a directory of Kubernetes-style YAML objects and checks or serves them.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use keel_control::serve::ConfigSource;

#[derive(Parser)]
#[command(name = "keel-control", version, about = "keel's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start; boxing `serve`'s flags would only obscure the clap derive")]
enum Command {
    /// Check every object of a config directory; exits non-zero on errors, naming file, object and field.
    Validate { dir: PathBuf },
    /// Issue a workload certificate from a CA directory (istiod's plugged-in layout; generated if empty): for
    /// tools and tests that need to speak HBONE as a workload. Writes <out>/cert-chain.pem, key.pem, root-cert.pem.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: String,
        #[arg(long, default_value_t = 3600)]
        validity_secs: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a config directory, or the Kubernetes API's objects, over delta ADS, pushing every change to connected
    /// node proxies, and workload certificates over the Istio CA API.
    Serve {
        /// Read the config from this directory of YAML objects (polled).
        #[arg(long, required_unless_present = "kubernetes", conflicts_with = "kubernetes", requires = "tokens")]
        config_dir: Option<PathBuf>,
        /// With --config-dir: `<token> <node-name>` per line, the clients allowed to connect.
        #[arg(long, conflicts_with = "kubernetes")]
        tokens: Option<PathBuf>,
        /// Read the config from the Kubernetes API (pods in the mesh by Istio's ambient labels); node proxies
        /// authenticate with ServiceAccount tokens the API server reviews.
        #[arg(long)]
        kubernetes: bool,
        /// With --kubernetes: the API server of this kubeconfig, instead of the cluster keel-control runs in.
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// With --kubernetes: the audience node proxies' tokens must be valid for (repeatable).
        #[arg(long = "token-audience", default_values_t = [keel_control::kubernetes::token_review::DEFAULT_AUDIENCE.to_owned()])]
        token_audiences: Vec<String>,
        /// With --kubernetes: `namespace/name` of a ServiceAccount node proxies run as (repeatable; istiod's
        /// CA_TRUSTED_NODE_ACCOUNTS). Only these may ask certificates for the pods of their node.
        #[arg(long = "node-proxy-account", default_values_t = ["istio-system/keel".to_owned()])]
        node_proxy_accounts: Vec<String>,
        /// With --kubernetes: this replica's name, the holder identity of the leader Lease (Downward API).
        #[arg(long, env = "POD_NAME", default_value = "keel-control")]
        pod_name: String,
        /// With --kubernetes: keel-control's namespace, where its leader Lease lives (Downward API).
        #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
        pod_namespace: String,
        #[arg(long, default_value = "0.0.0.0:15012")]
        listen: std::net::SocketAddr,
        /// The monitoring port (istiod's 15014): the kubelet's readiness probe, `GET /ready` (200 once the config is
        /// complete), and Prometheus' `GET /metrics`.
        #[arg(long, alias = "monitoring-addr")]
        readiness_addr: Option<std::net::SocketAddr>,
        #[arg(long, default_value = "Kubernetes")]
        cluster_id: String,
        /// istiod's plugged-in CA layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem); a root is
        /// generated there when the directory is empty.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// DNS names of the serving certificate (repeatable).
        #[arg(long = "server-name", default_values_t = ["keel-control".to_owned(), "istiod.istio-system.svc".to_owned()])]
        server_names: Vec<String>,
        /// How often RequestAuthentication `jwksUri` key sets are fetched again (istiod's default: 20 minutes).
        #[arg(long, default_value_t = 20 * 60 * 1000)]
        jwks_refresh_interval_ms: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config_dir,
            tokens,
            kubernetes,
            kubeconfig,
            token_audiences,
            node_proxy_accounts,
            pod_name,
            pod_namespace,
            listen,
            readiness_addr,
            cluster_id,
            ca_dir,
            trust_domain,
            server_names,
            jwks_refresh_interval_ms,
        } => {
            // Colours only for a terminal: a log file or a container log gets plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).with_ansi(ansi).init();
            let mesh = keel_mesh::translate::Mesh { cluster_id, ..Default::default() };
            let source = match (kubernetes, config_dir, tokens) {
                (true, _, _) => ConfigSource::Kubernetes {
                    kubeconfig,
                    token_audiences,
                    node_proxy_accounts,
                    replica: keel_control::kubernetes::Replica { namespace: pod_namespace, name: pod_name },
                },
                (false, Some(config_dir), Some(tokens)) => ConfigSource::Directory { config_dir, tokens },
                // clap's `required_unless_present`/`requires` make this unreachable.
                _ => {
                    eprintln!("keel-control serve: --config-dir with --tokens, or --kubernetes");
                    return ExitCode::FAILURE;
                }
            };
            let jwks_refresh = std::time::Duration::from_millis(jwks_refresh_interval_ms);
            let options =
                keel_control::serve::ServeOptions { source, listen, mesh, ca_dir, trust_domain, server_names, readiness_addr, jwks_refresh };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("keel-control: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(keel_control::serve::serve(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel-control: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Issue { ca_dir, trust_domain, identity, validity_secs, out } => {
            match issue(&ca_dir, &trust_domain, &identity, std::time::Duration::from_secs(validity_secs), &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel-control: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { dir } => {
            let loaded = keel_mesh::source::load_dir(&dir);
            let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
            match keel_mesh::translate::translate(&keel_mesh::translate::Mesh::default(), &objects) {
                Ok(resources) => resources.warnings.iter().for_each(|w| eprintln!("warning: {w}")),
                Err(translation_errors) => errors.extend(translation_errors),
            }
            for error in &errors {
                eprintln!("error: {error}");
            }
            println!("{} objects read{}, {} errors", objects.len(), count_by_kind(&objects), errors.len());
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// " (1 DestinationRule, 2 Pod, 1 VirtualService)": how many objects of each kind were read, by kind name.
fn count_by_kind(objects: &[keel_mesh::objects::Object]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for object in objects {
        *counts.entry(object.kind()).or_default() += 1;
    }
    if counts.is_empty() {
        return String::new();
    }
    let counts: Vec<String> = counts.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    format!(" ({})", counts.join(", "))
}

fn issue(ca_dir: &std::path::Path, trust_domain: &str, identity: &str, validity: std::time::Duration, out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let authority = keel_mesh::ca::Authority::load_or_generate(ca_dir, trust_domain)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().context("--identity is not a URI")?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let chain = authority.issue(&csr, identity, validity)?;
    keel_mesh::private_file::create_dir(out)?;
    let (leaf_and_intermediates, root) = chain.split_at(chain.len() - 1);
    std::fs::write(out.join("cert-chain.pem"), leaf_and_intermediates.join("\n") + "\n")?;
    keel_mesh::private_file::write(&out.join("key.pem"), key.serialize_pem().as_bytes())?;
    std::fs::write(out.join("root-cert.pem"), root[0].clone() + "\n")?;
    println!("issued {identity} into {}", out.display());
    Ok(())
}
