//! An Envoy Cluster as keel's engine uses it: its load-balancing policy, connection-pool limits, outlier
//! detection and upstream protocol, validated once per config version. What keel cannot honour is refused naming
//! the field (the xDS client NACKs it and keeps the last good cluster), never silently dropped.
use std::{sync::Arc, time::Duration};

use keel_proto::cluster::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy, RingHashLbConfig},
    Cluster, OutlierDetection,
};

use super::{
    balancer::Policy,
    circuit::{Limits, DEFAULT_LIMIT, DEFAULT_MAX_RETRIES},
    limits,
    outlier::OutlierSettings,
    upstream_tls::{self, UpstreamTls},
};

/// Envoy's defaults where a Cluster leaves things unset.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RING_SIZE: usize = 1024;
const DEFAULT_MAGLEV_TABLE: usize = 65537;

#[derive(Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub policy: Policy,
    pub limits: Limits,
    pub outlier: Option<OutlierSettings>,
    pub connect_timeout: Duration,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// Speak HTTP/2 (h2c or inside HBONE) to the endpoints.
    pub http2: bool,
    /// `common_lb_config.healthy_panic_threshold` (Istio's `minHealthPercent`), percent.
    pub panic_threshold: f64,
    /// `transport_socket`: TLS originated to the endpoints (a ServiceEntry's DestinationRule `tls`).
    pub upstream_tls: Option<Arc<UpstreamTls>>,
}

/// An optional Duration field; `field` is its name in errors.
fn duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, String> {
    d.map(|d| limits::positive_duration(&format!("field `{field}`"), d)).transpose()
}

impl ClusterConfig {
    pub fn from_cluster(c: &Cluster) -> Result<ClusterConfig, String> {
        // Envoy's default discovery type is STATIC (endpoints inline); keel takes those and EDS.
        let discovery = match c.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).map_err(|_| format!("field `type`: unknown value {t}"))?,
        };
        if !matches!(discovery, DiscoveryType::Eds | DiscoveryType::Static) {
            return Err(format!("field `type`: {} clusters are not supported (EDS and STATIC are)", discovery.as_str_name()));
        }
        // Endpoints come from the ClusterLoadAssignment named as the cluster: inline endpoints or an EDS name of
        // their own would be silently ignored, so they are refused.
        if c.load_assignment.is_some() {
            return Err("field `load_assignment`: inline endpoints are not supported (keel takes them over EDS)".into());
        }
        if let Some(eds) = c.eds_cluster_config.as_ref().filter(|e| !e.service_name.is_empty() && e.service_name != c.name) {
            return Err(format!(
                "field `eds_cluster_config.service_name`: {:?} differs from the cluster name (keel looks endpoints up by it)",
                eds.service_name
            ));
        }
        let lb = LbPolicy::try_from(c.lb_policy).map_err(|_| format!("field `lb_policy`: unknown value {}", c.lb_policy))?;
        let policy = match (lb, &c.lb_config) {
            (LbPolicy::RoundRobin, _) => Policy::RoundRobin,
            (LbPolicy::Random, _) => Policy::Random,
            (LbPolicy::LeastRequest, Some(LbConfig::LeastRequestLbConfig(l))) => match l.choice_count.unwrap_or(2) {
                // Envoy's bound; keel samples distinct endpoints, so more choices than endpoints is harmless.
                choices @ 2.. => Policy::LeastRequest { choices: choices as usize },
                other => return Err(format!("field `least_request_lb_config.choice_count`: {other} is less than 2")),
            },
            (LbPolicy::LeastRequest, _) => Policy::LeastRequest { choices: 2 },
            (LbPolicy::RingHash, Some(LbConfig::RingHashLbConfig(r))) => Policy::RingHash { min_ring_size: ring_size(r)? },
            (LbPolicy::RingHash, _) => Policy::RingHash { min_ring_size: DEFAULT_RING_SIZE },
            (LbPolicy::Maglev, Some(LbConfig::MaglevLbConfig(m))) => match m.table_size {
                None => Policy::Maglev { table_size: DEFAULT_MAGLEV_TABLE },
                // The table fill only terminates when every endpoint's skip is coprime with the size: a prime.
                Some(size) if size <= limits::MAX_MAGLEV_TABLE_SIZE && limits::is_prime(size) => Policy::Maglev { table_size: size as usize },
                Some(size) => {
                    return Err(format!("field `maglev_lb_config.table_size`: {size} is not a prime of at most {}", limits::MAX_MAGLEV_TABLE_SIZE))
                }
            },
            (LbPolicy::Maglev, _) => Policy::Maglev { table_size: DEFAULT_MAGLEV_TABLE },
            (other, _) => return Err(format!("field `lb_policy`: {} is not supported", other.as_str_name())),
        };
        if c.common_lb_config.as_ref().is_some_and(|l| l.locality_config_specifier.is_some()) {
            return Err("field `common_lb_config.locality_weighted_lb_config`: not supported".into());
        }
        let panic_threshold = match c.common_lb_config.as_ref().and_then(|l| l.healthy_panic_threshold.as_ref()) {
            None => super::balancer::DEFAULT_PANIC_THRESHOLD,
            Some(p) if (0.0..=100.0).contains(&p.value) => p.value,
            Some(p) => return Err(format!("field `common_lb_config.healthy_panic_threshold`: {} is not 0-100", p.value)),
        };
        Ok(ClusterConfig {
            name: c.name.clone(),
            policy,
            limits: thresholds(c.circuit_breakers.as_ref().and_then(|b| b.thresholds.iter().find(|t| t.priority == 0))),
            outlier: c.outlier_detection.as_ref().map(outlier).transpose()?.flatten(),
            connect_timeout: duration("connect_timeout", c.connect_timeout.as_ref())?.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            max_requests_per_connection: c.max_requests_per_connection.unwrap_or(0),
            http2: c.http2_protocol_options.is_some(),
            panic_threshold,
            upstream_tls: c.transport_socket.as_ref().map(|socket| Arc::new(upstream_tls::decode(socket))),
        })
    }
}

/// Envoy's ring sizing: both bounds at most 8M and the minimum not above the maximum. keel's ring holds about
/// `minimum_ring_size` entries (rounded up to a multiple of the endpoints), so the maximum only needs checking.
fn ring_size(r: &RingHashLbConfig) -> Result<usize, String> {
    let max = r.maximum_ring_size.unwrap_or(limits::MAX_RING_SIZE);
    let min = r.minimum_ring_size.unwrap_or(DEFAULT_RING_SIZE as u64);
    for (field, size) in [("minimum_ring_size", min), ("maximum_ring_size", max)] {
        if size > limits::MAX_RING_SIZE {
            return Err(format!("field `ring_hash_lb_config.{field}`: {size} is more than {}", limits::MAX_RING_SIZE));
        }
    }
    if min > max {
        return Err(format!("field `ring_hash_lb_config.minimum_ring_size`: {min} is more than maximum_ring_size {max}"));
    }
    Ok(min as usize)
}

/// The default-priority thresholds; unset ones take Envoy's defaults.
fn thresholds(t: Option<&Thresholds>) -> Limits {
    let or = |v: Option<u32>, default: u32| v.unwrap_or(default);
    match t {
        None => Limits::default(),
        Some(t) => Limits {
            max_connections: or(t.max_connections, DEFAULT_LIMIT),
            max_pending_requests: or(t.max_pending_requests, DEFAULT_LIMIT),
            max_requests: or(t.max_requests, DEFAULT_LIMIT),
            max_retries: or(t.max_retries, DEFAULT_MAX_RETRIES),
        },
    }
}

/// Envoy's consecutive-error detectors (enforced at the `enforcing_*` percentage, which keel supports only as 0
/// or 100). `None` when both are off.
fn outlier(o: &OutlierDetection) -> Result<Option<OutlierSettings>, String> {
    let enforced = |field: &str, v: Option<u32>| match v.unwrap_or(100) {
        0 => Ok(false),
        100 => Ok(true),
        other => Err(format!("field `outlier_detection.{field}`: {other} % enforcement is not supported (0 or 100)")),
    };
    let consecutive_5xx = if enforced("enforcing_consecutive_5xx", o.enforcing_consecutive_5xx)? { o.consecutive_5xx.unwrap_or(5) } else { 0 };
    let consecutive_gateway_failure = if enforced("enforcing_consecutive_gateway_failure", o.enforcing_consecutive_gateway_failure.or(Some(0)))? {
        o.consecutive_gateway_failure.unwrap_or(5)
    } else {
        0
    };
    if consecutive_5xx == 0 && consecutive_gateway_failure == 0 {
        return Ok(None);
    }
    let max_ejection_percent = match o.max_ejection_percent.unwrap_or(10) {
        percent @ 0..=100 => percent,
        other => return Err(format!("field `outlier_detection.max_ejection_percent`: {other} is not 0-100")),
    };
    Ok(Some(OutlierSettings {
        consecutive_5xx,
        consecutive_gateway_failure,
        interval: duration("outlier_detection.interval", o.interval.as_ref())?.unwrap_or(Duration::from_secs(10)),
        base_ejection_time: duration("outlier_detection.base_ejection_time", o.base_ejection_time.as_ref())?.unwrap_or(Duration::from_secs(30)),
        max_ejection_percent,
    }))
}

#[cfg(test)]
mod tests {
    use keel_proto::{
        cluster::{
            cluster::{CommonLbConfig, EdsClusterConfig, LeastRequestLbConfig, MaglevLbConfig},
            CircuitBreakers,
        },
        endpoint::ClusterLoadAssignment,
        types::Percent,
    };

    use super::*;

    fn eds(name: &str) -> Cluster {
        Cluster { name: name.into(), cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)), ..Default::default() }
    }

    #[test]
    fn istio_shaped_clusters_translate() {
        let mut c = eds("outbound|80|v1|reviews.default.svc.cluster.local");
        c.lb_policy = LbPolicy::LeastRequest as i32;
        c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig { choice_count: Some(2) }));
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: 0,
                max_connections: Some(1),
                max_pending_requests: Some(1),
                max_requests: None,
                max_retries: None,
            }],
        });
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: Some(1),
            interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            base_ejection_time: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
            max_ejection_percent: Some(100),
            ..Default::default()
        });
        let cfg = ClusterConfig::from_cluster(&c).unwrap();
        assert!(matches!(cfg.policy, Policy::LeastRequest { choices: 2 }));
        assert_eq!(cfg.limits, Limits { max_connections: 1, max_pending_requests: 1, max_requests: DEFAULT_LIMIT, max_retries: DEFAULT_MAX_RETRIES });
        let o = cfg.outlier.unwrap();
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_failure, o.base_ejection_time), (1, 0, Duration::from_secs(3)));
        assert_eq!(cfg.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let mut ring = eds("r");
        ring.lb_policy = LbPolicy::RingHash as i32;
        ring.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig { minimum_ring_size: Some(2048), ..Default::default() }));
        assert!(matches!(ClusterConfig::from_cluster(&ring).unwrap().policy, Policy::RingHash { min_ring_size: 2048 }));
    }

    #[test]
    fn what_keel_cannot_honour_is_refused_naming_the_field() {
        let mut dns = eds("d");
        dns.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        assert!(ClusterConfig::from_cluster(&dns).unwrap_err().contains("field `type`"));
        let mut provided = eds("p");
        provided.lb_policy = LbPolicy::ClusterProvided as i32;
        assert_eq!(ClusterConfig::from_cluster(&provided).unwrap_err(), "field `lb_policy`: CLUSTER_PROVIDED is not supported");
        let mut partial = eds("o");
        partial.outlier_detection = Some(OutlierDetection { enforcing_consecutive_5xx: Some(50), ..Default::default() });
        assert!(ClusterConfig::from_cluster(&partial).unwrap_err().contains("outlier_detection.enforcing_consecutive_5xx"));
    }

    fn refused(c: &Cluster) -> String {
        ClusterConfig::from_cluster(c).unwrap_err()
    }

    #[test]
    fn maglev_table_sizes_must_be_prime_and_bounded() {
        let maglev = |size| {
            let mut c = eds("m");
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size: Some(size) }));
            c
        };
        assert!(matches!(ClusterConfig::from_cluster(&maglev(65537)).unwrap().policy, Policy::Maglev { table_size: 65537 }));
        // 1000 is not prime: the table fill looped for ever.
        assert_eq!(refused(&maglev(1000)), "field `maglev_lb_config.table_size`: 1000 is not a prime of at most 5000011");
        assert!(refused(&maglev(5_000_101)).starts_with("field `maglev_lb_config.table_size`: 5000101"), "prime, but above Envoy's bound");
        assert!(refused(&maglev(0)).starts_with("field `maglev_lb_config.table_size`"));
    }

    #[test]
    fn ring_sizes_are_bounded() {
        let ring = |min, max| {
            let mut c = eds("r");
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig { minimum_ring_size: min, maximum_ring_size: max, ..Default::default() }));
            c
        };
        assert!(matches!(ClusterConfig::from_cluster(&ring(Some(8_388_608), None)).unwrap().policy, Policy::RingHash { min_ring_size: 8_388_608 }));
        assert_eq!(refused(&ring(Some(u64::MAX), None)), format!("field `ring_hash_lb_config.minimum_ring_size`: {} is more than 8388608", u64::MAX));
        assert!(refused(&ring(None, Some(8_388_609))).starts_with("field `ring_hash_lb_config.maximum_ring_size`"));
        assert!(refused(&ring(Some(4096), Some(2048))).contains("4096 is more than maximum_ring_size 2048"));
    }

    #[test]
    fn durations_and_percentages_are_checked() {
        let mut huge = eds("t");
        huge.connect_timeout = Some(prost_types::Duration { seconds: 315_576_000_000, nanos: 0 });
        assert_eq!(ClusterConfig::from_cluster(&huge).unwrap().connect_timeout, limits::MAX_DURATION, "clamped to a year");
        let mut zero = eds("t");
        zero.connect_timeout = Some(prost_types::Duration::default());
        assert_eq!(refused(&zero), "field `connect_timeout`: must be more than 0");
        let mut negative = eds("t");
        negative.connect_timeout = Some(prost_types::Duration { seconds: -5, nanos: 0 });
        assert!(refused(&negative).starts_with("field `connect_timeout`: -5s 0ns is negative"));
        let mut ejection = eds("o");
        ejection.outlier_detection =
            Some(OutlierDetection { base_ejection_time: Some(prost_types::Duration { seconds: i64::MAX, nanos: 0 }), ..Default::default() });
        assert!(refused(&ejection).starts_with("field `outlier_detection.base_ejection_time`"));
        ejection.outlier_detection = Some(OutlierDetection { max_ejection_percent: Some(101), ..Default::default() });
        assert_eq!(refused(&ejection), "field `outlier_detection.max_ejection_percent`: 101 is not 0-100");
        let mut panic = eds("p");
        panic.common_lb_config = Some(CommonLbConfig { healthy_panic_threshold: Some(Percent { value: f64::NAN }), ..Default::default() });
        assert!(refused(&panic).starts_with("field `common_lb_config.healthy_panic_threshold`: NaN"));
        let mut choices = eds("l");
        choices.lb_policy = LbPolicy::LeastRequest as i32;
        choices.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig { choice_count: Some(1) }));
        assert_eq!(refused(&choices), "field `least_request_lb_config.choice_count`: 1 is less than 2");
    }

    #[test]
    fn endpoints_keel_would_not_look_up_are_refused() {
        let mut inline = eds("s");
        inline.cluster_discovery_type = None;
        inline.load_assignment = Some(ClusterLoadAssignment { cluster_name: "s".into(), ..Default::default() });
        assert!(refused(&inline).starts_with("field `load_assignment`"));
        let mut renamed = eds("c");
        renamed.eds_cluster_config = Some(EdsClusterConfig { eds_config: None, service_name: "other".into() });
        assert!(refused(&renamed).starts_with("field `eds_cluster_config.service_name`"));
        renamed.eds_cluster_config = Some(EdsClusterConfig { eds_config: None, service_name: "c".into() });
        assert!(ClusterConfig::from_cluster(&renamed).is_ok(), "the cluster's own name is what keel looks up");
    }
}
