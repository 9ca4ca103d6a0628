//! Where workload certificates come from. keel signs nothing itself in mesh mode: it sends a CSR to the control
//! plane's Istio CA API on behalf of a pod (`ImpersonatedIdentity`), as ztunnel does. Without a control plane
//! (local mode) a CA on the node's disk, in istiod's plugged-in layout, plays that part.
use std::{collections::BTreeMap, future::Future, path::Path, pin::Pin, sync::OnceLock, time::Duration};

use anyhow::Context as _;
use keel_mesh::ca::Authority;
use keel_proto::ca::{istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest};
use prost_types::{value::Kind, Struct, Value};
use tonic::transport::{Channel, Endpoint};

use super::Identity;
use crate::xds::client::XdsConfig;

/// What `CertificateProvider::issue` returns: the CA's PEM chain, leaf first, trust bundle last.
pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<String>>> + Send + 'a>>;

pub trait CertificateProvider: Send + Sync {
    /// Asks for a certificate for `identity` over the public key of `csr_pem` (PEM PKCS#10), valid for
    /// `validity` (the CA may shorten it).
    fn issue<'a>(&'a self, identity: &'a Identity, csr_pem: String, validity: Duration) -> IssueFuture<'a>;
}

/// How to reach the control plane's CA: the same address, TLS and credentials as its xDS.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `https://host:port`.
    pub address: String,
    /// The mesh root the control plane's serving certificate chains to.
    pub root_pem: String,
    /// The name the control plane's certificate must carry.
    pub server_name: String,
    pub token: String,
    pub cluster_id: String,
    /// `--insecure-control-plane`: `http://` allowed.
    pub insecure: bool,
}

impl CaClientConfig {
    /// istiod serves certificates next to xDS, and so does keel-control.
    pub fn from_xds(xds: &XdsConfig) -> CaClientConfig {
        CaClientConfig {
            address: xds.address.clone(),
            root_pem: xds.root_pem.clone(),
            server_name: xds.server_name.clone(),
            token: xds.token.clone(),
            cluster_id: xds.cluster_id.clone(),
            insecure: xds.insecure,
        }
    }
}

/// `istio.v1.auth.IstioCertificateService/CreateCertificate` over one channel, connected on first use and
/// reconnected by tonic when it breaks.
pub struct CaClient {
    config: CaClientConfig,
    endpoint: Endpoint,
    /// Created inside the first request: a tonic channel needs a running runtime, construction does not.
    channel: OnceLock<Channel>,
}

/// A hung CA must not hold a pod's first connection forever; the manager retries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl CaClient {
    pub fn new(config: CaClientConfig) -> anyhow::Result<CaClient> {
        let target = crate::xds::channel::ControlPlaneAddress {
            address: &config.address,
            root_pem: &config.root_pem,
            server_name: &config.server_name,
            insecure: config.insecure,
        };
        let endpoint = crate::xds::channel::endpoint(&target).context("the CA")?.timeout(REQUEST_TIMEOUT);
        Ok(CaClient { config, endpoint, channel: OnceLock::new() })
    }

    async fn create_certificate(&self, identity: &Identity, csr: String, validity: Duration) -> anyhow::Result<Vec<String>> {
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        let impersonated = Value { kind: Some(Kind::StringValue(identity.to_string())) };
        let metadata = Struct { fields: BTreeMap::from([("ImpersonatedIdentity".to_owned(), impersonated)]) };
        let validity_duration = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
        let mut request = tonic::Request::new(IstioCertificateRequest { csr, validity_duration, metadata: Some(metadata) });
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.config.token).parse().context("token")?);
        request.metadata_mut().insert("clusterid", self.config.cluster_id.parse().context("cluster id")?);
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .with_context(|| format!("CreateCertificate for {identity} at {}", self.config.address))?;
        Ok(response.into_inner().cert_chain)
    }
}

impl CertificateProvider for CaClient {
    fn issue<'a>(&'a self, identity: &'a Identity, csr_pem: String, validity: Duration) -> IssueFuture<'a> {
        Box::pin(self.create_certificate(identity, csr_pem, validity))
    }
}

/// The node's own CA, for local mode: keel-control's `Authority` over istiod's plugged-in layout.
pub struct LocalCa {
    authority: Authority,
}

impl LocalCa {
    pub fn new(authority: Authority) -> LocalCa {
        LocalCa { authority }
    }

    /// Loads `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` from `dir`, generating them there on
    /// first start, so every restart of keel issues under the same root.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> anyhow::Result<LocalCa> {
        Ok(LocalCa::new(Authority::load_or_generate(dir, trust_domain)?))
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl CertificateProvider for LocalCa {
    fn issue<'a>(&'a self, identity: &'a Identity, csr_pem: String, validity: Duration) -> IssueFuture<'a> {
        let chain = self.authority.issue(&csr_pem, &identity.to_string(), validity);
        Box::pin(std::future::ready(chain))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::identity::{certificate::tests::key_and_csr, WorkloadCertificate};

    pub(crate) fn identity(td: &str, ns: &str, sa: &str) -> Identity {
        Identity { trust_domain: td.into(), namespace: ns.into(), service_account: sa.into() }
    }

    /// A fresh CA (`name` keeps tests that run at once apart); its files are gone once it is in memory.
    pub(crate) fn local_ca(name: &str, trust_domain: &str) -> LocalCa {
        let dir = fresh_dir(name);
        let ca = LocalCa::load_or_generate(&dir, trust_domain).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        ca
    }

    pub(crate) fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_local_ca_issues_for_the_identity_asked() {
        let ca = local_ca("provider-local", "cluster.local");
        let id = identity("cluster.local", "demo", "sleep");
        let (key, csr) = key_and_csr(&id);
        let chain = ca.issue(&id, csr, Duration::from_secs(600)).await.unwrap();
        assert_eq!(chain.last().map(String::as_str), Some(ca.authority().root_pem()));
        WorkloadCertificate::from_pem(&id, &chain, key).unwrap();
    }

    /// keel-control's CA service on loopback TLS, as keel meets it in mesh mode; node-a runs demo/sleep.
    async fn control_plane_ca(name: &str) -> (CaClientConfig, Arc<Authority>) {
        use keel_control::{ca_service::CaService, ca_service::NodeIdentities, client_auth::ClientAuth, tokens::Tokens};
        use keel_mesh::{objects::Object, source};
        use keel_proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;

        let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep, namespace: demo}\nspec: {serviceAccountName: sleep, nodeName: node-a}\n";
        let mut loaded = source::Loaded::default();
        source::load_text(Path::new("pods.yaml"), pods, &mut loaded);
        let objects: Vec<Object> = loaded.objects.into_iter().map(|(_, o)| o).collect();
        let (publish, identities) = tokio::sync::watch::channel(Arc::new(NodeIdentities::from_objects("cluster.local", &objects)));
        std::mem::forget(publish); // the pods never change here
        let dir = fresh_dir(name);
        let authority = Arc::new(Authority::load_or_generate(&dir, "cluster.local").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = Arc::new(ClientAuth::TokensFile(Tokens::parse("token-a node-a\n").unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (chain, key) = authority.issue_serving(&["keel-control".to_owned()], &[addr.ip()]).unwrap();
        let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(chain, key));
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(IstioCertificateServiceServer::new(CaService::new(authority.clone(), tokens, identities, Default::default())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let config = CaClientConfig {
            address: format!("https://{addr}"),
            root_pem: authority.root_pem().to_owned(),
            server_name: "keel-control".into(),
            token: "token-a".into(),
            cluster_id: "Kubernetes".into(),
            insecure: false,
        };
        (config, authority)
    }

    #[tokio::test]
    async fn the_ca_client_gets_certificates_from_the_control_plane_over_tls() {
        let (config, authority) = control_plane_ca("provider-grpc").await;
        let client = CaClient::new(config.clone()).unwrap();
        let id = identity("cluster.local", "demo", "sleep");
        for _ in 0..2 {
            // The second request reuses the channel the first one opened.
            let (key, csr) = key_and_csr(&id);
            let chain = client.issue(&id, csr, Duration::from_secs(600)).await.unwrap();
            assert_eq!(chain.last().map(String::as_str), Some(authority.root_pem()));
            WorkloadCertificate::from_pem(&id, &chain, key).unwrap();
        }

        let (_, csr) = key_and_csr(&id);
        let elsewhere = identity("cluster.local", "demo", "echo");
        let err = client.issue(&elsewhere, csr, Duration::from_secs(600)).await.unwrap_err();
        assert!(format!("{err:#}").contains("runs no workload with identity"), "impersonation is checked: {err:#}");

        let stranger = CaClient::new(CaClientConfig { token: "wrong".into(), ..config.clone() }).unwrap();
        let (_, csr) = key_and_csr(&id);
        let err = stranger.issue(&id, csr, Duration::from_secs(600)).await.unwrap_err();
        assert!(format!("{err:#}").contains("unknown bearer token"), "{err:#}");

        let other_root = local_ca("provider-grpc-other", "cluster.local").authority().root_pem().to_owned();
        let misled = CaClient::new(CaClientConfig { root_pem: other_root, ..config }).unwrap();
        let (_, csr) = key_and_csr(&id);
        assert!(misled.issue(&id, csr, Duration::from_secs(600)).await.is_err(), "a control plane with another root is not trusted");
    }
}
