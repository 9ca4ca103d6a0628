//! Who is calling: every xDS stream and certificate request carries `authorization: Bearer <token>` metadata, and is
//! refused before any data is sent unless the token names a node. The token is checked against the tokens file
//! (a config directory's keel-control) or by the Kubernetes API (TokenReview, under `--kubernetes`).
use tonic::{metadata::MetadataMap, Status};

use crate::{kubernetes::token_review::TokenReviewer, tokens::Tokens};

pub enum ClientAuth {
    TokensFile(Tokens),
    TokenReview(Box<TokenReviewer>),
}

impl ClientAuth {
    /// The node the caller is the node proxy of.
    pub async fn node_of(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let token = bearer_token(metadata)?;
        match self {
            ClientAuth::TokensFile(tokens) => tokens.node_of(token),
            ClientAuth::TokenReview(reviewer) => reviewer.node_of(token).await,
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
