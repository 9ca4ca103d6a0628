//! keel's xDS client against a hostile control plane (a scripted delta ADS server on loopback): garbage,
//! contradictory and mistyped resources are NACKed by name while the last good state keeps serving; a response
//! larger than keel accepts ends the stream (named in the status) without touching the state, and keel reconnects.
use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use keel::xds::{
    client::{XdsClient, XdsConfig, XdsStatus},
    state::WorkloadStore,
};
use keel_proto::{
    discovery::{
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
    },
    workload::{address, Address, Workload},
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

/// Larger than tonic's default 4 MiB decoding limit, which keel keeps.
const OVERSIZED: usize = 5 * 1024 * 1024;

fn resource(name: &str, type_url: &str, value: Vec<u8>) -> Resource {
    Resource { name: name.into(), version: "1".into(), resource: Some(prost_types::Any { type_url: type_url.into(), value }), ..Default::default() }
}

fn workload(uid: &str, ip: [u8; 4]) -> Vec<u8> {
    Address { r#type: Some(address::Type::Workload(Workload { uid: uid.into(), addresses: vec![ip.to_vec()], ..Default::default() })) }
        .encode_to_vec()
}

fn response(type_url: &str, nonce: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse { type_url: type_url.into(), nonce: nonce.into(), resources, ..Default::default() }
}

/// What the scripted control plane does, one step per ACK or NACK it receives on its first stream.
struct Hostile {
    streams: Arc<AtomicUsize>,
    /// Lets the test decide when the oversized response goes out.
    send_oversized: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Hostile {
    type DeltaAggregatedResourcesStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let stream_number = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let mut send_oversized = self.send_oversized.clone();
        tokio::spawn(async move {
            // Drain keel's requests so its stream never blocks on us.
            tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
            if stream_number > 1 {
                // A reconnect: the good state again, then silence.
                let _ =
                    tx.send(Ok(response(ADDRESS_TYPE_URL, "r1", vec![resource("good", ADDRESS_TYPE_URL, workload("good", [10, 0, 0, 1]))]))).await;
                std::future::pending::<()>().await;
            }
            let script = [
                response(ADDRESS_TYPE_URL, "1", vec![resource("good", ADDRESS_TYPE_URL, workload("good", [10, 0, 0, 1]))]),
                response(AUTHORIZATION_TYPE_URL, "2", vec![]),
                response(
                    ADDRESS_TYPE_URL,
                    "3",
                    vec![
                        resource("junk", ADDRESS_TYPE_URL, vec![0xff; 64]),
                        resource("twice", ADDRESS_TYPE_URL, workload("t1", [10, 0, 0, 2])),
                        resource("twice", ADDRESS_TYPE_URL, workload("t2", [10, 0, 0, 3])),
                        resource("mistyped", AUTHORIZATION_TYPE_URL, workload("m", [10, 0, 0, 4])),
                        resource("good", ADDRESS_TYPE_URL, workload("good", [10, 0, 0, 5])),
                    ],
                ),
            ];
            for step in script {
                if tx.send(Ok(step)).await.is_err() {
                    return;
                }
            }
            let _ = send_oversized.wait_for(|go| *go).await;
            let huge = response(ADDRESS_TYPE_URL, "4", vec![resource("huge", ADDRESS_TYPE_URL, vec![0; OVERSIZED])]);
            let _ = tx.send(Ok(huge)).await;
            std::future::pending::<()>().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn eventually(what: &str, status: &watch::Receiver<XdsStatus>, check: impl Fn(&XdsStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check(&status.borrow()) {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s; status: {:?}", status.borrow());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_control_plane_is_refused_by_name_and_the_last_good_state_stays() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let streams = Arc::new(AtomicUsize::new(0));
    let (oversized_tx, send_oversized) = watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Hostile { streams: streams.clone(), send_oversized }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let store = Arc::new(WorkloadStore::default());
    let (client, mut ready, status) = XdsClient::new(
        XdsConfig {
            address: format!("http://127.0.0.1:{port}"),
            root_pem: String::new(),
            server_name: "keel-control".into(),
            token: "t".into(),
            cluster_id: "Kubernetes".into(),
            node: Default::default(),
            // What is under test is what arrives, not the transport (which tests of the channel cover).
            insecure: true,
        },
        store.clone(),
    );
    tokio::spawn(client.run());
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await.expect("ready").unwrap();

    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    eventually("the NACK of the hostile response", &status, |s| s.last_nack.is_some()).await;
    let nack = status.borrow().last_nack.clone().unwrap();
    for expected in
        ["resource junk: not an istio.workload.Address", "resource twice: listed more than once", "resource mistyped: field `resource.type_url`"]
    {
        assert!(nack.contains(expected), "the NACK names {expected:?}: {nack}");
    }
    let snapshot = store.snapshot();
    assert!(snapshot.workloads_by_ip.contains_key(&ip("10.0.0.5")), "the valid update in the same response applies");
    for refused in ["10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        assert!(!snapshot.workloads_by_ip.contains_key(&ip(refused)), "{refused} was refused");
    }

    oversized_tx.send_replace(true);
    eventually("the oversized response ending the stream", &status, |s| s.last_error.as_deref().is_some_and(|e| e.contains("too large"))).await;
    assert!(store.snapshot().workloads_by_ip.contains_key(&ip("10.0.0.5")), "the last good state keeps serving");
    assert!(!store.snapshot().workloads.contains_key("huge"));
    eventually("keel reconnecting", &status, |s| s.connected).await;
    assert!(streams.load(Ordering::SeqCst) >= 2, "keel opened a new stream after the oversized response");
    server.abort();
}
