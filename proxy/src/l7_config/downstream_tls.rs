//! A filter chain's TLS termination (a gateway's HTTPS server): Envoy's `DownstreamTlsContext` as keel serves
//! it, checked when the listener arrives, and the rustls server config built from it and the secrets it names
//! whenever either changes (so a rotated certificate is served from the next handshake on, without a restart).
//!
//! Taken: the certificate and the client CA as SDS names on the ADS stream, `require_client_certificate`,
//! exact `match_subject_alt_names` for client certificates, ALPN, TLS 1.2/1.3 bounds and TLS 1.2 cipher suites
//! by their OpenSSL names. Everything else that would change who may connect is refused naming the field.
use std::{collections::HashMap, sync::Arc};

use keel_proto::{
    core::{config_source::ConfigSourceSpecifier, transport_socket::ConfigType, TransportSocket},
    matcher::string_matcher::MatchPattern,
    tls::{common_tls_context::ValidationContextType, tls_parameters::TlsProtocol, DownstreamTlsContext, SdsSecretConfig},
    DOWNSTREAM_TLS_CONTEXT_TYPE_URL, TLS_TRANSPORT_SOCKET,
};
use prost::Message as _;
use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::ring,
    pki_types::{CertificateDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    sign::SingleCertAndKey,
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme, SupportedCipherSuite,
};
use serde::Serialize;
use x509_parser::{extensions::GeneralName, prelude::*};

use super::secret::{Material, SecretConfig};

/// Whether a chain asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ClientCertificates {
    NotAsked,
    /// Asked; a client without one is served, one with a bad one is refused (Istio's OPTIONAL_MUTUAL).
    Optional,
    Required,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DownstreamTls {
    /// The SDS name of the server certificate.
    pub certificate: String,
    /// The SDS name of the CA bundle client certificates must chain to.
    pub trusted_ca: Option<String>,
    pub client_certificates: ClientCertificates,
    /// A client certificate must carry one of these SANs (exact), when not empty.
    pub subject_alt_names: Vec<String>,
    pub alpn: Vec<String>,
    /// TLS 1.2 and/or 1.3.
    pub versions: Vec<u16>,
    /// TLS 1.2 suites by OpenSSL name (empty: all keel offers). TLS 1.3 suites are not configurable.
    pub cipher_suites: Vec<String>,
    /// A client that sends no SNI is refused.
    pub require_sni: bool,
}

/// The TLS 1.2 suites keel offers, by the OpenSSL names Envoy and Istio configure them with.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring::cipher_suite::*;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

fn version_number(protocol: i32, field: &str, default: u16) -> Result<u16, String> {
    match TlsProtocol::try_from(protocol) {
        Ok(TlsProtocol::TlsAuto) => Ok(default),
        Ok(TlsProtocol::TlSv12) => Ok(12),
        Ok(TlsProtocol::TlSv13) => Ok(13),
        Ok(other) => Err(format!("{field}: {} is not supported (TLS 1.2 and 1.3 are)", other.as_str_name())),
        Err(_) => Err(format!("{field}: unknown value {protocol}")),
    }
}

fn sds_name(config: &SdsSecretConfig, field: &str) -> Result<String, String> {
    if config.name.is_empty() {
        return Err(format!("{field}.name: empty"));
    }
    match config.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()) {
        None | Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_)) => Ok(config.name.clone()),
    }
}

/// Decodes and checks a filter chain's transport socket (`field` names it in errors).
pub fn decode(socket: &TransportSocket, field: &str) -> Result<DownstreamTls, String> {
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(format!("{field}.typed_config: missing"));
    };
    if socket.name != TLS_TRANSPORT_SOCKET || any.type_url != DOWNSTREAM_TLS_CONTEXT_TYPE_URL {
        return Err(format!("{field}: {} ({}) is not {TLS_TRANSPORT_SOCKET} with a DownstreamTlsContext", socket.name, any.type_url));
    }
    let context = DownstreamTlsContext::decode(any.value.as_slice()).map_err(|e| format!("{field}.typed_config: {e}"))?;
    let field = format!("{field}.typed_config");
    let common = context.common_tls_context.unwrap_or_default();
    let at = |f: &str| format!("{field}.common_tls_context.{f}");
    if !common.tls_certificates.is_empty() {
        return Err(format!("{}: inline certificates are not supported (keel takes them over SDS)", at("tls_certificates")));
    }
    let [certificate] = common.tls_certificate_sds_secret_configs.as_slice() else {
        return Err(format!(
            "{}: exactly one certificate is supported, {} given",
            at("tls_certificate_sds_secret_configs"),
            common.tls_certificate_sds_secret_configs.len()
        ));
    };
    let certificate = sds_name(certificate, &at("tls_certificate_sds_secret_configs[0]"))?;
    let (trusted_ca, subject_alt_names) = match &common.validation_context_type {
        None => (None, Vec::new()),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(c)) => {
            (Some(sds_name(c, &at("validation_context_sds_secret_config"))?), Vec::new())
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let sds = combined
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| format!("{}: missing", at("combined_validation_context.validation_context_sds_secret_config")))?;
            let ca = sds_name(sds, &at("combined_validation_context.validation_context_sds_secret_config"))?;
            let default = combined.default_validation_context.clone().unwrap_or_default();
            let d = |f: &str| at(&format!("combined_validation_context.default_validation_context.{f}"));
            for (f, set) in [
                ("trusted_ca", default.trusted_ca.is_some()),
                ("verify_certificate_hash", !default.verify_certificate_hash.is_empty()),
                ("verify_certificate_spki", !default.verify_certificate_spki.is_empty()),
                ("crl", default.crl.is_some()),
            ] {
                if set {
                    return Err(format!("{}: not supported", d(f)));
                }
            }
            let mut sans = Vec::new();
            for (i, m) in default.match_subject_alt_names.iter().enumerate() {
                match &m.match_pattern {
                    Some(MatchPattern::Exact(name)) if !m.ignore_case => sans.push(name.clone()),
                    _ => return Err(format!("{}: only exact, case-sensitive matchers are supported", d(&format!("match_subject_alt_names[{i}]")))),
                }
            }
            (Some(ca), sans)
        }
        Some(ValidationContextType::ValidationContext(_)) => {
            return Err(format!("{}: inline validation contexts are not supported (keel takes the CA over SDS)", at("validation_context")));
        }
    };
    let require_client_certificate = context.require_client_certificate.unwrap_or(false);
    let client_certificates = match (&trusted_ca, require_client_certificate) {
        (None, true) => return Err(format!("{field}.require_client_certificate: set without a validation context to verify the certificate with")),
        (None, false) => ClientCertificates::NotAsked,
        (Some(_), true) => ClientCertificates::Required,
        (Some(_), false) => ClientCertificates::Optional,
    };
    let params = common.tls_params.unwrap_or_default();
    let min = version_number(params.tls_minimum_protocol_version, &at("tls_params.tls_minimum_protocol_version"), 12)?;
    let max = version_number(params.tls_maximum_protocol_version, &at("tls_params.tls_maximum_protocol_version"), 13)?;
    if min > max {
        return Err(format!("{}: below the minimum", at("tls_params.tls_maximum_protocol_version")));
    }
    for (i, suite) in params.cipher_suites.iter().enumerate() {
        if tls12_suite(suite).is_none() {
            return Err(format!("{}: {suite:?} is not a TLS 1.2 suite keel offers", at(&format!("tls_params.cipher_suites[{i}]"))));
        }
    }
    Ok(DownstreamTls {
        certificate,
        trusted_ca,
        client_certificates,
        subject_alt_names,
        alpn: common.alpn_protocols,
        versions: (min..=max).collect(),
        cipher_suites: params.cipher_suites,
        require_sni: context.require_sni.unwrap_or(false),
    })
}

impl DownstreamTls {
    /// The rustls config for this chain with `secrets`; `Err` says which secret is missing or unusable (the
    /// chain then refuses handshakes: it never serves without the certificate or client check it asks for).
    pub fn server_config(&self, secrets: &HashMap<String, Arc<SecretConfig>>) -> Result<Arc<ServerConfig>, String> {
        let certified = match secrets.get(&self.certificate).map(|s| &s.material) {
            Some(Material::Certificate(c)) => c.clone(),
            Some(Material::TrustedCa(_)) => return Err(format!("secret {} is a CA bundle, not a certificate", self.certificate)),
            None => return Err(format!("secret {} not received", self.certificate)),
        };
        let mut provider = ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let listed: Vec<SupportedCipherSuite> = self.cipher_suites.iter().filter_map(|s| tls12_suite(s)).collect();
            provider.cipher_suites.retain(|s| s.tls13().is_some() || listed.iter().any(|l| l.suite() == s.suite()));
        }
        let provider = Arc::new(provider);
        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            self.versions.iter().map(|v| if *v == 12 { &rustls::version::TLS12 } else { &rustls::version::TLS13 }).collect();
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions).map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match (&self.trusted_ca, self.client_certificates) {
            (None, _) | (_, ClientCertificates::NotAsked) => builder.with_no_client_auth(),
            (Some(ca), asked) => {
                let roots = match secrets.get(ca).map(|s| &s.material) {
                    Some(Material::TrustedCa(roots)) => roots.clone(),
                    Some(Material::Certificate(_)) => return Err(format!("secret {ca} is a certificate, not a CA bundle")),
                    None => return Err(format!("secret {ca} not received")),
                };
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = if asked == ClientCertificates::Optional { verifier.allow_unauthenticated() } else { verifier };
                let verifier = verifier.build().map_err(|e| format!("client verifier from {ca}: {e}"))?;
                if self.subject_alt_names.is_empty() {
                    builder.with_client_cert_verifier(verifier)
                } else {
                    builder.with_client_cert_verifier(Arc::new(SubjectAltNames { inner: verifier, allowed: self.subject_alt_names.clone() }))
                }
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A client certificate verifier that also requires one of `allowed` among the certificate's SANs (Envoy's
/// `match_subject_alt_names`, Istio's `subjectAltNames`): a certificate from the right CA for the wrong client
/// fails the handshake.
#[derive(Debug)]
struct SubjectAltNames {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SubjectAltNames {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    GeneralName::RFC822Name(e) => Some((*e).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.iter().any(|n| self.allowed.contains(n)) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Built server configs, kept while neither the chain nor its secrets change (a config rebuilt on every xDS
/// push would also drop TLS session resumption on every push).
#[derive(Clone, Default)]
pub struct ServerConfigs {
    built: HashMap<String, BuiltConfig>,
}

#[derive(Clone)]
struct BuiltConfig {
    tls: DownstreamTls,
    secrets: Vec<Option<Arc<SecretConfig>>>,
    config: Result<Arc<ServerConfig>, String>,
}

impl std::fmt::Debug for ServerConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.built.iter().map(|(k, b)| (k, b.config.as_ref().map(|_| "ready")))).finish()
    }
}

impl ServerConfigs {
    /// Rebuilds for `chains` (key → TLS settings), keeping what is unchanged.
    pub fn update<'a>(&mut self, chains: impl Iterator<Item = (String, &'a DownstreamTls)>, secrets: &HashMap<String, Arc<SecretConfig>>) {
        let mut built = HashMap::new();
        for (key, tls) in chains {
            let used: Vec<Option<Arc<SecretConfig>>> =
                std::iter::once(&tls.certificate).chain(&tls.trusted_ca).map(|n| secrets.get(n).cloned()).collect();
            let same = |b: &&BuiltConfig| {
                b.tls == *tls
                    && b.secrets.len() == used.len()
                    && b.secrets.iter().zip(&used).all(|(a, b)| a.as_ref().map(Arc::as_ptr) == b.as_ref().map(Arc::as_ptr))
            };
            let entry = match self.built.get(&key).filter(same) {
                Some(kept) => kept.clone(),
                None => BuiltConfig { tls: tls.clone(), config: tls.server_config(secrets), secrets: used },
            };
            built.insert(key, entry);
        }
        self.built = built;
    }

    /// The config for the chain `key`, or why it has none.
    pub fn get(&self, key: &str) -> Result<Arc<ServerConfig>, String> {
        self.built.get(key).map_or_else(|| Err("no TLS settings".into()), |b| b.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use keel_mesh::{
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };
    use prost::Message as _;
    use rustls::pki_types::ServerName;
    use rustls_pki_types::pem::PemObject as _;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::l7_config::{
        config::{decode_listener, L7Config},
        secret::{decode_secret, tests::Ca},
    };

    fn yaml_block(pem: &str) -> String {
        pem.lines().map(|l| format!("    {l}\n")).collect()
    }

    /// The gateway view keel-control computes for a Gateway with a SIMPLE server for `a.example.com` and a
    /// MUTUAL one for `*.mtls.example.com` (client SAN `client.example.com`), decoded as keel gateway does.
    fn gateway_config(server_ca: &Ca, client_ca: &Ca) -> L7Config {
        let (cert_a, key_a) = server_ca.leaf(&["a.example.com"]);
        let (cert_m, key_m) = server_ca.leaf(&["x.mtls.example.com"]);
        let secret = |name: &str, entries: &[(&str, &str)]| {
            let data: String = entries.iter().map(|(k, v)| format!("  {k}: |\n{}", yaml_block(v))).collect();
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: gw}}\nstringData:\n{data}---\n")
        };
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ingress, namespace: gw, labels: {{istio: ingressgateway}}}}\nspec: {{nodeName: n0}}\nstatus: {{podIP: 10.0.0.5}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: public, namespace: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
             \x20 - port: {{number: 443, name: https-a, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: SIMPLE, credentialName: a-cert}}\n\
             \x20 - port: {{number: 443, name: https-m, protocol: HTTPS}}\n    hosts: ['*.mtls.example.com']\n    tls: {{mode: MUTUAL, credentialName: m-cert, subjectAltNames: [client.example.com]}}\n---\n{}{}{}",
            secret("a-cert", &[("tls.crt", &cert_a), ("tls.key", &key_a)]),
            secret("m-cert", &[("tls.crt", &cert_m), ("tls.key", &key_m)]),
            secret("m-cert-cacert", &[("ca.crt", &client_ca.pem)]),
        );
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("gw.yaml"), &text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let translated = translate(&Mesh::default(), &objects).unwrap();
        let view = &translated.gateway_views["gw/ingress"];
        let mut l7 = L7Config::default();
        for (name, listener) in &view.listeners {
            l7.listeners.insert(name.clone(), Arc::new(decode_listener(&listener.encode_to_vec()).unwrap()));
        }
        for (name, secret) in &view.secrets {
            l7.secrets.insert(name.clone(), Arc::new(decode_secret(&secret.encode_to_vec()).unwrap()));
        }
        l7.index();
        l7
    }

    /// A TLS handshake of a client trusting `server_ca`, naming `sni`, optionally with a client certificate;
    /// `Ok` with the negotiated ALPN when it completes.
    async fn handshake(l7: &L7Config, sni: &str, server_ca: &Ca, client: Option<(String, String)>) -> Result<Option<Vec<u8>>, String> {
        let listener = &l7.listeners["0.0.0.0_443"];
        let chain = listener.tls_chain(Some(sni)).ok_or("no chain")?;
        let server = l7.server_config(listener, chain)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(server_ca.pem.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let accept =
            tokio::spawn(async move { TlsAcceptor::from(server).accept(server_io).await.map(|s| s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)) });
        let connected = TlsConnector::from(Arc::new(config)).connect(name, client_io).await;
        let accepted = accept.await.unwrap();
        let _ = connected.map_err(|e| e.to_string())?;
        accepted.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn sni_picks_the_chain_and_a_mutual_chain_verifies_the_client_certificate_and_its_san() {
        let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
        let l7 = gateway_config(&server_ca, &client_ca);
        let listener = &l7.listeners["0.0.0.0_443"];
        assert_eq!(listener.chains.len(), 2);
        assert!(listener.tls_chain(Some("A.example.com")).unwrap().route_config().unwrap().contains("https-a"));
        assert!(listener.tls_chain(Some("x.mtls.example.com")).unwrap().route_config().unwrap().contains("https-m"));
        assert!(listener.tls_chain(Some("other.example.com")).is_none(), "no chain for an unknown name");
        assert!(listener.tls_chain(None).is_none());
        // SIMPLE: any client; ALPN h2 negotiated.
        assert_eq!(handshake(&l7, "a.example.com", &server_ca, None).await, Ok(Some(b"h2".to_vec())));
        // MUTUAL: no certificate, a certificate of another CA, or of the right CA with the wrong SAN: refused.
        assert!(handshake(&l7, "x.mtls.example.com", &server_ca, None).await.is_err());
        assert!(handshake(&l7, "x.mtls.example.com", &server_ca, Some(server_ca.leaf(&["client.example.com"]))).await.is_err());
        assert!(handshake(&l7, "x.mtls.example.com", &server_ca, Some(client_ca.leaf(&["intruder.example.com"]))).await.is_err());
        assert!(handshake(&l7, "x.mtls.example.com", &server_ca, Some(client_ca.leaf(&["client.example.com"]))).await.is_ok());
    }

    #[test]
    fn a_chain_without_its_secret_refuses_handshakes_and_a_rotated_secret_rebuilds_only_its_config() {
        let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
        let mut l7 = gateway_config(&server_ca, &client_ca);
        let config = |l7: &L7Config, sni: &str| {
            let listener = &l7.listeners["0.0.0.0_443"];
            l7.server_config(listener, listener.tls_chain(Some(sni)).unwrap())
        };
        let (a, m) = (config(&l7, "a.example.com").unwrap(), config(&l7, "x.mtls.example.com").unwrap());
        // An unrelated push keeps both configs (and their session caches).
        l7.index();
        assert!(Arc::ptr_eq(&a, &config(&l7, "a.example.com").unwrap()));
        // A rotated certificate: a new config for its chain only.
        let (cert, key) = server_ca.leaf(&["a.example.com"]);
        let rotated = decode_secret(&crate::l7_config::secret::tests::certificate_secret("kubernetes://a-cert", &cert, &key)).unwrap();
        l7.secrets.insert("kubernetes://a-cert".into(), Arc::new(rotated));
        l7.index();
        assert!(!Arc::ptr_eq(&a, &config(&l7, "a.example.com").unwrap()));
        assert!(Arc::ptr_eq(&m, &config(&l7, "x.mtls.example.com").unwrap()));
        // The CA bundle gone: the MUTUAL chain has no config rather than one that skips client verification.
        l7.secrets.remove("kubernetes://m-cert-cacert");
        l7.index();
        assert_eq!(config(&l7, "x.mtls.example.com").unwrap_err(), "secret kubernetes://m-cert-cacert not received");
    }
}
