//! Listeners: one per HTTP service port, `0.0.0.0_<port>` as Istio names its outbound listeners, with a single
//! filter chain holding an HttpConnectionManager that takes its routes over RDS (route config named by the port)
//! and runs the fault filter before the router.
//!
//! The subset keel's engine reads from it: `Listener.name`, `address` (0.0.0.0:port — the port is what matters;
//! keel captures traffic by service VIP and port, not by binding the address), one `filter_chains[0]` with one
//! `envoy.filters.network.http_connection_manager` filter; in the HCM `codec_type` AUTO (HTTP/1.1 and h2c by
//! preface), `stat_prefix`, `rds` (ADS, route config name) and `http_filters` = [fault, router].
use keel_proto::{
    core::{address, socket_address::PortSpecifier, Address, SocketAddress},
    hcm::{
        http_connection_manager::{CodecType, RouteSpecifier},
        http_filter, HttpConnectionManager, HttpFilter, Rds,
    },
    listener::{filter, Filter, FilterChain, Listener},
    tcp_proxy::{
        tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster},
        TcpProxy,
    },
    HTTP_CONNECTION_MANAGER_TYPE_URL, HTTP_FAULT_TYPE_URL, TCP_PROXY_TYPE_URL,
};
use prost::Message;
use prost_types::Any;

use super::clusters::ads;

pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
const ROUTER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

pub fn name(port: u16) -> String {
    format!("0.0.0.0_{port}")
}

pub fn listener(port: u16) -> Listener {
    listener_with_routes(port, &port.to_string(), &format!("outbound_0.0.0.0_{port}"))
}

/// A listener whose routes are the route configuration `routes` (a gateway's `http.<port>`).
pub fn listener_with_routes(port: u16, routes: &str, stat_prefix: &str) -> Listener {
    listener_with_chains(port, vec![http_chain(&name(port), routes, stat_prefix)])
}

/// A filter chain named `name` whose HTTP connection manager routes by the route configuration `routes`.
pub fn http_chain(name: &str, routes: &str, stat_prefix: &str) -> FilterChain {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds { config_source: Some(ads()), route_config_name: routes.to_owned() })),
        http_filters: vec![
            // An empty HTTPFault: faults come only from routes' typed_per_filter_config, as in Istio.
            http_filter(FAULT_FILTER, HTTP_FAULT_TYPE_URL),
            http_filter(ROUTER_FILTER, ROUTER_TYPE_URL),
        ],
    };
    FilterChain {
        name: name.to_owned(),
        filters: vec![Filter {
            name: HCM_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any { type_url: HTTP_CONNECTION_MANAGER_TYPE_URL.into(), value: hcm.encode_to_vec() })),
        }],
        ..Default::default()
    }
}

/// A filter chain named `name` relaying each connection to one of `clusters` (by weight): a gateway's
/// VirtualService `tcp` or `tls` route.
pub fn tcp_chain(name: &str, clusters: &[(String, u32)], stat_prefix: &str) -> FilterChain {
    let cluster_specifier = match clusters {
        [(only, _)] => ClusterSpecifier::Cluster(only.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters.iter().map(|(name, weight)| ClusterWeight { name: name.clone(), weight: *weight }).collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        // istiod's default idle timeout for TCP routes.
        idle_timeout: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    FilterChain {
        name: name.to_owned(),
        filters: vec![Filter {
            name: TCP_PROXY_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any { type_url: TCP_PROXY_TYPE_URL.into(), value: proxy.encode_to_vec() })),
        }],
        ..Default::default()
    }
}

/// The listener `0.0.0.0_<port>` with `chains` (a gateway's HTTPS port has one per server, chosen by SNI).
pub fn listener_with_chains(port: u16, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: name(port),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        filter_chains: chains,
        default_filter_chain: None,
    }
}

fn http_filter(name: &str, type_url: &str) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any { type_url: type_url.into(), value: vec![] })),
        ..Default::default()
    }
}
