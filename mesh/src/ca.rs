//! The workload certificate authority behind `CreateCertificate`. Key material comes in istiod's plugged-in CA
//! layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`; RSA and ECDSA both sign), or is
//! generated on first start (an ECDSA P-256 root, written in the same layout so a restart keeps it).
//! Issued certificates are SPIFFE workload certificates: empty subject, one URI SAN (the identity), client and
//! server auth, the requested validity; the chain runs leaf → ... → root. Every certificate gets a random serial
//! number, and nothing of a CSR but its public key reaches the certificate.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer as _};

use crate::private_file;

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";
/// Issued certificates start a little in the past: clocks of nodes are never exactly in step.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates after the leaf, root last (PEM each).
    chain: Vec<String>,
    pub trust_domain: String,
}

impl Authority {
    /// Loads the plugged-in layout from `dir`, or creates it there when `dir` holds none of its files.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> anyhow::Result<Authority> {
        if !dir.join(CA_KEY).exists() && !dir.join(CA_CERT).exists() {
            generate(dir, trust_domain)?;
        }
        Authority::load(dir, trust_domain)
    }

    pub fn load(dir: &Path, trust_domain: &str) -> anyhow::Result<Authority> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()));
        let (ca_cert, ca_key, root) = (read(CA_CERT)?, read(CA_KEY)?, read(ROOT_CERT)?);
        let key = KeyPair::from_pem(&ca_key).with_context(|| format!("{CA_KEY}: not a supported private key (RSA or ECDSA)"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key).with_context(|| format!("{CA_CERT}: not a CA certificate"))?;
        let mut chain = match read(CERT_CHAIN) {
            Ok(text) => split_pem(&text),
            Err(_) => vec![ca_cert.trim().to_owned()],
        };
        if chain.first().map(String::as_str) != Some(ca_cert.trim()) {
            chain.insert(0, ca_cert.trim().to_owned());
        }
        let root = root.trim().to_owned();
        if chain.last() != Some(&root) {
            chain.push(root);
        }
        chain.dedup();
        Ok(Authority { issuer, chain, trust_domain: trust_domain.to_owned() })
    }

    /// The trust bundle: the root, last in every chain.
    pub fn root_pem(&self) -> &str {
        self.chain.last().map(String::as_str).unwrap_or_default()
    }

    /// Signs the CSR's public key for `identity` (a `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` URI) and returns
    /// the chain, leaf first, root last. Whatever names the CSR asks for, only `identity` is certified.
    pub fn issue(&self, csr_pem: &str, identity: &str, validity: Duration) -> anyhow::Result<Vec<String>> {
        let expected_prefix = format!("spiffe://{}/ns/", self.trust_domain);
        if !identity.starts_with(&expected_prefix) || !identity.contains("/sa/") {
            bail!("identity {identity:?} is not spiffe://{}/ns/<namespace>/sa/<service-account>", self.trust_domain);
        }
        let public_key = csr_public_key(csr_pem)?;
        // Built from nothing: every field and extension is the CA's choice (rcgen's CSR parsing would carry the
        // request's names, key usages and basic constraints into the parameters).
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().context("identity is not a valid URI")?)];
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&public_key, &self.issuer).context("signing the workload certificate")?;
        let mut chain = vec![leaf.pem().trim().to_owned()];
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }
}

impl Authority {
    /// A serving certificate for the control plane itself (its gRPC TLS): the given DNS names and IPs, signed by
    /// this CA, so node proxies verify it with the same root they trust for workloads. Returns (chain, key) PEM.
    pub fn issue_serving(&self, dns_names: &[String], ips: &[std::net::IpAddr]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).context("serving certificate names")?;
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(DnType::CommonName, "keel-control");
        params.serial_number = Some(random_serial()?);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(365 * 24 * 3600);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).context("signing the serving certificate")?;
        let mut chain = vec![cert.pem().trim().to_owned()];
        chain.extend(self.chain.iter().cloned());
        Ok((chain.join("\n") + "\n", key.serialize_pem()))
    }
}

/// The public key of a PEM PKCS#10 request, once its signature shows the requester holds the private key. The
/// rest of the request (subject, requested extensions, whatever they are) is never read.
fn csr_public_key(csr_pem: &str) -> anyhow::Result<SubjectPublicKeyInfo> {
    let der = ::pem::parse(csr_pem)
        .ok()
        .filter(|p| matches!(p.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"))
        .context("csr: not a PEM PKCS#10 request")?;
    let (_, csr) = X509CertificationRequest::from_der(der.contents()).map_err(|e| anyhow::anyhow!("csr: not a PKCS#10 request: {e}"))?;
    csr.verify_signature().map_err(|e| anyhow::anyhow!("csr: its signature does not verify: {e}"))?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw).context("csr: unsupported public key")
}

/// A serial number no other certificate of this CA has: 126 random bits, positive (top bit clear, so its DER
/// needs no padding byte) and at least 2^126 (next bit set: never zero, always 16 bytes). rcgen's default, a
/// hash of the public key, repeats for every certificate over the same key.
fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness for a certificate serial number"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Writes a fresh self-signed ECDSA P-256 root in the plugged-in layout (the root signs workload certs itself).
fn generate(dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    private_file::create_dir(dir)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name.push(DnType::CommonName, "keel root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
    let cert = params.self_signed(&key)?;
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).with_context(|| format!("writing {}", dir.join(name).display()));
    write(CA_CERT, &cert.pem())?;
    write(ROOT_CERT, &cert.pem())?;
    write(CERT_CHAIN, &cert.pem())?;
    // The key last: `load_or_generate` generates only into a directory holding neither key nor certificate.
    private_file::write(&dir.join(CA_KEY), key.serialize_pem().as_bytes())
}

/// Splits a PEM bundle into its certificates (trimmed, each with its BEGIN/END lines).
fn split_pem(text: &str) -> Vec<String> {
    let mut certs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        current.push_str(line.trim());
        current.push('\n');
        if line.starts_with("-----END ") {
            certs.push(current.trim().to_owned());
            current.clear();
        }
    }
    certs
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn csr() -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["ignored.example".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "ignored");
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn parse(pem_text: &str) -> Vec<u8> {
        ::pem::parse(pem_text).unwrap().into_contents()
    }

    #[test]
    fn issues_spiffe_workload_certificates_chained_to_the_root() {
        let dir = temp_dir("issue");
        let ca = Authority::load_or_generate(&dir, "cluster.local").unwrap();
        let chain = ca.issue(&csr(), "spiffe://cluster.local/ns/demo/sa/sleep", Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 2, "leaf and the (self-signed, signing) root");
        assert_eq!(chain.last().unwrap(), ca.root_pem());
        let leaf_der = parse(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert!(leaf.subject().iter_attributes().next().is_none(), "empty subject");
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "with an empty subject the SAN is critical");
        let uris: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(uris, ["URI(spiffe://cluster.local/ns/demo/sa/sleep)"], "only the identity, never the CSR's names");
        let validity = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(validity, 3600 + BACKDATE.as_secs() as i64);
        let root_der = parse(ca.root_pem());
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        leaf.verify_signature(Some(root.public_key())).expect("signed by the root");

        // A restart loads the same root from the plugged-in files.
        let again = Authority::load_or_generate(&dir, "cluster.local").unwrap();
        assert_eq!(again.root_pem(), ca.root_pem());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_foreign_identities_and_bad_requests() {
        let dir = temp_dir("refuse");
        let ca = Authority::load_or_generate(&dir, "cluster.local").unwrap();
        let err = ca.issue(&csr(), "spiffe://other.domain/ns/demo/sa/sleep", Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("spiffe://cluster.local/ns/"), "{err}");
        let err = ca.issue("not a csr", "spiffe://cluster.local/ns/demo/sa/sleep", Duration::from_secs(60)).unwrap_err();
        assert!(format!("{err:#}").contains("csr"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn certificate(pem_text: &str) -> X509Certificate<'static> {
        let der: &'static [u8] = Box::leak(parse(pem_text).into_boxed_slice());
        X509Certificate::from_der(der).unwrap().1
    }

    #[test]
    fn every_certificate_gets_a_random_serial_of_at_least_120_bits() {
        let dir = temp_dir("serial");
        let ca = Authority::load_or_generate(&dir, "cluster.local").unwrap();
        // One CSR, one key, twice: rcgen's default serial (a hash of the key) was the same for both.
        let csr = csr();
        let identity = "spiffe://cluster.local/ns/demo/sa/sleep";
        let first = certificate(&ca.issue(&csr, identity, Duration::from_secs(60)).unwrap()[0]);
        let second = certificate(&ca.issue(&csr, identity, Duration::from_secs(60)).unwrap()[0]);
        let serving = certificate(&ca.issue_serving(&["keel-control".into()], &[]).unwrap().0);
        let root = certificate(ca.root_pem());
        let serials: Vec<_> = [&first, &second, &serving, &root].iter().map(|c| c.serial.clone()).collect();
        for serial in &serials {
            assert!(serial.bits() >= 120 && serial.bits() <= 128, "{serial:x} has {} bits", serial.bits());
        }
        let distinct: std::collections::BTreeSet<_> = serials.iter().collect();
        assert_eq!(distinct.len(), serials.len(), "{serials:x?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_of_a_csr_but_its_public_key_reaches_the_certificate() {
        let dir = temp_dir("csr-extensions");
        let ca = Authority::load_or_generate(&dir, "cluster.local").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        params.subject_alt_names.push(SanType::URI("spiffe://cluster.local/ns/kube-system/sa/admin".try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00])];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let chain = ca.issue(&csr, "spiffe://cluster.local/ns/demo/sa/sleep", Duration::from_secs(60)).unwrap();
        let leaf = certificate(&chain[0]);
        assert!(leaf.subject().iter_attributes().next().is_none(), "no subject from the CSR");
        let names: Vec<String> = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["URI(spiffe://cluster.local/ns/demo/sa/sleep)"]);
        assert!(leaf.basic_constraints().unwrap().is_none_or(|bc| !bc.value.ca), "never a CA");
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign() && !usage.crl_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let oids: Vec<String> = leaf.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        assert!(!oids.iter().any(|oid| oid.starts_with("1.3.6.1.4.1.99999")), "{oids:?}");
        assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(), "the CSR's key is certified");

        // A request whose signature does not verify proves no key is held: refused.
        let mut der = parse(&csr);
        *der.last_mut().unwrap() ^= 1;
        let forged = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = ca.issue(&forged, "spiffe://cluster.local/ns/demo/sa/sleep", Duration::from_secs(60)).unwrap_err();
        assert!(format!("{err:#}").contains("csr"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_generated_root_key_is_owner_only_in_an_owner_only_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("modes").join("ca");
        Authority::load_or_generate(&dir, "cluster.local").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&dir) & 0o077, 0, "nothing for group or others");
        assert_eq!(mode(dir.parent().unwrap()) & 0o077, 0, "missing parents too");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    /// istiod's test CAs are often RSA (ztunnel's is RSA-2048): a plugged-in RSA root made by openssl signs too.
    #[test]
    fn an_rsa_plugged_in_root_signs_workload_certificates() {
        let dir = temp_dir("rsa");
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/O=cluster.local/CN=rsa root"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"])
            .arg("-keyout")
            .arg(dir.join(CA_KEY))
            .arg("-out")
            .arg(dir.join(CA_CERT))
            .output()
            .expect("openssl (Debian's, present on the machine image) makes the RSA root");
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        std::fs::copy(dir.join(CA_CERT), dir.join(ROOT_CERT)).unwrap();
        std::fs::copy(dir.join(CA_CERT), dir.join(CERT_CHAIN)).unwrap();
        let ca = Authority::load(&dir, "cluster.local").unwrap();
        let chain = ca.issue(&csr(), "spiffe://cluster.local/ns/demo/sa/sleep", Duration::from_secs(600)).unwrap();
        let leaf_der = parse(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let root_der = parse(ca.root_pem());
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        leaf.verify_signature(Some(root.public_key())).expect("an RSA signature by the plugged-in root");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
