//! The traffic policy that applies to one cluster, merged as Istio merges it: the DestinationRule's top-level
//! policy, overridden by its `portLevelSettings` for the port, then by the subset's policy and the subset's own
//! port-level settings. Each section (load balancer, connection pool, outlier detection, tls) is replaced whole, not
//! field by field — Istio's rule, so a port-level `connectionPool` with only `tcp` drops the top-level `http` limits.
use crate::objects::{ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection, TrafficPolicy};

#[derive(Debug, Default)]
pub struct Merged<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Merged<'a> {
    fn apply(&mut self, policy: &'a TrafficPolicy, port: u16) {
        self.override_with(policy.load_balancer.as_ref(), policy.connection_pool.as_ref(), policy.outlier_detection.as_ref());
        self.tls = policy.tls.as_ref().or(self.tls);
        for level in policy.port_level_settings.iter().filter(|l| l.port.number == u32::from(port)) {
            self.override_with(level.load_balancer.as_ref(), level.connection_pool.as_ref(), level.outlier_detection.as_ref());
            self.tls = level.tls.as_ref().or(self.tls);
        }
    }

    fn override_with(
        &mut self,
        load_balancer: Option<&'a LoadBalancerSettings>,
        connection_pool: Option<&'a ConnectionPoolSettings>,
        outlier_detection: Option<&'a OutlierDetection>,
    ) {
        self.load_balancer = load_balancer.or(self.load_balancer);
        self.connection_pool = connection_pool.or(self.connection_pool);
        self.outlier_detection = outlier_detection.or(self.outlier_detection);
    }
}

pub fn merged<'a>(rule: Option<&'a DestinationRule>, subset: Option<&str>, port: u16) -> Merged<'a> {
    let mut out = Merged::default();
    let Some(rule) = rule else { return out };
    if let Some(top) = &rule.spec.traffic_policy {
        out.apply(top, port);
    }
    let subset_policy = subset.and_then(|name| rule.spec.subsets.iter().find(|s| s.name == name)).and_then(|s| s.traffic_policy.as_ref());
    if let Some(policy) = subset_policy {
        out.apply(policy, port);
    }
    out
}
