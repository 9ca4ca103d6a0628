//! Who is calling: every xDS stream and certificate request carries `authorization: Bearer <token>` metadata, and is
//! refused before any data is sent unless the token is known. The token is checked against the tokens file (a config
//! directory's keel-control: every token is a node proxy's) or by the Kubernetes API (TokenReview, under
//! `--kubernetes`: node proxies and workloads).
use tonic::{metadata::MetadataMap, Status};

use crate::{
    kubernetes::token_review::TokenReviewer,
    tokens::{Owner, Tokens},
};

pub enum ClientAuth {
    TokensFile(Tokens),
    TokenReview(Box<TokenReviewer>),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// May hold an xDS stream and ask certificates for the workloads of its node.
    NodeProxy { node: String },
    /// May ask a certificate for its own identity, and nothing else (a ztunnel in dedicated mode, any workload).
    Workload { namespace: String, service_account: String },
    /// `keel gateway` in pod `<namespace>/<name>`: holds an xDS stream with that pod's view (its Gateways'
    /// listeners and routes), and may ask a certificate for that pod's identity only.
    Gateway { pod: String },
}

/// Which view of the config an xDS client gets, and how it is named in logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdsClient {
    NodeProxy { node: String },
    Gateway { pod: String },
}

impl std::fmt::Display for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdsClient::NodeProxy { node } => write!(f, "node {node}"),
            XdsClient::Gateway { pod } => write!(f, "gateway {pod}"),
        }
    }
}

impl Caller {
    /// Why this caller may not act for a node (the refusal a workload gets when it tries).
    pub fn not_a_node_proxy(namespace: &str, service_account: &str) -> String {
        format!("ServiceAccount {namespace}/{service_account} is not a node proxy account (--node-proxy-account)")
    }
}

impl ClientAuth {
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        match self {
            ClientAuth::TokensFile(tokens) => tokens.owner_of(token).map(|owner| match owner {
                Owner::NodeProxy { node } => Caller::NodeProxy { node },
                Owner::Gateway { pod } => Caller::Gateway { pod },
            }),
            ClientAuth::TokenReview(reviewer) => reviewer.caller(token).await,
        }
    }

    /// The xDS client the caller is: a node proxy or a gateway; a workload is refused.
    pub async fn xds_client(&self, metadata: &MetadataMap) -> Result<XdsClient, Status> {
        match self.caller(metadata).await? {
            Caller::NodeProxy { node } => Ok(XdsClient::NodeProxy { node }),
            Caller::Gateway { pod } => Ok(XdsClient::Gateway { pod }),
            Caller::Workload { namespace, service_account } => Err(Status::permission_denied(Caller::not_a_node_proxy(&namespace, &service_account))),
        }
    }
}

fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
    let token = header.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("authorization metadata is not a bearer token"))?;
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_known_bearer_token_names_a_node() {
        let auth = ClientAuth::TokensFile(Tokens::parse("secret-a node-a\nsecret-g node-a gateway=gw/ingress-0\n").unwrap());
        let mut md = MetadataMap::new();
        assert_eq!(auth.xds_client(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Basic secret-a".parse().unwrap());
        assert_eq!(auth.xds_client(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer secret-a".parse().unwrap());
        assert_eq!(auth.xds_client(&md).await.unwrap(), XdsClient::NodeProxy { node: "node-a".into() });
        md.insert("authorization", "Bearer secret-g".parse().unwrap());
        assert_eq!(auth.xds_client(&md).await.unwrap(), XdsClient::Gateway { pod: "gw/ingress-0".into() });
        md.insert("authorization", "Bearer secret-b".parse().unwrap());
        assert_eq!(auth.xds_client(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
