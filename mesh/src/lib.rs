//! The mesh's configuration model, shared by `keel-control` and keel's local mode (which must not link the
//! control plane's servers). Input (`source`: a directory of YAML objects; keel-control adds the Kubernetes API)
//! is parsed into typed objects (`objects`) and validated object by object, so one bad object never hides the
//! good ones; `translate` turns them into the workload, authorization and L7 resources node proxies consume, and
//! `snapshot` holds one translation as xDS resources and diffs two. `ca` is the certificate authority's signing
//! core (keel-control's CA service and local mode's on-node CA both sign with it). `ambient` decides which pods are
//! in the ambient mesh, for the control plane and the node agent alike. `crd` (feature `crd`) derives the
//! CustomResourceDefinitions of the Istio kinds from the same types.
pub mod ambient;
pub mod ca;
pub mod config_dir;
pub mod config_state;
#[cfg(feature = "crd")]
pub mod crd;
pub mod objects;
pub mod private_file;
pub mod snapshot;
pub mod source;
pub mod translate;
pub mod watch;
