//! keel's wire API, generated at build time from `proto/` (see build.rs for why these are our own files).
//!
//! Modules nest as the protobuf packages do (generated code refers across packages by relative path); the
//! short names below are what the rest of keel uses:
//! - `workload`: `istio.workload.Address` (Workload, Service), pushed per workload and service;
//! - `security`: `istio.security.Authorization`, L4 policies;
//! - `http_security`: keel's own `keel.security.HttpAuthorization` (the HTTP rules of the same policies) and
//!   `keel.security.RequestAuthentication` (end-user JWT rules);
//! - `ca`: `istio.v1.auth.IstioCertificateService/CreateCertificate`;
//! - `discovery`: Envoy's delta aggregated discovery transport (`DeltaAggregatedResources`);
//! - `listener`, `route`, `cluster`, `endpoint`: the subset of Envoy's L7 resources keel consumes (Listener,
//!   RouteConfiguration, Cluster, ClusterLoadAssignment), with `core`, `matcher` and `types` (envoy.type.v3) for
//!   the shared types, and `hcm` / `fault` (plus `fault_common`) for the filter configs carried in `Any` fields;
//!   `tls`: a gateway's TLS contexts and the Secrets (SDS resources) they name.
//!   ENVOY-SUBSET.md lists what is kept and what is left out; fields outside the subset are skipped on decode.

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
        // Generated code: oneofs hold messages by value (e.g. a Route's RouteAction next to a RedirectAction).
        #[allow(clippy::large_enum_variant)]
        pub mod route {
            pub mod v3 {
                tonic::include_proto!("envoy.config.route.v3");
            }
        }
        #[allow(clippy::large_enum_variant)]
        pub mod cluster {
            pub mod v3 {
                tonic::include_proto!("envoy.config.cluster.v3");
            }
        }
        pub mod endpoint {
            pub mod v3 {
                tonic::include_proto!("envoy.config.endpoint.v3");
            }
        }
        pub mod listener {
            pub mod v3 {
                tonic::include_proto!("envoy.config.listener.v3");
            }
        }
    }
    pub mod extensions {
        pub mod filters {
            pub mod common {
                pub mod fault {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.common.fault.v3");
                    }
                }
            }
            pub mod http {
                pub mod fault {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.http.fault.v3");
                    }
                }
            }
            pub mod network {
                #[allow(clippy::large_enum_variant)]
                pub mod http_connection_manager {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.network.http_connection_manager.v3");
                    }
                }
                pub mod tcp_proxy {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.network.tcp_proxy.v3");
                    }
                }
            }
        }
        pub mod transport_sockets {
            pub mod tls {
                // Generated code: oneofs hold contexts by value.
                #[allow(clippy::large_enum_variant)]
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
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
    pub mod r#type {
        pub mod matcher {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.matcher.v3");
            }
        }
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

pub mod keel {
    pub mod security {
        tonic::include_proto!("keel.security");
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use envoy::config::cluster::v3 as cluster;
pub use envoy::config::core::v3 as core;
pub use envoy::config::endpoint::v3 as endpoint;
pub use envoy::config::listener::v3 as listener;
pub use envoy::config::route::v3 as route;
pub use envoy::extensions::filters::common::fault::v3 as fault_common;
pub use envoy::extensions::filters::http::fault::v3 as fault;
pub use envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
pub use envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
pub use envoy::extensions::transport_sockets::tls::v3 as tls;
pub use envoy::r#type::matcher::v3 as matcher;
pub use envoy::r#type::v3 as types;
pub use envoy::service::discovery::v3 as discovery;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;
pub use keel::security as http_security;

/// Type URLs, in the order a node proxy subscribes to them.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// keel's HTTP rules of an AuthorizationPolicy, named as its `AUTHORIZATION_TYPE_URL` resource.
pub const HTTP_AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/keel.security.HttpAuthorization";
/// keel's RequestAuthentication (JWT rules with their key sets inline), named `<ns>/<name>`.
pub const REQUEST_AUTHENTICATION_TYPE_URL: &str = "type.googleapis.com/keel.security.RequestAuthentication";
/// Envoy's L7 resource types (a documented subset, see ENVOY-SUBSET.md), on the same delta ADS stream.
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_CONFIGURATION_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const CLUSTER_LOAD_ASSIGNMENT_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Any type URLs of the filter configs those resources carry.
pub const HTTP_CONNECTION_MANAGER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const HTTP_FAULT_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// A gateway's TLS: the secrets (certificates, CA bundles) its listeners name, sent only to that gateway (SDS on
/// the ADS stream), and the transport socket config of a TLS-terminating filter chain.
pub const SECRET_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const DOWNSTREAM_TLS_CONTEXT_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// A cluster's TLS origination (DestinationRule `tls` SIMPLE or MUTUAL).
pub const UPSTREAM_TLS_CONTEXT_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// SDS names of certificates and CA bundles read from files in the proxy's own filesystem (istiod's names for a
/// Gateway's `serverCertificate`/`privateKey` and `caCertificates`; the proxy reads them, nothing is shipped):
/// `file-cert:<certificate>~<key>` and `file-root:<ca>`.
pub const FILE_CERTIFICATE_SDS_PREFIX: &str = "file-cert:";
pub const FILE_ROOT_SDS_PREFIX: &str = "file-root:";
/// The transport socket name Envoy gives TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Field numbers are the wire contract with istiod and ztunnel: spot-check the encoding byte for byte.
    #[test]
    fn field_numbers_match_the_reference() {
        let w =
            workload::Workload { uid: "u".into(), name: "n".into(), tunnel_protocol: workload::TunnelProtocol::Hbone as i32, ..Default::default() };
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
