//! TLS origination: a DestinationRule's client TLS (`SIMPLE`, `MUTUAL`) for a ServiceEntry host becomes the
//! Envoy transport socket of that host's cluster, as istiod writes it for a sidecar: an UpstreamTlsContext with
//! the SNI (the rule's `sni`, else the host, as Istio's auto-SNI picks), the CA bundle and client certificate as
//! files on the proxy's filesystem, and the subject alt names to match. keel's rule where Envoy has none:
//! a validation context without `trusted_ca` verifies against the system's roots (Istio's default since it
//! verifies at the client), and no validation context (`insecureSkipVerify`) verifies nothing.
//!
//! Only ServiceEntry hosts get one: between mesh workloads the bytes already travel in keel's mTLS, and keel's L7
//! engine for mesh services does not originate TLS (the rule is warned about instead).
use keel_proto::{
    core::{data_source::Specifier, transport_socket::ConfigType, DataSource, TransportSocket},
    tls::{
        common_tls_context::ValidationContextType, tls_parameters::TlsProtocol, CertificateValidationContext, CommonTlsContext, TlsCertificate,
        TlsParameters, UpstreamTlsContext,
    },
    TLS_TRANSPORT_SOCKET, UPSTREAM_TLS_CONTEXT_TYPE_URL,
};
use prost::Message as _;

use crate::objects::{ClientTlsMode, ClientTlsSettings};

/// The transport socket for `tls` towards `host`, when it originates TLS.
pub fn transport_socket(tls: &ClientTlsSettings, host: &str) -> Option<TransportSocket> {
    if !tls.originates() {
        return None;
    }
    let file = |path: &Option<String>| path.as_ref().map(|p| DataSource { specifier: Some(Specifier::Filename(p.clone())) });
    let validation = (tls.insecure_skip_verify != Some(true)).then(|| CertificateValidationContext {
        trusted_ca: file(&tls.ca_certificates),
        match_subject_alt_names: super::gateway_tls::exact_matchers(&tls.subject_alt_names),
        ..Default::default()
    });
    let client_certificate = (tls.mode == Some(ClientTlsMode::Mutual))
        .then(|| TlsCertificate { certificate_chain: file(&tls.client_certificate), private_key: file(&tls.private_key) });
    // A wildcard host names no server: without an `sni` the handshake carries none.
    let sni = tls.sni.clone().unwrap_or_else(|| if host.starts_with('*') { String::new() } else { host.to_owned() });
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters { tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32, ..Default::default() }),
            tls_certificates: client_certificate.into_iter().collect(),
            validation_context_type: validation.map(ValidationContextType::ValidationContext),
            ..Default::default()
        }),
        sni,
        ..Default::default()
    };
    Some(TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(prost_types::Any {
            type_url: UPSTREAM_TLS_CONTEXT_TYPE_URL.into(),
            value: context.encode_to_vec(),
        })),
    })
}
