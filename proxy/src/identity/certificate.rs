//! A workload certificate as keel holds it: the chain a CA returned (leaf first), the key keel generated for it,
//! the trust bundle that came with it, and its dates. Built only through `from_pem`, which refuses anything a
//! peer would later refuse (or worse, accept for the wrong identity): a leaf naming another identity, a key that
//! does not match, a chain that does not lead to the bundle.
use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use rustls::{client::verify_server_cert_signed_by_trust_anchor, server::ParsedCertificate, sign::CertifiedKey, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::{extensions::GeneralName, prelude::*};

use super::{tls::crypto_provider, Identity};

pub struct WorkloadCertificate {
    pub identity: Identity,
    /// Leaf first, then intermediates; never the root (peers have it).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The trust bundle: the last element of the CA's response.
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number, hex bytes separated by colons (as `openssl x509 -text` prints it).
    pub serial: String,
    /// Built once here, so a TLS handshake never parses keys or roots.
    certified_key: Arc<CertifiedKey>,
    trust_store: Arc<RootCertStore>,
}

impl WorkloadCertificate {
    /// Validates a CA response (`chain_pem`: leaf first, trust bundle last, each element one or more PEM
    /// certificates) for `identity`, issued for the public half of `key`.
    pub fn from_pem(identity: &Identity, chain_pem: &[String], key: PrivateKeyDer<'static>) -> anyhow::Result<WorkloadCertificate> {
        if chain_pem.len() < 2 {
            bail!("the CA returned {} certificate(s) for {identity}; expected the leaf first and the root last (at least 2)", chain_pem.len());
        }
        let (bundle, issued) = chain_pem.split_last().expect("at least two elements");
        let chain = parse_certificates(issued).context("the issued chain")?;
        let roots = parse_certificates(std::slice::from_ref(bundle)).context("the trust bundle (last element)")?;

        let (_, leaf) = X509Certificate::from_der(&chain[0]).context("the leaf certificate is not valid X.509")?;
        let uris = uri_sans(&leaf)?;
        if uris != [identity.to_string()] {
            bail!("the leaf certificate carries URI SANs {uris:?}; expected exactly [{:?}]", identity.to_string());
        }
        let not_before = system_time(leaf.validity().not_before.timestamp());
        let not_after = system_time(leaf.validity().not_after.timestamp());
        if not_after <= not_before {
            bail!("the leaf certificate's validity is empty (not_after is not after not_before)");
        }
        let serial = leaf.tbs_certificate.raw_serial_as_string();

        let provider = crypto_provider();
        let certified_key = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .context("the leaf certificate does not match the key keel generated for it")?;
        let mut trust_store = RootCertStore::empty();
        for root in &roots {
            trust_store.add(root.clone()).context("a trust bundle certificate is not a usable trust anchor")?;
        }
        // Checked at not_before at the latest: a CA whose clock runs slightly ahead issues certificates that are
        // valid a moment from now; that is skew, not a broken chain.
        let at = UnixTime::since_unix_epoch(SystemTime::now().max(not_before).duration_since(UNIX_EPOCH).unwrap_or_default());
        let parsed = ParsedCertificate::try_from(&chain[0]).context("the leaf certificate")?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &trust_store, &chain[1..], at, provider.signature_verification_algorithms.all)
            .context("the issued chain does not lead to the trust bundle returned with it")?;

        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain,
            key,
            roots,
            not_before,
            not_after,
            serial,
            certified_key: Arc::new(certified_key),
            trust_store: Arc::new(trust_store),
        })
    }

    /// Half-way through the validity, when Istio's clients renew: time enough to retry a failing CA.
    pub fn refresh_at(&self) -> SystemTime {
        let validity = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + validity / 2
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    pub fn is_expired(&self) -> bool {
        self.is_expired_at(SystemTime::now())
    }

    /// The chain and signing key, ready for a rustls handshake.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified_key.clone()
    }

    /// The trust bundle as rustls verifies against it.
    pub fn trust_store(&self) -> Arc<RootCertStore> {
        self.trust_store.clone()
    }
}

impl fmt::Debug for WorkloadCertificate {
    // By hand: the key stays out of logs, and DER bytes say nothing to a reader.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// Every URI SAN of a certificate (none when it has no SAN extension).
pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> anyhow::Result<Vec<String>> {
    let san = cert.subject_alternative_name().context("the certificate's subjectAltName extension is malformed")?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// All certificates in the PEM texts, in order; an element with none is an error.
fn parse_certificates(pems: &[String]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    for (i, pem) in pems.iter().enumerate() {
        let before = certs.len();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            certs.push(cert.with_context(|| format!("element {i} is not valid PEM"))?);
        }
        if certs.len() == before {
            bail!("element {i} holds no PEM certificate");
        }
    }
    Ok(certs)
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

/// RFC 3339 in UTC, second precision (`2025-01-31T12:00:00Z`), as `keel pc certs` shows dates.
pub fn rfc3339(at: SystemTime) -> String {
    // `::time`: x509-parser's prelude has a `time` module of its own.
    let t = ::time::OffsetDateTime::from(at);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::provider::tests::{identity, local_ca};

    /// A fresh key and the CSR for it, as the manager makes them.
    pub(crate) fn key_and_csr(id: &Identity) -> (PrivateKeyDer<'static>, String) {
        crate::identity::manager::generate_key_and_csr(id).unwrap()
    }

    #[test]
    fn a_ca_response_becomes_a_certificate_with_its_dates() {
        let ca = local_ca("cert-ok", "cluster.local");
        let id = identity("cluster.local", "demo", "sleep");
        let (key, csr) = key_and_csr(&id);
        let pems = ca.authority().issue(&csr, &id.to_string(), Duration::from_secs(3600)).unwrap();
        let cert = WorkloadCertificate::from_pem(&id, &pems, key).unwrap();
        assert_eq!(cert.chain.len(), 1, "the leaf; the self-signed root is the bundle, not part of the chain");
        assert_eq!(cert.roots.len(), 1);
        assert!(!cert.serial.is_empty());
        let validity = cert.not_after.duration_since(cert.not_before).unwrap();
        assert_eq!(cert.refresh_at(), cert.not_before + validity / 2);
        assert!(!cert.is_expired());
        assert!(cert.is_expired_at(cert.not_after));
    }

    #[test]
    fn a_leaf_for_another_identity_is_refused_naming_it() {
        let ca = local_ca("cert-other", "cluster.local");
        let asked = identity("cluster.local", "demo", "sleep");
        let (key, csr) = key_and_csr(&asked);
        let pems = ca.authority().issue(&csr, "spiffe://cluster.local/ns/demo/sa/echo", Duration::from_secs(60)).unwrap();
        let err = WorkloadCertificate::from_pem(&asked, &pems, key).unwrap_err();
        assert!(err.to_string().contains("sa/echo") && err.to_string().contains("sa/sleep"), "{err}");
    }

    #[test]
    fn short_responses_foreign_keys_and_broken_chains_are_refused() {
        let ca = local_ca("cert-bad", "cluster.local");
        let other_ca = local_ca("cert-bad-other", "cluster.local");
        let id = identity("cluster.local", "demo", "sleep");
        let (key, csr) = key_and_csr(&id);
        let pems = ca.authority().issue(&csr, &id.to_string(), Duration::from_secs(60)).unwrap();

        let err = WorkloadCertificate::from_pem(&id, &pems[..1], key.clone_key()).unwrap_err();
        assert!(err.to_string().contains("returned 1 certificate"), "{err}");

        let (other_key, _) = key_and_csr(&id);
        let err = WorkloadCertificate::from_pem(&id, &pems, other_key).unwrap_err();
        assert!(format!("{err:#}").contains("does not match the key"), "{err:#}");

        let wrong_bundle = vec![pems[0].clone(), other_ca.authority().root_pem().to_owned()];
        let err = WorkloadCertificate::from_pem(&id, &wrong_bundle, key.clone_key()).unwrap_err();
        assert!(format!("{err:#}").contains("does not lead to the trust bundle"), "{err:#}");

        let garbage = vec![pems[0].clone(), "not pem".to_owned()];
        let err = WorkloadCertificate::from_pem(&id, &garbage, key).unwrap_err();
        assert!(format!("{err:#}").contains("trust bundle"), "{err:#}");
    }

    #[test]
    fn rfc3339_is_utc_with_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}
