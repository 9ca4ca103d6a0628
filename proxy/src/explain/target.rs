//! The query's ends, resolved against the live state: the source pod, the address it would dial for `--to`, and
//! the request `--http` describes.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use keel_proto::workload::{Service, Workload};

use super::{ExplainError, HttpQuery, Inputs};
use crate::{
    identity::Identity,
    xds::state::{ip_of, Snapshot},
};

/// The source pod: enrolled here or merely known, with its Workload when keel has one.
pub struct Source {
    pub name: String,
    pub ip: Ipv4Addr,
    pub enrolled: bool,
    pub workload: Option<Arc<Workload>>,
}

impl Source {
    pub fn namespace(&self) -> &str {
        self.name.split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn describe(&self, identity: Option<&Identity>) -> String {
        let identity = identity.map_or_else(|| "no Workload: no identity".into(), Identity::to_string);
        format!("{} {} ({identity})", self.name, self.ip)
    }
}

/// `from` is `namespace/name` or an address; an enrolled pod wins over a workload of the same name elsewhere.
pub fn source(inputs: &Inputs<'_>, from: &str) -> Result<Source, ExplainError> {
    let snapshot = inputs.plan.snapshot;
    let pod = inputs.pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == from || ipv4(from).is_some_and(|ip| has_ip(p, ip)));
    if let Some(pod) = pod {
        let ip = pod.ips.iter().find_map(|ip| v4(*ip));
        let ip = ip.ok_or_else(|| ExplainError::UnknownSource(from.into()))?;
        let workload = snapshot.workloads_by_ip.get(&IpAddr::V4(ip)).cloned();
        return Ok(Source { name: format!("{}/{}", pod.namespace, pod.name), ip, enrolled: true, workload });
    }
    let workload = snapshot
        .workloads
        .values()
        .find(|w| format!("{}/{}", w.namespace, w.name) == from || ipv4(from).is_some_and(|ip| workload_ip(w) == Some(ip)))
        .ok_or_else(|| ExplainError::UnknownSource(from.into()))?;
    let ip = workload_ip(workload).ok_or_else(|| ExplainError::UnknownSource(from.into()))?;
    Ok(Source { name: format!("{}/{}", workload.namespace, workload.name), ip, enrolled: false, workload: Some(workload.clone()) })
}

fn workload_ip(w: &Workload) -> Option<Ipv4Addr> {
    w.addresses.iter().find_map(|a| v4(ip_of(a)?))
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

/// An IPv4 address from `text`, if it is one.
fn ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

/// Whether `ip` is one of the pod's addresses.
fn has_ip(pod: &crate::pods::PodSpec, ip: Ipv4Addr) -> bool {
    pod.ips.contains(&IpAddr::V4(ip))
}

/// The address the pod dials, and the name it was asked by.
pub struct Destination {
    pub address: SocketAddrV4,
    /// The host as given (a name or the address).
    pub host: String,
    pub service: Option<Arc<Service>>,
}

impl Destination {
    pub fn describe(&self) -> String {
        match &self.service {
            Some(s) => format!("{}: service {}/{} port {}", self.address, s.namespace, s.hostname, self.address.port()),
            None => format!("{}: no service has this address", self.address),
        }
    }

    /// The Host a client sends: the name it dialled (with the port unless 80), or the service's hostname when it
    /// dialled the address.
    pub fn authority(&self, hostname: &str) -> String {
        let host = if ipv4(&self.host).is_some() { hostname } else { &self.host };
        match self.address.port() {
            80 => host.to_owned(),
            port => format!("{host}:{port}"),
        }
    }
}

/// `to` as `host:port`: an address, or a service's name the way a pod's resolver completes it (`web` in the
/// source's namespace, `web.demo`, `web.demo.svc`, the full hostname) or a ServiceEntry host, dialled at its VIP.
pub fn destination(snapshot: &Snapshot, to: &str, source_namespace: &str) -> Result<Destination, ExplainError> {
    let (host, port) = to.rsplit_once(':').ok_or_else(|| ExplainError::BadDestination(to.into()))?;
    let port: u16 = port.parse().map_err(|_| ExplainError::BadDestination(to.into()))?;
    if let Some(ip) = ipv4(host) {
        let service = snapshot.services_by_vip.get(&IpAddr::V4(ip)).cloned();
        return Ok(Destination { address: SocketAddrV4::new(ip, port), host: host.into(), service });
    }
    let host = host.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (name, namespace) = match labels.as_slice() {
        [name] => (*name, source_namespace),
        [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
        _ => ("", ""),
    };
    let service = snapshot
        .services
        .values()
        .find(|s| s.hostname == host)
        .or_else(|| {
            snapshot
                .services
                .values()
                .find(|s| s.name == name && s.namespace == namespace && s.hostname.starts_with(&format!("{name}.{namespace}.svc")))
        })
        .ok_or_else(|| ExplainError::UnknownHost(host.clone()))?;
    let vip = service.addresses.iter().find_map(|a| v4(ip_of(&a.address)?));
    let vip = vip.ok_or_else(|| ExplainError::NoVip { host: host.clone(), service: format!("{}/{}", service.namespace, service.hostname) })?;
    Ok(Destination { address: SocketAddrV4::new(vip, port), host, service: Some(service.clone()) })
}

/// The request `--http` and `-H` describe.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// No `--http` was given: `GET /` stands in.
    pub assumed: bool,
}

impl Request {
    pub fn parse(query: &HttpQuery) -> Result<Request, ExplainError> {
        let bad = || ExplainError::BadRequestLine(format!("{} {}", query.method, query.path));
        if query.method.is_empty() || !query.path.starts_with('/') {
            return Err(bad());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &query.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| ExplainError::BadHeader(format!("{name}:{value}")))?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::BadHeader(format!("{name}:{value}")))?;
            headers.append(name, value);
        }
        Ok(Request { method: query.method.to_ascii_uppercase(), path_and_query: query.path.clone(), headers, assumed: false })
    }

    pub fn default_get() -> Request {
        Request { method: "GET".into(), path_and_query: "/".into(), headers: HeaderMap::new(), assumed: true }
    }

    /// The Host header if `-H host:...` gave one, else `authority`.
    pub fn host<'a>(&'a self, authority: &'a str) -> &'a str {
        self.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(authority)
    }

    pub fn line(&self) -> String {
        format!("{} {}{}", self.method, self.path_and_query, if self.assumed { " (assumed: no --http given)" } else { "" })
    }
}

/// `GET /items?x=1` → (`GET`, `/items?x=1`), for the CLI.
pub fn split_request_line(line: &str) -> Result<(String, String), ExplainError> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(method), Some(path), None) if path.starts_with('/') => Ok((method.to_owned(), path.to_owned())),
        _ => Err(ExplainError::BadRequestLine(line.into())),
    }
}
