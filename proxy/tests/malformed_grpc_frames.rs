//! keel's xDS client against a control plane whose gRPC frames are not what the protocol says: a frame that is
//! not a DeltaDiscoveryResponse at all, and a compressed frame keel never asked for. Each ends the stream with an
//! error naming the cause, the last good state keeps serving, and keel reconnects. The server is a raw HTTP/2
//! one (hyper), since a gRPC server library would never send such frames.
use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;
use keel::xds::{
    client::{XdsClient, XdsConfig, XdsStatus},
    state::WorkloadStore,
};
use keel_proto::{
    discovery::{DeltaDiscoveryResponse, Resource},
    workload::{address, Address, Workload},
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// A gRPC length-prefixed message: the compressed flag, the length (big-endian), the bytes.
fn frame(compressed: bool, message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(u32::try_from(message.len()).expect("small"));
    b.put_slice(message);
    b.freeze()
}

fn good(nonce: &str, ip: [u8; 4]) -> Bytes {
    let address =
        Address { r#type: Some(address::Type::Workload(Workload { uid: "good".into(), addresses: vec![ip.to_vec()], ..Default::default() })) };
    let resource = Resource {
        name: "good".into(),
        version: "1".into(),
        resource: Some(prost_types::Any { type_url: ADDRESS_TYPE_URL.into(), value: address.encode_to_vec() }),
        ..Default::default()
    };
    let response = DeltaDiscoveryResponse { type_url: ADDRESS_TYPE_URL.into(), nonce: nonce.into(), resources: vec![resource], ..Default::default() };
    frame(false, &response.encode_to_vec())
}

/// An empty authorization response: with the addresses, it makes keel ready.
fn no_policies(nonce: &str) -> Bytes {
    frame(false, &DeltaDiscoveryResponse { type_url: AUTHORIZATION_TYPE_URL.into(), nonce: nonce.into(), ..Default::default() }.encode_to_vec())
}

/// What stream `n` (1-based) sends after a good response: garbage on the first, a compressed frame on the second,
/// nothing more on later ones.
fn bad_frame(n: usize) -> Option<Bytes> {
    match n {
        // 0xff.. is no valid protobuf field key: the message cannot be decoded.
        1 => Some(frame(false, &[0xff; 16])),
        2 => Some(frame(true, &good(&format!("c{n}"), [10, 0, 0, 9]))),
        _ => None,
    }
}

async fn serve(listener: tokio::net::TcpListener, streams: Arc<AtomicUsize>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let streams = streams.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
                let n = streams.fetch_add(1, Ordering::SeqCst) + 1;
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(good(&format!("g{n}"), [10, 0, 0, n as u8])))).await;
                    let _ = tx.send(Ok(Frame::data(no_policies(&format!("p{n}"))))).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if let Some(bad) = bad_frame(n) {
                        let _ = tx.send(Ok(Frame::data(bad))).await;
                    }
                    tx.closed().await;
                });
                let response = hyper::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(ReceiverStream::new(rx)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn eventually(what: &str, status: &watch::Receiver<XdsStatus>, check: impl Fn(&XdsStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check(&status.borrow()) {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 15 s; status: {:?}", status.borrow());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_frames_end_the_stream_and_keel_reconnects_with_its_state() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let streams = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn(serve(listener, streams.clone()));

    let store = Arc::new(WorkloadStore::default());
    let (client, mut ready, status) = XdsClient::new(
        XdsConfig {
            address: format!("http://127.0.0.1:{port}"),
            root_pem: String::new(),
            server_name: "keel-control".into(),
            token: "t".into(),
            cluster_id: "Kubernetes".into(),
            node: Default::default(),
            insecure: true,
        },
        store.clone(),
    );
    let mut errors = Vec::new();
    let mut watched = status.clone();
    let collect = tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        while watched.changed().await.is_ok() {
            if let Some(e) = watched.borrow().last_error.clone() {
                if seen.last() != Some(&e) {
                    seen.push(e);
                }
            }
            if seen.len() >= 2 {
                break;
            }
        }
        seen
    });
    tokio::spawn(client.run());
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await.expect("ready").unwrap();

    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // Stream 1: good (10.0.0.1), then garbage; stream 2: good (10.0.0.2), then a compressed frame; stream 3: good.
    eventually("keel on its third stream", &status, |_| streams.load(Ordering::SeqCst) >= 3).await;
    eventually("the third stream's state", &status, |s| s.connected && store.snapshot().workloads_by_ip.contains_key(&ip("10.0.0.3"))).await;
    errors.extend(tokio::time::timeout(Duration::from_secs(5), collect).await.expect("two stream errors").unwrap());
    eprintln!("stream errors: {errors:?}");
    assert!(errors[0].contains("decode"), "the garbage frame's error names the decoding: {errors:?}");
    assert!(errors[1].contains("compress"), "the compressed frame's error names compression: {errors:?}");
    assert!(!store.snapshot().workloads_by_ip.contains_key(&ip("10.0.0.9")), "the compressed frame was not applied");
    server.abort();
}
