//! keel's control plane. Input (`source`: a directory of YAML objects, later a Kubernetes watcher) is parsed into
//! typed objects (`objects`) and validated object by object, so one bad object never hides the good ones;
//! `translate` turns them into the workload and authorization resources node proxies consume.
pub mod objects;
pub mod source;
pub mod translate;
