//! Leader election among the replicas through a `coordination.k8s.io/v1` Lease in the
//! gateway's namespace, as Kubernetes controllers do: the holder renews it; another
//! replica takes it over only once it has expired; a conflict (409) on create or
//! update means another replica won. Any error means "not leader": a replica that
//! cannot tell never writes.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{api::PostParams, Api, Client};
use tokio::sync::watch;

/// The Lease the replicas compete for.
const LEASE_NAME: &str = "wicket-status-leader";
/// How long a claim lasts without renewal.
const LEASE_SECONDS: i32 = 15;
/// How often the holder renews and the others look.
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Runs the election for `identity` until the receiver side is dropped; the channel
/// says whether this replica leads.
pub(super) fn elect(client: Client, namespace: &str, identity: String) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        loop {
            let leads = match try_lead(&api, &identity).await {
                Ok(leads) => leads,
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes: cannot read or renew the leader Lease; not writing status");
                    false
                }
            };
            if *tx.borrow() != leads {
                tracing::info!(identity, leads, "Kubernetes: status leadership changed");
            }
            if tx.send(leads).is_err() {
                break;
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    });
    rx
}

/// One round: create, renew or take over the Lease. `Ok(false)` when another replica
/// holds it (or won the race).
async fn try_lead(api: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..ObjectMeta::default() },
            spec: Some(spec(0, None)),
        };
        return won(api.create(&PostParams::default(), &lease).await);
    };
    let current = lease.spec.clone().unwrap_or_default();
    let holder = current.holder_identity.as_deref().unwrap_or_default();
    let expires = current.renew_time.as_ref().map(|t| {
        let seconds = current.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
        t.0.saturating_add(SignedDuration::from_secs(i64::from(seconds))).unwrap_or(t.0)
    });
    let expired = expires.is_none_or(|e| e < now);
    let next = if holder == identity {
        spec(current.lease_transitions.unwrap_or(0), current.acquire_time.clone())
    } else if expired || holder.is_empty() {
        spec(current.lease_transitions.unwrap_or(0) + 1, None)
    } else {
        return Ok(false);
    };
    lease.spec = Some(next);
    // The resourceVersion read makes this a compare-and-swap: a 409 means another
    // replica wrote in between.
    won(api.replace(LEASE_NAME, &PostParams::default(), &lease).await)
}

fn won(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
