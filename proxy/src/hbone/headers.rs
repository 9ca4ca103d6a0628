//! The HBONE CONNECT request on the wire: `:authority` = the destination workload's `IP:target port`,
//! `forwarded` = the original client (`;host=` the service when the client dialled a VIP), `baggage` = the
//! source workload for the peer's telemetry, `traceparent` = one W3C trace context per tunnelled connection.
use std::net::SocketAddr;

use http::{HeaderValue, Method, Request};
use keel_proto::workload::{Workload, WorkloadType};
use rand::Rng as _;

use crate::identity::DEFAULT_TRUST_DOMAIN;

/// What the client puts in a CONNECT request.
pub struct ConnectRequest<'a> {
    pub target: SocketAddr,
    pub client: SocketAddr,
    pub service_host: Option<&'a str>,
    pub source: Option<&'a Workload>,
    pub cluster_id: &'a str,
}

pub fn authority(target: SocketAddr) -> String {
    match target {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

impl ConnectRequest<'_> {
    pub fn build(&self) -> Request<()> {
        let for_client = format!("for=\"{}\"", self.client);
        // The service host comes from the control plane, which decode validates; a host that is still no header
        // value is left out rather than failing the connection.
        let forwarded = self
            .service_host
            .and_then(|host| HeaderValue::try_from(format!("{for_client};host={host}")).ok())
            .unwrap_or_else(|| HeaderValue::try_from(for_client).expect("a socket address is a header value"));
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority(self.target))
            .header("forwarded", forwarded)
            .header("traceparent", traceparent());
        if let Some(baggage) = self.source.map(|w| baggage(w, self.cluster_id)).filter(|b| !b.is_empty()) {
            if let Ok(value) = HeaderValue::from_str(&baggage) {
                request = request.header("baggage", value);
            }
        }
        request.body(()).expect("a CONNECT request from valid parts")
    }
}

/// `k8s.cluster.name=..,k8s.namespace.name=..,k8s.<kind>.name=..,service.name=..,service.version=..`; empty
/// values are left out.
pub fn baggage(w: &Workload, cluster_id: &str) -> String {
    let kind = match WorkloadType::try_from(w.workload_type) {
        Ok(WorkloadType::Cronjob) => "cronjob",
        Ok(WorkloadType::Pod) => "pod",
        Ok(WorkloadType::Job) => "job",
        _ => "deployment",
    };
    let cluster = if w.cluster_id.is_empty() { cluster_id } else { &w.cluster_id };
    let locality = w.locality.as_ref();
    [
        ("k8s.cluster.name".to_owned(), cluster),
        ("k8s.namespace.name".to_owned(), w.namespace.as_str()),
        (format!("k8s.{kind}.name"), w.workload_name.as_str()),
        ("service.name".to_owned(), w.canonical_name.as_str()),
        ("service.version".to_owned(), w.canonical_revision.as_str()),
        ("cloud.region".to_owned(), locality.map_or("", |l| l.region.as_str())),
        ("cloud.availability_zone".to_owned(), locality.map_or("", |l| l.zone.as_str())),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(",")
}

/// `00-<trace id>-<span id>-00`: a fresh, unsampled trace context.
fn traceparent() -> String {
    let mut rng = rand::rng();
    format!("00-{:032x}-{:016x}-00", rng.random::<u128>() | 1, rng.random::<u64>() | 1)
}

/// The original client from a `forwarded: for="ip:port"` header, if present and parsable.
pub fn forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split(';').find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        v.trim_matches('"').parse().ok()
    })
}

/// Why a CONNECT request is refused before anything is dialled (the reference's 400 cases).
pub fn parse_target(request: &Request<h2::RecvStream>) -> Result<SocketAddr, String> {
    if request.method() != Method::CONNECT {
        return Err(format!("method {} is not CONNECT", request.method()));
    }
    let authority = request.uri().authority().ok_or("no :authority")?;
    authority.as_str().parse::<SocketAddr>().map_err(|_| format!(":authority {authority} is not IP:port"))
}

/// The trust domain a Workload claims (empty = the mesh default).
pub fn trust_domain(w: &Workload) -> &str {
    if w.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        &w.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_carries_the_reference_headers() {
        let source = Workload {
            namespace: "lab-a".into(),
            workload_name: "client".into(),
            canonical_name: "client".into(),
            canonical_revision: "v1".into(),
            ..Default::default()
        };
        let request = ConnectRequest {
            target: "10.244.2.2:8080".parse().unwrap(),
            client: "10.244.1.2:56938".parse().unwrap(),
            service_host: Some("echo.lab-b.svc.cluster.local"),
            source: Some(&source),
            cluster_id: "Kubernetes",
        }
        .build();
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(request.uri().to_string(), "10.244.2.2:8080");
        let h = request.headers();
        assert_eq!(h["forwarded"], "for=\"10.244.1.2:56938\";host=echo.lab-b.svc.cluster.local");
        assert_eq!(
            h["baggage"],
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=lab-a,k8s.deployment.name=client,service.name=client,service.version=v1"
        );
        let tp = h["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "00"), "{tp}");
        assert_eq!(forwarded_for(h["forwarded"].to_str().unwrap()), Some("10.244.1.2:56938".parse().unwrap()));
    }

    #[test]
    fn a_service_host_that_is_no_header_value_is_left_out() {
        let request = ConnectRequest {
            target: "10.244.2.2:8080".parse().unwrap(),
            client: "10.244.1.2:56938".parse().unwrap(),
            service_host: Some("echo\r\nx-injected: 1"),
            source: None,
            cluster_id: "Kubernetes",
        }
        .build();
        assert_eq!(request.headers()["forwarded"], "for=\"10.244.1.2:56938\"");
        assert!(!request.headers().contains_key("x-injected"));
    }

    #[test]
    fn ipv6_authority_is_bracketed() {
        assert_eq!(authority("[fd00::1]:80".parse().unwrap()), "[fd00::1]:80");
    }
}
