//! keel-control's metrics, served on its monitoring port (`GET /metrics`, next to `/ready`). Where istiod has a
//! metric for the same thing keel-control uses istiod's name and labels (`pilot_xds`, `pilot_xds_pushes`,
//! `pilot_total_xds_rejects`, `citadel_server_*`), so the queries of Istio's control-plane dashboard read keel-control
//! as they read istiod. istiod exposes its counters without OpenMetrics' `_total` suffix (`pilot_xds_pushes`,
//! `citadel_server_csr_count`); those are exposed here by the same names, typed `unknown` (OpenMetrics gives a
//! counter's samples the suffix), which PromQL reads as it reads a counter.
use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType, TypedMetric},
    registry::Registry,
};

use keel_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, HTTP_AUTHORIZATION_TYPE_URL, LISTENER_TYPE_URL,
    REQUEST_AUTHENTICATION_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, SECRET_TYPE_URL,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    /// `node` (a node proxy) or `gateway`.
    client: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// A counter exposed under its name as written (no `_total`), as istiod's are.
#[derive(Clone, Debug, Default)]
struct IstioCounter(Counter);

impl IstioCounter {
    fn inc(&self) {
        self.0.inc();
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::try_from(self.0.get()).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Shared by the ADS server and the CA; cheap to clone.
#[derive(Clone)]
pub struct ControlMetrics {
    registry: Arc<Registry>,
    clients: Family<ClientLabels, Gauge>,
    pushes: Family<TypeLabels, IstioCounter>,
    rejects: Family<TypeLabels, IstioCounter>,
    csr: IstioCounter,
    issued: IstioCounter,
    authentication_failures: IstioCounter,
    refused: Family<RefusalLabels, Counter>,
}

/// The short name istiod's metrics give an xDS type (`cds`, `lds`, …); keel's own types by what they carry.
pub fn short_type(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER_TYPE_URL => "cds",
        CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => "eds",
        LISTENER_TYPE_URL => "lds",
        ROUTE_CONFIGURATION_TYPE_URL => "rds",
        SECRET_TYPE_URL => "sds",
        ADDRESS_TYPE_URL => "wds",
        AUTHORIZATION_TYPE_URL => "wads",
        HTTP_AUTHORIZATION_TYPE_URL => "http_authorization",
        REQUEST_AUTHENTICATION_TYPE_URL => "request_authentication",
        _ => "unknown",
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlMetrics {
    pub fn new() -> ControlMetrics {
        let mut registry = Registry::default();
        let clients = Family::<ClientLabels, Gauge>::default();
        registry.register("pilot_xds", "xDS clients connected (node proxies and gateways)", clients.clone());
        let pushes = Family::<TypeLabels, IstioCounter>::default();
        registry.register("pilot_xds_pushes", "xDS responses sent with resources or removals, by type", pushes.clone());
        let rejects = Family::<TypeLabels, IstioCounter>::default();
        registry.register("pilot_total_xds_rejects", "xDS responses a client NACKed, by type", rejects.clone());
        let csr = IstioCounter::default();
        registry.register("citadel_server_csr_count", "Certificate signing requests received", csr.clone());
        let issued = IstioCounter::default();
        registry.register("citadel_server_success_cert_issuance_count", "Certificates issued", issued.clone());
        let authentication_failures = IstioCounter::default();
        registry.register(
            "citadel_server_authentication_failure_count",
            "Certificate requests whose caller could not be authenticated",
            authentication_failures.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register("keel_control_certificates_refused", "Certificate requests refused, by reason", refused.clone());
        // A fresh keel-control has pushed nothing and refused nothing: the series exist at 0 from the start, so
        // rates over them are defined (a counter that first appears at 1 loses that first increment in rate()).
        for reason in ["unauthenticated", "permission_denied", "invalid_argument", "other"] {
            let _ = refused.get_or_create(&RefusalLabels { reason });
        }
        ControlMetrics { registry: Arc::new(registry), clients, pushes, rejects, csr, issued, authentication_failures, refused }
    }

    fn client_labels(gateway: bool) -> ClientLabels {
        ClientLabels { client: if gateway { "gateway" } else { "node" } }
    }

    pub fn client_connected(&self, gateway: bool) {
        self.clients.get_or_create(&Self::client_labels(gateway)).inc();
    }

    pub fn client_disconnected(&self, gateway: bool) {
        self.clients.get_or_create(&Self::client_labels(gateway)).dec();
    }

    pub fn pushed(&self, type_url: &str) {
        self.pushes.get_or_create(&TypeLabels { r#type: short_type(type_url) }).inc();
    }

    pub fn rejected(&self, type_url: &str) {
        self.rejects.get_or_create(&TypeLabels { r#type: short_type(type_url) }).inc();
    }

    /// One certificate request and how it ended.
    pub fn certificate_request(&self, outcome: Result<(), tonic::Code>) {
        self.csr.inc();
        let reason = match outcome {
            Ok(()) => {
                self.issued.inc();
                return;
            }
            Err(tonic::Code::Unauthenticated) => {
                self.authentication_failures.inc();
                "unauthenticated"
            }
            Err(tonic::Code::PermissionDenied) => "permission_denied",
            Err(tonic::Code::InvalidArgument) => "invalid_argument",
            Err(_) => "other",
        };
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_rejects_clients_and_certificates_are_counted_under_istiods_names() {
        let m = ControlMetrics::new();
        m.client_connected(false);
        m.client_connected(false);
        m.client_connected(true);
        m.client_disconnected(false);
        m.pushed(ADDRESS_TYPE_URL);
        m.pushed(LISTENER_TYPE_URL);
        m.pushed(LISTENER_TYPE_URL);
        m.rejected(CLUSTER_TYPE_URL);
        m.certificate_request(Ok(()));
        m.certificate_request(Err(tonic::Code::Unauthenticated));
        m.certificate_request(Err(tonic::Code::PermissionDenied));
        let text = m.encode();
        for line in [
            "pilot_xds{client=\"node\"} 1",
            "pilot_xds{client=\"gateway\"} 1",
            "pilot_xds_pushes{type=\"wds\"} 1",
            "pilot_xds_pushes{type=\"lds\"} 2",
            "pilot_total_xds_rejects{type=\"cds\"} 1",
            "citadel_server_csr_count 3",
            "citadel_server_success_cert_issuance_count 1",
            "citadel_server_authentication_failure_count 1",
            "keel_control_certificates_refused_total{reason=\"permission_denied\"} 1",
            "keel_control_certificates_refused_total{reason=\"other\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
