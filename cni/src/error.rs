//! Every way a CNI call can fail, and its CNI error code: the mapping is made once, here, and printed at the edge as
//! the spec's error object `{"cniVersion", "code", "msg", "details"}` on stdout with a non-zero exit.
use std::time::Duration;

use serde::Serialize;

use crate::version::LATEST;

/// Codes 0..=99 are the spec's well-known ones; 100 and up are keel-cni's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// keel answered the request with an error (its message is the details).
    pub const KEEL_REFUSED: u32 = 100;
    /// keel did not answer within the configured time.
    pub const KEEL_TIMEOUT: u32 = 101;
    /// CHECK: the pod is ambient but keel does not capture it (with this sandbox).
    pub const NOT_CAPTURED: u32 = 102;
    /// keel answered something that is not its API's answer.
    pub const KEEL_BAD_ANSWER: u32 = 103;
}

/// Why talking to keel failed.
#[derive(Debug, thiserror::Error)]
pub enum KeelError {
    #[error("keel's API at {socket} is unreachable: {source}")]
    Unreachable { socket: String, source: std::io::Error },
    #[error("keel did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
    #[error("keel's answer is not its API's: {0}")]
    BadAnswer(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cniVersion {requested:?} is not supported (supported: {supported})")]
    IncompatibleVersion { requested: String, supported: String },
    #[error("{command} needs cniVersion {minimum} or later, not {requested}")]
    CommandNeedsNewerVersion { command: &'static str, minimum: &'static str, requested: String },
    #[error("unknown CNI_COMMAND {0:?} (ADD, DEL, CHECK, STATUS, GC, VERSION)")]
    UnknownCommand(String),
    #[error("environment: {names} {reason}")]
    InvalidEnvironment { names: String, reason: String },
    #[error("reading the network configuration from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the network configuration is not valid JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("network configuration field `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("keel is not reachable: {0}")]
    KeelUnreachable(#[source] KeelError),
    #[error("keel is not ready: {0}")]
    KeelNotReady(#[source] KeelError),
    #[error("keel refused to {action} pod {pod}: {message}")]
    KeelRefused { action: &'static str, pod: String, message: String },
    #[error("keel did not answer {action} for pod {pod} within {after:?}")]
    KeelTimeout { action: &'static str, pod: String, after: Duration },
    #[error("pod {pod} is not captured by keel: {reason}")]
    NotCaptured { pod: String, reason: String },
    #[error("{0}")]
    KeelBadAnswer(#[source] KeelError),
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CommandNeedsNewerVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::UnknownCommand(_) | CniError::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            CniError::Stdin(_) => code::IO_FAILURE,
            CniError::Decode(_) => code::DECODE_FAILURE,
            CniError::InvalidConfig { .. } => code::INVALID_CONFIG,
            CniError::KeelUnreachable(_) => code::TRY_AGAIN_LATER,
            CniError::KeelNotReady(_) => code::NOT_AVAILABLE,
            CniError::KeelRefused { .. } => code::KEEL_REFUSED,
            CniError::KeelTimeout { .. } => code::KEEL_TIMEOUT,
            CniError::NotCaptured { .. } => code::NOT_CAPTURED,
            CniError::KeelBadAnswer(_) => code::KEEL_BAD_ANSWER,
        }
    }

    /// A keel failure during `action` on `pod`, as the error the runtime sees.
    pub fn from_keel(action: &'static str, pod: &str, error: KeelError) -> CniError {
        match error {
            KeelError::Unreachable { .. } => CniError::KeelUnreachable(error),
            KeelError::Timeout(after) => CniError::KeelTimeout { action, pod: pod.to_owned(), after },
            KeelError::Refused(message) => CniError::KeelRefused { action, pod: pod.to_owned(), message },
            KeelError::BadAnswer(_) => CniError::KeelBadAnswer(error),
        }
    }

    /// The spec's error object. `msg` is the short statement, `details` the whole chain of causes.
    pub fn to_output(&self, cni_version: Option<&str>) -> ErrorOutput {
        let mut details = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            details.push_str(": ");
            details.push_str(&cause.to_string());
            source = cause.source();
        }
        ErrorOutput { cni_version: cni_version.unwrap_or(LATEST).to_owned(), code: self.code(), msg: self.msg().to_owned(), details }
    }

    fn msg(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CommandNeedsNewerVersion { .. } => "incompatible CNI version",
            CniError::UnknownCommand(_) | CniError::InvalidEnvironment { .. } => "invalid CNI environment variables",
            CniError::Stdin(_) => "failed to read the network configuration",
            CniError::Decode(_) => "failed to decode the network configuration",
            CniError::InvalidConfig { .. } => "invalid network configuration",
            CniError::KeelUnreachable(_) => "keel is unreachable: the pod cannot start uncaptured; try again later",
            CniError::KeelNotReady(_) => "keel is not ready",
            CniError::KeelRefused { .. } => "keel refused the pod",
            CniError::KeelTimeout { .. } => "keel did not answer in time",
            CniError::NotCaptured { .. } => "the pod is not captured by keel",
            CniError::KeelBadAnswer(_) => "keel's answer is not understood",
        }
    }
}

/// The spec's error result.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ErrorOutput {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_as_the_spec_object_with_their_code() {
        let unreachable = KeelError::Unreachable { socket: "/run/keel/keel.sock".into(), source: std::io::ErrorKind::NotFound.into() };
        let error = CniError::from_keel("capture", "default/web", unreachable);
        let out = serde_json::to_value(error.to_output(Some("1.0.0"))).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["code"], code::TRY_AGAIN_LATER);
        assert!(out["msg"].as_str().unwrap().contains("keel is unreachable"));
        assert!(out["details"].as_str().unwrap().contains("/run/keel/keel.sock"), "{out}");
        assert_eq!(out.as_object().unwrap().len(), 4);
    }

    #[test]
    fn each_keel_failure_has_its_own_code() {
        let codes: Vec<u32> =
            [KeelError::Timeout(Duration::from_secs(10)), KeelError::Refused("field `uid`: no cgroup".into()), KeelError::BadAnswer("{}".into())]
                .into_iter()
                .map(|e| CniError::from_keel("capture", "default/web", e).code())
                .collect();
        assert_eq!(codes, [code::KEEL_TIMEOUT, code::KEEL_REFUSED, code::KEEL_BAD_ANSWER]);
        let refused = CniError::from_keel("capture", "default/web", KeelError::Refused("field `uid`: no cgroup".into()));
        assert_eq!(refused.to_string(), "keel refused to capture pod default/web: field `uid`: no cgroup");
        assert_eq!(refused.to_output(None).cni_version, LATEST);
    }
}
