//! `kube-stand-in`: the Kubernetes API stand-in keel's tests run against (see `keel_tests::kube_api`).

use clap::Parser;
use keel_tests::kube_api::server::{run, Options};

fn main() -> anyhow::Result<()> {
    let opts = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(opts))
}
