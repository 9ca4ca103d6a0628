//! Client tokens configured in a file (one `<token> <node-name>` per line for a node proxy, `<token> <node-name>
//! gateway=<namespace>/<pod>` for a `keel gateway`; `#` starts a comment): how clients authenticate when
//! keel-control serves a config directory. The node name is what the CA checks impersonation against; a gateway
//! token gets its pod's view of the config and its pod's identity only. Under `--kubernetes`, a TokenReview does
//! this job instead (`kubernetes::token_review`).
use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context as _};
use tonic::Status;

#[derive(Debug, Default)]
pub struct Tokens {
    owners: HashMap<String, Owner>,
}

/// Whose a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    NodeProxy {
        node: String,
    },
    /// `keel gateway` in the pod `<namespace>/<name>`.
    Gateway {
        pod: String,
    },
}

impl Tokens {
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokens file {}", path.display()))?;
        Tokens::parse(&text).with_context(|| format!("tokens file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut owners = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let owner = match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(token), Some(node), None, None) => (token, Owner::NodeProxy { node: node.to_owned() }),
                (Some(token), Some(_node), Some(gateway), None) => match gateway.strip_prefix("gateway=").and_then(|pod| pod.split_once('/')) {
                    Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                        (token, Owner::Gateway { pod: format!("{namespace}/{name}") })
                    }
                    _ => bail!("line {}: the third field is `gateway=<namespace>/<pod>`", i + 1),
                },
                _ => bail!("line {}: expected `<token> <node-name> [gateway=<namespace>/<pod>]`", i + 1),
            };
            owners.insert(owner.0.to_owned(), owner.1);
        }
        Ok(Tokens { owners })
    }

    /// Whose a bearer token is, or UNAUTHENTICATED.
    pub fn owner_of(&self, token: &str) -> Result<Owner, Status> {
        self.owners.get(token).cloned().ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_nodes_and_everything_else_is_unauthenticated() {
        let tokens = Tokens::parse("# node proxies\nsecret-a node-a\n\nsecret-b node-b # second\n").unwrap();
        assert_eq!(tokens.owner_of("secret-b").unwrap(), Owner::NodeProxy { node: "node-b".into() });
        assert_eq!(tokens.owner_of("nope").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(tokens.owner_of("").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Tokens::parse("only-a-token\n").is_err());
        let gateway = Tokens::parse("secret-g node-a gateway=istio-system/ingress-0\n").unwrap();
        assert_eq!(gateway.owner_of("secret-g").unwrap(), Owner::Gateway { pod: "istio-system/ingress-0".into() });
        assert!(Tokens::parse("t node-a ingress-0\n").is_err());
        assert!(Tokens::parse("t node-a gateway=/x\n").is_err());
    }
}
