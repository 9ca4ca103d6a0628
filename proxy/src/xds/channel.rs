//! How keel reaches its control plane (delta ADS and the CA alike): TLS to the mesh root unless the operator
//! explicitly allowed plaintext, and keepalives at both layers, so that a control plane that goes silent
//! without closing (a frozen process, a dropped NAT entry) is noticed within a minute instead of never.
use std::time::Duration;

use anyhow::{bail, Context as _};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// An HTTP/2 PING every 20 s, answered within 10 s, even while no request is in flight (the ADS stream is
/// long-lived and may be quiet for hours).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneAddress<'a> {
    /// `https://host:port` (or `http://` with `insecure`).
    pub address: &'a str,
    /// The mesh root the control plane's certificate chains to.
    pub root_pem: &'a str,
    /// The name its certificate must carry.
    pub server_name: &'a str,
    /// `--insecure-control-plane`: allow `http://`.
    pub insecure: bool,
}

/// The scheme decides TLS; `http://` is refused unless `insecure` (a typo must not silently send keel's token
/// and the mesh's config in clear text).
pub fn endpoint(target: &ControlPlaneAddress<'_>) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(target.address.to_owned()).with_context(|| format!("control plane address {:?}", target.address))?;
    let endpoint = match endpoint.uri().scheme_str() {
        Some("https") => endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(target.root_pem)).domain_name(target.server_name))
            .context("control plane TLS")?,
        Some("http") if target.insecure => endpoint,
        Some("http") => bail!(
            "control plane address {}: plaintext http:// would send keel's token and the mesh's config unencrypted; \
             use https:// (or --insecure-control-plane to allow it)",
            target.address
        ),
        other => bail!("control plane address {}: scheme {other:?} is neither https nor http", target.address),
    };
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(address: &str, insecure: bool) -> ControlPlaneAddress<'_> {
        ControlPlaneAddress { address, root_pem: "", server_name: "keel-control", insecure }
    }

    #[test]
    fn plaintext_needs_an_explicit_flag() {
        let err = endpoint(&target("http://keel-control:15012", false)).unwrap_err();
        assert!(format!("{err:#}").contains("--insecure-control-plane"), "{err:#}");
        assert!(endpoint(&target("http://keel-control:15012", true)).is_ok());
        let err = endpoint(&target("ftp://keel-control:15012", true)).unwrap_err();
        assert!(format!("{err:#}").contains("neither https nor http"), "{err:#}");
    }
}
