//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, as the workload API
//! describes a workload (an empty trust domain is the mesh default, an empty service account is `default`).
use std::fmt;

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
}
