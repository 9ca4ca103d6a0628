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
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
