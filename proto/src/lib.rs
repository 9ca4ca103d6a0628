//! keel's wire API, generated at build time from `proto/` (see build.rs for why these are our own files).
//!
//! Modules nest as the protobuf packages do (generated code refers across packages by relative path); the
//! short names below are what the rest of keel uses:
//! - `workload`: `istio.workload.Address` (Workload, Service), pushed per workload and service;
//! - `security`: `istio.security.Authorization`, L4 policies;
//! - `ca`: `istio.v1.auth.IstioCertificateService/CreateCertificate`;
//! - `discovery`: Envoy's delta aggregated discovery transport (`DeltaAggregatedResources`).

pub mod istio {
    // Generated code: Address's oneof holds a Workload or a (much smaller) Service by value, as prost generates it.
    #[allow(clippy::large_enum_variant)]
    pub mod workload {
        tonic::include_proto!("istio.workload");
    }
    pub mod security {
        tonic::include_proto!("istio.security");
    }
    pub mod v1 {
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use envoy::config::core::v3 as core;
pub use envoy::service::discovery::v3 as discovery;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;

/// Type URLs, in the order a node proxy subscribes to them.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Field numbers are the wire contract with istiod and ztunnel: spot-check the encoding byte for byte.
    #[test]
    fn field_numbers_match_the_reference() {
        let w = workload::Workload { uid: "u".into(), name: "n".into(), tunnel_protocol: workload::TunnelProtocol::Hbone as i32, ..Default::default() };
        // name = 1 (tag 0x0a), tunnel_protocol = 5 (tag 0x28), uid = 20 (tag 0xa2 0x01).
        assert_eq!(w.encode_to_vec(), [0x0a, 1, b'n', 0x28, 1, 0xa2, 0x01, 1, b'u']);
        let a = security::Authorization { name: "p".into(), action: security::Action::Deny as i32, dry_run: true, ..Default::default() };
        // name = 1, action = 4 (tag 0x20), dry_run = 6 (tag 0x30).
        assert_eq!(a.encode_to_vec(), [0x0a, 1, b'p', 0x20, 1, 0x30, 1]);
        let r = ca::IstioCertificateRequest { csr: "c".into(), validity_duration: 60, metadata: None };
        // csr = 1, validity_duration = 3 (tag 0x18).
        assert_eq!(r.encode_to_vec(), [0x0a, 1, b'c', 0x18, 60]);
        let d = discovery::DeltaDiscoveryRequest { type_url: "t".into(), response_nonce: "x".into(), ..Default::default() };
        // type_url = 2 (tag 0x12), response_nonce = 6 (tag 0x32).
        assert_eq!(d.encode_to_vec(), [0x12, 1, b't', 0x32, 1, b'x']);
    }
}
