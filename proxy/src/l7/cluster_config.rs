//! An Envoy Cluster as keel's engine uses it: its load-balancing policy, connection-pool limits, outlier
//! detection and upstream protocol, validated once per config version. What keel cannot honour is refused naming
//! the field (the xDS client NACKs it and keeps the last good cluster), never silently dropped.
use std::time::Duration;

use keel_proto::cluster::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy},
    Cluster, OutlierDetection,
};

use super::{
    balancer::Policy,
    circuit::{Limits, DEFAULT_LIMIT, DEFAULT_MAX_RETRIES},
    outlier::OutlierSettings,
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
}

fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
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
        let lb = LbPolicy::try_from(c.lb_policy).map_err(|_| format!("field `lb_policy`: unknown value {}", c.lb_policy))?;
        let policy = match (lb, &c.lb_config) {
            (LbPolicy::RoundRobin, _) => Policy::RoundRobin,
            (LbPolicy::Random, _) => Policy::Random,
            (LbPolicy::LeastRequest, Some(LbConfig::LeastRequestLbConfig(l))) => {
                Policy::LeastRequest { choices: l.choice_count.unwrap_or(2) as usize }
            }
            (LbPolicy::LeastRequest, _) => Policy::LeastRequest { choices: 2 },
            (LbPolicy::RingHash, Some(LbConfig::RingHashLbConfig(r))) => {
                Policy::RingHash { min_ring_size: r.minimum_ring_size.map_or(DEFAULT_RING_SIZE, |s| s as usize) }
            }
            (LbPolicy::RingHash, _) => Policy::RingHash { min_ring_size: DEFAULT_RING_SIZE },
            (LbPolicy::Maglev, Some(LbConfig::MaglevLbConfig(m))) => {
                Policy::Maglev { table_size: m.table_size.map_or(DEFAULT_MAGLEV_TABLE, |s| s as usize) }
            }
            (LbPolicy::Maglev, _) => Policy::Maglev { table_size: DEFAULT_MAGLEV_TABLE },
            (other, _) => return Err(format!("field `lb_policy`: {} is not supported", other.as_str_name())),
        };
        Ok(ClusterConfig {
            name: c.name.clone(),
            policy,
            limits: limits(c.circuit_breakers.as_ref().and_then(|b| b.thresholds.iter().find(|t| t.priority == 0))),
            outlier: c.outlier_detection.as_ref().map(outlier).transpose()?.flatten(),
            connect_timeout: duration(c.connect_timeout.as_ref()).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            max_requests_per_connection: c.max_requests_per_connection.unwrap_or(0),
            http2: c.http2_protocol_options.is_some(),
            panic_threshold: c
                .common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold.as_ref())
                .map_or(super::balancer::DEFAULT_PANIC_THRESHOLD, |p| p.value),
        })
    }
}

/// The default-priority thresholds; unset ones take Envoy's defaults.
fn limits(t: Option<&Thresholds>) -> Limits {
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
    Ok(Some(OutlierSettings {
        consecutive_5xx,
        consecutive_gateway_failure,
        interval: duration(o.interval.as_ref()).unwrap_or(Duration::from_secs(10)),
        base_ejection_time: duration(o.base_ejection_time.as_ref()).unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
    }))
}

#[cfg(test)]
mod tests {
    use keel_proto::cluster::{
        cluster::{LeastRequestLbConfig, RingHashLbConfig},
        CircuitBreakers,
    };

    use super::*;

    fn eds(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        }
    }

    #[test]
    fn istio_shaped_clusters_translate() {
        let mut c = eds("outbound|80|v1|reviews.default.svc.cluster.local");
        c.lb_policy = LbPolicy::LeastRequest as i32;
        c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig { choice_count: Some(2) }));
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds { priority: 0, max_connections: Some(1), max_pending_requests: Some(1), max_requests: None, max_retries: None }],
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
}
