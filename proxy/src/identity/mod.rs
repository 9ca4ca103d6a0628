//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, as the workload API
//! describes a workload (an empty trust domain is the mesh default, an empty service account is `default`).
//!
//! The submodules give keel its workloads' certificates and the mTLS that uses them:
//! - `certificate`: a validated workload certificate (chain, key, trust bundle, dates);
//! - `provider`: where certificates come from (the control plane's Istio CA API, or a local CA);
//! - `manager`: the per-identity cache that fetches once, renews at half-life and never serves expired ones;
//! - `tls`: HBONE's rustls configurations and the SPIFFE checks on the peer's certificate.
use std::{fmt, str::FromStr};

pub mod certificate;
pub mod manager;
pub mod provider;
pub mod tls;

pub use certificate::WorkloadCertificate;
pub use manager::CertificateManager;
pub use provider::{CaClient, CaClientConfig, CertificateProvider, LocalCa};

use keel_proto::workload::Workload;
use serde::Serialize;

/// The mesh's default trust domain, used when a Workload leaves `trust_domain` empty.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn of_workload(w: &Workload) -> Identity {
        let or = |value: &str, default: &str| if value.is_empty() { default.to_owned() } else { value.to_owned() };
        Identity {
            trust_domain: or(&w.trust_domain, DEFAULT_TRUST_DOMAIN),
            namespace: w.namespace.clone(),
            service_account: or(&w.service_account, "default"),
        }
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` (e.g. a URI SAN, a service's
    /// `subject_alt_names` entry) as an identity.
    pub fn parse(uri: &str) -> anyhow::Result<Identity> {
        uri.parse()
    }
}

impl FromStr for Identity {
    type Err = anyhow::Error;

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, nothing more and nothing less.
    fn from_str(uri: &str) -> anyhow::Result<Identity> {
        let malformed = || anyhow::anyhow!("{uri:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>");
        let path = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity { trust_domain: (*td).to_owned(), namespace: (*ns).to_owned(), service_account: (*sa).to_owned() })
            }
            _ => Err(malformed()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_empty_fields() {
        let w = Workload { namespace: "demo".into(), ..Default::default() };
        assert_eq!(Identity::of_workload(&w).to_string(), "spiffe://cluster.local/ns/demo/sa/default");
        let w = Workload { namespace: "demo".into(), trust_domain: "td".into(), service_account: "api".into(), ..Default::default() };
        assert_eq!(Identity::of_workload(&w).to_string(), "spiffe://td/ns/demo/sa/api");
    }

    #[test]
    fn parses_exactly_the_spiffe_form_it_prints() {
        let id: Identity = "spiffe://td/ns/demo/sa/api".parse().unwrap();
        assert_eq!(id, Identity { trust_domain: "td".into(), namespace: "demo".into(), service_account: "api".into() });
        assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
        for bad in [
            "td/ns/demo/sa/api",
            "spiffe://td/ns/demo",
            "spiffe://td/ns//sa/api",
            "spiffe://td/ns/demo/sa/api/x",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/sa/a/ns/b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
