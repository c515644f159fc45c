//! `sluice.v1.Gateway`: transactional table loads, table reads and counters.
//!
//! Handlers translate and delegate: protobuf to domain types (naming the field on
//! error), transactions to the table writer thread, reads to a snapshot that is dropped
//! before any reply is streamed, counters to the [`CounterSource`]. Errors carry precise
//! codes (`InvalidArgument`, `FailedPrecondition`, `NotFound`, `ResourceExhausted`),
//! never a blanket `Internal`. Nothing here touches the packet path.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_api::proto::v1 as pb;
use sluice_api::{Object, ObjectKey, ObjectKind, Transaction};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::control::{ControlTables, WriterUnavailable};
use super::counters::{CounterSource, PacketCounters};
use super::rate::RateLimiter;
use crate::tables::{RejectKind, Rejected};

/// Objects per `ListReply` chunk: about 100 KiB of endpoints.
pub const LIST_CHUNK: usize = 1024;
/// Bounds on `WatchCountersRequest.interval_ms`, so that a watcher cannot spin the
/// control thread.
pub const WATCH_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=60_000;
const WATCH_DEFAULT_MS: u32 = 1000;

/// A random id chosen once per process start, so that clients can tell a restarted
/// gateway (which lost its tables) from one that kept them.
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// The `Gateway` service over the table writer thread and a counter source.
#[derive(Clone)]
pub struct GatewayService {
    tables: ControlTables,
    counters: Arc<dyn CounterSource>,
    limiter: Option<Arc<RateLimiter>>,
}

impl std::fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayService")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl GatewayService {
    pub fn new(tables: ControlTables, counters: Arc<dyn CounterSource>) -> Self {
        Self {
            tables,
            counters,
            limiter: None,
        }
    }

    /// Refuses requests beyond `limiter`'s rate.
    pub fn with_rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(Arc::new(limiter));
        self
    }

    /// Admits a request, or refuses it with `RESOURCE_EXHAUSTED` when over the rate.
    fn admit(&self) -> Result<(), Status> {
        match &self.limiter {
            Some(limiter) if !limiter.try_acquire() => Err(Status::resource_exhausted(format!(
                "rate limit: the control service takes {}; retry later",
                limiter.describe()
            ))),
            _ => Ok(()),
        }
    }
}

fn unavailable(error: WriterUnavailable) -> Status {
    match error {
        WriterUnavailable::Busy(_) => Status::resource_exhausted(error.to_string()),
        WriterUnavailable::Stopped => Status::unavailable(error.to_string()),
    }
}

/// A refused transaction, in gRPC terms. The message is `ITEM: FIELD: REASON`.
pub fn rejected_status(rejected: &Rejected) -> Status {
    match rejected.kind {
        RejectKind::InvalidArgument => Status::invalid_argument(rejected.to_string()),
        RejectKind::FailedPrecondition => Status::failed_precondition(rejected.to_string()),
    }
}

fn counters_reply(counters: &PacketCounters, generation: u64) -> pb::Counters {
    pb::Counters {
        rx_packets: counters.rx_packets,
        rx_bytes: counters.rx_bytes,
        tx_packets: counters.tx_packets,
        tx_bytes: counters.tx_bytes,
        forwarded: counters.outcomes.forwarded,
        replied: counters.outcomes.replied,
        drops: counters
            .outcomes
            .iter()
            .map(|(reason, packets)| pb::DropCount {
                reason: reason.label().to_owned(),
                packets,
            })
            .collect(),
        generation,
        boot_id: boot_id().to_owned(),
        services: counters
            .services
            .iter()
            .map(|s| pb::ServiceCount {
                vni: s.vni,
                vip: s.vip.to_string(),
                port: u32::from(s.port),
                protocol: sluice_api::convert::protocol_to_pb(s.protocol) as i32,
                packets: s.packets,
                backends: s
                    .backends
                    .iter()
                    .map(|b| pb::BackendCount {
                        ip: b.ip.to_string(),
                        port: u32::from(b.port),
                        packets: b.packets,
                    })
                    .collect(),
            })
            .collect(),
    }
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    #[tracing::instrument(name = "Gateway.Apply", skip_all)]
    async fn apply(
        &self,
        request: Request<pb::Transaction>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        self.admit()?;
        let txn = Transaction::try_from(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (upserts, deletes) = (txn.upserts.len(), txn.deletes.len());
        match self.tables.apply(txn).await.map_err(unavailable)? {
            Ok(generation) => {
                tracing::debug!(upserts, deletes, generation, "applied");
                Ok(Response::new(pb::ApplyReply {
                    generation,
                    boot_id: boot_id().to_owned(),
                }))
            }
            Err(rejected) => {
                tracing::info!(upserts, deletes, %rejected, "rejected");
                Err(rejected_status(&rejected))
            }
        }
    }

    #[tracing::instrument(name = "Gateway.Get", skip_all)]
    async fn get(&self, request: Request<pb::ObjectKey>) -> Result<Response<pb::GetReply>, Status> {
        self.admit()?;
        let key = ObjectKey::try_from(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = self.tables.snapshot().await.map_err(unavailable)?;
        let (object, generation) = (snapshot.get(&key), snapshot.generation());
        drop(snapshot);
        let object =
            object.ok_or_else(|| Status::not_found(format!("{key}: not in the tables")))?;
        Ok(Response::new(pb::GetReply {
            object: Some(pb::Object::from(&object)),
            generation,
            boot_id: boot_id().to_owned(),
        }))
    }

    type ListStream = ReplyStream<pb::ListReply>;

    #[tracing::instrument(name = "Gateway.List", skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.admit()?;
        let kind = match request.get_ref().kind() {
            pb::Kind::Unspecified => {
                return Err(Status::invalid_argument(
                    "kind: not set: must be one of KIND_HOST, KIND_VPC, KIND_SUBNET, \
                     KIND_ENDPOINT, KIND_SERVICE",
                ))
            }
            kind => kind,
        };
        let snapshot = self.tables.snapshot().await.map_err(unavailable)?;
        let generation = snapshot.generation();
        // Copy out and let go of the snapshot before streaming: a slow client must not
        // hold a table copy the writer needs back.
        let objects: Vec<Object> = snapshot.objects_of(model_kind(kind)).collect();
        drop(snapshot);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut chunks = objects.chunks(LIST_CHUNK).peekable();
            if chunks.peek().is_none() {
                // An empty table still answers with its generation.
                let _ = tx
                    .send(Ok(pb::ListReply {
                        objects: vec![],
                        generation,
                        boot_id: boot_id().to_owned(),
                    }))
                    .await;
                return;
            }
            for chunk in chunks {
                let reply = pb::ListReply {
                    objects: chunk.iter().map(pb::Object::from).collect(),
                    generation,
                    boot_id: boot_id().to_owned(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(name = "Gateway.GetCounters", skip_all)]
    async fn get_counters(
        &self,
        _request: Request<pb::GetCountersRequest>,
    ) -> Result<Response<pb::Counters>, Status> {
        self.admit()?;
        let generation = self
            .tables
            .snapshot()
            .await
            .map_err(unavailable)?
            .generation();
        Ok(Response::new(counters_reply(
            &self.counters.read(),
            generation,
        )))
    }

    type WatchCountersStream = ReplyStream<pb::Counters>;

    #[tracing::instrument(name = "Gateway.WatchCounters", skip_all)]
    async fn watch_counters(
        &self,
        request: Request<pb::WatchCountersRequest>,
    ) -> Result<Response<Self::WatchCountersStream>, Status> {
        self.admit()?;
        let ms = match request.get_ref().interval_ms {
            0 => WATCH_DEFAULT_MS,
            ms => ms.clamp(*WATCH_INTERVAL_MS.start(), *WATCH_INTERVAL_MS.end()),
        };
        let (tables, counters) = (self.tables.clone(), Arc::clone(&self.counters));
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(u64::from(ms)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = tx.closed() => return,
                }
                let update = match tables.snapshot().await {
                    Ok(snapshot) => Ok(counters_reply(&counters.read(), snapshot.generation())),
                    // A full transaction queue delays this update, it does not end the watch.
                    Err(WriterUnavailable::Busy(_)) => continue,
                    Err(e) => Err(unavailable(e)),
                };
                let last = update.is_err();
                if tx.send(update).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The table a List request names (`Unspecified` was refused before).
fn model_kind(kind: pb::Kind) -> ObjectKind {
    match kind {
        pb::Kind::Host | pb::Kind::Unspecified => ObjectKind::Host,
        pb::Kind::Vpc => ObjectKind::Vpc,
        pb::Kind::Subnet => ObjectKind::Subnet,
        pb::Kind::Endpoint => ObjectKind::Endpoint,
        pb::Kind::Service => ObjectKind::Service,
    }
}
