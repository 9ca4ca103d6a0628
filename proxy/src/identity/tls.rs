//! HBONE's mutual TLS, as ztunnel speaks it: TLS 1.3 only, AES-GCM suites, x25519 first (P-256 and P-384
//! offered), ALPN `h2`, no SNI, no resumption. Peers are authenticated by SPIFFE identity, never by host name:
//! the client requires the server's URI SAN to be one it expects for the destination, the server requires the
//! client to be of its own trust domain (the client's identity is then the source principal).
use std::{
    fmt,
    sync::{Arc, Mutex, OnceLock},
};

use anyhow::{anyhow, bail, Context as _};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption,
    },
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_parser::prelude::*;

use super::{certificate::uri_sans, CertificateManager, Identity, WorkloadCertificate};

pub const ALPN_H2: &[u8] = b"h2";

/// ring with exactly HBONE's suites and groups, built here rather than taken from a process default so that no
/// other part of the process can widen what keel's mTLS negotiates.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![ring::cipher_suite::TLS13_AES_256_GCM_SHA384, ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
                kx_groups: vec![ring::kx_group::X25519, ring::kx_group::SECP256R1, ring::kx_group::SECP384R1],
                ..ring::default_provider()
            })
        })
        .clone()
}

/// The client side of one HBONE connection: presents `cert` and accepts a server whose chain leads to
/// `cert.roots` and which carries one of `expected` (the destination workload's identity, or its service's
/// subject alternative names). The server name passed to rustls is ignored, and never sent.
pub fn client_config(cert: &WorkloadCertificate, expected: Vec<Identity>) -> anyhow::Result<Arc<ClientConfig>> {
    if expected.is_empty() {
        bail!("no expected server identity: HBONE never connects to a server it cannot authenticate");
    }
    let verifier = SpiffeServerVerifier { roots: cert.trust_store(), expected, provider: crypto_provider() };
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with HBONE's suites")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(PresentCertificate(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    // ztunnel sends no SNI: destinations are IPs (illegal in SNI) and identities are checked by URI SAN.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The server side for the workload `identity`: serves whatever certificate `manager` holds at handshake time
/// (so renewals apply to new connections without rebuilding this), and requires a client certificate that
/// chains to that certificate's trust bundle and names the same trust domain. Fails the handshake while no
/// valid certificate is held.
pub fn server_config(manager: CertificateManager, identity: Identity) -> anyhow::Result<Arc<ServerConfig>> {
    build_server_config(Arc::new(ServedCertificate::Managed { manager, identity }))
}

/// Like `server_config`, for one certificate fetched beforehand (a config per connection): serves it, and
/// authenticates clients against its trust bundle, until it expires.
pub fn server_config_for(cert: &Arc<WorkloadCertificate>) -> anyhow::Result<Arc<ServerConfig>> {
    build_server_config(Arc::new(ServedCertificate::Fixed(cert.clone())))
}

fn build_server_config(served: Arc<ServedCertificate>) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = SameTrustDomainClientVerifier { served: served.clone(), provider: crypto_provider(), cached: Mutex::new(None) };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with HBONE's suites")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(served);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Clients never resume; tickets would only cost a message per connection.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The SPIFFE identity of a peer, from its leaf certificate's (first parseable) URI SAN.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> anyhow::Result<Identity> {
    let leaf = certs.first().ok_or_else(|| anyhow!("the peer presented no certificate"))?;
    let (_, leaf) = X509Certificate::from_der(leaf).context("the peer's certificate is not valid X.509")?;
    let uris = uri_sans(&leaf)?;
    uris.iter()
        .find_map(|uri| uri.parse::<Identity>().ok())
        .ok_or_else(|| anyhow!("the peer's certificate has no spiffe://<trust-domain>/ns/<ns>/sa/<sa> URI SAN (URI SANs: {uris:?})"))
}

/// When the peer's leaf certificate stops being valid: a connection authenticated by it must not outlive it.
pub fn peer_not_after(certs: &[CertificateDer<'_>]) -> anyhow::Result<std::time::SystemTime> {
    let leaf = certs.first().ok_or_else(|| anyhow!("the peer presented no certificate"))?;
    let (_, leaf) = X509Certificate::from_der(leaf).context("the peer's certificate is not valid X.509")?;
    let seconds = leaf.validity().not_after.timestamp();
    let seconds = u64::try_from(seconds).map_err(|_| anyhow!("the peer's certificate expired before 1970"))?;
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// What an HBONE server demands of its clients: the same trust domain as the workload it serves.
pub fn require_trust_domain(peer: &Identity, trust_domain: &str) -> anyhow::Result<()> {
    if peer.trust_domain != trust_domain {
        bail!("client {peer} is not of trust domain {trust_domain}");
    }
    Ok(())
}

/// A certificate rejected for who it names rather than how it is signed.
#[derive(Debug)]
struct IdentityRejected(String);

impl fmt::Display for IdentityRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityRejected {}

fn rejected(reason: String) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(IdentityRejected(reason)))))
}

/// Chain to the mesh roots, then URI SAN ∈ expected; the host name plays no part.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, algorithms)?;
        let (_, leaf) = X509Certificate::from_der(end_entity).map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        let uris = uri_sans(&leaf).map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.expected.iter().any(|id| uris.contains(&id.to_string())) {
            return Ok(ServerCertVerified::assertion());
        }
        let expected: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
        Err(rejected(format!("server identity {uris:?} is none of the expected {expected:?}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain check is rustls' own client verifier over the trust bundle of the certificate served now, rebuilt
/// only when that bundle changes; the trust-domain check follows it.
struct SameTrustDomainClientVerifier {
    served: Arc<ServedCertificate>,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<VerifierForRoots>>,
}

/// rustls' chain verifier, and the trust bundle it was built over.
type VerifierForRoots = (Vec<CertificateDer<'static>>, Arc<dyn ClientCertVerifier>);

impl fmt::Debug for SameTrustDomainClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SameTrustDomainClientVerifier").field("served", &self.served).finish()
    }
}

impl SameTrustDomainClientVerifier {
    fn chain_verifier(&self) -> Result<(Arc<WorkloadCertificate>, Arc<dyn ClientCertVerifier>), TlsError> {
        let cert = self.served.current().ok_or_else(|| TlsError::General(format!("no valid certificate for {}", self.served.identity())))?;
        let mut cached = self.cached.lock().unwrap();
        if let Some((roots, verifier)) = cached.as_ref() {
            if *roots == cert.roots {
                return Ok((cert, verifier.clone()));
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(cert.trust_store(), self.provider.clone())
            .build()
            .map_err(|e| TlsError::General(format!("client verifier: {e}")))?;
        *cached = Some((cert.roots.clone(), verifier.clone()));
        Ok((cert, verifier))
    }
}

impl ClientCertVerifier for SameTrustDomainClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: every workload has exactly one certificate to offer, and the roots may change under us.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let (own, chain) = self.chain_verifier()?;
        let verified = chain.verify_client_cert(end_entity, intermediates, now)?;
        let peer = peer_identity(std::slice::from_ref(end_entity)).map_err(|e| rejected(format!("{e:#}")))?;
        require_trust_domain(&peer, &own.identity.trust_domain).map_err(|e| rejected(e.to_string()))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's certificate at handshake time: the manager's current one, or one fixed for the config.
enum ServedCertificate {
    Managed { manager: CertificateManager, identity: Identity },
    Fixed(Arc<WorkloadCertificate>),
}

impl ServedCertificate {
    /// `None` while nothing valid is held: the handshake fails rather than present an expired certificate.
    fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        match self {
            ServedCertificate::Managed { manager, identity } => manager.current(identity),
            ServedCertificate::Fixed(cert) => (!cert.is_expired()).then(|| cert.clone()),
        }
    }

    fn identity(&self) -> &Identity {
        match self {
            ServedCertificate::Managed { identity, .. } => identity,
            ServedCertificate::Fixed(cert) => &cert.identity,
        }
    }
}

impl fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServedCertificate({})", self.identity())
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|cert| cert.certified_key())
    }
}

/// One connection's client certificate, fixed when its config was built.
#[derive(Debug)]
struct PresentCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for PresentCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::{CipherSuite, ProtocolVersion};
    use tokio::io::{duplex, AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    use super::*;
    use crate::identity::{
        manager::DEFAULT_VALIDITY,
        provider::{
            tests::{fresh_dir, identity, local_ca},
            CertificateProvider, LocalCa,
        },
    };

    type Handshakes = (std::io::Result<client::TlsStream<DuplexStream>>, std::io::Result<server::TlsStream<DuplexStream>>);

    /// Both sides at once over an in-memory pipe; the client dials an IP, as HBONE does.
    async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Handshakes {
        handshake_named(client, server, ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 2).into())).await
    }

    async fn handshake_named(client: Arc<ClientConfig>, server: Arc<ServerConfig>, name: ServerName<'static>) -> Handshakes {
        let (a, b) = duplex(64 * 1024);
        let connect = TlsConnector::from(client).connect(name, a);
        let accept = TlsAcceptor::from(server).accept(b);
        tokio::join!(connect, accept)
    }

    fn manager_for(ca: LocalCa) -> CertificateManager {
        CertificateManager::new(Arc::new(ca) as Arc<dyn CertificateProvider>, DEFAULT_VALIDITY)
    }

    fn echo() -> Identity {
        identity("cluster.local", "demo", "echo")
    }

    fn sleep() -> Identity {
        identity("cluster.local", "demo", "sleep")
    }

    #[tokio::test]
    async fn mutual_tls_authenticates_both_workloads_with_hbone_parameters() {
        let manager = manager_for(local_ca("tls-mutual", "cluster.local"));
        manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let server = server_config(manager.clone(), echo()).unwrap();

        let (client, server_side) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server.clone()).await;
        let (mut client, mut server_side) = (client.unwrap(), server_side.unwrap());
        let (_, c) = client.get_ref();
        let (_, s) = server_side.get_ref();
        assert_eq!(peer_identity(c.peer_certificates().unwrap()).unwrap(), echo(), "the client sees the server workload");
        assert_eq!(peer_identity(s.peer_certificates().unwrap()).unwrap(), sleep(), "the server sees the client workload");
        assert_eq!(c.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(s.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert!([CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_AES_128_GCM_SHA256].contains(&suite), "{suite:?}");
        assert_eq!(s.server_name(), None, "no SNI");

        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Even a caller that passes a host name sends no SNI: identity is by URI SAN only.
        let named = ServerName::try_from("echo.demo.svc.cluster.local").unwrap();
        let (client, server_side) = handshake_named(client_config(&client_cert, vec![echo()]).unwrap(), server, named).await;
        client.unwrap();
        assert_eq!(server_side.unwrap().get_ref().1.server_name(), None);
    }

    #[tokio::test]
    async fn any_of_several_expected_identities_is_accepted() {
        let manager = manager_for(local_ca("tls-expected", "cluster.local"));
        manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let expected = vec![identity("cluster.local", "demo", "other"), echo()];
        let (client, server) = handshake(client_config(&client_cert, expected).unwrap(), server_config(manager, echo()).unwrap()).await;
        client.unwrap();
        server.unwrap();
    }

    #[tokio::test]
    async fn a_server_config_for_one_certificate_serves_it() {
        let manager = manager_for(local_ca("tls-fixed", "cluster.local"));
        let server_cert = manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let (client, server) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server_config_for(&server_cert).unwrap()).await;
        assert_eq!(client.unwrap().get_ref().1.peer_certificates().unwrap()[0], server_cert.chain[0]);
        assert_eq!(peer_identity(server.unwrap().get_ref().1.peer_certificates().unwrap()).unwrap(), sleep());
    }

    #[tokio::test]
    async fn the_client_refuses_a_server_that_is_not_the_expected_identity() {
        let manager = manager_for(local_ca("tls-unexpected", "cluster.local"));
        manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let expected = vec![identity("cluster.local", "demo", "database")];
        let (client, _) = handshake(client_config(&client_cert, expected).unwrap(), server_config(manager, echo()).unwrap()).await;
        let err = client.unwrap_err().to_string();
        assert!(err.contains("is none of the expected") && err.contains("sa/database"), "{err}");
        assert!(client_config(&client_cert, vec![]).is_err(), "no expected identity, no config");
    }

    #[tokio::test]
    async fn the_server_refuses_a_client_of_another_trust_domain_under_the_same_root() {
        let dir = fresh_dir("tls-foreign-domain");
        let manager = manager_for(LocalCa::load_or_generate(&dir, "cluster.local").unwrap());
        manager.certificate(&echo()).await.unwrap();
        // The same CA key material, issuing for another trust domain: only the trust-domain check can refuse.
        let foreign = manager_for(LocalCa::load_or_generate(&dir, "other.domain").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let stranger = foreign.certificate(&identity("other.domain", "demo", "sleep")).await.unwrap();
        let (_, server) = handshake(client_config(&stranger, vec![echo()]).unwrap(), server_config(manager, echo()).unwrap()).await;
        let err = server.unwrap_err().to_string();
        assert!(err.contains("is not of trust domain cluster.local"), "{err}");
    }

    #[tokio::test]
    async fn the_server_refuses_a_client_without_a_certificate() {
        let manager = manager_for(local_ca("tls-anonymous", "cluster.local"));
        let server_cert = manager.certificate(&echo()).await.unwrap();
        let verifier = SpiffeServerVerifier { roots: server_cert.trust_store(), expected: vec![echo()], provider: crypto_provider() };
        let mut anonymous = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (_, server) = handshake(Arc::new(anonymous), server_config(manager, echo()).unwrap()).await;
        assert!(server.is_err(), "a client certificate is mandatory");
    }

    /// Both CAs have the same subject, so the chain fails on the signature rather than on a missing issuer: the
    /// reason rustls gives differs, the refusal must not.
    #[tokio::test]
    async fn certificates_from_an_untrusted_ca_are_refused_both_ways() {
        let manager = manager_for(local_ca("tls-trusted", "cluster.local"));
        let server_cert = manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let rogue = manager_for(local_ca("tls-rogue", "cluster.local"));
        rogue.certificate(&echo()).await.unwrap();
        let rogue_client = rogue.certificate(&sleep()).await.unwrap();

        // A client that trusts the server but presents a certificate of the rogue CA.
        let verifier = SpiffeServerVerifier { roots: server_cert.trust_store(), expected: vec![echo()], provider: crypto_provider() };
        let mut impostor = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(PresentCertificate(rogue_client.certified_key())));
        impostor.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (_, server) = handshake(Arc::new(impostor), server_config(manager.clone(), echo()).unwrap()).await;
        let err = server.unwrap_err().to_string();
        assert!(err.contains("invalid peer certificate"), "{err}");

        let (client, _) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server_config(rogue, echo()).unwrap()).await;
        let err = client.unwrap_err().to_string();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn without_a_valid_certificate_the_server_fails_the_handshake() {
        let manager = manager_for(local_ca("tls-no-cert", "cluster.local"));
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let (client, server) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server_config(manager, echo()).unwrap()).await;
        assert!(client.is_err() && server.is_err());
    }

    #[tokio::test]
    async fn a_renewed_certificate_serves_new_handshakes_without_a_new_config() {
        let manager = CertificateManager::new(Arc::new(local_ca("tls-rotate", "cluster.local")), Duration::from_secs(3));
        let first = manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let server = server_config(manager.clone(), echo()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while manager.current(&echo()).is_none_or(|c| c.serial == first.serial) {
            assert!(tokio::time::Instant::now() < deadline, "no renewal");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let renewed = manager.current(&echo()).unwrap();
        let client_cert = manager.current(&sleep()).unwrap_or(client_cert);
        let (client, _) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server).await;
        let client = client.unwrap();
        let served = client.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(served, renewed.chain[0], "the renewed certificate, from the same ServerConfig");
    }

    /// istiod's test CAs are often RSA (ztunnel's is RSA-2048): chains it signs verify both ways.
    #[tokio::test]
    async fn an_rsa_root_is_accepted() {
        let dir = fresh_dir("tls-rsa");
        std::fs::create_dir_all(&dir).unwrap();
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/O=cluster.local/CN=rsa root"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"])
            .arg("-keyout")
            .arg(dir.join("ca-key.pem"))
            .arg("-out")
            .arg(dir.join("ca-cert.pem"))
            .output()
            .expect("openssl makes the RSA root");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        std::fs::copy(dir.join("ca-cert.pem"), dir.join("root-cert.pem")).unwrap();
        std::fs::copy(dir.join("ca-cert.pem"), dir.join("cert-chain.pem")).unwrap();
        let manager = manager_for(LocalCa::load_or_generate(&dir, "cluster.local").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        manager.certificate(&echo()).await.unwrap();
        let client_cert = manager.certificate(&sleep()).await.unwrap();
        let (client, server) = handshake(client_config(&client_cert, vec![echo()]).unwrap(), server_config(manager, echo()).unwrap()).await;
        client.unwrap();
        assert_eq!(peer_identity(server.unwrap().get_ref().1.peer_certificates().unwrap()).unwrap(), sleep());
    }

    #[test]
    fn peer_identity_needs_a_spiffe_uri_san() {
        assert!(peer_identity(&[]).is_err());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dns_only = rcgen::CertificateParams::new(vec!["echo.demo".into()]).unwrap().self_signed(&key).unwrap();
        let err = peer_identity(&[dns_only.der().clone()]).unwrap_err();
        assert!(err.to_string().contains("no spiffe://"), "{err}");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI("https://example.com/x".try_into().unwrap()), rcgen::SanType::URI("spiffe://td/ns/a/sa/b".try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(peer_identity(&[cert.der().clone()]).unwrap(), identity("td", "a", "b"));
        assert!(require_trust_domain(&identity("td", "a", "b"), "td").is_ok());
        assert!(require_trust_domain(&identity("td", "a", "b"), "cluster.local").is_err());
    }

    #[test]
    fn the_provider_offers_only_hbones_suites_and_groups() {
        let provider = crypto_provider();
        let suites: Vec<CipherSuite> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites, [CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_AES_128_GCM_SHA256]);
        let groups: Vec<rustls::NamedGroup> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [rustls::NamedGroup::X25519, rustls::NamedGroup::secp256r1, rustls::NamedGroup::secp384r1]);
    }
}
