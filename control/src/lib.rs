//! keel's control plane. Input (`source`: a directory of YAML objects, later a Kubernetes watcher) is parsed into
//! typed objects (`objects`) and validated object by object, so one bad object never hides the good ones;
//! `translate` turns them into the workload and authorization resources node proxies consume, and `xds` serves
//! them over delta ADS to clients `tokens` authenticated.
pub mod ca;
pub mod ca_service;
pub mod config_dir;
pub mod config_state;
pub mod objects;
pub mod private_file;
pub mod serve;
pub mod source;
pub mod tokens;
pub mod translate;
pub mod watch;
pub mod xds;
