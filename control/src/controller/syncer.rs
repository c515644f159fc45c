//! One gateway as the controller programs it: what the gateway is known to hold, its
//! boot id, and the calls that bring it to what it should hold.
//!
//! * While the link knows what the gateway holds, a change costs one `Gateway.Apply`
//!   carrying only the delta (none when nothing changed for this gateway).
//! * When it does not know (a new link, a failed call, a changed boot id, or a table
//!   generation that went backwards), it lists the gateway's tables, diffs them against
//!   what it should hold, and sends the difference in chunks under the message limit:
//!   the gateway ends up holding exactly its tables, and stale entries are deleted.
//!
//! Every `Apply` sent is counted, so tests and benchmarks can read the cost of a change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_api::client::{self, ClientTls, ConnectError, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::proto::v1::gateway_client::GatewayClient;
use sluice_api::{ConvertError, Object, Transaction, MAX_MESSAGE_BYTES};
use tonic::transport::Channel;

use super::desired::{chunks, delta, GatewayTables};
use super::objects::GatewayStatus;

/// Longest the controller waits for one gateway call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest transaction the controller sends: half the message limit, leaving room for
/// framing and for the gateway's own accounting.
pub const CHUNK_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// A gateway could not be brought up to date; the next poll retries with a full sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("gateway {gateway}: {source}")]
    Connect {
        gateway: String,
        source: ConnectError,
    },
    #[error("gateway {gateway}: {call}: {code:?}: {message}")]
    Call {
        gateway: String,
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("gateway {gateway}: {call}: no answer within {CALL_TIMEOUT:?}")]
    Timeout { gateway: String, call: &'static str },
    #[error("gateway {gateway}: listing its tables: {source}")]
    Decode {
        gateway: String,
        source: ConvertError,
    },
}

#[derive(Debug, Default)]
struct LinkState {
    client: Option<GatewayClient<Channel>>,
    /// What the gateway holds, when known.
    held: Option<GatewayTables>,
    /// What it should hold, as of the last reconcile; checks sync to this.
    want: Option<Arc<GatewayTables>>,
    boot_id: Option<String>,
    generation: u64,
}

/// The controller's connection to one gateway.
#[derive(Debug)]
pub struct GatewayLink {
    name: String,
    target: Target,
    tls: Option<ClientTls>,
    state: tokio::sync::Mutex<LinkState>,
    apply_calls: AtomicU64,
    status: Mutex<GatewayStatus>,
}

impl GatewayLink {
    pub fn new(name: &str, target: Target, tls: Option<ClientTls>) -> Self {
        Self {
            name: name.to_owned(),
            target,
            tls,
            state: tokio::sync::Mutex::default(),
            apply_calls: AtomicU64::new(0),
            status: Mutex::default(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `Gateway.Apply` calls sent so far.
    pub fn apply_calls(&self) -> u64 {
        self.apply_calls.load(Ordering::Relaxed)
    }

    /// Boot id, whether in sync, and calls so far, for `ListObjects`.
    pub fn status(&self) -> GatewayStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.apply_calls = self.apply_calls();
        status
    }

    /// Forgets what the gateway holds: the next sync is a full one.
    pub async fn invalidate(&self) {
        self.state.lock().await.held = None;
    }

    /// Brings the gateway to `want`: one delta `Apply` when its tables are known, a full
    /// sync otherwise.
    pub async fn sync(&self, want: Arc<GatewayTables>) -> Result<(), SyncError> {
        let mut state = self.state.lock().await;
        state.want = Some(Arc::clone(&want));
        self.sync_locked(&mut state, &want).await
    }

    /// Applies one change (what an attach, release or backend update needs on this
    /// gateway): the tables the link aims for take `txn`, and a gateway whose tables are
    /// known gets exactly `txn` in one `Apply` (chunked only when it is over the
    /// limit). A gateway whose tables are not known, or that restarted, gets a full sync
    /// to `want`, the controller's whole desired set for it, which is cloned only then.
    pub async fn apply_change(
        &self,
        txn: &Transaction,
        want: &GatewayTables,
    ) -> Result<(), SyncError> {
        let mut state = self.state.lock().await;
        if state.held.is_none() || state.want.is_none() {
            let want = Arc::new(want.clone());
            state.want = Some(Arc::clone(&want));
            return self.sync_locked(&mut state, &want).await;
        }
        if let Some(aim) = state.want.as_mut() {
            replay(Arc::make_mut(aim), txn);
        }
        if txn.upserts.is_empty() && txn.deletes.is_empty() {
            return Ok(());
        }
        let known = state.boot_id.clone();
        let mut restarted = false;
        for part in chunks(txn.clone(), CHUNK_BYTES) {
            match self.apply(&mut state, part).await {
                Ok(boot_id) => {
                    if known.as_deref() != Some(boot_id.as_str()) {
                        restarted = true;
                        break;
                    }
                }
                Err(e) => {
                    self.forget(&mut state, &e);
                    return Err(e);
                }
            }
        }
        if restarted {
            tracing::info!(gateway = %self.name, "gateway restarted; re-syncing");
            state.held = None;
            let want = state.want.clone().unwrap_or_default();
            return self.sync_locked(&mut state, &want).await;
        }
        if let Some(held) = state.held.as_mut() {
            replay(held, txn);
        }
        Ok(())
    }

    /// Asks the gateway for its boot id and generation; a restart (new boot id, or a
    /// generation lower than the last one it reported) means it lost its tables, so it
    /// gets a full sync. Then brings it to what the last sync asked for (nothing before
    /// the first sync), so a check never undoes a newer change.
    pub async fn check(&self) -> Result<(), SyncError> {
        let mut state = self.state.lock().await;
        let Some(want) = state.want.clone() else {
            return Ok(());
        };
        if state.held.is_some() {
            match self.counters(&mut state).await {
                Ok((boot_id, generation)) => {
                    let restarted = state.boot_id.as_deref() != Some(boot_id.as_str())
                        || generation < state.generation;
                    if restarted {
                        tracing::info!(
                            gateway = %self.name, %boot_id, generation,
                            "gateway restarted or lost its tables; re-syncing"
                        );
                        state.held = None;
                    }
                }
                Err(e) => {
                    self.forget(&mut state, &e);
                    return Err(e);
                }
            }
        }
        self.sync_locked(&mut state, &want).await
    }

    async fn sync_locked(
        &self,
        state: &mut LinkState,
        want: &GatewayTables,
    ) -> Result<(), SyncError> {
        let result = self.sync_inner(state, want).await;
        if let Err(e) = &result {
            self.forget(state, e);
        }
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.in_sync = result.is_ok();
        status.boot_id = state.boot_id.clone().unwrap_or_default();
        result
    }

    /// After a failure the link no longer knows what the gateway holds; after a
    /// transport failure it reconnects too.
    fn forget(&self, state: &mut LinkState, error: &SyncError) {
        state.held = None;
        if !matches!(
            error,
            SyncError::Call {
                code: tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::ResourceExhausted,
                ..
            }
        ) {
            state.client = None;
        }
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_sync = false;
    }

    async fn sync_inner(
        &self,
        state: &mut LinkState,
        want: &GatewayTables,
    ) -> Result<(), SyncError> {
        if let Some(held) = &state.held {
            let txn = delta(held, want);
            if txn.upserts.is_empty() && txn.deletes.is_empty() {
                return Ok(());
            }
            let known = state.boot_id.clone();
            let boot_id = self.apply(state, txn).await?;
            if known.as_deref() == Some(boot_id.as_str()) {
                state.held = Some(want.clone());
                return Ok(());
            }
            // The gateway restarted since we last looked: the delta landed on empty
            // tables. Fall through to a full sync.
            tracing::info!(gateway = %self.name, %boot_id, "gateway restarted; re-syncing");
            state.held = None;
        }
        // A boot id change in the middle of a full sync restarts it; a gateway that keeps
        // restarting fails after a few rounds and is retried at the next poll.
        for _ in 0..3 {
            let (boot_id, _) = self.counters(state).await?;
            let held = self.list(state).await?;
            let mut stable = true;
            for txn in chunks(delta(&held, want), CHUNK_BYTES) {
                if self.apply(state, txn).await? != boot_id {
                    stable = false;
                    break;
                }
            }
            if stable {
                tracing::info!(gateway = %self.name, %boot_id, objects = want.len(), "gateway in sync");
                state.boot_id = Some(boot_id);
                state.held = Some(want.clone());
                return Ok(());
            }
        }
        Err(SyncError::Call {
            gateway: self.name.clone(),
            call: "full sync",
            code: tonic::Code::Aborted,
            message: "the gateway restarted during three syncs in a row".into(),
        })
    }

    async fn client(&self, state: &mut LinkState) -> Result<GatewayClient<Channel>, SyncError> {
        if let Some(client) = &state.client {
            return Ok(client.clone());
        }
        let channel = client::connect(&self.target, self.tls.as_ref())
            .await
            .map_err(|source| SyncError::Connect {
                gateway: self.name.clone(),
                source,
            })?;
        let client = client::gateway(channel);
        state.client = Some(client.clone());
        Ok(client)
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, SyncError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Err(_) => Err(SyncError::Timeout {
                gateway: self.name.clone(),
                call,
            }),
            Ok(Err(status)) => Err(SyncError::Call {
                gateway: self.name.clone(),
                call,
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }

    /// Sends one transaction; returns the boot id the gateway answered with.
    async fn apply(&self, state: &mut LinkState, txn: Transaction) -> Result<String, SyncError> {
        let mut client = self.client(state).await?;
        self.apply_calls.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .call("Apply", client.apply(pb::Transaction::from(&txn)))
            .await?;
        state.generation = reply.generation;
        Ok(reply.boot_id)
    }

    async fn counters(&self, state: &mut LinkState) -> Result<(String, u64), SyncError> {
        let mut client = self.client(state).await?;
        let reply = self
            .call(
                "GetCounters",
                client.get_counters(pb::GetCountersRequest {}),
            )
            .await?;
        Ok((reply.boot_id, reply.generation))
    }

    /// Everything the gateway holds.
    async fn list(&self, state: &mut LinkState) -> Result<GatewayTables, SyncError> {
        let mut client = self.client(state).await?;
        let mut held = GatewayTables::new();
        for kind in [
            pb::Kind::Host,
            pb::Kind::Vpc,
            pb::Kind::Subnet,
            pb::Kind::Endpoint,
            pb::Kind::Service,
        ] {
            let mut stream = self
                .call("List", client.list(pb::ListRequest { kind: kind.into() }))
                .await?;
            loop {
                let chunk = match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
                    Err(_) => {
                        return Err(SyncError::Timeout {
                            gateway: self.name.clone(),
                            call: "List",
                        })
                    }
                    Ok(Err(status)) => {
                        return Err(SyncError::Call {
                            gateway: self.name.clone(),
                            call: "List",
                            code: status.code(),
                            message: status.message().to_owned(),
                        })
                    }
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(chunk))) => chunk,
                };
                for object in &chunk.objects {
                    let object = Object::try_from(object).map_err(|source| SyncError::Decode {
                        gateway: self.name.clone(),
                        source,
                    })?;
                    held.insert(object.key(), object);
                }
            }
        }
        Ok(held)
    }
}

/// `tables` after `txn`: deletes, then upserts.
fn replay(tables: &mut GatewayTables, txn: &Transaction) {
    for key in &txn.deletes {
        tables.remove(key);
    }
    for object in &txn.upserts {
        tables.insert(object.key(), object.clone());
    }
}
