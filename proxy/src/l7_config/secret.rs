//! Secrets (Envoy's SDS resources, on the ADS stream): a gateway's server certificates and the CA bundles it
//! verifies client certificates with, decoded and checked when they arrive, so a bad one is NACKed naming the
//! field and the last good version keeps serving. Keys are parsed once here (a handshake never parses PEM) and
//! never shown: the dump has each certificate's subject, SANs, serial and validity only.
use std::sync::Arc;

use keel_proto::{
    core::{data_source::Specifier, DataSource},
    tls::{secret::Type, Secret},
};
use prost::Message as _;
use rustls::{sign::CertifiedKey, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::{extensions::GeneralName, prelude::*};

/// What a secret holds, ready for rustls.
#[derive(Clone)]
pub enum Material {
    /// A server certificate chain with its key.
    Certificate(Arc<CertifiedKey>),
    /// The CAs client certificates must chain to.
    TrustedCa(Arc<RootCertStore>),
}

#[derive(Clone)]
pub struct SecretConfig {
    pub material: Material,
    pub summary: SecretSummary,
}

impl std::fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretConfig").field("summary", &self.summary).finish_non_exhaustive()
    }
}

/// A secret as `keel pc secrets` shows it (after `istioctl proxy-config secret`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretSummary {
    pub name: String,
    /// `Cert Chain` or `CA`.
    pub kind: String,
    /// Of the leaf (first) certificate: hex bytes separated by colons, as `openssl x509 -text` prints it.
    pub serial: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Certificates in the chain or bundle.
    pub certificates: usize,
}

pub fn decode_secret(bytes: &[u8]) -> Result<SecretConfig, String> {
    let secret = Secret::decode(bytes).map_err(|e| format!("not an envoy.extensions.transport_sockets.tls.v3.Secret: {e}"))?;
    match secret.r#type {
        Some(Type::TlsCertificate(c)) => {
            let chain = certificates(c.certificate_chain.as_ref(), "field `tls_certificate.certificate_chain`")?;
            let key_pem = inline(c.private_key.as_ref(), "field `tls_certificate.private_key`")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("field `tls_certificate.private_key`: no PEM private key ({e})"))?;
            let summary = summarize(&secret.name, "Cert Chain", &chain, "field `tls_certificate.certificate_chain`")?;
            let provider = rustls::crypto::ring::default_provider();
            let certified = CertifiedKey::from_der(chain, key, &provider)
                .map_err(|e| format!("field `tls_certificate.private_key`: does not match the certificate, or is of an unsupported type ({e})"))?;
            Ok(SecretConfig { material: Material::Certificate(Arc::new(certified)), summary })
        }
        Some(Type::ValidationContext(v)) => {
            let field = "field `validation_context.trusted_ca`";
            let bundle = certificates(v.trusted_ca.as_ref(), field)?;
            // Anything else in a validation context would narrow which clients pass; ignoring it would widen them.
            if !v.verify_certificate_hash.is_empty()
                || !v.verify_certificate_spki.is_empty()
                || v.crl.is_some()
                || !v.match_subject_alt_names.is_empty()
            {
                return Err("field `validation_context`: only trusted_ca is supported in a secret (pins, CRLs and SAN matchers are not)".into());
            }
            let summary = summarize(&secret.name, "CA", &bundle, field)?;
            let mut roots = RootCertStore::empty();
            for (i, der) in bundle.into_iter().enumerate() {
                roots.add(der).map_err(|e| format!("{field}: certificate {i} is not a usable trust anchor ({e})"))?;
            }
            Ok(SecretConfig { material: Material::TrustedCa(Arc::new(roots)), summary })
        }
        None => Err("field `type`: missing (keel takes tls_certificate and validation_context secrets)".into()),
    }
}

fn inline<'a>(source: Option<&'a DataSource>, field: &str) -> Result<&'a [u8], String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => Ok(b),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes()),
        Some(Specifier::Filename(_) | Specifier::EnvironmentVariable(_)) => Err(format!("{field}: only inline bytes or strings are supported")),
        None => Err(format!("{field}: missing")),
    }
}

fn certificates(source: Option<&DataSource>, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = inline(source, field)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| format!("{field}: not PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err(format!("{field}: no PEM certificate"));
    }
    Ok(chain)
}

fn summarize(name: &str, kind: &str, chain: &[CertificateDer<'_>], field: &str) -> Result<SecretSummary, String> {
    let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| format!("{field}: certificate 0 is not X.509 ({e})"))?;
    let sans = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                GeneralName::URI(u) => Some(format!("URI:{u}")),
                GeneralName::IPAddress(ip) => Some(format!("IP:{}", ip_text(ip))),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // RFC 3339 in UTC, as `keel pc certs` prints workload certificates.
    let time = |t: ASN1Time| {
        let t = t.to_datetime();
        format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
    };
    Ok(SecretSummary {
        name: name.to_owned(),
        kind: kind.to_owned(),
        serial: leaf.tbs_certificate.raw_serial_as_string(),
        subject: leaf.subject().to_string(),
        sans,
        not_before: time(leaf.validity().not_before),
        not_after: time(leaf.validity().not_after),
        certificates: chain.len(),
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => "?".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use keel_proto::tls::{CertificateValidationContext, TlsCertificate};

    use super::*;

    /// A CA, and leaf certificates it signs (PEM), for `names`.
    pub struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pub pem: String,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            let issuer = rcgen::Issuer::new(params, key);
            Ca { issuer, pem }
        }

        pub fn leaf(&self, names: &[&str]) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
            (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
        }
    }

    /// A self-signed certificate for `host` and its key, PEM.
    pub fn self_signed(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    pub fn certificate_secret(name: &str, chain: &str, key: &str) -> Vec<u8> {
        let data = |s: &str| Some(DataSource { specifier: Some(Specifier::InlineBytes(s.as_bytes().to_vec())) });
        Secret { name: name.into(), r#type: Some(Type::TlsCertificate(TlsCertificate { certificate_chain: data(chain), private_key: data(key) })) }
            .encode_to_vec()
    }

    pub fn ca_secret(name: &str, bundle: &str) -> Vec<u8> {
        let data = Some(DataSource { specifier: Some(Specifier::InlineBytes(bundle.as_bytes().to_vec())) });
        Secret { name: name.into(), r#type: Some(Type::ValidationContext(CertificateValidationContext { trusted_ca: data, ..Default::default() })) }
            .encode_to_vec()
    }

    #[test]
    fn a_certificate_secret_is_parsed_once_and_summarized_without_its_key() {
        let (cert, key) = self_signed("webapp.example.com");
        let s = decode_secret(&certificate_secret("kubernetes://web", &cert, &key)).unwrap();
        assert!(matches!(s.material, Material::Certificate(_)));
        assert_eq!(s.summary.kind, "Cert Chain");
        assert_eq!(s.summary.sans, ["DNS:webapp.example.com"]);
        assert!(!s.summary.serial.is_empty() && s.summary.not_after > s.summary.not_before, "{:?}", s.summary);
        assert!(!format!("{s:?}").contains("PRIVATE"));
        let ca = decode_secret(&ca_secret("kubernetes://web-cacert", &cert)).unwrap();
        assert!(matches!(ca.material, Material::TrustedCa(_)));
    }

    #[test]
    fn a_bad_secret_is_refused_naming_the_field() {
        let (cert, key) = self_signed("a.example.com");
        let (_, other_key) = self_signed("b.example.com");
        for (bytes, field) in [
            (certificate_secret("s", "not pem", &key), "certificate_chain"),
            (certificate_secret("s", &cert, "not a key"), "private_key"),
            (certificate_secret("s", &cert, &other_key), "does not match"),
            (ca_secret("s", ""), "trusted_ca"),
            (Secret { name: "s".into(), r#type: None }.encode_to_vec(), "field `type`"),
        ] {
            let error = decode_secret(&bytes).unwrap_err();
            assert!(error.contains(field), "{error}");
        }
    }
}
