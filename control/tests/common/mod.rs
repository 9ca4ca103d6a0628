//! A delta ADS test client: subscribes, receives with a 1 s deadline, ACKs every response.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{collections::BTreeMap, time::Duration};

use keel_proto::discovery::{aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub struct Client {
    pub requests: mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: Streaming<DeltaDiscoveryResponse>,
}

pub async fn connect(addr: &str, token: &str) -> Result<Client, tonic::Status> {
    let grpc = AggregatedDiscoveryServiceClient::connect(addr.to_owned()).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    open_stream(grpc, token).await
}

/// Over TLS, trusting only `root_pem`, expecting `server_name` in the server's certificate.
pub async fn connect_tls(addr: &str, token: &str, root_pem: &str, server_name: &str) -> Result<Client, tonic::Status> {
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(root_pem)).domain_name(server_name);
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    open_stream(AggregatedDiscoveryServiceClient::new(channel), token).await
}

async fn open_stream(mut grpc: AggregatedDiscoveryServiceClient<tonic::transport::Channel>, token: &str) -> Result<Client, tonic::Status> {
    let (requests, rx) = mpsc::channel(8);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let responses = grpc.delta_aggregated_resources(request).await?.into_inner();
    Ok(Client { requests, responses })
}

impl Client {
    pub async fn subscribe(&self, type_url: &str, initial: BTreeMap<String, String>) {
        let request = DeltaDiscoveryRequest { type_url: type_url.into(), initial_resource_versions: initial, ..Default::default() };
        self.requests.send(request).await.unwrap();
    }

    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        let response =
            tokio::time::timeout(Duration::from_secs(1), self.responses.message()).await.expect("a push within 1 s").unwrap().expect("stream open");
        let ack = DeltaDiscoveryRequest { type_url: response.type_url.clone(), response_nonce: response.nonce.clone(), ..Default::default() };
        self.requests.send(ack).await.unwrap();
        response
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}
