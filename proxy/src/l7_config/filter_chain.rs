//! One filter chain of a Listener, decoded: which connections it takes (a plain chain takes those that do not
//! start with a TLS ClientHello; a TLS chain those whose SNI it names), whether keel terminates their TLS, and
//! what serves them: the HTTP connection manager (routes by RDS), or a TCP proxy to a cluster (a gateway's
//! VirtualService `tcp` and `tls` routes, TLS passthrough). What keel does not evaluate is refused naming the field.
use std::time::Duration;

use keel_proto::{
    core::config_source::ConfigSourceSpecifier,
    hcm::{
        http_connection_manager::{CodecType, RouteSpecifier},
        http_filter, HttpConnectionManager,
    },
    listener::{filter, FilterChain, FilterChainMatch},
    tcp_proxy::{tcp_proxy::ClusterSpecifier, TcpProxy},
    HTTP_CONNECTION_MANAGER_TYPE_URL, TCP_PROXY_TYPE_URL,
};
use prost::Message as _;
use serde::Serialize;

use super::{
    downstream_tls::{self, DownstreamTls},
    fault::FAULT_FILTER,
};

pub(super) const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub(super) const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// A relay with no byte in either direction this long ends (Envoy's TCP proxy default: 1 hour).
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Serialize)]
pub struct FilterChainConfig {
    pub name: String,
    /// The chain takes connections that start with a TLS ClientHello (it terminates TLS, or passes it through
    /// by SNI); otherwise it takes those that do not.
    pub tls_client_hello: bool,
    /// The SNI names a TLS chain serves (`*.suffix` allowed); empty: any.
    pub server_names: Vec<String>,
    /// keel terminates the TLS (a gateway's HTTPS or TLS server); `None` on a TLS chain: passthrough.
    pub tls: Option<DownstreamTls>,
    pub filter: ChainFilter,
}

#[derive(Debug, Serialize)]
pub enum ChainFilter {
    Http {
        route_config: String,
        /// The fault filter is in the chain (routes' fault settings apply only then, as in Envoy).
        faults: bool,
    },
    Tcp(TcpProxyConfig),
}

/// A TCP proxy: each connection relayed to an endpoint of one of `clusters`, picked by weight.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpProxyConfig {
    pub clusters: Vec<(String, u32)>,
    pub idle_timeout: Duration,
}

impl FilterChainConfig {
    /// The route configuration of an HTTP chain.
    pub fn route_config(&self) -> Option<&str> {
        match &self.filter {
            ChainFilter::Http { route_config, .. } => Some(route_config),
            ChainFilter::Tcp(_) => None,
        }
    }
}

/// One filter chain; `at` is its path in the listener (`filter_chains[i]`).
pub fn decode_chain(chain: &FilterChain, at: &str) -> Result<FilterChainConfig, String> {
    let tls = chain.transport_socket.as_ref().map(|socket| downstream_tls::decode(socket, &format!("field `{at}.transport_socket`"))).transpose()?;
    // Conditions keel does not evaluate would be silently ignored: only SNI names and the TLS transport.
    let m = chain.filter_chain_match.clone().unwrap_or_default();
    let evaluated = FilterChainMatch { server_names: m.server_names.clone(), transport_protocol: m.transport_protocol.clone(), ..Default::default() };
    if m != evaluated {
        return Err(format!("field `{at}.filter_chain_match`: only server_names and transport_protocol are supported"));
    }
    let tls_client_hello = match m.transport_protocol.as_str() {
        "tls" => true,
        "" => tls.is_some(),
        other => return Err(format!("field `{at}.filter_chain_match.transport_protocol`: {other:?} is not supported (\"tls\" is)")),
    };
    if !tls_client_hello && !m.server_names.is_empty() {
        return Err(format!(
            "field `{at}.filter_chain_match.server_names`: only on a TLS chain (transport_protocol \"tls\" or a TLS transport socket)"
        ));
    }
    let [network_filter] = chain.filters.as_slice() else {
        return Err(format!("field `{at}.filters`: keel supports exactly one filter, the HTTP connection manager or the TCP proxy"));
    };
    let field = &format!("field `{at}.filters[0]`");
    let Some(filter::ConfigType::TypedConfig(any)) = &network_filter.config_type else {
        return Err(format!("{field}.typed_config: missing"));
    };
    let filter = match (network_filter.name.as_str(), any.type_url.as_str()) {
        (HCM_FILTER, HTTP_CONNECTION_MANAGER_TYPE_URL) => {
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| format!("{field}.typed_config: {e}"))?;
            decode_hcm(hcm, field)?
        }
        (TCP_PROXY_FILTER, TCP_PROXY_TYPE_URL) => {
            let proxy = TcpProxy::decode(any.value.as_slice()).map_err(|e| format!("{field}.typed_config: {e}"))?;
            ChainFilter::Tcp(decode_tcp_proxy(proxy, field)?)
        }
        (name, _) => return Err(format!("{field}: {name} is not {HCM_FILTER} or {TCP_PROXY_FILTER}")),
    };
    if tls_client_hello && tls.is_none() && matches!(filter, ChainFilter::Http { .. }) {
        return Err(format!("field `{at}.filters[0]`: HTTP on a TLS chain needs the chain's transport socket to terminate the TLS"));
    }
    Ok(FilterChainConfig {
        name: chain.name.clone(),
        tls_client_hello,
        server_names: m.server_names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        tls,
        filter,
    })
}

fn decode_tcp_proxy(proxy: TcpProxy, field: &str) -> Result<TcpProxyConfig, String> {
    if proxy.tunneling_config.is_some() {
        return Err(format!("{field}.typed_config.tunneling_config: not supported"));
    }
    if proxy.max_connect_attempts.is_some_and(|n| n > 1) {
        return Err(format!("{field}.typed_config.max_connect_attempts: keel connects once"));
    }
    let clusters = match proxy.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => vec![(name, 1)],
        Some(ClusterSpecifier::WeightedClusters(w)) if w.clusters.iter().any(|c| c.weight > 0) => {
            w.clusters.into_iter().filter(|c| c.weight > 0).map(|c| (c.name, c.weight)).collect()
        }
        _ => return Err(format!("{field}.typed_config: a cluster, or weighted clusters with a positive weight, is required")),
    };
    let idle_timeout = match proxy.idle_timeout {
        None => DEFAULT_TCP_IDLE_TIMEOUT,
        Some(d) => Duration::try_from(d).map_err(|_| format!("{field}.typed_config.idle_timeout: negative"))?,
    };
    // Envoy's 0 means no idle timeout; keel bounds what a peer can hold, so 0 keeps the default.
    let idle_timeout = if idle_timeout.is_zero() { DEFAULT_TCP_IDLE_TIMEOUT } else { idle_timeout };
    Ok(TcpProxyConfig { clusters, idle_timeout })
}

fn decode_hcm(hcm: HttpConnectionManager, field: &str) -> Result<ChainFilter, String> {
    // keel's server takes HTTP/1.1 and h2c on every port (by the connection preface), which is AUTO.
    match CodecType::try_from(hcm.codec_type) {
        Ok(CodecType::Auto) => {}
        Ok(other) => return Err(format!("{field}.typed_config.codec_type: {} is not supported (AUTO is)", other.as_str_name())),
        Err(_) => return Err(format!("{field}.typed_config.codec_type: unknown value {}", hcm.codec_type)),
    }
    let route_config = match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            // Routes come on this ADS stream; any other source would never be fetched.
            if !matches!(
                rds.config_source.and_then(|c| c.config_source_specifier),
                Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_))
            ) {
                return Err(format!("{field}.typed_config.rds.config_source: keel takes routes over ADS only (ads or self)"));
            }
            rds.route_config_name
        }
        _ => return Err(format!("{field}.typed_config.rds: keel takes routes over RDS only")),
    };
    let mut faults = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        // A filter off unless a route turns it on: keel has no per-route filter switch.
        if f.disabled {
            return Err(format!("{field}.typed_config.http_filters[{i}].disabled: not supported"));
        }
        match f.name.as_str() {
            FAULT_FILTER => {
                let empty = matches!(&f.config_type, Some(http_filter::ConfigType::TypedConfig(a)) if a.value.is_empty()) || f.config_type.is_none();
                if !empty {
                    return Err(format!("{field}.typed_config.http_filters[{i}]: listener-wide faults are not supported (set them per route)"));
                }
                faults = true;
            }
            ROUTER_FILTER => {}
            // Envoy's rule: a filter marked optional that the proxy does not know is skipped, not refused.
            _ if f.is_optional => {}
            other => {
                return Err(format!("{field}.typed_config.http_filters[{i}]: {other} is not supported ({FAULT_FILTER} and {ROUTER_FILTER} are)"))
            }
        }
    }
    if hcm.http_filters.last().is_none_or(|f| f.name != ROUTER_FILTER) {
        return Err(format!("{field}.typed_config.http_filters: the last filter must be {ROUTER_FILTER}"));
    }
    Ok(ChainFilter::Http { route_config, faults })
}

#[cfg(test)]
mod tests {
    use keel_proto::{
        listener::Filter,
        tcp_proxy::tcp_proxy::{weighted_cluster::ClusterWeight, TunnelingConfig, WeightedCluster},
    };
    use prost_types::Any;

    use super::*;

    fn chain(proxy: TcpProxy, server_names: &[&str], transport_protocol: &str) -> FilterChain {
        FilterChain {
            name: "pass".into(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: server_names.iter().map(|n| (*n).to_owned()).collect(),
                transport_protocol: transport_protocol.into(),
                ..Default::default()
            }),
            filters: vec![Filter {
                name: TCP_PROXY_FILTER.into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any { type_url: TCP_PROXY_TYPE_URL.into(), value: proxy.encode_to_vec() })),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_passthrough_chain_relays_by_weight_and_refuses_what_it_cannot_do() {
        let weighted = TcpProxy {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![
                    ClusterWeight { name: "a".into(), weight: 80 },
                    ClusterWeight { name: "b".into(), weight: 20 },
                    ClusterWeight { name: "c".into(), weight: 0 },
                ],
            })),
            ..Default::default()
        };
        let decoded = decode_chain(&chain(weighted.clone(), &["Pass.example.com"], "tls"), "filter_chains[0]").unwrap();
        assert!(decoded.tls_client_hello && decoded.tls.is_none());
        assert_eq!(decoded.server_names, ["pass.example.com"]);
        let ChainFilter::Tcp(proxy) = decoded.filter else { panic!("a TCP proxy") };
        assert_eq!(proxy, TcpProxyConfig { clusters: vec![("a".into(), 80), ("b".into(), 20)], idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT });
        // A plain TCP chain: no SNI names.
        assert!(!decode_chain(&chain(weighted.clone(), &[], ""), "c").unwrap().tls_client_hello);
        for (proxy, field) in [
            (TcpProxy { tunneling_config: Some(TunnelingConfig { hostname: "h".into() }), ..weighted.clone() }, "tunneling_config"),
            (TcpProxy { max_connect_attempts: Some(3), ..weighted.clone() }, "max_connect_attempts"),
            (TcpProxy::default(), "a cluster, or weighted clusters"),
        ] {
            let error = decode_chain(&chain(proxy, &["a"], "tls"), "filter_chains[0]").unwrap_err();
            assert!(error.contains(field), "{error}");
        }
    }
}
