//! keel's end-to-end lab.
//!
//! * [`lab`]: the reusable harness — a "node" network namespace with a bridge, "pods" (network namespace + veth +
//!   cgroup v2), processes started inside pods, the real `keel` binary driven as a process, and cleanup that runs
//!   even when a test panics.
//! * [`payload`]: the deterministic data and checksums shared by `podapp` (the in-pod app) and the suites.
//! * [`kube_api`]: a small, strict stand-in for the Kubernetes API server (binary `kube-stand-in`) and the handle
//!   the suites start and drive it with; keel's Kubernetes mode is tested against it (no kube-apiserver runs here).
//! * [`scenarios`]: each end-to-end scenario written once, as a function taking the capture [`lab::Backend`]; the
//!   files in `tests/` are thin `#[test]` wrappers around them (and `keel-demo` reuses the helpers).
//!
//! Every test here needs root, `ip`, `iptables`, bpffs and cgroup v2, and FAILS (never skips) without them.

pub mod bench;
pub mod kube_api;
pub mod lab;
pub mod payload;
pub mod scenarios;
