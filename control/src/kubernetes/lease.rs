//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one programs gateways.
//!
//! The holder renews the lease every `duration / 3`; another replica takes it only once
//! it has not been renewed for `duration`. Every write is a replace carrying the
//! `resourceVersion` read, so two replicas racing for an expired lease cannot both win:
//! the API server refuses the second with a conflict. A leader that cannot renew within
//! `duration` stops (the binary exits, and its replacement campaigns again).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// What a replica should do about a lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it and renewed it recently: wait.
    Wait,
}

/// Decides from the lease as read (`None`: it does not exist) at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    if now.as_second() >= renewed + duration {
        Decision::Acquire
    } else {
        Decision::Wait
    }
}

/// One replica's campaign for one lease.
#[derive(Clone, Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: reads the lease and takes or renews it when [`decide`] says so.
    /// `Ok(true)` when this replica holds it afterwards.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref(), &self.identity, now);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let transitions = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let acquire_time = match (decision, current.as_ref().and_then(|l| l.spec.as_ref())) {
            (Decision::Renew, Some(spec)) => spec.acquire_time.clone(),
            _ => Some(MicroTime(now)),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
                acquire_time,
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(if decision == Decision::Acquire && current.is_some() {
                    transitions + 1
                } else {
                    transitions
                }),
                ..LeaseSpec::default()
            }),
        };
        let written = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another replica wrote first: it won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "leading");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: lease not read or written"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews every `duration / 3`; returns when leadership is lost (another holder,
    /// or no successful renewal for `duration`).
    pub async fn hold(&self) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_lead().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewal failed");
                    if last.elapsed() >= self.duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn only_an_expired_or_free_lease_is_taken() {
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(decide(None, "a", at(100)), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease("a", 90, 15)), "a", at(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease("b", 90, 15)), "a", at(100)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease("b", 90, 15)), "a", at(104)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease("b", 90, 15)), "a", at(105)),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease("", 90, 15)), "a", at(91)),
            Decision::Acquire
        );
    }
}
