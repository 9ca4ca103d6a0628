//! A Gateway server's TLS termination, as istiod configures a gateway Envoy: the filter chain's transport socket
//! (an Envoy `DownstreamTlsContext` naming its certificate and CA bundle as SDS resources on the ADS stream) and
//! those secrets, read from Kubernetes Secrets by `credentialName` in the gateway pod's own namespace.
//!
//! Names and keys follow istiod: `credentialName: x` is the SDS resource `kubernetes://x`; its certificate is
//! the Secret's `cert`/`key` or else `tls.crt`/`tls.key`; the CA bundle a MUTUAL server verifies clients with is
//! `kubernetes://x-cacert`: the Secret `x-cacert` (`cacert` or `ca.crt`), else `ca.crt`/`cacert` of `x`.
//!
//! What keel cannot honour makes the server unserved, never weaker: a pinned client certificate
//! (`verifyCertificateSpki`/`Hash`), a revocation list (`caCrl`), or a protocol ceiling below TLS 1.2 would each
//! admit clients the Gateway meant to refuse if ignored. A floor below TLS 1.2 is raised to 1.2 (stricter).
use std::collections::BTreeMap;

use keel_proto::{
    core::{data_source, DataSource, TransportSocket},
    matcher::{string_matcher::MatchPattern, StringMatcher},
    tls::{
        common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol, CertificateValidationContext, CommonTlsContext,
        DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate, TlsParameters,
    },
    DOWNSTREAM_TLS_CONTEXT_TYPE_URL, FILE_CERTIFICATE_SDS_PREFIX, FILE_ROOT_SDS_PREFIX, TLS_TRANSPORT_SOCKET,
};
use prost::Message as _;
use prost_types::Any;

use super::clusters::ads;
use crate::objects::{self, Server, ServerTlsSettings};

/// The SDS name prefix of a Kubernetes Secret (istiod's `kubernetes://`).
pub const KUBERNETES_SECRET_PREFIX: &str = "kubernetes://";
/// Appended to a credential's SDS name for its CA bundle (istiod's `SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";

/// The TLS 1.2 cipher suites keel's TLS stack offers, by the OpenSSL names Istio's `cipherSuites` use (TLS 1.3
/// suites are not configurable, in Istio as in Envoy).
pub const CIPHER_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// The Secrets of the gateway pod's namespace, by name.
pub type NamespaceSecrets<'a> = BTreeMap<&'a str, &'a objects::Secret>;

/// How one HTTPS server terminates TLS: its transport socket, and the secrets it names with their contents (a
/// secret missing or unusable is left out, with a warning: the gateway then refuses handshakes for this server
/// rather than serving it without the certificate or client verification it asks for).
#[derive(Debug, PartialEq)]
pub struct Termination {
    pub transport_socket: TransportSocket,
    pub secrets: BTreeMap<String, Secret>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ClientCertificates {
    NotAsked,
    Required,
    Optional,
}

fn terminating_mode(tls: &ServerTlsSettings) -> Option<ClientCertificates> {
    match tls.mode.as_deref().unwrap_or("PASSTHROUGH").to_ascii_uppercase().as_str() {
        "SIMPLE" => Some(ClientCertificates::NotAsked),
        "MUTUAL" => Some(ClientCertificates::Required),
        "OPTIONAL_MUTUAL" => Some(ClientCertificates::Optional),
        _ => None,
    }
}

/// Checks a server's TLS settings. `Err` says why the server is not served (naming the field); warnings name
/// what is adjusted.
pub fn check(server: &Server, at: &dyn Fn(&str) -> String) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let Some(tls) = &server.tls else {
        return Err(format!("{}: an HTTPS server needs tls settings", at("tls")));
    };
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    let Some(client_certificates) = terminating_mode(tls) else {
        return Err(format!("{}: {mode} is not served by keel gateway yet (SIMPLE, MUTUAL and OPTIONAL_MUTUAL are)", at("tls.mode")));
    };
    if let Source::Files { ca: None, .. } = credential(tls, at)? {
        if client_certificates != ClientCertificates::NotAsked {
            return Err(format!("{}: a {mode} server with certificates from files needs the client CA file", at("tls.caCertificates")));
        }
    }
    for (field, set) in [
        ("tls.verifyCertificateSpki", !tls.verify_certificate_spki.is_empty()),
        ("tls.verifyCertificateHash", !tls.verify_certificate_hash.is_empty()),
        ("tls.caCrl", tls.ca_crl.is_some()),
    ] {
        if set {
            return Err(format!("{}: not supported; the server is not served rather than admit clients it would refuse", at(field)));
        }
    }
    if client_certificates == ClientCertificates::NotAsked && !tls.subject_alt_names.is_empty() {
        warnings.push(format!("{}: only applies to MUTUAL servers: ignored", at("tls.subjectAltNames")));
    }
    let (min, max) = (
        protocol(tls.min_protocol_version.as_deref(), &at("tls.minProtocolVersion"))?,
        protocol(tls.max_protocol_version.as_deref(), &at("tls.maxProtocolVersion"))?,
    );
    if matches!(max, TlsProtocol::TlSv10 | TlsProtocol::TlSv11) {
        return Err(format!("{}: keel serves TLS 1.2 and 1.3 only", at("tls.maxProtocolVersion")));
    }
    if matches!(min, TlsProtocol::TlSv10 | TlsProtocol::TlSv11) {
        warnings.push(format!("{}: keel serves TLS 1.2 and 1.3 only: raised to TLSV1_2", at("tls.minProtocolVersion")));
    }
    if min == TlsProtocol::TlSv13 && max == TlsProtocol::TlSv12 {
        return Err(format!("{}: below tls.minProtocolVersion", at("tls.maxProtocolVersion")));
    }
    let unknown: Vec<&String> = tls.cipher_suites.iter().filter(|c| !CIPHER_SUITES.contains(&c.as_str())).collect();
    if !unknown.is_empty() {
        if unknown.len() == tls.cipher_suites.len() {
            return Err(format!("{}: none of {unknown:?} is a suite keel offers ({})", at("tls.cipherSuites"), CIPHER_SUITES.join(", ")));
        }
        warnings.push(format!("{}: {unknown:?} not offered by keel: left out", at("tls.cipherSuites")));
    }
    Ok(warnings)
}

/// Where a server's certificate (and client CA) comes from.
#[derive(Debug, PartialEq)]
enum Source {
    /// A Kubernetes Secret, by `credentialName`: its namespace when the name gives one, and its name.
    Secret { namespace: Option<String>, name: String },
    /// Files in the gateway pod (`serverCertificate`, `privateKey`, `caCertificates`): istiod names them as the
    /// SDS resources `file-cert:<certificate>~<key>` and `file-root:<ca>`, which the gateway reads itself.
    Files { certificate: String, key: String, ca: Option<String> },
}

/// The source of a server's certificate: `credentialName` (or a single `credentialNames` entry), with istiod's
/// forms `x`, `kubernetes://x` and `kubernetes://<namespace>/x`; or files.
fn credential(tls: &ServerTlsSettings, at: &dyn Fn(&str) -> String) -> Result<Source, String> {
    if !tls.tls_certificates.is_empty() {
        return Err(format!("{}: not supported by keel gateway; use tls.credentialName or tls.serverCertificate", at("tls.tlsCertificates")));
    }
    let files =
        [("tls.serverCertificate", &tls.server_certificate), ("tls.privateKey", &tls.private_key), ("tls.caCertificates", &tls.ca_certificates)];
    let file_set = files.iter().find(|(_, path)| path.is_some()).map(|(field, _)| *field);
    let name = match (&tls.credential_name, tls.credential_names.as_slice(), file_set) {
        (None, [], Some(_)) => {
            for (field, path) in files {
                if let Some(path) = path {
                    if !path.starts_with('/') {
                        return Err(format!("{}: {path:?} is not an absolute path in the gateway pod", at(field)));
                    }
                }
            }
            let (Some(certificate), Some(key)) = (&tls.server_certificate, &tls.private_key) else {
                return Err(format!(
                    "{}: a server certificate from files needs tls.serverCertificate and tls.privateKey",
                    at("tls.serverCertificate")
                ));
            };
            if certificate.contains('~') || key.contains('~') {
                return Err(format!("{}: a path with '~' cannot be named in an SDS resource", at("tls.serverCertificate")));
            }
            return Ok(Source::Files { certificate: certificate.clone(), key: key.clone(), ca: tls.ca_certificates.clone() });
        }
        (_, _, Some(field)) => return Err(format!("{}: set together with tls.credentialName (one source per server)", at(field))),
        (Some(name), [], None) => name,
        (None, [name], None) => name,
        (None, [], None) => return Err(format!("{}: required (or tls.serverCertificate and tls.privateKey files)", at("tls.credentialName"))),
        (Some(_), [_, ..], None) => return Err(format!("{}: set together with tls.credentialName", at("tls.credentialNames"))),
        (None, [_, _, ..], None) => return Err(format!("{}: one certificate per server is supported", at("tls.credentialNames"))),
    };
    let field = if tls.credential_name.is_some() { "tls.credentialName" } else { "tls.credentialNames[0]" };
    let (namespace, secret) = match name.strip_prefix(KUBERNETES_SECRET_PREFIX) {
        Some(rest) => match rest.split_once('/') {
            Some((ns, n)) => (Some(ns.to_owned()), n.to_owned()),
            None => (None, rest.to_owned()),
        },
        None if name.contains("://") => return Err(format!("{}: {name:?}: only Kubernetes Secrets (kubernetes://) are supported", at(field))),
        None => (None, name.clone()),
    };
    if secret.is_empty() || secret.contains('/') {
        return Err(format!("{}: {name:?} is not a Secret name", at(field)));
    }
    Ok(Source::Secret { namespace, name: secret })
}

fn protocol(version: Option<&str>, field: &str) -> Result<TlsProtocol, String> {
    Ok(match version.map(str::to_ascii_uppercase).as_deref() {
        None | Some("TLS_AUTO") => TlsProtocol::TlsAuto,
        Some("TLSV1_0") => TlsProtocol::TlSv10,
        Some("TLSV1_1") => TlsProtocol::TlSv11,
        Some("TLSV1_2") => TlsProtocol::TlSv12,
        Some("TLSV1_3") => TlsProtocol::TlSv13,
        Some(other) => return Err(format!("{field}: {other:?} is not TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3")),
    })
}

/// The termination of a server that passed [`check`], for a gateway pod in `pod_namespace`. Warnings name the
/// Secret and key when a secret is missing or unusable.
pub fn termination(
    server: &Server,
    at: &dyn Fn(&str) -> String,
    pod_namespace: &str,
    secrets: &NamespaceSecrets,
    warnings: &mut Vec<String>,
) -> Option<Termination> {
    let tls = server.tls.as_ref()?;
    let client_certificates = terminating_mode(tls)?;
    let mut out = BTreeMap::new();
    let (certificate_name, ca_name) = match credential(tls, at).ok()? {
        // The gateway reads the files itself; nothing is shipped.
        Source::Files { certificate, key, ca } => {
            (format!("{FILE_CERTIFICATE_SDS_PREFIX}{certificate}~{key}"), ca.map(|ca| format!("{FILE_ROOT_SDS_PREFIX}{ca}")))
        }
        Source::Secret { namespace, name } => {
            if namespace.as_deref().is_some_and(|ns| ns != pod_namespace) {
                // istiod lets a gateway read another namespace's Secret only with RBAC rights there; keel does not grant it.
                warnings.push(format!(
                    "{}: a Secret in another namespace than the gateway pod's ({pod_namespace}) is not read",
                    at("tls.credentialName")
                ));
                return None;
            }
            let certificate_name = format!("{KUBERNETES_SECRET_PREFIX}{name}");
            match certificate(secrets, &name) {
                Ok(certificate) => drop(out.insert(
                    certificate_name.clone(),
                    Secret { name: certificate_name.clone(), r#type: Some(secret::Type::TlsCertificate(certificate)) },
                )),
                Err(why) => warnings.push(format!("{}: {why}: the server refuses TLS handshakes until it is fixed", at("tls.credentialName"))),
            }
            let ca_name = format!("{certificate_name}{CA_SUFFIX}");
            if client_certificates != ClientCertificates::NotAsked {
                match ca_bundle(secrets, &name) {
                    Ok(ca) => drop(out.insert(ca_name.clone(), Secret { name: ca_name.clone(), r#type: Some(secret::Type::ValidationContext(ca)) })),
                    Err(why) => warnings.push(format!("{}: {why}: the server refuses TLS handshakes until it is fixed", at("tls.credentialName"))),
                }
            }
            (certificate_name, Some(ca_name))
        }
    };
    let mut validation = None;
    if let Some(ca_name) = ca_name.filter(|_| client_certificates != ClientCertificates::NotAsked) {
        validation =
            Some(ValidationContextType::CombinedValidationContext(keel_proto::tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_subject_alt_names: exact_matchers(&tls.subject_alt_names),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(&ca_name)),
            }));
    }
    let floor = |p: TlsProtocol| if matches!(p, TlsProtocol::TlSv10 | TlsProtocol::TlSv11) { TlsProtocol::TlSv12 } else { p };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: floor(protocol(tls.min_protocol_version.as_deref(), "").unwrap_or_default()) as i32,
                tls_maximum_protocol_version: protocol(tls.max_protocol_version.as_deref(), "").unwrap_or_default() as i32,
                cipher_suites: tls.cipher_suites.iter().filter(|c| CIPHER_SUITES.contains(&c.as_str())).cloned().collect(),
            }),
            tls_certificate_sds_secret_configs: vec![sds(&certificate_name)],
            validation_context_type: validation,
            // istiod's ALPN for an HTTPS gateway server.
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        require_client_certificate: Some(client_certificates == ClientCertificates::Required),
        require_sni: None,
    };
    Some(Termination {
        transport_socket: TransportSocket {
            name: TLS_TRANSPORT_SOCKET.into(),
            config_type: Some(keel_proto::core::transport_socket::ConfigType::TypedConfig(Any {
                type_url: DOWNSTREAM_TLS_CONTEXT_TYPE_URL.into(),
                value: context.encode_to_vec(),
            })),
        },
        secrets: out,
    })
}

/// Istio's `subjectAltNames`: Envoy's exact, case-sensitive SAN matchers.
pub(super) fn exact_matchers(names: &[String]) -> Vec<StringMatcher> {
    names.iter().map(|san| StringMatcher { match_pattern: Some(MatchPattern::Exact(san.clone())), ..Default::default() }).collect()
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_owned(), sds_config: Some(ads()) }
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())) })
}

/// The first of `keys` the Secret has, non-empty.
fn value<'a>(secret: &'a objects::Secret, keys: &[&str]) -> Option<&'a [u8]> {
    keys.iter().find_map(|k| secret.value(k)).filter(|v| !v.is_empty())
}

fn certificate(secrets: &NamespaceSecrets, name: &str) -> Result<TlsCertificate, String> {
    let secret = secrets.get(name).ok_or_else(|| format!("Secret {name:?} not found"))?;
    let (chain, key) = match (value(secret, &["cert"]), value(secret, &["key"])) {
        (Some(c), Some(k)) => (c, k),
        _ => match (value(secret, &["tls.crt"]), value(secret, &["tls.key"])) {
            (Some(c), Some(k)) => (c, k),
            _ => return Err(format!("Secret {name:?} has no tls.crt and tls.key (nor cert and key); it has {:?}", secret.keys())),
        },
    };
    pem_blocks(chain, &["CERTIFICATE"]).map_err(|e| format!("Secret {name:?}: its certificate {e}"))?;
    pem_blocks(key, &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"]).map_err(|e| format!("Secret {name:?}: its key {e}"))?;
    Ok(TlsCertificate { certificate_chain: inline(chain), private_key: inline(key) })
}

fn ca_bundle(secrets: &NamespaceSecrets, name: &str) -> Result<CertificateValidationContext, String> {
    let ca_secret = format!("{name}{CA_SUFFIX}");
    let bundle = secrets
        .get(ca_secret.as_str())
        .and_then(|s| value(s, &["cacert", "ca.crt"]))
        .or_else(|| secrets.get(name).and_then(|s| value(s, &["ca.crt", "cacert"])))
        .ok_or_else(|| {
            format!("no CA bundle for client certificates: neither Secret {ca_secret:?} (cacert or ca.crt) nor ca.crt/cacert in {name:?}")
        })?;
    pem_blocks(bundle, &["CERTIFICATE"]).map_err(|e| format!("Secret {name:?}: its CA bundle {e}"))?;
    Ok(CertificateValidationContext { trusted_ca: inline(bundle), ..Default::default() })
}

/// Checks that `bytes` is PEM holding at least one block, every one of the `tags`.
fn pem_blocks(bytes: &[u8], tags: &[&str]) -> Result<usize, String> {
    let blocks = pem::parse_many(bytes).map_err(|e| format!("is not PEM ({e})"))?;
    if blocks.is_empty() {
        return Err("holds no PEM block".into());
    }
    if let Some(other) = blocks.iter().find(|b| !tags.contains(&b.tag())) {
        return Err(format!("holds a {:?} block, not {}", other.tag(), tags.join(" or ")));
    }
    Ok(blocks.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ServerPort;

    fn server(tls: &str) -> Server {
        Server {
            port: ServerPort { number: 443, name: Some("https".into()), protocol: "HTTPS".into(), target_port: None },
            hosts: vec!["a.example.com".into()],
            tls: Some(serde_yaml_ng::from_str(tls).unwrap()),
            ..Default::default()
        }
    }

    fn at(field: &str) -> String {
        format!("spec.servers[0].{field}")
    }

    #[test]
    fn settings_keel_cannot_honour_leave_the_server_unserved_naming_the_field() {
        for (tls, field) in [
            ("{mode: PASSTHROUGH}", "tls.mode"),
            ("{mode: ISTIO_MUTUAL}", "tls.mode"),
            ("{mode: SIMPLE}", "tls.credentialName"),
            ("{mode: SIMPLE, serverCertificate: /c.pem}", "tls.serverCertificate"),
            ("{mode: SIMPLE, serverCertificate: c.pem, privateKey: /k.pem}", "tls.serverCertificate"),
            ("{mode: SIMPLE, credentialName: c, privateKey: /k.pem}", "tls.privateKey"),
            ("{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}", "tls.caCertificates"),
            ("{mode: SIMPLE, tlsCertificates: [{}]}", "tls.tlsCertificates"),
            ("{mode: SIMPLE, credentialName: builtin://}", "tls.credentialName"),
            ("{mode: SIMPLE, credentialNames: [a, b]}", "tls.credentialNames"),
            ("{mode: MUTUAL, credentialName: c, verifyCertificateSpki: [x]}", "tls.verifyCertificateSpki"),
            ("{mode: MUTUAL, credentialName: c, caCrl: /crl.pem}", "tls.caCrl"),
            ("{mode: SIMPLE, credentialName: c, maxProtocolVersion: TLSV1_1}", "tls.maxProtocolVersion"),
            ("{mode: SIMPLE, credentialName: c, cipherSuites: [RC4-SHA]}", "tls.cipherSuites"),
        ] {
            let error = check(&server(tls), &at).unwrap_err();
            assert!(error.contains(&at(field)), "{tls}: {error}");
        }
        let warnings = check(
            &server("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_0, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, RC4-SHA]}"),
            &at,
        )
        .unwrap();
        assert!(warnings.iter().any(|w| w.contains("minProtocolVersion") && w.contains("raised")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("RC4-SHA")), "{warnings:?}");
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn secret(name: &str, data: &[(&str, &str)]) -> objects::Secret {
        let data: String = data.iter().map(|(k, v)| format!("  {k}: {v:?}\n")).collect();
        serde_yaml_ng::from_str(&format!("metadata: {{name: {name}, namespace: gw}}\nstringData:\n{data}")).unwrap()
    }

    /// Files in the gateway pod: named as istiod names them for pilot-agent's SDS, and nothing shipped.
    #[test]
    fn a_server_with_certificates_from_files_names_them_as_sds_resources_the_gateway_reads() {
        let mut warnings = vec![];
        let tls = "{mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt}";
        let t = termination(&server(tls), &at, "gw", &NamespaceSecrets::new(), &mut warnings).unwrap();
        assert!(warnings.is_empty() && t.secrets.is_empty(), "{warnings:?} {:?}", t.secrets);
        let Some(keel_proto::core::transport_socket::ConfigType::TypedConfig(any)) = &t.transport_socket.config_type else { panic!() };
        let common = DownstreamTlsContext::decode(any.value.as_slice()).unwrap().common_tls_context.unwrap();
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "file-cert:/etc/certs/tls.crt~/etc/certs/tls.key");
        let Some(ValidationContextType::CombinedValidationContext(combined)) = common.validation_context_type else { panic!() };
        assert_eq!(combined.validation_context_sds_secret_config.unwrap().name, "file-root:/etc/certs/ca.crt");
    }

    #[test]
    fn a_mutual_server_names_its_certificate_and_ca_bundle_as_istiod_does() {
        let (cert, ca) = (secret("web", &[("tls.crt", CERT), ("tls.key", KEY)]), secret("web-cacert", &[("ca.crt", CERT)]));
        let secrets = NamespaceSecrets::from([("web", &cert), ("web-cacert", &ca)]);
        let mut warnings = vec![];
        let t =
            termination(&server("{mode: MUTUAL, credentialName: web, subjectAltNames: [client.example.com]}"), &at, "gw", &secrets, &mut warnings)
                .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(t.secrets.keys().collect::<Vec<_>>(), ["kubernetes://web", "kubernetes://web-cacert"]);
        let Some(keel_proto::core::transport_socket::ConfigType::TypedConfig(any)) = &t.transport_socket.config_type else { panic!() };
        let context = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(context.require_client_certificate, Some(true));
        let common = context.common_tls_context.unwrap();
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes://web");
        assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
        assert!(format!("{:?}", common.validation_context_type).contains("kubernetes://web-cacert"));
        assert!(format!("{:?}", common.validation_context_type).contains("client.example.com"));
        // The CA from the credential's own ca.crt when there is no -cacert Secret.
        let own = secret("own", &[("cert", CERT), ("key", KEY), ("ca.crt", CERT)]);
        let secrets = NamespaceSecrets::from([("own", &own)]);
        let t = termination(&server("{mode: MUTUAL, credentialName: kubernetes://own}"), &at, "gw", &secrets, &mut warnings).unwrap();
        assert_eq!(t.secrets.len(), 2, "{warnings:?}");
    }

    #[test]
    fn an_unusable_secret_is_left_out_with_a_warning_naming_it() {
        let no_key = secret("web", &[("tls.crt", CERT)]);
        let not_pem = secret("junk", &[("tls.crt", "hello"), ("tls.key", KEY)]);
        let secrets = NamespaceSecrets::from([("web", &no_key), ("junk", &not_pem)]);
        for (name, want) in [("web", "has no tls.crt and tls.key"), ("junk", "holds no PEM block"), ("absent", "not found")] {
            let mut warnings = vec![];
            let t = termination(&server(&format!("{{mode: SIMPLE, credentialName: {name}}}")), &at, "gw", &secrets, &mut warnings).unwrap();
            assert!(t.secrets.is_empty());
            assert!(warnings.iter().any(|w| w.contains(want) && w.contains(name) && w.contains("tls.credentialName")), "{warnings:?}");
        }
        // Another namespace's Secret is not read.
        let mut warnings = vec![];
        assert!(termination(&server("{mode: SIMPLE, credentialName: kubernetes://other/web}"), &at, "gw", &secrets, &mut warnings).is_none());
        assert!(warnings[0].contains("another namespace"), "{warnings:?}");
    }
}
