//! Publishing tables to workers: two copies, transactions applied to the spare one.
//!
//! The writer owns the spare copy. A transaction is checked op by op against the spare
//! (which already holds the earlier ops of the same transaction) and applied with an undo
//! log; any rejection rolls the spare back and nothing is published. On success the
//! spare is swapped in (one atomic store) and the old copy becomes the spare. Its
//! readers leave it at their next batch; before the next transaction the writer waits for
//! that (it is normally long done) and replays the ops it missed.
//!
//! Workers hold a [`TableReader`]: `load()` is one atomic load when nothing changed.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use sluice_api::{FieldError, Object, ObjectKey, Transaction};

use super::apply::Op;
use super::entries::{ServiceEntry, Tables};
use super::keys;

/// Why a transaction was refused, in gRPC terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// The item is wrong in itself or names something that does not exist.
    InvalidArgument,
    /// The item is fine but the tables' current state forbids it (still in use).
    FailedPrecondition,
}

/// A refused transaction: nothing of it was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{item}: {field}: {reason}")]
pub struct Rejected {
    pub kind: RejectKind,
    pub item: ObjectKey,
    /// The offending field, as spelled in YAML and protobuf.
    pub field: String,
    pub reason: String,
}

impl Rejected {
    fn field(item: ObjectKey, error: FieldError) -> Self {
        Self {
            kind: RejectKind::InvalidArgument,
            item,
            field: error.field,
            reason: error.reason,
        }
    }
}

/// Where workers find the current tables.
type Shared = Arc<ArcSwap<Tables>>;

/// The control thread's handle: applies transactions and hands out readers.
pub struct TableWriter {
    shared: Shared,
    spare: Arc<Tables>,
    /// Ops applied to the published copy but not yet to the spare.
    backlog: Vec<Op>,
    /// How long to wait for readers to leave the spare before copying the tables instead.
    reader_grace: Duration,
}

impl fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableWriter")
            .field("generation", &self.shared.load().generation)
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

/// A worker's handle on the tables.
pub struct TableReader {
    cache: Cache<Shared, Arc<Tables>>,
}

impl fmt::Debug for TableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableReader").finish_non_exhaustive()
    }
}

impl TableReader {
    /// The newest published tables. Call once per batch and do not keep the reference
    /// across a blocking wait: the writer reuses a copy only once every reader left it.
    #[inline]
    pub fn load(&mut self) -> &Tables {
        self.cache.load()
    }
}

impl Default for TableWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TableWriter {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(ArcSwap::from_pointee(Tables::default())),
            spare: Arc::new(Tables::default()),
            backlog: Vec::new(),
            reader_grace: Duration::from_millis(200),
        }
    }

    pub fn reader(&self) -> TableReader {
        TableReader {
            cache: Cache::new(Arc::clone(&self.shared)),
        }
    }

    /// The published tables, for the control plane's reads.
    pub fn snapshot(&self) -> Arc<Tables> {
        self.shared.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.shared.load().generation
    }

    /// Validates `txn` whole and applies it whole, or changes nothing. Returns the
    /// generation now published: unchanged when the transaction changed nothing.
    pub fn apply(&mut self, txn: &Transaction) -> Result<u64, Rejected> {
        let ops = prepare(txn)?;
        let spare = self.claim_spare();
        let mut undo = Vec::with_capacity(ops.len());
        let mut applied = Vec::with_capacity(ops.len());
        for (key, op) in ops {
            match spare.check(key, &op) {
                Ok(true) => {
                    undo.push(spare.apply(op.clone()));
                    applied.push(op);
                }
                Ok(false) => {}
                Err(rejected) => {
                    for op in undo.into_iter().rev() {
                        spare.apply(op);
                    }
                    return Err(rejected);
                }
            }
        }
        if applied.is_empty() {
            return Ok(spare.generation);
        }
        spare.generation += 1;
        let generation = spare.generation;
        let fresh = std::mem::replace(&mut self.spare, Arc::new(Tables::default()));
        self.spare = self.shared.swap(fresh);
        self.backlog = applied;
        Ok(generation)
    }

    /// The spare copy, exclusively ours and brought up to date with the published one.
    fn claim_spare(&mut self) -> &mut Tables {
        let deadline = Instant::now() + self.reader_grace;
        let mut spins = 0u32;
        while Arc::get_mut(&mut self.spare).is_none() {
            if Instant::now() >= deadline {
                // A reader is stuck on the old copy (a worker not polling). Copying the
                // tables costs O(size) once, but workers must never be waited on forever.
                self.spare = Arc::new((*self.shared.load_full()).clone());
                self.backlog.clear();
                break;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        let backlog = std::mem::take(&mut self.backlog);
        let published_generation = self.shared.load().generation;
        let Some(spare) = Arc::get_mut(&mut self.spare) else {
            unreachable!("the spare copy was just made exclusive")
        };
        for op in backlog {
            spare.apply(op);
        }
        spare.generation = published_generation;
        spare
    }
}

/// The transaction's ops in an order that satisfies dependencies: deletes of dependents,
/// then upserts from the bottom up, then deletes of hosts. Objects are checked on their
/// own here; checks against table state happen when each op is applied.
fn prepare(txn: &Transaction) -> Result<Vec<(ObjectKey, Op)>, Rejected> {
    let mut seen = HashSet::with_capacity(txn.upserts.len() + txn.deletes.len());
    let mut ranked = Vec::with_capacity(txn.upserts.len() + txn.deletes.len());
    for key in &txn.deletes {
        if !seen.insert(*key) {
            return Err(duplicate(*key));
        }
        let (rank, op) = match *key {
            ObjectKey::Service {
                vni,
                vip,
                port,
                protocol,
            } => (
                0,
                Op::DeleteService(keys::service(
                    vni.get(),
                    keys::ip(vip),
                    port,
                    protocol.number(),
                )),
            ),
            ObjectKey::Endpoint { vni, ip } => (
                1,
                Op::DeleteEndpoint {
                    vni: vni.get(),
                    ip: keys::ip(ip),
                },
            ),
            ObjectKey::Subnet { vni, cidr } => (
                2,
                Op::DeleteSubnet {
                    vni: vni.get(),
                    cidr,
                },
            ),
            ObjectKey::Vpc { vni } => (3, Op::DeleteVpc(vni.get())),
            ObjectKey::Host { ip } => (9, Op::DeleteHost(ip)),
        };
        ranked.push((rank, *key, op));
    }
    for object in &txn.upserts {
        let key = object.key();
        if !seen.insert(key) {
            return Err(duplicate(key));
        }
        object.validate().map_err(|e| Rejected::field(key, e))?;
        let (rank, op) = match object {
            Object::Host(h) => (4, Op::UpsertHost(h.clone())),
            Object::Vpc(v) => (5, Op::UpsertVpc(Arc::new(v.clone()))),
            Object::Subnet(s) => (6, Op::UpsertSubnet(Arc::new(s.clone()))),
            Object::Endpoint(e) => (7, Op::UpsertEndpoint(e.clone())),
            // Building the Maglev table is the costly part of a service; it happens here,
            // once, and both copies of the tables share the result.
            Object::Service(s) => (8, Op::UpsertService(Arc::new(ServiceEntry::new(s.clone())))),
        };
        ranked.push((rank, key, op));
    }
    ranked.sort_by_key(|(rank, _, _)| *rank);
    Ok(ranked.into_iter().map(|(_, key, op)| (key, op)).collect())
}

fn duplicate(key: ObjectKey) -> Rejected {
    Rejected {
        kind: RejectKind::InvalidArgument,
        item: key,
        field: "key".into(),
        reason: "appears more than once in the transaction".into(),
    }
}
