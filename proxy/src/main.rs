use clap::Parser as _;

fn main() -> std::process::ExitCode {
    keel::cli::main(keel::cli::Cli::parse())
}
