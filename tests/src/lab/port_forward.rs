//! A TCP port inside a lab namespace that leads to a port on the host's loopback: how a keel running in a node's
//! namespace reaches the Kubernetes API stand-in, which runs (and is driven by the test) on the host. Bytes are
//! copied unchanged (TLS passes end to end), so the kubeconfig written for the host works inside the node too.
//! Bounded: at most `MAX_CONNECTIONS` at once; dropping the forwarder stops accepting and closes what is open.

use super::sys;
use anyhow::{Context, Result};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_CONNECTIONS: usize = 64;
const POLL: Duration = Duration::from_millis(50);

pub struct PortForward {
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl PortForward {
    /// Listens on `listen` inside the namespace at `netns`; each connection is joined to a new connection to
    /// `target` made from the host's namespace.
    pub fn start(netns: &Path, listen: SocketAddr, target: SocketAddr) -> Result<PortForward> {
        let listener = sys::in_netns(netns, move || TcpListener::bind(listen).with_context(|| format!("binding {listen} in the node namespace")))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let active = Arc::new(AtomicUsize::new(0));
        let (stop_flag, open_list) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                let inside = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(POLL);
                        continue;
                    }
                    Err(_) => continue,
                };
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue; // dropped: the client retries
                }
                let Ok(outside) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else { continue };
                let _ = inside.set_nonblocking(false);
                let pairs = [(inside.try_clone(), outside.try_clone()), (outside.try_clone(), inside.try_clone())];
                if let Ok(mut list) = open_list.lock() {
                    list.extend([inside, outside]);
                }
                for pair in pairs {
                    let (Ok(mut from), Ok(mut to)) = pair else { continue };
                    let active = active.clone();
                    active.fetch_add(1, Ordering::Relaxed);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        });
        Ok(PortForward { stop, open })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}
