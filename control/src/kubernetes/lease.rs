//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one programs gateways.
//!
//! The holder renews the lease every `duration / 3`; another replica takes it only once
//! it has not been renewed for `duration`. Every write is a replace carrying the
//! `resourceVersion` read, so two replicas racing for an expired lease cannot both win:
//! the API server refuses the second with a conflict. Every API call is bounded by a
//! timeout, and a leader whose last successful renewal started more than the renew
//! deadline (`2 * duration / 3`) ago steps down at once, without waiting for a pending
//! call: it stops programming gateways (the binary exits) well before another replica
//! may take the lease.

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

/// How often a replica renews or retries, and how long it leads without a renewal.
///
/// Another replica takes the lease `duration` after the holder's last renewal time; the
/// holder stops leading `renew_deadline` after the start of its last successful renewal
/// (which is no later than the renewal time it wrote), so it has stopped for at least
/// `duration - renew_deadline` before anyone else can take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts without renewal (written into the lease).
    pub duration: Duration,
    /// How long the holder keeps leading after its last successful renewal started.
    pub renew_deadline: Duration,
    /// Between renewals, and between campaign rounds.
    pub renew_period: Duration,
    /// Between attempts after a failed one.
    pub retry_period: Duration,
    /// The longest one API call may take.
    pub call_timeout: Duration,
}

impl Timing {
    /// Derived from the lease duration: renew every `duration / 3`, retry a failed
    /// renewal after `duration / 15`, bound each call by `duration / 5` and step down
    /// `2 * duration / 3` after the last successful renewal (15 s: 5 s, 1 s, 3 s, 10 s).
    pub fn of(duration: Duration) -> Self {
        Self {
            duration,
            renew_deadline: duration * 2 / 3,
            renew_period: duration / 3,
            retry_period: duration / 15,
            call_timeout: duration / 5,
        }
    }
}

/// Why a leader stepped down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SteppedDown {
    /// Another replica holds the lease, or wrote it first.
    #[error("another replica holds the lease")]
    Taken,
    /// No renewal succeeded within the renew deadline (calls failed, or hung).
    #[error("the lease was not renewed within {0:?}")]
    NotRenewed(Duration),
}

/// A lease call that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no answer from the Kubernetes API within {0:?}")]
    Timeout(Duration),
}

/// One replica's campaign for one lease.
#[derive(Clone, Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self::with_timing(api, name, identity, Timing::of(duration))
    }

    pub fn with_timing(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// `call`, bounded by the call timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timing.call_timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LeaseError::Timeout(self.timing.call_timeout)),
        }
    }

    /// One round: reads the lease and takes or renews it when [`decide`] says so.
    /// `Ok(true)` when this replica holds it afterwards. Each call is bounded by the
    /// call timeout.
    pub async fn try_lead(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let current = self.bounded(self.api.get_opt(&self.name)).await?;
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
                lease_duration_seconds: Some(self.timing.duration.as_secs().max(1) as i32),
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
            None => {
                self.bounded(self.api.create(&PostParams::default(), &lease))
                    .await
            }
            Some(_) => {
                self.bounded(self.api.replace(&self.name, &PostParams::default(), &lease))
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another replica wrote first: it won this round.
            Err(LeaseError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until this replica leads. Returns when the winning round started (the
    /// lease's renewal time is no earlier), for [`hold`](Self::hold).
    pub async fn acquire(&self) -> tokio::time::Instant {
        loop {
            let started = tokio::time::Instant::now();
            match self.try_lead().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "leading");
                    return started;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: lease not read or written"),
            }
            tokio::time::sleep(self.timing.renew_period).await;
        }
    }

    /// Renews every renew period while leading; returns as soon as leadership is lost:
    /// another holder, or no successful renewal for the renew deadline. The deadline
    /// is kept whatever the API server does: a renewal that has not answered by then
    /// is abandoned, not awaited. `renewed`: when the round that took the lease started
    /// (what [`acquire`](Self::acquire) returned).
    pub async fn hold(&self, mut renewed: tokio::time::Instant) -> SteppedDown {
        let mut wait = self.timing.renew_period;
        loop {
            let deadline = renewed + self.timing.renew_deadline;
            let next = (tokio::time::Instant::now() + wait).min(deadline);
            tokio::time::sleep_until(next).await;
            let started = tokio::time::Instant::now();
            if started >= deadline {
                return SteppedDown::NotRenewed(self.timing.renew_deadline);
            }
            match tokio::time::timeout_at(deadline, self.try_lead()).await {
                Err(_) => return SteppedDown::NotRenewed(self.timing.renew_deadline),
                Ok(Ok(true)) => {
                    // The renewal time written was taken after `started`.
                    renewed = started;
                    wait = self.timing.renew_period;
                }
                Ok(Ok(false)) => return SteppedDown::Taken,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader election: renewal failed; retrying");
                    wait = self.timing.retry_period;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock::{self, Handle, SendResponse};

    use super::*;

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    fn json(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn not_found() -> Response<Body> {
        json(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// The lease as written by `request` (a create or replace), with a resourceVersion.
    async fn written(request: Request<Body>) -> serde_json::Value {
        let body = request.into_body().collect_bytes().await.unwrap();
        let mut lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
        lease["metadata"]["resourceVersion"] = "1".into();
        lease
    }

    async fn next(api: &mut ApiHandle) -> (Request<Body>, SendResponse<Response<Body>>) {
        api.next_request().await.expect("the client is alive")
    }

    fn elector(api: &mut Option<ApiHandle>) -> Elector {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        *api = Some(handle);
        Elector::new(
            Api::namespaced(kube::Client::new(service, "default"), "sluice-system"),
            "sluice-controller",
            "replica-a",
            Duration::from_secs(15),
        )
    }

    /// Takes the lease: a GET finding none, then a create.
    async fn take(
        elector: &Elector,
        api: &mut ApiHandle,
    ) -> (tokio::time::Instant, serde_json::Value) {
        let campaign = {
            let elector = elector.clone();
            tokio::spawn(async move { elector.acquire().await })
        };
        let (request, send) = next(api).await;
        assert_eq!(request.method(), "GET");
        send.send_response(not_found());
        let (request, send) = next(api).await;
        assert_eq!(request.method(), "POST");
        let lease = written(request).await;
        send.send_response(json(201, lease.clone()));
        (campaign.await.unwrap(), lease)
    }

    /// The renewal after the lease was taken is never answered: the leader steps down
    /// exactly at the renew deadline after its last successful renewal, before the lease
    /// expires for the other replicas, and without waiting for the call.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_hangs_steps_down_at_the_renew_deadline() {
        let mut api = None;
        let elector = elector(&mut api);
        let mut api = api.unwrap();
        let timing = elector.timing();
        assert!(timing.renew_deadline < timing.duration);
        let (since, lease) = take(&elector, &mut api).await;
        let holding = {
            let elector = elector.clone();
            tokio::spawn(async move { elector.hold(since).await })
        };
        // The first renewal, one renew period later, succeeds.
        let (request, send) = next(&mut api).await;
        let renewed = tokio::time::Instant::now();
        assert_eq!(renewed - since, timing.renew_period);
        assert_eq!(request.method(), "GET");
        send.send_response(json(200, lease));
        let (request, send) = next(&mut api).await;
        assert_eq!(request.method(), "PUT");
        let lease = written(request).await;
        assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        send.send_response(json(200, lease));
        // From then on the API server takes every request and answers none.
        let mut pending = Vec::new();
        let mut holding = std::pin::pin!(holding);
        let outcome = loop {
            tokio::select! {
                outcome = &mut holding => break outcome.unwrap(),
                request = api.next_request() => pending.push(request.expect("alive")),
            }
        };
        let stepped_down = tokio::time::Instant::now();
        assert_eq!(outcome, SteppedDown::NotRenewed(timing.renew_deadline));
        assert_eq!(stepped_down - renewed, timing.renew_deadline);
        assert!(
            stepped_down - renewed < timing.duration,
            "stepped down before another replica may take the lease"
        );
        // The hanging renewal was retried after each call timed out, and abandoned.
        assert!(pending.len() >= 2, "{} unanswered calls", pending.len());
        assert!(pending.iter().all(|(r, _)| r.method() == "GET"));
    }

    /// A renewal that finds another holder steps down at once.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_finds_another_holder_steps_down() {
        let mut api = None;
        let elector = elector(&mut api);
        let mut api = api.unwrap();
        let (since, mut lease) = take(&elector, &mut api).await;
        let holding = {
            let elector = elector.clone();
            tokio::spawn(async move { elector.hold(since).await })
        };
        let (request, send) = next(&mut api).await;
        assert_eq!(request.method(), "GET");
        lease["spec"]["holderIdentity"] = "replica-b".into();
        lease["spec"]["renewTime"] = serde_json::to_value(MicroTime(Timestamp::now())).unwrap();
        send.send_response(json(200, lease));
        assert_eq!(holding.await.unwrap(), SteppedDown::Taken);
    }

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
