//! Client authentication for the xDS and CA services: `authorization: Bearer <token>` metadata, with tokens
//! configured in a file (one `<token> <node-name>` per line; `#` starts a comment). The node name is what the CA
//! checks impersonation against. A Kubernetes TokenReview can replace the file later.
use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context as _};
use tonic::{metadata::MetadataMap, Status};

#[derive(Debug, Default)]
pub struct Tokens {
    nodes: HashMap<String, String>,
}

impl Tokens {
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokens file {}", path.display()))?;
        Tokens::parse(&text).with_context(|| format!("tokens file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut nodes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(token), Some(node), None) = (fields.next(), fields.next(), fields.next()) else {
                bail!("line {}: expected `<token> <node-name>`", i + 1);
            };
            nodes.insert(token.to_owned(), node.to_owned());
        }
        Ok(Tokens { nodes })
    }

    /// The node a request's bearer token belongs to, or UNAUTHENTICATED (no data is ever sent before this).
    pub fn authorize(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("authorization metadata is not a bearer token"))?;
        self.nodes.get(token.trim()).cloned().ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_nodes_and_everything_else_is_unauthenticated() {
        let tokens = Tokens::parse("# node proxies\nsecret-a node-a\n\nsecret-b node-b # second\n").unwrap();
        let mut md = MetadataMap::new();
        assert_eq!(tokens.authorize(&md).unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer secret-b".parse().unwrap());
        assert_eq!(tokens.authorize(&md).unwrap(), "node-b");
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(tokens.authorize(&md).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Tokens::parse("only-a-token\n").is_err());
    }
}
