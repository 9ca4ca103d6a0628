//! Node proxy tokens configured in a file (one `<token> <node-name>` per line; `#` starts a comment): how clients
//! authenticate when keel-control serves a config directory. The node name is what the CA checks impersonation
//! against. Under `--kubernetes`, a TokenReview does this job instead (`kubernetes::token_review`).
use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context as _};
use tonic::Status;

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

    /// The node a bearer token belongs to, or UNAUTHENTICATED.
    pub fn node_of(&self, token: &str) -> Result<String, Status> {
        self.nodes.get(token).cloned().ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_nodes_and_everything_else_is_unauthenticated() {
        let tokens = Tokens::parse("# node proxies\nsecret-a node-a\n\nsecret-b node-b # second\n").unwrap();
        assert_eq!(tokens.node_of("secret-b").unwrap(), "node-b");
        assert_eq!(tokens.node_of("nope").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(tokens.node_of("").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Tokens::parse("only-a-token\n").is_err());
    }
}
