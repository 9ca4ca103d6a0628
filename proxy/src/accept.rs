//! Accepting on a pod's listeners, bounded: the captured-traffic listeners ([`crate::captured`]) and the HBONE
//! listener ([`crate::hbone_server`]) both run [`accept_loop`].
use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{
    data_path::PodContext,
    limits::{RateBudget, Slot, Slots},
    sockets,
    telemetry::Telemetry,
};

/// What a connection must get before it is served: a slot of every pool, and first a token of the rate budget, if
/// there is one.
pub struct Budgets {
    pub slots: Vec<Arc<Slots>>,
    pub rate: Option<Arc<RateBudget>>,
}

/// Accepts on one of a pod's listeners until `stop` flips (unenroll or shutdown), running `handle` on its own
/// task for each connection. A connection gets a slot of every pool in `budgets.slots` or is refused at once with a
/// reset (counted under the pool's reason): a peer cannot make keel hold more sockets than the limits allow. With a
/// `budgets.rate`, a connection beyond it is refused the same way first. Connections already accepted keep running
/// to their natural end.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    what: &'static str,
    pod: Arc<PodContext>,
    telemetry: &Telemetry,
    budgets: Budgets,
    mut stop: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Vec<Slot>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Budgets { slots, rate } = budgets;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                sockets::set_keepalive(&stream);
                if let Some(rate) = rate.as_ref().filter(|rate| !rate.try_take()) {
                    telemetry.refused(rate.refusal);
                    debug!(pod = %pod.name, listener = what, %peer, per_second = rate.per_second(), "connection refused: the pod's connection rate");
                    sockets::reset(&stream);
                    continue;
                }
                let mut held = Vec::with_capacity(slots.len());
                let refused = slots.iter().find(|pool| match pool.try_take() {
                    Some(slot) => {
                        held.push(slot);
                        false
                    }
                    None => true,
                });
                if let Some(pool) = refused {
                    telemetry.refused(pool.refusal);
                    warn!(pod = %pod.name, listener = what, %peer, reason = pool.refusal.as_str(), limit = pool.limit(),
                          "connection refused: limit reached");
                    sockets::reset(&stream);
                    continue;
                }
                tokio::spawn(handle(stream, peer, held));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning; the listener stays.
                warn!(pod = %pod.name, listener = what, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
