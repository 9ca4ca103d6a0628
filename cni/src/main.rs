//! `keel-cni`: run by a container runtime as a CNI plugin (no arguments; CNI_* environment, config on stdin), or
//! by an operator or the DaemonSet's install step as `keel-cni install|uninstall`.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use keel_cni::{
    install::{self, InstallOptions},
    invocation::Invocation,
    keel_api::SocketClient,
    netconf::{self, DEFAULT_API_SOCKET},
    plugin, version,
};

#[derive(Parser, Debug)]
#[command(name = "keel-cni", version, about = "keel's chained CNI plugin (run with no arguments by the container runtime)")]
struct Cli {
    #[command(subcommand)]
    command: Admin,
}

#[derive(Subcommand, Debug)]
enum Admin {
    /// Copy this binary into the CNI bin dir and chain keel-cni at the end of the node's primary .conflist.
    Install {
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
        /// keel's API socket, as the plugin will reach it (written into the conflist entry).
        #[arg(long, default_value = DEFAULT_API_SOCKET)]
        api_socket: String,
        /// How long an ADD waits for keel to capture the pod, in milliseconds.
        #[arg(long, default_value_t = netconf::DEFAULT_ENROLL_TIMEOUT.as_millis() as u64,
              value_parser = clap::value_parser!(u64).range(1..=netconf::MAX_ENROLL_TIMEOUT.as_millis() as u64))]
        enroll_timeout_ms: u64,
    },
    /// Take keel-cni out of every .conflist that chains it and remove the binary.
    Uninstall {
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return admin(Cli::parse().command);
    }
    cni()
}

/// One CNI call: the result (or nothing) on stdout and exit 0, or the spec's error object on stdout and exit 1.
fn cni() -> ExitCode {
    let stdin = netconf::read_stdin(std::io::stdin().lock());
    let cni_version = stdin.as_deref().ok().and_then(netconf::cni_version_of).filter(|v| version::check(v).is_ok());
    let result = stdin.and_then(|stdin| Invocation::from_lookup(|name| std::env::var(name).ok()).map(|invocation| (invocation, stdin))).and_then(
        |(invocation, stdin)| plugin::run(&invocation, &stdin, |conf| SocketClient { socket: conf.api_socket.clone(), timeout: conf.enroll_timeout }),
    );
    let mut stdout = std::io::stdout().lock();
    match result {
        Ok(output) => {
            if let Some(output) = output {
                let _ = writeln!(stdout, "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let output = error.to_output(cni_version.as_deref());
            eprintln!("keel-cni: {}", output.details);
            let _ = writeln!(stdout, "{}", serde_json::to_string(&output).expect("error objects serialize"));
            ExitCode::FAILURE
        }
    }
}

fn admin(command: Admin) -> ExitCode {
    let report = match command {
        Admin::Install { cni_bin_dir, cni_conf_dir, api_socket, enroll_timeout_ms } => std::env::current_exe()
            .map_err(|e| install::InstallError::Io { path: PathBuf::from("/proc/self/exe"), source: e })
            .and_then(|binary| install::install(&InstallOptions { cni_bin_dir, cni_conf_dir, binary, api_socket, enroll_timeout_ms }))
            .map(|r| serde_json::to_value(r).expect("reports serialize")),
        Admin::Uninstall { cni_bin_dir, cni_conf_dir } => {
            install::uninstall(&cni_bin_dir, &cni_conf_dir).map(|r| serde_json::to_value(r).expect("reports serialize"))
        }
    };
    match report {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
