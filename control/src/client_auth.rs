//! Who is calling: every xDS stream and certificate request carries `authorization: Bearer <token>` metadata, and is
//! refused before any data is sent unless the token is known. The token is checked against the tokens file (a config
//! directory's keel-control: every token is a node proxy's) or by the Kubernetes API (TokenReview, under
//! `--kubernetes`: node proxies and workloads).
use tonic::{metadata::MetadataMap, Status};

use crate::{kubernetes::token_review::TokenReviewer, tokens::Tokens};

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
            ClientAuth::TokensFile(tokens) => tokens.node_of(token).map(|node| Caller::NodeProxy { node }),
            ClientAuth::TokenReview(reviewer) => reviewer.caller(token).await,
        }
    }

    /// The node the caller is the node proxy of; a workload is refused.
    pub async fn node_of(&self, metadata: &MetadataMap) -> Result<String, Status> {
        match self.caller(metadata).await? {
            Caller::NodeProxy { node } => Ok(node),
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
        let auth = ClientAuth::TokensFile(Tokens::parse("secret-a node-a\n").unwrap());
        let mut md = MetadataMap::new();
        assert_eq!(auth.node_of(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Basic secret-a".parse().unwrap());
        assert_eq!(auth.node_of(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer secret-a".parse().unwrap());
        assert_eq!(auth.node_of(&md).await.unwrap(), "node-a");
        md.insert("authorization", "Bearer secret-b".parse().unwrap());
        assert_eq!(auth.node_of(&md).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
