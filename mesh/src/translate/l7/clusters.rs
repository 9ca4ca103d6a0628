//! Clusters: one per service port and DestinationRule subset, discovered over EDS (ADS), with the merged traffic
//! policy's load balancer, circuit breakers and outlier detection, and Istio's defaults where the rule is silent.
use std::time::Duration;

use keel_proto::{
    cluster::{
        circuit_breakers::Thresholds,
        cluster::{
            common_lb_config, ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, LeastRequestLbConfig,
            MaglevLbConfig, RingHashLbConfig,
        },
        CircuitBreakers, Cluster, OutlierDetection,
    },
    core::{config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, RoutingPriority},
    types::Percent,
};

use super::{declares_http2, policy, upstream_tls, ClusterKey, Mesh7};
use crate::objects::{ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection as IstioOutlierDetection, SimpleLb};

/// Istio's default upstream connect timeout (meshConfig.connectTimeout).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default ring size for consistent hashing.
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Istio lifts Envoy's small default circuit-breaker limits to "unlimited" unless a DestinationRule sets them.
const UNLIMITED: u32 = u32::MAX;

/// google.protobuf.Duration's largest value (10 000 years): keel (and Envoy) refuse anything beyond it.
const MAX_PROTO_SECONDS: u64 = 315_576_000_000;

/// Saturates at the protobuf maximum: an Istio duration may be longer (up to u64 seconds), and a plain cast
/// would wrap it to a negative Duration every proxy refuses. keel clamps long ones to a year anyway.
pub fn duration(d: Duration) -> prost_types::Duration {
    if d.as_secs() > MAX_PROTO_SECONDS {
        return prost_types::Duration { seconds: MAX_PROTO_SECONDS as i64, nanos: 0 };
    }
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[cfg(test)]
#[test]
fn durations_longer_than_protobuf_allows_saturate_instead_of_wrapping() {
    assert_eq!(duration(Duration::from_secs(u64::MAX)), prost_types::Duration { seconds: MAX_PROTO_SECONDS as i64, nanos: 0 });
    assert_eq!(duration(Duration::new(3, 5)), prost_types::Duration { seconds: 3, nanos: 5 });
}

pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn cluster(mesh: &Mesh7, key: &ClusterKey, warnings: &mut Vec<String>) -> Cluster {
    let merged = policy::merged(mesh.rules.get(&key.host).copied(), key.subset.as_deref(), key.port);
    let pool = merged.connection_pool;
    let connect_timeout = pool.and_then(|p| p.tcp.as_ref()?.connect_timeout).map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get());
    let http2 = mesh.services.get(&key.host).and_then(|s| s.spec.ports.iter().find(|p| p.port == key.port)).is_some_and(declares_http2);
    let (lb_policy, lb_config) = load_balancer(merged.load_balancer, &key.name(), warnings);
    let max_requests_per_connection = pool.and_then(|p| p.http.as_ref()?.max_requests_per_connection).filter(|n| *n > 0).map(|n| n as u32);
    Cluster {
        name: key.name(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: key.name() }),
        connect_timeout: Some(duration(connect_timeout)),
        lb_policy: lb_policy as i32,
        lb_config,
        max_requests_per_connection,
        circuit_breakers: Some(circuit_breakers(pool)),
        http2_protocol_options: http2.then_some(Http2ProtocolOptions {}),
        outlier_detection: merged.outlier_detection.map(outlier_detection),
        common_lb_config: merged.outlier_detection.and_then(panic_threshold),
        // Only towards ServiceEntry hosts (upstream_tls.rs says why).
        transport_socket: merged
            .tls
            .filter(|_| mesh.service_entries.contains_key(&key.host))
            .and_then(|t| upstream_tls::transport_socket(t, &key.host)),
        ..Default::default()
    }
}

/// DestinationRule `loadBalancer` → Envoy's policy. LEAST_REQUEST with two choices is Istio's default (and what
/// LEAST_CONN and UNSPECIFIED mean to it); consistent hashing picks the ring (or Maglev) and the route carries the
/// hash key (routes.rs).
fn load_balancer(settings: Option<&LoadBalancerSettings>, cluster: &str, warnings: &mut Vec<String>) -> (LbPolicy, Option<LbConfig>) {
    let least_request = (LbPolicy::LeastRequest, Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig { choice_count: Some(2) })));
    let Some(settings) = settings else { return least_request };
    if let Some(hash) = &settings.consistent_hash {
        if let Some(maglev) = &hash.maglev {
            return (LbPolicy::Maglev, Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size: maglev.table_size })));
        }
        let minimum_ring_size =
            hash.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).or(hash.minimum_ring_size).unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
        let ring = RingHashLbConfig { minimum_ring_size: Some(minimum_ring_size), ..Default::default() };
        return (LbPolicy::RingHash, Some(LbConfig::RingHashLbConfig(ring)));
    }
    match settings.simple {
        Some(SimpleLb::RoundRobin) => (LbPolicy::RoundRobin, None),
        Some(SimpleLb::Random) => (LbPolicy::Random, None),
        Some(SimpleLb::Passthrough) => {
            warnings.push(format!("cluster {cluster}: loadBalancer.simple PASSTHROUGH is not supported by keel's L7 engine: LEAST_REQUEST used"));
            least_request
        }
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None => least_request,
    }
}

/// `connectionPool` → one DEFAULT-priority threshold set, each limit unlimited unless set (0 means unset in Istio).
fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let limit = |value: Option<i32>| Some(value.filter(|v| *v > 0).map_or(UNLIMITED, |v| v as u32));
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: limit(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
        }],
    }
}

/// `outlierDetection` → Envoy's consecutive-error detectors, enforced fully when set above 0 and switched off at 0;
/// the success-rate detector (on by default in Envoy) is switched off, as Istio does.
fn outlier_detection(settings: &IstioOutlierDetection) -> OutlierDetection {
    let enforcing = |count: Option<u32>| count.map(|c| if c > 0 { 100 } else { 0 });
    OutlierDetection {
        consecutive_5xx: settings.consecutive_5xx_errors,
        enforcing_consecutive_5xx: enforcing(settings.consecutive_5xx_errors),
        consecutive_gateway_failure: settings.consecutive_gateway_errors,
        enforcing_consecutive_gateway_failure: enforcing(settings.consecutive_gateway_errors),
        interval: settings.interval.map(|d| duration(d.get())),
        base_ejection_time: settings.base_ejection_time.map(|d| duration(d.get())),
        max_ejection_percent: settings.max_ejection_percent.map(|p| p.clamp(0, 100) as u32),
        enforcing_success_rate: Some(0),
        ..Default::default()
    }
}

/// `minHealthPercent` is Envoy's panic threshold: below it, ejected hosts are used again.
fn panic_threshold(settings: &IstioOutlierDetection) -> Option<CommonLbConfig> {
    settings.min_health_percent.filter(|p| *p >= 0).map(|p| CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: f64::from(p) }),
        locality_config_specifier: None::<common_lb_config::LocalityConfigSpecifier>,
    })
}
