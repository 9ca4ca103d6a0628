//! `keel-control`: reads a directory of Kubernetes-style YAML objects and checks or serves them.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel-control", version, about = "keel's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every object of a config directory; exits non-zero on errors, naming file, object and field.
    Validate { dir: PathBuf },
    /// Serve the directory over delta ADS, pushing every change to connected node proxies.
    Serve {
        #[arg(long)]
        config_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:15012")]
        listen: std::net::SocketAddr,
        /// `<token> <node-name>` per line: the clients allowed to connect.
        #[arg(long)]
        tokens: PathBuf,
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
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config_dir, listen, tokens, cluster_id, ca_dir, trust_domain, server_names } => {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
            let mesh = keel_control::translate::Mesh { cluster_id, ..Default::default() };
            let options = keel_control::serve::ServeOptions { config_dir, listen, tokens, mesh, ca_dir, trust_domain, server_names };
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
        Command::Validate { dir } => {
            let loaded = keel_control::source::load_dir(&dir);
            let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
            match keel_control::translate::translate(&keel_control::translate::Mesh::default(), &objects) {
                Ok(resources) => resources.warnings.iter().for_each(|w| eprintln!("warning: {w}")),
                Err(translation_errors) => errors.extend(translation_errors),
            }
            for error in &errors {
                eprintln!("error: {error}");
            }
            println!("{} objects read, {} errors", objects.len(), errors.len());
            if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
