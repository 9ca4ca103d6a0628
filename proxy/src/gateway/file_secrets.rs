//! A gateway server's certificates from files in the gateway pod (Gateway `serverCertificate`, `privateKey`,
//! `caCertificates`): keel-control names them as istiod does, the SDS resources `file-cert:<certificate>~<key>` and
//! `file-root:<ca>`, and ships nothing; the gateway reads the files itself, as pilot-agent's SDS server does for
//! Envoy, and puts them in its config as the secrets of those names. The files are read again every few seconds
//! (a mounted Kubernetes Secret changes in place), and a changed file is served from the next handshake on.
//!
//! Like a secret from the control plane: checked before use (a certificate without its key, a key of another
//! certificate, no PEM at all), a bad version is logged and the last good one kept; until one is good, the
//! server refuses handshakes.
use std::{collections::HashMap, sync::Arc, time::Duration};

use keel_proto::{
    core::{data_source::Specifier, DataSource},
    tls::{secret::Type, CertificateValidationContext, Secret, TlsCertificate},
    FILE_CERTIFICATE_SDS_PREFIX, FILE_ROOT_SDS_PREFIX, SECRET_TYPE_URL,
};
use prost::Message as _;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    l7_config::{config::L7Config, local_file, secret::decode_secret},
    xds::state::{Resource, WorkloadStore},
};

/// How often the files are read again.
pub const POLL: Duration = Duration::from_secs(2);

/// What was read last for one secret name: the files' bytes, or why they could not be read or used.
#[derive(PartialEq)]
enum Read {
    Applied(Vec<u8>),
    Failed(String),
}

/// Keeps the file secrets the listeners name in `store`, until `stopped`.
pub async fn follow(store: Arc<WorkloadStore>, mut stopped: watch::Receiver<bool>) {
    let mut read: HashMap<String, Read> = HashMap::new();
    let mut changes = store.subscribe();
    loop {
        let wanted = named(&store.snapshot().l7);
        let mut upserts = Vec::new();
        for name in &wanted {
            let outcome = load(name);
            let bytes = match &outcome {
                Ok((bytes, _)) => Read::Applied(bytes.clone()),
                Err(why) => Read::Failed(why.clone()),
            };
            if read.get(name) == Some(&bytes) {
                continue;
            }
            match outcome {
                Ok((_, secret)) => {
                    info!(secret = %name, "gateway certificate files loaded");
                    upserts.push((name.clone(), Resource::Secret(Arc::new(secret))));
                }
                // The last good version (if any) stays in the config.
                Err(why) => warn!(secret = %name, error = %why, "gateway certificate files not usable"),
            }
            read.insert(name.clone(), bytes);
        }
        let removed: Vec<(String, String)> =
            read.keys().filter(|name| !wanted.contains(*name)).map(|name| (SECRET_TYPE_URL.to_owned(), name.clone())).collect();
        for (_, name) in &removed {
            read.remove(name);
        }
        if !upserts.is_empty() || !removed.is_empty() {
            store.apply(upserts, &removed);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = changes.changed() => {}
            _ = stopped.changed() => return,
        }
    }
}

/// The file secrets the TLS chains of the listeners name.
fn named(l7: &L7Config) -> Vec<String> {
    let mut names: Vec<String> = l7
        .listeners
        .values()
        .flat_map(|l| l.chains.iter().filter_map(|c| c.tls.as_ref()))
        .flat_map(|tls| std::iter::once(&tls.certificate).chain(&tls.trusted_ca))
        .filter(|name| name.starts_with(FILE_CERTIFICATE_SDS_PREFIX) || name.starts_with(FILE_ROOT_SDS_PREFIX))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The files of secret `name`, read and checked: their bytes (to tell a change), and the secret.
fn load(name: &str) -> Result<(Vec<u8>, crate::l7_config::secret::SecretConfig), String> {
    let file = |path: &str| local_file::read(path).map_err(|e| format!("reading {path}: {e}"));
    let inline = |bytes: &[u8]| Some(DataSource { specifier: Some(Specifier::InlineBytes(bytes.to_vec())) });
    let (bytes, kind) = if let Some(paths) = name.strip_prefix(FILE_CERTIFICATE_SDS_PREFIX) {
        let (certificate, key) = paths.split_once('~').ok_or_else(|| format!("{name:?} is not file-cert:<certificate>~<key>"))?;
        let (certificate, key) = (file(certificate)?, file(key)?);
        let kind = Type::TlsCertificate(TlsCertificate { certificate_chain: inline(&certificate), private_key: inline(&key) });
        ([certificate, key].concat(), kind)
    } else {
        let ca = file(name.strip_prefix(FILE_ROOT_SDS_PREFIX).unwrap_or(name))?;
        let kind = Type::ValidationContext(CertificateValidationContext { trusted_ca: inline(&ca), ..Default::default() });
        (ca, kind)
    };
    let secret = decode_secret(&Secret { name: name.to_owned(), r#type: Some(kind) }.encode_to_vec())?;
    Ok((bytes, secret))
}

#[cfg(test)]
mod tests {
    use keel_mesh::{
        source::{load_text, Loaded},
        translate::{translate, Mesh},
    };

    use super::*;
    use crate::l7_config::{config::decode_listener, secret::tests::Ca};

    /// A gateway pod's listeners for a SIMPLE server whose certificate is the files `cert.pem`/`key.pem` in `dir`.
    fn store_with_listener(dir: &std::path::Path) -> Arc<WorkloadStore> {
        let (cert, key) = (dir.join("cert.pem").display().to_string(), dir.join("key.pem").display().to_string());
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ingress, namespace: gw, labels: {{istio: ingressgateway}}}}\nspec: {{nodeName: n0}}\nstatus: {{podIP: 10.0.0.5}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: public, namespace: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
             \x20 - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n"
        );
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("gw.yaml"), &text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let translated = translate(&Mesh::default(), &objects).unwrap();
        let view = &translated.gateway_views["gw/ingress"];
        assert!(view.secrets.is_empty(), "file certificates are not shipped");
        let store = Arc::new(WorkloadStore::default());
        let listeners = view
            .listeners
            .iter()
            .map(|(name, l)| (name.clone(), Resource::Listener(Arc::new(decode_listener(&l.encode_to_vec()).unwrap()))))
            .collect();
        store.apply(listeners, &[]);
        store
    }

    /// The serial of the certificate the chain serves, once the file secret is in the config.
    async fn served_serial(store: &WorkloadStore, name: &str, not: Option<&str>) -> String {
        for _ in 0..100 {
            if let Some(secret) = store.snapshot().l7.secrets.get(name) {
                if Some(secret.summary.serial.as_str()) != not {
                    return secret.summary.serial.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name}: no new certificate within 10 s");
    }

    #[tokio::test]
    async fn certificate_files_become_the_chains_secret_and_are_followed_when_they_change() {
        let dir = std::env::temp_dir().join(format!("keel-file-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("files ca");
        let write = |(cert, key): (String, String)| {
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
        };
        write(ca.leaf(&["a.example.com"]));
        let store = store_with_listener(&dir);
        let name = format!("file-cert:{}~{}", dir.join("cert.pem").display(), dir.join("key.pem").display());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(follow(store.clone(), stopped));
        let first = served_serial(&store, &name, None).await;
        let listener = store.snapshot().l7.listeners["0.0.0.0_443"].clone();
        let chain = listener.tls_chain(Some("a.example.com")).unwrap();
        assert!(store.snapshot().l7.server_config(&listener, chain).is_ok(), "the chain serves with the files' certificate");
        // Rotated in place: served from the next handshake.
        write(ca.leaf(&["a.example.com"]));
        let second = served_serial(&store, &name, Some(&first)).await;
        assert_ne!(first, second);
        // A broken version (a key of another certificate) is not taken: the last good one stays.
        let (cert, _) = ca.leaf(&["a.example.com"]);
        let (_, other_key) = ca.leaf(&["a.example.com"]);
        write((cert, other_key));
        tokio::time::sleep(POLL + Duration::from_millis(500)).await;
        assert_eq!(store.snapshot().l7.secrets[&name].summary.serial, second);
        stop.send_replace(true);
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
