//! Both sides of the exchange in one process: what arrives is the same sockets, in order, and each side ends as
//! the protocol says (taken over, or asked to stop for a version mismatch).
use std::{
    net::TcpListener,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use super::*;

struct FakeKeel {
    pod: PodSpec,
    listeners: PodListeners,
    admin: TcpListener,
    handed_over: AtomicU32,
    stopped: AtomicU32,
    /// A paused relay to surrender: an accepted connection, with bytes each way it had not written yet.
    relay: std::sync::Mutex<Option<relays::Surrendered>>,
}

impl Handover for FakeKeel {
    async fn offer(&self) -> anyhow::Result<Offer> {
        Ok(Offer { pods: vec![(self.pod.clone(), self.listeners.try_clone()?)], node: vec![("admin".into(), self.admin.try_clone()?)] })
    }

    fn handed_over(&self) {
        self.handed_over.fetch_add(1, Ordering::SeqCst);
    }

    async fn stop_for_restart(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }

    async fn surrender_relays(&self) -> Vec<relays::Surrendered> {
        self.relay.lock().unwrap().take().into_iter().collect()
    }
}

fn moved_relay() -> relays::MovedRelay {
    relays::MovedRelay {
        pod: "default/web".into(),
        inbound: true,
        source: "10.244.0.9:40000".parse().unwrap(),
        original_destination: "10.244.0.5:8080".parse().unwrap(),
        upstream: Some("10.244.0.5:8080".parse().unwrap()),
        same_node: true,
        source_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        up_ended: false,
        down_ended: true,
        bytes_sent: 70_000,
        bytes_received: 12,
    }
}

fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn running_keel(dir: &Path) -> (Arc<FakeKeel>, tokio::runtime::Runtime) {
    let keel = Arc::new(FakeKeel {
        pod: PodSpec {
            namespace: "default".into(),
            name: "web".into(),
            service_account: "web".into(),
            netns: "/var/run/netns/web".into(),
            cgroup: "/sys/fs/cgroup/web".into(),
            uid: None,
            netns_discovered: false,
            ips: vec!["10.244.0.5".parse().unwrap()],
            budgets: Default::default(),
        },
        listeners: PodListeners { outbound: loopback(), inbound: loopback(), hbone: loopback() },
        admin: loopback(),
        handed_over: AtomicU32::new(0),
        stopped: AtomicU32::new(0),
        relay: std::sync::Mutex::new(None),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    serve(listen(dir).unwrap().socket, keel.clone(), runtime.handle().clone()).unwrap();
    (keel, runtime)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-handover-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_successor_receives_the_same_sockets_and_the_old_keel_hears_it_took_over() {
    let dir = scratch("ok");
    let (keel, _runtime) = running_keel(&dir);
    let mut received = connect(&dir).unwrap().expect("a running keel").exchange(VERSION).unwrap().expect("an offer");
    let admin = received.node_listener("admin").expect("the admin listener (same network namespace)");
    let pods = std::mem::take(&mut received.pods);
    assert_eq!(pods.len(), 1);
    let (spec, listeners) = &pods[0];
    assert_eq!(spec, &keel.pod);
    let addr = |l: &TcpListener| l.local_addr().unwrap();
    assert_eq!(
        [addr(&listeners.outbound), addr(&listeners.inbound), addr(&listeners.hbone)],
        [addr(&keel.listeners.outbound), addr(&keel.listeners.inbound), addr(&keel.listeners.hbone)],
        "the same sockets, in order"
    );
    assert_eq!(addr(&admin), addr(&keel.admin));
    // A connection queued on the old keel's socket is accepted by the successor's copy.
    let _client = std::net::TcpStream::connect(addr(&keel.listeners.inbound)).unwrap();
    assert!(listeners.inbound.accept().is_ok());
    assert_eq!(keel.handed_over.load(Ordering::SeqCst), 0, "not before the successor says so");
    // A paused relay: its two sockets, 70,000 unwritten bytes one way, none the other.
    let (client, server) = (std::net::TcpStream::connect(addr(&keel.admin)).unwrap(), keel.admin.accept().unwrap().0);
    let unwritten: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let (handed, mut taken) = tokio::sync::oneshot::channel();
    *keel.relay.lock().unwrap() = Some(relays::Surrendered {
        relay: moved_relay(),
        client: server.try_clone().unwrap().into(),
        server: client.try_clone().unwrap().into(),
        up_unwritten: unwritten.clone().into(),
        down_unwritten: Default::default(),
        handed: Some(handed),
    });
    let moved = received.took_over().unwrap();
    assert_eq!(keel.handed_over.load(Ordering::SeqCst), 1);
    assert_eq!(moved.len(), 1, "the paused relay arrives");
    let relay = &moved[0];
    assert_eq!(relay.relay, moved_relay());
    assert_eq!((&relay.up_unwritten[..], relay.down_unwritten.len()), (&unwritten[..], 0), "its unwritten bytes, whole");
    let local = |fd: &OwnedFd| std::net::TcpStream::from(fd.try_clone().unwrap()).local_addr().unwrap();
    assert_eq!((local(&relay.client), local(&relay.server)), (server.local_addr().unwrap(), client.local_addr().unwrap()), "the same sockets");
    assert!(taken.try_recv().is_ok(), "the old keel hears the successor has it");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_version_gets_the_old_way_and_no_keel_means_none() {
    let dir = scratch("version");
    assert!(connect(&dir).unwrap().is_none(), "no socket: nothing to take over");
    let (keel, _runtime) = running_keel(&dir);
    let answer = connect(&dir).unwrap().expect("a running keel").exchange(VERSION + 1).unwrap();
    assert!(answer.is_none());
    assert_eq!((keel.handed_over.load(Ordering::SeqCst), keel.stopped.load(Ordering::SeqCst)), (0, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}
