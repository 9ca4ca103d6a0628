//! TLS origination: a cluster's `envoy.transport_sockets.tls` with an UpstreamTlsContext (keel-control writes it
//! for a DestinationRule's `tls.mode` SIMPLE or MUTUAL towards a ServiceEntry host), turned into the rustls client
//! config keel's L4 relay wraps its upstream connection in.
//!
//! Fail closed: a context keel cannot honour (certificate pins, CRLs, SDS secrets) or whose files cannot be read
//! does not make the cluster refused — a refused cluster would leave its connections with no TLS settings at all,
//! that is plaintext — but unusable: every connection through it fails, naming the field, until a good version
//! arrives. Files (CA bundle, client certificate and key) are read when the cluster arrives.
//!
//! Verification, in Envoy's terms plus keel's one rule where Envoy has none: no validation context verifies
//! nothing (`insecureSkipVerify`); a validation context without `trusted_ca` verifies against the system's roots
//! (Istio's default for origination); `match_subject_alt_names` (exact) replaces the SNI as the name the
//! certificate must carry; without both an SNI and SANs there is no name to verify, and connections fail.
use std::{fmt, sync::Arc, time::Duration};

use keel_proto::{
    core::{data_source::Specifier, transport_socket::ConfigType, DataSource, TransportSocket},
    matcher::string_matcher::MatchPattern,
    tls::{common_tls_context::ValidationContextType, tls_parameters::TlsProtocol, CertificateValidationContext, UpstreamTlsContext},
    TLS_TRANSPORT_SOCKET, UPSTREAM_TLS_CONTEXT_TYPE_URL,
};
use prost::Message as _;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;

/// How long the TLS handshake with the upstream may take, after the connection is made (HBONE's bound).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster's TLS origination.
pub struct UpstreamTls {
    /// The name sent as SNI and verified, if any.
    pub server_name: Option<ServerName<'static>>,
    /// The client config, or why connections through this cluster fail.
    pub client: Result<Arc<rustls::ClientConfig>, String>,
    pub summary: UpstreamTlsSummary,
}

/// What `keel pc clusters` shows of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UpstreamTlsSummary {
    pub sni: String,
    /// `none` (insecureSkipVerify), `system roots` or the CA file.
    pub verify: String,
    pub subject_alt_names: Vec<String>,
    pub client_certificate: Option<String>,
    /// Why the cluster's connections fail, when they do.
    pub error: Option<String>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("summary", &self.summary).finish_non_exhaustive()
    }
}

/// Reads `socket` (the cluster's `transport_socket`). Never an error: see the module comment.
pub fn decode(socket: &TransportSocket) -> UpstreamTls {
    let mut summary = UpstreamTlsSummary::default();
    let (server_name, client) = match context(socket, &mut summary) {
        Ok((server_name, config)) => (server_name, Ok(Arc::new(config))),
        Err(e) => (None, Err(format!("field `transport_socket`: {e}"))),
    };
    summary.error = client.as_ref().err().cloned();
    UpstreamTls { server_name, client, summary }
}

fn context(socket: &TransportSocket, summary: &mut UpstreamTlsSummary) -> Result<(Option<ServerName<'static>>, rustls::ClientConfig), String> {
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err("typed_config: missing".into());
    };
    if socket.name != TLS_TRANSPORT_SOCKET || any.type_url != UPSTREAM_TLS_CONTEXT_TYPE_URL {
        return Err(format!("{} ({}) is not {TLS_TRANSPORT_SOCKET} with an UpstreamTlsContext", socket.name, any.type_url));
    }
    let context = UpstreamTlsContext::decode(any.value.as_slice()).map_err(|e| format!("not an UpstreamTlsContext: {e}"))?;
    let common = context.common_tls_context.unwrap_or_default();
    summary.sni = context.sni.clone();
    let server_name = match context.sni.as_str() {
        "" => None,
        sni => Some(ServerName::try_from(sni.to_owned()).map_err(|_| format!("sni: {sni:?} is not a DNS name"))?),
    };
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err("common_tls_context.tls_certificate_sds_secret_configs: client certificates from SDS are not supported (files are)".into());
    }
    let versions = versions(common.tls_params.as_ref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match common.validation_context_type {
        None => {
            summary.verify = "none".into();
            Arc::new(AcceptAnyCertificate(provider.clone()))
        }
        Some(ValidationContextType::ValidationContext(v)) => {
            let (verifier, sans) = verifier(&v, &provider, summary)?;
            if server_name.is_none() && sans.is_empty() {
                return Err("neither sni nor match_subject_alt_names: no name to verify the server's certificate against".into());
            }
            verifier
        }
        Some(_) => return Err("common_tls_context: a validation context from SDS is not supported".into()),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("common_tls_context.tls_params: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match common.tls_certificates.as_slice() {
        [] => builder.with_no_client_auth(),
        [certificate] => {
            let field = "common_tls_context.tls_certificates[0]";
            let chain_pem = data(certificate.certificate_chain.as_ref(), &format!("{field}.certificate_chain"))?;
            let key_pem = data(certificate.private_key.as_ref(), &format!("{field}.private_key"))?;
            let chain = CertificateDer::pem_slice_iter(&chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{field}.certificate_chain: not PEM certificates ({e})"))?;
            if chain.is_empty() {
                return Err(format!("{field}.certificate_chain: no PEM certificate"));
            }
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{field}.private_key: no PEM private key ({e})"))?;
            summary.client_certificate = Some(source_text(certificate.certificate_chain.as_ref()));
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("{field}.private_key: {e}"))?
        }
        _ => return Err("common_tls_context.tls_certificates: more than one client certificate".into()),
    };
    config.alpn_protocols = common.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = server_name.is_some();
    Ok((server_name, config))
}

fn versions(params: Option<&keel_proto::tls::TlsParameters>) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let version = |value: i32, field: &str, default: u16| match TlsProtocol::try_from(value) {
        Ok(TlsProtocol::TlsAuto) => Ok(default),
        Ok(TlsProtocol::TlSv12) => Ok(12),
        Ok(TlsProtocol::TlSv13) => Ok(13),
        Ok(other) => Err(format!("common_tls_context.tls_params.{field}: {} is not supported (TLS 1.2 and 1.3 are)", other.as_str_name())),
        Err(_) => Err(format!("common_tls_context.tls_params.{field}: unknown value {value}")),
    };
    let (min, max) = match params {
        None => (12, 13),
        Some(p) => {
            if !p.cipher_suites.is_empty() {
                return Err("common_tls_context.tls_params.cipher_suites: not supported for upstream TLS".into());
            }
            (
                version(p.tls_minimum_protocol_version, "tls_minimum_protocol_version", 12)?,
                version(p.tls_maximum_protocol_version, "tls_maximum_protocol_version", 13)?,
            )
        }
    };
    let all = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)];
    let chosen: Vec<_> = all.into_iter().filter(|(v, _)| (min..=max).contains(v)).map(|(_, v)| v).collect();
    if chosen.is_empty() {
        return Err(format!("common_tls_context.tls_params: no TLS version from 1.{} to 1.{}", min % 10, max % 10));
    }
    Ok(chosen)
}

/// The verifier of a validation context, and the SANs it requires.
fn verifier(
    v: &CertificateValidationContext,
    provider: &Arc<CryptoProvider>,
    summary: &mut UpstreamTlsSummary,
) -> Result<(Arc<dyn ServerCertVerifier>, Vec<ServerName<'static>>), String> {
    let field = "common_tls_context.validation_context";
    // Each of these narrows which servers pass; ignoring one would accept servers it excludes.
    if !v.verify_certificate_hash.is_empty() || !v.verify_certificate_spki.is_empty() || v.crl.is_some() {
        return Err(format!("{field}: certificate pins and CRLs are not supported"));
    }
    let mut roots = RootCertStore::empty();
    match &v.trusted_ca {
        Some(ca) => {
            let pem = data(Some(ca), &format!("{field}.trusted_ca"))?;
            for (i, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
                let der = der.map_err(|e| format!("{field}.trusted_ca: not PEM certificates ({e})"))?;
                roots.add(der).map_err(|e| format!("{field}.trusted_ca: certificate {i} is not a usable trust anchor ({e})"))?;
            }
            summary.verify = source_text(Some(ca));
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            summary.verify = "system roots".into();
        }
    }
    if roots.is_empty() {
        return Err(format!("{field}.trusted_ca: no CA certificate to verify the server with ({})", summary.verify));
    }
    let mut sans = Vec::new();
    for (i, matcher) in v.match_subject_alt_names.iter().enumerate() {
        let at = format!("{field}.match_subject_alt_names[{i}]");
        match &matcher.match_pattern {
            Some(MatchPattern::Exact(name)) if !matcher.ignore_case => {
                sans.push(ServerName::try_from(name.clone()).map_err(|_| format!("{at}: {name:?} is not a DNS name or IP address"))?);
                summary.subject_alt_names.push(name.clone());
            }
            _ => return Err(format!("{at}: only case-sensitive exact matchers are supported")),
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| format!("{field}: {e}"))?;
    Ok((Arc::new(NamesVerifier { webpki, sans: sans.clone() }), sans))
}

/// A DataSource's bytes: a file's contents, or inline.
fn data(source: Option<&DataSource>, field: &str) -> Result<Vec<u8>, String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::Filename(path)) => super::local_file::read(path).map_err(|e| format!("{field}: reading {path}: {e}")),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::EnvironmentVariable(_)) => Err(format!("{field}: environment variables are not supported")),
        None => Err(format!("{field}: missing")),
    }
}

fn source_text(source: Option<&DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::Filename(path)) => path.clone(),
        Some(_) => "inline".into(),
        None => String::new(),
    }
}

/// The chain checked by webpki, and the name: one of the SANs when the context lists some, else the SNI.
#[derive(Debug)]
struct NamesVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    sans: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for NamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.sans.is_empty() {
            return self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        let mut last = None;
        for san in &self.sans {
            match self.webpki.verify_server_cert(end_entity, intermediates, san, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subject alt name to match".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate is taken; the handshake's signatures are still checked (they prove the
/// peer holds the key of the certificate it sent, whatever that is).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use keel_mesh::{
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::l7_config::{cluster_config::ClusterConfig, secret::tests::Ca};

    const HOST: &str = "api.example.com";

    /// What keel makes of the cluster keel-control translates for a ServiceEntry for `HOST` with `tls` on port 80.
    fn originated(tls: &str) -> Arc<UpstreamTls> {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: default}}\n\
             spec:\n  hosts: [{HOST}]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]\n  resolution: DNS\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\n\
             spec:\n  host: {HOST}\n  trafficPolicy:\n    tls: {tls}\n"
        );
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("egress.yaml"), &text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let translated = translate(&Mesh::default(), &objects).unwrap();
        let cluster = &translated.clusters[&format!("outbound|80||{HOST}")];
        ClusterConfig::from_cluster(cluster).unwrap().upstream_tls.clone().expect("the cluster originates TLS")
    }

    /// A directory of this test's own, removed when it ends.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(test: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("keel-upstream-tls-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(dir: &Dir, name: &str, text: &str) -> String {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// keel's handshake (as the relay makes it) with a server presenting `server_cert`; the client certificate
    /// the server saw, if it asked for one and the handshake completed.
    async fn handshake(tls: &UpstreamTls, server_cert: (String, String), client_ca: Option<&Ca>) -> Result<Option<usize>, String> {
        let config = tls.client.clone()?;
        let chain = vec![CertificateDer::from_pem_slice(server_cert.0.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(server_cert.1.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let server = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(async move {
            let stream = TlsAcceptor::from(server).accept(server_io).await?;
            let (_, connection) = stream.get_ref();
            assert_eq!(connection.server_name(), Some(HOST), "the SNI keel sends");
            Ok::<_, std::io::Error>(connection.peer_certificates().map(<[_]>::len))
        });
        let name = tls.server_name.clone().unwrap();
        let connected = TlsConnector::from(config).connect(name, client_io).await;
        let accepted = accept.await.unwrap();
        connected.map_err(|e| e.to_string())?;
        accepted.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn simple_tls_verifies_the_server_against_the_ca_file_and_the_names() {
        let dir = Dir::new("simple");
        let (ca, other_ca) = (Ca::new("api ca"), Ca::new("another ca"));
        let ca_file = write(&dir, "ca.pem", &ca.pem);
        let tls = originated(&format!("{{mode: SIMPLE, caCertificates: {ca_file}}}"));
        assert_eq!(tls.summary.sni, HOST);
        assert_eq!(tls.summary.verify, ca_file);
        assert_eq!(handshake(&tls, ca.leaf(&[HOST]), None).await, Ok(None), "a certificate for the host from the CA");
        let wrong_name = handshake(&tls, ca.leaf(&["other.example.com"]), None).await.unwrap_err();
        assert!(wrong_name.contains("certificate not valid for name"), "{wrong_name}");
        let wrong_ca = handshake(&tls, other_ca.leaf(&[HOST]), None).await.unwrap_err();
        assert!(wrong_ca.contains("UnknownIssuer") || wrong_ca.contains("unknown issuer"), "{wrong_ca}");
        // subjectAltNames replace the SNI as the name the certificate must carry.
        let by_san = originated(&format!("{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [backend.internal]}}"));
        assert_eq!(handshake(&by_san, ca.leaf(&["backend.internal"]), None).await, Ok(None));
        assert!(handshake(&by_san, ca.leaf(&[HOST]), None).await.is_err(), "the SNI's name is not one of the SANs");
        // insecureSkipVerify takes any certificate.
        let insecure = originated("{mode: SIMPLE, insecureSkipVerify: true}");
        assert_eq!(insecure.summary.verify, "none");
        assert_eq!(handshake(&insecure, other_ca.leaf(&["whatever"]), None).await, Ok(None));
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_client_certificate_from_files() {
        let dir = Dir::new("mutual");
        let (ca, client_ca) = (Ca::new("api ca"), Ca::new("client ca"));
        let (cert, key) = client_ca.leaf(&["client.example.com"]);
        let (ca_file, cert_file, key_file) = (write(&dir, "ca.pem", &ca.pem), write(&dir, "c.pem", &cert), write(&dir, "k.pem", &key));
        let tls = originated(&format!("{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {cert_file}, privateKey: {key_file}}}"));
        assert_eq!(tls.summary.client_certificate.as_deref(), Some(cert_file.as_str()));
        assert_eq!(handshake(&tls, ca.leaf(&[HOST]), Some(&client_ca)).await, Ok(Some(1)), "the server saw keel's client certificate");
    }

    #[test]
    fn settings_keel_cannot_honour_make_every_connection_fail_naming_the_field() {
        let missing = originated("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}");
        let error = missing.client.as_ref().unwrap_err();
        assert!(
            error.starts_with("field `transport_socket`: common_tls_context.validation_context.trusted_ca: reading /nonexistent/ca.pem"),
            "{error}"
        );
        assert_eq!(missing.summary.error.as_ref(), Some(error));
        let dir = Dir::new("unusable");
        let not_pem = write(&dir, "ca.pem", "not a certificate");
        let error = originated(&format!("{{mode: SIMPLE, caCertificates: {not_pem}}}")).client.clone().unwrap_err();
        assert!(error.contains("trusted_ca: no CA certificate"), "{error}");
        let error = originated("{mode: SIMPLE, caCertificates: /dev/zero}").client.clone().unwrap_err();
        assert!(error.ends_with("reading /dev/zero: not a regular file"), "{error}");
        // Pins (no DestinationRule writes them; another control plane might) are refused, not ignored.
        let context = UpstreamTlsContext {
            common_tls_context: Some(keel_proto::tls::CommonTlsContext {
                validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                    verify_certificate_spki: vec!["pin".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }),
            sni: HOST.into(),
            ..Default::default()
        };
        let socket = TransportSocket {
            name: TLS_TRANSPORT_SOCKET.into(),
            config_type: Some(ConfigType::TypedConfig(prost_types::Any {
                type_url: UPSTREAM_TLS_CONTEXT_TYPE_URL.into(),
                value: context.encode_to_vec(),
            })),
        };
        let error = decode(&socket).client.unwrap_err();
        assert!(error.contains("certificate pins and CRLs are not supported"), "{error}");
    }
}
