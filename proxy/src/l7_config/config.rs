//! The four Envoy resource types keel's L7 engine reads (proto/ENVOY-SUBSET.md), decoded and validated one by
//! one as xDS delivers them, and the L7 part of the published snapshot built from them. What keel cannot honour
//! is refused naming the field, so the xDS client NACKs it and the last good version stays in use.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use keel_proto::{
    core::{address, socket_address::PortSpecifier, Address, HealthStatus},
    endpoint::{lb_endpoint::HostIdentifier, ClusterLoadAssignment},
    listener::Listener,
    route::RouteConfiguration,
};
use prost::Message as _;
use serde::Serialize;

use super::{
    cluster::Cluster,
    cluster_config::ClusterConfig,
    downstream_tls::ServerConfigs,
    filter_chain::{decode_chain, FilterChainConfig},
    route_table::RouteTable,
    secret::SecretConfig,
};

/// A Listener as the engine uses it: which port's traffic is HTTP, and how each connection to it is served.
#[derive(Debug, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub port: u16,
    /// At most one plain chain (what the mesh's listeners have), and TLS chains picked by SNI (a gateway's
    /// HTTPS and TLS servers: terminated, or passed through).
    pub chains: Vec<FilterChainConfig>,
}

impl ListenerConfig {
    /// The chain serving connections that do not start with a TLS ClientHello.
    pub fn plain_chain(&self) -> Option<&FilterChainConfig> {
        self.chains.iter().find(|c| !c.tls_client_hello)
    }

    /// Whether a connection's chain depends on its ClientHello (some chain takes TLS connections).
    pub fn reads_client_hello(&self) -> bool {
        self.chains.iter().any(|c| c.tls_client_hello)
    }

    /// The TLS chain for a ClientHello naming `sni`, in Envoy's order: an exact server name, else the longest
    /// matching `*.suffix`, else a chain without server names.
    pub fn tls_chain(&self, sni: Option<&str>) -> Option<&FilterChainConfig> {
        let tls = || self.chains.iter().filter(|c| c.tls_client_hello);
        if let Some(sni) = sni.map(str::to_ascii_lowercase) {
            if let Some(exact) = tls().find(|c| c.server_names.contains(&sni)) {
                return Some(exact);
            }
            let wildcard = tls()
                .filter_map(|c| {
                    let longest = c
                        .server_names
                        .iter()
                        .filter_map(|n| n.strip_prefix('*'))
                        .filter(|suffix| sni.ends_with(suffix) && sni.len() > suffix.len())
                        .map(str::len)
                        .max()?;
                    Some((longest, c))
                })
                .max_by_key(|(len, _)| *len);
            if let Some((_, chain)) = wildcard {
                return Some(chain);
            }
        }
        tls().find(|c| c.server_names.is_empty())
    }

    pub fn chain(&self, name: &str) -> Option<&FilterChainConfig> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// One endpoint of a ClusterLoadAssignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LbEndpoint {
    pub address: SocketAddr,
    pub hostname: String,
    pub locality: Option<(String, String, String)>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct LoadAssignment {
    pub cluster: String,
    pub endpoints: Vec<LbEndpoint>,
}

fn socket_address(field: &str, a: Option<&Address>) -> Result<SocketAddr, String> {
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(format!("{field}: not a socket_address"));
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(format!("{field}.port_value: missing (named ports are not supported)"));
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|_| format!("{field}.address: {:?} is not an IP address", sa.address))?;
    let port = u16::try_from(port).map_err(|_| format!("{field}.port_value: {port} is not a port"))?;
    Ok(SocketAddr::new(ip, port))
}

pub fn decode_listener(bytes: &[u8]) -> Result<ListenerConfig, String> {
    let l = Listener::decode(bytes).map_err(|e| format!("not an envoy.config.listener.v3.Listener: {e}"))?;
    let port = socket_address("field `address`", l.address.as_ref())?.port();
    if l.filter_chains.is_empty() {
        return Err("field `filter_chains`: empty".into());
    }
    if l.default_filter_chain.is_some() {
        return Err("field `default_filter_chain`: not supported (every connection must match a chain)".into());
    }
    let mut chains: Vec<FilterChainConfig> = Vec::new();
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let chain = decode_chain(chain, &format!("filter_chains[{i}]"))?;
        // Two chains for the same connections: Envoy refuses the listener, and so does keel.
        let same_match = |c: &FilterChainConfig| {
            c.tls_client_hello == chain.tls_client_hello
                && (c.server_names.is_empty() && chain.server_names.is_empty() || c.server_names.iter().any(|n| chain.server_names.contains(n)))
        };
        if let Some(other) = chains.iter().find(|c| same_match(c)) {
            return Err(format!("field `filter_chains[{i}].filter_chain_match`: matches the same connections as chain {:?}", other.name));
        }
        chains.push(chain);
    }
    Ok(ListenerConfig { name: l.name, port, chains })
}

pub fn decode_route_configuration(bytes: &[u8]) -> Result<RouteTable, String> {
    let config = RouteConfiguration::decode(bytes).map_err(|e| format!("not an envoy.config.route.v3.RouteConfiguration: {e}"))?;
    RouteTable::compile(&config).map_err(|e| format!("field {e}"))
}

pub fn decode_cluster(bytes: &[u8]) -> Result<ClusterConfig, String> {
    let c = keel_proto::cluster::Cluster::decode(bytes).map_err(|e| format!("not an envoy.config.cluster.v3.Cluster: {e}"))?;
    ClusterConfig::from_cluster(&c)
}

pub fn decode_load_assignment(bytes: &[u8]) -> Result<LoadAssignment, String> {
    let cla = ClusterLoadAssignment::decode(bytes).map_err(|e| format!("not an envoy.config.endpoint.v3.ClusterLoadAssignment: {e}"))?;
    let mut endpoints = Vec::new();
    for (l, group) in cla.endpoints.iter().enumerate() {
        let locality = group.locality.as_ref().map(|l| (l.region.clone(), l.zone.clone(), l.sub_zone.clone()));
        // Every endpoint gets an equal share: priorities (failover levels) and weights would be silently ignored.
        if group.priority != 0 {
            return Err(format!("field endpoints[{l}].priority: {} is not supported (keel balances over priority 0 only)", group.priority));
        }
        for (e, lb) in group.lb_endpoints.iter().enumerate() {
            let field = format!("field endpoints[{l}].lb_endpoints[{e}]");
            if lb.load_balancing_weight.is_some_and(|w| w != 1) {
                return Err(format!("{field}.load_balancing_weight: weights are not supported"));
            }
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(format!("{field}.endpoint: missing"));
            };
            // Envoy routes to HEALTHY and UNKNOWN endpoints; the others are left out of the balancer.
            if !matches!(HealthStatus::try_from(lb.health_status), Ok(HealthStatus::Healthy | HealthStatus::Unknown)) {
                continue;
            }
            let address = socket_address(&format!("{field}.endpoint.address"), endpoint.address.as_ref())?;
            endpoints.push(LbEndpoint { address, hostname: endpoint.hostname.clone(), locality: locality.clone() });
        }
    }
    Ok(LoadAssignment { cluster: cla.cluster_name, endpoints })
}

/// The L7 part of the snapshot: resources by name, indexes, and the live clusters built from them.
#[derive(Clone, Debug, Default)]
pub struct L7Config {
    pub listeners: HashMap<String, Arc<ListenerConfig>>,
    pub listeners_by_port: HashMap<u16, Arc<ListenerConfig>>,
    pub route_tables: HashMap<String, Arc<RouteTable>>,
    pub cluster_configs: HashMap<String, Arc<ClusterConfig>>,
    pub load_assignments: HashMap<String, Arc<LoadAssignment>>,
    /// Cluster name → its balancer, breaker and outlier state. Rebuilt only for a cluster whose config or
    /// endpoints changed, so ejections and in-flight counts survive unrelated pushes.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// SDS name → a gateway's certificate or CA bundle.
    pub secrets: HashMap<String, Arc<SecretConfig>>,
    /// `<listener>/<chain>` → the TLS server config of each TLS-terminating chain.
    pub server_configs: ServerConfigs,
}

impl L7Config {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.cluster_configs.is_empty()
    }

    /// The filter chain and route table for traffic to `port`: the plain chain, or the TLS chain named `chain`
    /// (what a gateway picked at the handshake), when the port carries HTTP.
    pub fn route_table(&self, port: u16, chain: Option<&str>) -> Option<(&FilterChainConfig, &Arc<RouteTable>)> {
        let listener = self.listeners_by_port.get(&port)?;
        let chain = match chain {
            None => listener.plain_chain()?,
            Some(name) => listener.chain(name)?,
        };
        Some((chain, self.route_tables.get(chain.route_config()?)?))
    }

    /// The TLS server config of `chain` of `listener`, or why there is none (a secret not received or unusable).
    pub fn server_config(&self, listener: &ListenerConfig, chain: &FilterChainConfig) -> Result<Arc<rustls::ServerConfig>, String> {
        self.server_configs.get(&format!("{}/{}", listener.name, chain.name))
    }

    pub fn index(&mut self) {
        self.listeners_by_port = self.listeners.values().map(|l| (l.port, l.clone())).collect();
        let tls_chains =
            self.listeners.values().flat_map(|l| l.chains.iter().filter_map(move |c| Some((format!("{}/{}", l.name, c.name), c.tls.as_ref()?))));
        self.server_configs.update(tls_chains, &self.secrets);
        let previous = std::mem::take(&mut self.clusters);
        for (name, config) in &self.cluster_configs {
            let assignment = self.load_assignments.get(name);
            let kept = previous.get(name).filter(|c| c.built_from(config, assignment));
            let cluster = match kept {
                Some(c) => c.clone(),
                None => Arc::new(Cluster::new(config.clone(), assignment.cloned())),
            };
            self.clusters.insert(name.clone(), cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_proto::{
        core::{config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, AggregatedConfigSource, ConfigSource, SocketAddress},
        endpoint::{Endpoint, LbEndpoint as EnvoyLbEndpoint, LocalityLbEndpoints},
        hcm::{
            http_connection_manager::{CodecType, RouteSpecifier},
            HttpConnectionManager, HttpFilter, Rds,
        },
        listener::{filter, Filter, FilterChain, FilterChainMatch},
        HTTP_CONNECTION_MANAGER_TYPE_URL,
    };

    use super::*;
    use crate::l7_config::{
        fault::FAULT_FILTER,
        filter_chain::{ChainFilter, HCM_FILTER, ROUTER_FILTER},
    };

    fn filter(name: &str) -> HttpFilter {
        HttpFilter { name: name.into(), ..Default::default() }
    }

    /// The listener keel-control sends (control/src/translate/l7/listeners.rs), with `edit` applied to its HCM.
    fn listener(edit: impl FnOnce(&mut HttpConnectionManager)) -> Listener {
        let mut hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                    ..Default::default()
                }),
                route_config_name: "80".into(),
            })),
            http_filters: vec![filter(FAULT_FILTER), filter(ROUTER_FILTER)],
            ..Default::default()
        };
        edit(&mut hcm);
        let any = prost_types::Any { type_url: HTTP_CONNECTION_MANAGER_TYPE_URL.into(), value: hcm.encode_to_vec() };
        Listener {
            name: "0.0.0.0_80".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(PortSpecifier::PortValue(80)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![FilterChain {
                filters: vec![Filter { name: HCM_FILTER.into(), config_type: Some(filter::ConfigType::TypedConfig(any)) }],
                ..Default::default()
            }],
            default_filter_chain: None,
        }
    }

    fn refused(l: &Listener) -> String {
        decode_listener(&l.encode_to_vec()).unwrap_err()
    }

    const HCM: &str = "field `filter_chains[0].filters[0]`.typed_config";

    #[test]
    fn listener_settings_keel_would_ignore_are_refused() {
        let l = decode_listener(&listener(|_| {}).encode_to_vec()).unwrap();
        let chain = l.plain_chain().unwrap();
        assert!(matches!(&chain.filter, ChainFilter::Http { route_config, faults: true } if route_config == "80"), "{chain:?}");
        assert_eq!((l.port, l.chains.len()), (80, 1));
        assert_eq!(refused(&listener(|h| h.codec_type = CodecType::Http2 as i32)), format!("{HCM}.codec_type: HTTP2 is not supported (AUTO is)"));
        assert_eq!(refused(&listener(|h| h.codec_type = 9)), format!("{HCM}.codec_type: unknown value 9"));
        let no_ads = listener(|h| {
            h.route_specifier = Some(RouteSpecifier::Rds(Rds { config_source: None, route_config_name: "80".into() }));
        });
        assert!(refused(&no_ads).starts_with(&format!("{HCM}.rds.config_source: ")));
        let disabled = listener(|h| h.http_filters[0].disabled = true);
        assert_eq!(refused(&disabled), format!("{HCM}.http_filters[0].disabled: not supported"));
        let mut matched = listener(|_| {});
        matched.filter_chains[0].filter_chain_match = Some(FilterChainMatch { destination_port: Some(8080), ..Default::default() });
        assert!(refused(&matched).starts_with("field `filter_chains[0].filter_chain_match`: only server_names and transport_protocol are supported"));
        matched.filter_chains[0].filter_chain_match = Some(FilterChainMatch { server_names: vec!["a.example.com".into()], ..Default::default() });
        assert!(refused(&matched).contains("only on a TLS chain"), "SNI names need the TLS transport");
        matched.filter_chains[0].filter_chain_match =
            Some(FilterChainMatch { server_names: vec!["a.example.com".into()], transport_protocol: "tls".into(), ..Default::default() });
        assert!(refused(&matched).contains("HTTP on a TLS chain needs the chain's transport socket"), "HTTP cannot be passed through");
        matched.filter_chains[0].filter_chain_match = Some(FilterChainMatch { transport_protocol: "raw_buffer".into(), ..Default::default() });
        assert!(refused(&matched).contains("\"raw_buffer\" is not supported"));
        let mut twice = listener(|_| {});
        twice.filter_chains.push(twice.filter_chains[0].clone());
        assert!(refused(&twice).contains("matches the same connections"));
        matched.filter_chains[0].filter_chain_match = Some(FilterChainMatch::default());
        assert!(decode_listener(&matched.encode_to_vec()).is_ok(), "an empty match matches everything");
        let mut default_chain = listener(|_| {});
        default_chain.default_filter_chain = Some(FilterChain::default());
        assert!(refused(&default_chain).starts_with("field `default_filter_chain`: not supported"));
    }

    #[test]
    fn an_unknown_filter_is_skipped_only_when_optional() {
        let unknown = |optional| {
            listener(|h| h.http_filters.insert(0, HttpFilter { name: "envoy.filters.http.cors".into(), is_optional: optional, ..Default::default() }))
        };
        assert!(refused(&unknown(false)).starts_with(&format!("{HCM}.http_filters[0]: envoy.filters.http.cors is not supported")));
        assert!(decode_listener(&unknown(true).encode_to_vec()).is_ok());
    }

    #[test]
    fn endpoint_priorities_and_weights_are_refused() {
        let endpoint = |weight| EnvoyLbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint { address: listener(|_| {}).address, ..Default::default() })),
            load_balancing_weight: weight,
            ..Default::default()
        };
        let cla = |priority, weight| ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![endpoint(weight)], priority, ..Default::default() }],
        };
        assert_eq!(decode_load_assignment(&cla(0, Some(1)).encode_to_vec()).unwrap().endpoints.len(), 1);
        assert_eq!(
            decode_load_assignment(&cla(1, None).encode_to_vec()).unwrap_err(),
            "field endpoints[0].priority: 1 is not supported (keel balances over priority 0 only)"
        );
        assert_eq!(
            decode_load_assignment(&cla(0, Some(3)).encode_to_vec()).unwrap_err(),
            "field endpoints[0].lb_endpoints[0].load_balancing_weight: weights are not supported"
        );
    }
}
