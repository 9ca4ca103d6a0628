//! One writer among keel-control's replicas: every replica serves xDS and the CA from its own watches, but only the
//! holder of the `coordination.k8s.io` Lease writes to the API (Events on objects keel refuses). The Lease is taken
//! when absent or expired, renewed well before it expires, and every write to it carries the resourceVersion read, so
//! two replicas racing for it cannot both win (the loser gets 409 Conflict and follows).
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Api, PostParams},
    Client,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease's name (in keel-control's namespace).
pub const LEASE_NAME: &str = "keel-control";
/// A holder that has not renewed for this long has lost the Lease.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder renews this often; the others check this often whether the Lease expired.
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// One Lease read or write gets this long; a holder that cannot renew within the lease stops leading on its own.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a replica does with the Lease as it finds it.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// There is none: create it, held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Another's, expired: take it over.
    TakeOver,
    /// Another's, current: follow.
    Follow,
}

fn step(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else { return Step::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    let duration = spec.lease_duration_seconds.map_or(LEASE_DURATION, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let expired = holder.is_empty() || renewed.is_none_or(|at| now.duration_since(at).unsigned_abs() >= duration || at > now + duration);
    if expired {
        Step::TakeOver
    } else {
        Step::Follow
    }
}

/// Runs the election forever, publishing whether this replica leads.
pub async fn run(client: Client, namespace: String, me: String, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let led = tokio::time::timeout(CALL_TIMEOUT, round(&api, &me)).await.unwrap_or_else(|_| Err("the API did not answer in time".into()));
        let now_leading = match led {
            Ok(leading) => leading,
            Err(error) => {
                warn!(%error, lease = %format!("{namespace}/{LEASE_NAME}"), "leader election: Lease not reachable");
                false
            }
        };
        if now_leading != *leading.borrow() {
            info!(leading = now_leading, identity = %me, lease = %format!("{namespace}/{LEASE_NAME}"), "leader election");
            leading.send_replace(now_leading);
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
}

/// One read-and-write of the Lease; whether we hold it afterwards.
async fn round(api: &Api<Lease>, me: &str) -> Result<bool, String> {
    let current = api.get_opt(LEASE_NAME).await.map_err(|e| e.to_string())?;
    let now = Timestamp::now();
    let step = step(current.as_ref().and_then(|l| l.spec.as_ref()), me, now);
    let held = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let written = match (step, current) {
        (Step::Follow, _) => return Ok(false),
        (Step::Create, _) => {
            let lease = Lease { metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..ObjectMeta::default() }, spec: Some(held(None, 0)) };
            api.create(&PostParams::default(), &lease).await
        }
        (Step::Renew | Step::TakeOver, None) => return Ok(false),
        (step, Some(mut lease)) => {
            let spec = lease.spec.take().unwrap_or_default();
            let transitions = spec.lease_transitions.unwrap_or(0);
            lease.spec = Some(if step == Step::Renew { held(spec.acquire_time, transitions) } else { held(None, transitions + 1) });
            // `replace` sends the resourceVersion we read: a replica that wrote in between makes this a 409.
            api.replace(LEASE_NAME, &PostParams::default(), &lease).await
        }
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_replica_takes_only_an_absent_expired_or_own_lease() {
        let now = Timestamp::now();
        assert_eq!(step(None, "a", now), Step::Create);
        assert_eq!(step(Some(&lease("a", 3)), "a", now), Step::Renew);
        assert_eq!(step(Some(&lease("b", 3)), "a", now), Step::Follow, "b renewed 3 s ago: it leads");
        assert_eq!(step(Some(&lease("b", 16)), "a", now), Step::TakeOver, "b has not renewed for longer than the lease");
        assert_eq!(step(Some(&lease("", 1)), "a", now), Step::TakeOver, "released");
        assert_eq!(step(Some(&LeaseSpec { holder_identity: Some("b".into()), ..LeaseSpec::default() }), "a", now), Step::TakeOver, "never renewed");
        assert_eq!(step(Some(&lease("b", -60)), "a", now), Step::TakeOver, "a renewal a minute in the future is a broken clock, not a lease");
    }
}
