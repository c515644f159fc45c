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
use super::service_ids::ServiceIds;

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
    service_ids: ServiceIds,
    /// Times a reader held the spare past the grace and the tables were copied instead.
    stale_reader_copies: u64,
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

/// A read-only handle on the published tables for the control thread (metrics, counters):
/// cheap to clone, `Send + Sync`, never seen by workers.
#[derive(Clone)]
pub struct TableView(Shared);

impl fmt::Debug for TableView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableView")
            .field("generation", &self.0.load().generation)
            .finish()
    }
}

impl TableView {
    /// The published tables now.
    pub fn snapshot(&self) -> Arc<Tables> {
        self.0.load_full()
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
            service_ids: ServiceIds::default(),
            stale_reader_copies: 0,
        }
    }

    pub fn reader(&self) -> TableReader {
        TableReader {
            cache: Cache::new(Arc::clone(&self.shared)),
        }
    }

    /// A handle that follows the published tables, for readers off the packet path.
    pub fn view(&self) -> TableView {
        TableView(Arc::clone(&self.shared))
    }

    /// The published tables, for the control plane's reads.
    pub fn snapshot(&self) -> Arc<Tables> {
        self.shared.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.shared.load().generation
    }

    /// How many updates found a reader still on the spare copy after the grace period
    /// and copied the whole tables instead: zero while every worker polls its reader.
    pub fn stale_reader_copies(&self) -> u64 {
        self.stale_reader_copies
    }

    /// Validates `txn` whole and applies it whole, or changes nothing. Returns the
    /// generation now published: unchanged when the transaction changed nothing.
    pub fn apply(&mut self, txn: &Transaction) -> Result<u64, Rejected> {
        let ops = {
            let published = self.shared.load();
            prepare(txn, &published, &mut self.service_ids)
        };
        let ops = match ops {
            Ok(ops) => ops,
            Err(rejected) => {
                self.service_ids.abort();
                return Err(rejected);
            }
        };
        let spare = self.claim_spare();
        spare
            .endpoints
            .reserve(endpoint_upserts(ops.iter().map(|(_, op)| op)));
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
                    self.service_ids.abort();
                    return Err(rejected);
                }
            }
        }
        // A delete's undo op holds the entry it removed.
        let deleted: Vec<_> = applied
            .iter()
            .zip(&undo)
            .filter_map(|(op, undo)| match (op, undo) {
                (Op::DeleteService(_), Op::UpsertService(old)) => Some(old.instance.id),
                _ => None,
            })
            .collect();
        if applied.is_empty() {
            let generation = spare.generation;
            self.service_ids.commit(deleted);
            return Ok(generation);
        }
        spare.generation += 1;
        let generation = spare.generation;
        self.service_ids.commit(deleted);
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
                self.stale_reader_copies += 1;
                tracing::warn!(
                    grace_ms = self.reader_grace.as_millis() as u64,
                    "a reader held the old tables past the grace period; copied them"
                );
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
        let growth = endpoint_upserts(backlog.iter());
        let published_generation = self.shared.load().generation;
        let Some(spare) = Arc::get_mut(&mut self.spare) else {
            unreachable!("the spare copy was just made exclusive")
        };
        spare.endpoints.reserve(growth);
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
/// Services get their id and stamp here, from `ids`, given the `published` tables.
fn prepare(
    txn: &Transaction,
    published: &Tables,
    ids: &mut ServiceIds,
) -> Result<Vec<(ObjectKey, Op)>, Rejected> {
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
            Object::Service(s) => {
                let current =
                    published.service(s.vni.get(), keys::ip(s.vip), s.port, s.protocol.number());
                let instance = ids.assign(s, current);
                (
                    8,
                    Op::UpsertService(Arc::new(ServiceEntry::new(s.clone(), instance))),
                )
            }
        };
        ranked.push((rank, key, op));
    }
    ranked.sort_by_key(|(rank, _, _)| *rank);
    Ok(ranked.into_iter().map(|(_, key, op)| (key, op)).collect())
}

/// How many endpoint upserts `ops` holds: room to reserve before applying them.
fn endpoint_upserts<'a>(ops: impl Iterator<Item = &'a Op>) -> usize {
    ops.filter(|op| matches!(op, Op::UpsertEndpoint(_))).count()
}

fn duplicate(key: ObjectKey) -> Rejected {
    Rejected {
        kind: RejectKind::InvalidArgument,
        item: key,
        field: "key".into(),
        reason: "appears more than once in the transaction".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    use proptest::prelude::*;
    use sluice_api::{Backend, Endpoint, Host, MacAddr, Protocol, Service, Subnet, Vni, Vpc};

    use super::*;
    use crate::testkit::*;

    fn objects(tables: &Tables) -> BTreeMap<ObjectKey, Object> {
        tables.objects().map(|o| (o.key(), o)).collect()
    }

    fn upsert(objects: Vec<Object>) -> Transaction {
        Transaction {
            upserts: objects,
            deletes: vec![],
        }
    }

    fn delete(keys: Vec<ObjectKey>) -> Transaction {
        Transaction {
            upserts: vec![],
            deletes: keys,
        }
    }

    fn subnet(vni_value: u32, cidr: &str, bouncer: Ipv4Addr) -> Object {
        Object::Subnet(Subnet {
            vni: vni(vni_value),
            cidr: cidr.parse().unwrap(),
            router_mac: MacAddr([2, 0xcc, 0, 0, 0, 1]),
            bouncers: vec![bouncer],
        })
    }

    fn endpoint(vni_value: u32, ip: [u8; 4], host: Ipv4Addr) -> Object {
        Object::Endpoint(Endpoint {
            vni: vni(vni_value),
            ip: Ipv4Addr::from(ip),
            mac: MacAddr([2, 0xdd, ip[0], ip[1], ip[2], ip[3]]),
            host,
        })
    }

    fn service(vip: [u8; 4], backends: Vec<Backend>) -> Object {
        Object::Service(Service {
            vni: vni(VNI_A),
            vip: Ipv4Addr::from(vip),
            port: 443,
            protocol: Protocol::Tcp,
            backends,
        })
    }

    fn good_endpoint() -> Object {
        endpoint(VNI_A, [10, 0, 2, 50], H1)
    }

    #[test]
    fn bad_transactions_are_rejected_whole_naming_item_and_field() {
        use RejectKind::*;
        let subnet_key = |cidr: &str| ObjectKey::Subnet {
            vni: vni(VNI_A),
            cidr: cidr.parse().unwrap(),
        };
        let cases: Vec<(&str, Transaction, RejectKind, &str)> = vec![
            (
                "prefix too long for a subnet",
                upsert(vec![good_endpoint(), subnet(VNI_A, "10.0.9.0/31", GW)]),
                InvalidArgument,
                "cidr",
            ),
            (
                "subnet outside its VPC",
                upsert(vec![good_endpoint(), subnet(VNI_A, "10.1.0.0/24", GW)]),
                InvalidArgument,
                "cidr",
            ),
            (
                "subnet inside another",
                upsert(vec![good_endpoint(), subnet(VNI_A, "10.0.1.128/25", GW)]),
                InvalidArgument,
                "cidr",
            ),
            (
                "subnet around another",
                upsert(vec![good_endpoint(), subnet(VNI_A, "10.0.0.0/20", GW)]),
                InvalidArgument,
                "cidr",
            ),
            (
                "subnet of an unknown VNI",
                upsert(vec![good_endpoint(), subnet(999, "10.0.1.0/24", GW)]),
                InvalidArgument,
                "vni",
            ),
            (
                "bouncer not a known host",
                upsert(vec![
                    good_endpoint(),
                    subnet(VNI_A, "10.0.9.0/24", Ipv4Addr::new(198, 18, 9, 9)),
                ]),
                InvalidArgument,
                "bouncers[0]",
            ),
            (
                "endpoint outside every subnet",
                upsert(vec![good_endpoint(), endpoint(VNI_A, [10, 0, 200, 1], H1)]),
                InvalidArgument,
                "ip",
            ),
            (
                "endpoint on the router address",
                upsert(vec![good_endpoint(), endpoint(VNI_A, [10, 0, 1, 1], H1)]),
                InvalidArgument,
                "ip",
            ),
            (
                "endpoint on the broadcast address",
                upsert(vec![good_endpoint(), endpoint(VNI_A, [10, 0, 1, 255], H1)]),
                InvalidArgument,
                "ip",
            ),
            (
                "endpoint on an unknown host",
                upsert(vec![
                    good_endpoint(),
                    endpoint(VNI_A, [10, 0, 1, 60], Ipv4Addr::new(198, 18, 9, 9)),
                ]),
                InvalidArgument,
                "host",
            ),
            (
                "endpoint of an unknown VNI",
                upsert(vec![good_endpoint(), endpoint(777, [10, 0, 1, 60], H1)]),
                InvalidArgument,
                "vni",
            ),
            (
                "duplicate VIP in one transaction",
                upsert(vec![
                    good_endpoint(),
                    service([10, 96, 1, 1], vec![]),
                    service([10, 96, 1, 1], vec![]),
                ]),
                InvalidArgument,
                "key",
            ),
            (
                "VIP outside the service CIDR",
                upsert(vec![good_endpoint(), service([10, 0, 1, 200], vec![])]),
                InvalidArgument,
                "vip",
            ),
            (
                "backend outside the VPC",
                upsert(vec![
                    good_endpoint(),
                    service(
                        [10, 96, 1, 1],
                        vec![Backend {
                            ip: Ipv4Addr::new(10, 9, 0, 1),
                            port: 1,
                            weight: 1,
                        }],
                    ),
                ]),
                InvalidArgument,
                "backends[0].ip",
            ),
            (
                "backend weight over the limit",
                upsert(vec![
                    good_endpoint(),
                    service(
                        [10, 96, 1, 1],
                        vec![Backend {
                            ip: POD_A1,
                            port: 1,
                            weight: 1_000_000,
                        }],
                    ),
                ]),
                InvalidArgument,
                "backends[0].weight",
            ),
            (
                "divider not a known host",
                upsert(vec![
                    good_endpoint(),
                    Object::Vpc(Vpc {
                        vni: vni(300),
                        cidr: "10.0.0.0/16".parse().unwrap(),
                        service_cidr: "10.96.0.0/12".parse().unwrap(),
                        dividers: vec![Ipv4Addr::new(198, 18, 9, 9)],
                    }),
                ]),
                InvalidArgument,
                "dividers[0]",
            ),
            (
                "VPC cidr changed under its subnets",
                upsert(vec![
                    good_endpoint(),
                    Object::Vpc(Vpc {
                        vni: vni(VNI_A),
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        service_cidr: "192.168.0.0/16".parse().unwrap(),
                        dividers: vec![GW2],
                    }),
                ]),
                FailedPrecondition,
                "cidr",
            ),
            (
                "subnet deleted with endpoints",
                Transaction {
                    upserts: vec![good_endpoint()],
                    deletes: vec![subnet_key("10.0.1.0/24")],
                },
                FailedPrecondition,
                "cidr",
            ),
            (
                "VPC deleted with subnets",
                Transaction {
                    upserts: vec![good_endpoint()],
                    deletes: vec![ObjectKey::Vpc { vni: vni(VNI_B) }],
                },
                FailedPrecondition,
                "vni",
            ),
            (
                "host deleted while in use",
                Transaction {
                    upserts: vec![good_endpoint()],
                    deletes: vec![ObjectKey::Host { ip: H3 }],
                },
                FailedPrecondition,
                "ip",
            ),
            (
                "the same key upserted and deleted",
                Transaction {
                    upserts: vec![good_endpoint()],
                    deletes: vec![good_endpoint().key()],
                },
                InvalidArgument,
                "key",
            ),
        ];
        for (what, txn, kind, field) in cases {
            let mut writer = world_tables();
            let mut reader = writer.reader();
            let before = objects(reader.load());
            let generation = writer.generation();
            let err = writer.apply(&txn).expect_err(what);
            assert_eq!(
                (err.kind, err.field.as_str()),
                (kind, field),
                "{what}: {err}"
            );
            assert_eq!(writer.generation(), generation, "{what}: nothing published");
            assert_eq!(objects(reader.load()), before, "{what}: nothing applied");
            // The spare copy was rolled back too: the next good transaction sees no trace.
            writer.apply(&upsert(vec![good_endpoint()])).unwrap();
            let mut want = before.clone();
            want.insert(good_endpoint().key(), good_endpoint());
            assert_eq!(
                objects(reader.load()),
                want,
                "{what}: rollback left a trace"
            );
        }
    }

    #[test]
    fn services_keep_their_id_and_stamp_until_deleted_or_reshaped() {
        let mut writer = world_tables();
        let mut reader = writer.reader();
        let backend = |last: u8, weight: u32| Backend {
            ip: Ipv4Addr::new(10, 0, 1, last),
            port: 8443,
            weight,
        };
        let svc = service([10, 96, 0, 77], vec![backend(10, 1), backend(11, 1)]);
        let instance = |tables: &Tables| {
            let key = keys::service(VNI_A, u32::from(Ipv4Addr::new(10, 96, 0, 77)), 443, 6);
            tables.services.get(&key).map(|s| s.instance)
        };
        writer.apply(&upsert(vec![svc.clone()])).unwrap();
        let first = instance(reader.load()).unwrap();
        // Both copies hold the same entry: the next transaction is applied to the other.
        writer.apply(&upsert(vec![good_endpoint()])).unwrap();
        assert_eq!(instance(reader.load()), Some(first));
        assert!(reader.load().service_id_bound() > first.id);

        // A weight change keeps the stamp; a new backend list keeps the id, new stamp.
        let reweighted = service([10, 96, 0, 77], vec![backend(10, 3), backend(11, 1)]);
        writer.apply(&upsert(vec![reweighted])).unwrap();
        assert_eq!(instance(reader.load()), Some(first));
        let reshaped = service([10, 96, 0, 77], vec![backend(11, 1)]);
        writer.apply(&upsert(vec![reshaped])).unwrap();
        let second = instance(reader.load()).unwrap();
        assert_eq!(second.id, first.id);
        assert_ne!(second.stamp, first.stamp);

        // Deleted and re-created: the id may come back, the stamp never does.
        writer.apply(&delete(vec![svc.key()])).unwrap();
        assert_eq!(instance(reader.load()), None);
        writer.apply(&upsert(vec![svc.clone()])).unwrap();
        let third = instance(reader.load()).unwrap();
        assert_eq!(third.id, first.id, "the smallest free id is reused");
        assert!(third.stamp > second.stamp);

        // A rejected transaction hands back the id it took.
        let other = service([10, 96, 0, 78], vec![backend(10, 1)]);
        let bad = upsert(vec![other.clone(), endpoint(VNI_A, [10, 9, 9, 9], H1)]);
        writer.apply(&bad).expect_err("10.9.9.9 is in no subnet");
        writer.apply(&upsert(vec![other])).unwrap();
        let ids: BTreeSet<u32> = reader
            .load()
            .service_entries()
            .map(|s| s.instance.id)
            .collect();
        assert_eq!(
            ids.len(),
            reader.load().len_services(),
            "ids are unique: {ids:?}"
        );
        assert_eq!(
            ids.iter().max().map(|m| m + 1),
            Some(ids.len() as u32),
            "ids are dense: {ids:?}"
        );
    }

    #[test]
    fn errors_read_as_item_field_reason() {
        let mut writer = world_tables();
        let err = writer
            .apply(&upsert(vec![endpoint(VNI_A, [10, 0, 200, 1], H1)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoint 10.0.200.1 in VNI 100: ip: 10.0.200.1 is outside every subnet of VPC 100"
        );
    }

    #[test]
    fn reapplying_changes_nothing_and_keeps_the_generation() {
        let mut writer = world_tables();
        let generation = writer.generation();
        assert_eq!(generation, 1);
        assert_eq!(writer.apply(&world()).unwrap(), generation);
        assert_eq!(
            writer
                .apply(&delete(vec![ObjectKey::Host {
                    ip: Ipv4Addr::new(198, 18, 7, 7)
                }]))
                .unwrap(),
            generation
        );
        assert_eq!(
            writer.apply(&upsert(vec![good_endpoint()])).unwrap(),
            generation + 1
        );
        assert_eq!(
            writer.apply(&upsert(vec![good_endpoint()])).unwrap(),
            generation + 1
        );
    }

    #[test]
    fn a_whole_world_can_be_deleted_in_one_transaction() {
        let mut writer = world_tables();
        let keys: Vec<ObjectKey> = world().upserts.iter().map(Object::key).collect();
        writer.apply(&delete(keys)).unwrap();
        assert!(objects(&writer.snapshot()).is_empty());
        // And built again: no derived state (prefix counts, host references) was left.
        writer.apply(&world()).unwrap();
        assert_eq!(objects(&writer.snapshot()).len(), world().upserts.len());
    }

    #[test]
    fn readers_never_see_half_a_transaction() {
        // Each transaction moves two endpoints to the same host; a reader must always
        // see both on one host.
        let mut writer = world_tables();
        // Put both on one host before the watcher starts: the world itself has them apart.
        writer
            .apply(&upsert(vec![
                endpoint(VNI_A, [10, 0, 1, 10], H1),
                endpoint(VNI_A, [10, 0, 1, 11], H1),
            ]))
            .unwrap();
        let mut reader = writer.reader();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tables = reader.load();
                    let a = tables.endpoint(VNI_A, u32::from(POD_A1)).unwrap().host;
                    let b = tables.endpoint(VNI_A, u32::from(POD_A1B)).unwrap().host;
                    assert_eq!(a, b, "torn read at generation {}", tables.generation());
                    checks += 1;
                }
                checks
            })
        };
        for i in 0..2_000 {
            let host = [H1, H2, H3][i % 3];
            let txn = upsert(vec![
                endpoint(VNI_A, [10, 0, 1, 10], host),
                endpoint(VNI_A, [10, 0, 1, 11], host),
            ]);
            writer.apply(&txn).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let checks = watcher.join().unwrap();
        assert!(checks > 0);
    }

    #[test]
    fn a_stuck_reader_costs_a_copy_not_a_hang() {
        let mut writer = world_tables();
        writer.reader_grace = Duration::from_millis(5);
        let held = writer.snapshot(); // pins the published copy, which becomes the spare
        writer.apply(&upsert(vec![good_endpoint()])).unwrap();
        let held_again = writer.snapshot();
        writer
            .apply(&upsert(vec![endpoint(VNI_A, [10, 0, 2, 51], H1)]))
            .unwrap();
        writer
            .apply(&upsert(vec![endpoint(VNI_A, [10, 0, 2, 52], H1)]))
            .unwrap();
        assert_eq!(writer.snapshot().len_endpoints(), held.len_endpoints() + 3);
        assert!(
            writer.stale_reader_copies() >= 1,
            "the stuck reader cost a copy"
        );
        drop((held, held_again));
    }

    /// A small universe of objects for random transactions.
    fn arb_object() -> impl Strategy<Value = Object> {
        let hosts = [H1, H2, GW];
        prop_oneof![
            (0..3usize, 0..2u8).prop_map(move |(h, m)| Object::Host(Host {
                ip: hosts[h],
                mac: MacAddr([2, 0, 0, 0, m, h as u8])
            })),
            (0..2u32, 0..2usize, 0..3usize).prop_map(move |(v, c, d)| Object::Vpc(Vpc {
                vni: vni(10 + v),
                cidr: ["10.0.0.0/16", "10.0.0.0/8"][c].parse().unwrap(),
                service_cidr: "172.30.0.0/16".parse().unwrap(),
                dividers: vec![hosts[d]],
            })),
            (0..2u32, 0..4usize, 0..3usize).prop_map(move |(v, c, b)| {
                subnet(
                    10 + v,
                    ["10.0.1.0/24", "10.0.0.0/20", "10.0.1.128/25", "10.1.0.0/24"][c],
                    hosts[b],
                )
            }),
            (0..2u32, 0..6u8, 0..3usize).prop_map(move |(v, i, h)| endpoint(
                10 + v,
                [10, 0, 1, 10 + i],
                hosts[h]
            )),
            (0..2u32, 0..3u8, 0..3u8).prop_map(|(v, i, n)| Object::Service(Service {
                vni: vni(10 + v),
                vip: Ipv4Addr::new(172, 30, 0, i),
                port: 80,
                protocol: Protocol::Tcp,
                backends: (0..n)
                    .map(|b| Backend {
                        ip: Ipv4Addr::new(10, 0, 1, 10 + b),
                        port: 8080,
                        weight: 1
                    })
                    .collect(),
            })),
        ]
    }

    fn arb_txn() -> impl Strategy<Value = Transaction> {
        (
            prop::collection::vec(arb_object(), 0..5),
            prop::collection::vec(arb_object(), 0..3),
        )
            .prop_map(|(ups, dels)| Transaction {
                upserts: ups,
                deletes: dels.iter().map(Object::key).collect(),
            })
    }

    /// What every accepted state must satisfy.
    fn check_invariants(tables: &Tables) -> Result<(), TestCaseError> {
        let objs = objects(tables);
        let host_known = |ip: &Ipv4Addr| objs.contains_key(&ObjectKey::Host { ip: *ip });
        let subnets: Vec<&Subnet> = objs
            .values()
            .filter_map(|o| {
                if let Object::Subnet(s) = o {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        for o in objs.values() {
            match o {
                Object::Vpc(v) => prop_assert!(v.dividers.iter().all(host_known)),
                Object::Subnet(s) => {
                    let vpc = objs.get(&ObjectKey::Vpc { vni: s.vni });
                    let inside = matches!(vpc, Some(Object::Vpc(v)) if v.cidr.covers(s.cidr));
                    prop_assert!(inside, "subnet outside its VPC");
                    prop_assert!(s.bouncers.iter().all(host_known));
                    for other in &subnets {
                        prop_assert!(
                            other.vni != s.vni
                                || other.cidr == s.cidr
                                || !other.cidr.overlaps(s.cidr)
                        );
                    }
                }
                Object::Endpoint(e) => {
                    prop_assert!(host_known(&e.host));
                    prop_assert!(subnets
                        .iter()
                        .any(|s| s.vni == e.vni && s.cidr.contains(e.ip)));
                }
                Object::Service(s) => {
                    let vpc = objs.get(&ObjectKey::Vpc { vni: s.vni });
                    let inside =
                        matches!(vpc, Some(Object::Vpc(v)) if v.service_cidr.contains(s.vip));
                    prop_assert!(inside, "VIP outside its VPC's service CIDR");
                }
                Object::Host(_) => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Accepted transactions apply whole, rejected ones not at all, every accepted
        /// state is consistent, and the spare copy converges to the published one.
        #[test]
        fn transactions_are_all_or_nothing(txns in prop::collection::vec(arb_txn(), 1..25)) {
            let mut writer = TableWriter::new();
            let mut model: BTreeMap<ObjectKey, Object> = BTreeMap::new();
            for txn in &txns {
                let generation = writer.generation();
                match writer.apply(txn) {
                    Ok(new_generation) => {
                        for key in &txn.deletes {
                            model.remove(key);
                        }
                        for object in &txn.upserts {
                            model.insert(object.key(), object.clone());
                        }
                        prop_assert!(new_generation == generation || new_generation == generation + 1);
                    }
                    Err(_) => prop_assert_eq!(writer.generation(), generation),
                }
                let published = writer.snapshot();
                prop_assert_eq!(&objects(&published), &model);
                check_invariants(&published)?;
                drop(published);
                let spare = writer.claim_spare();
                prop_assert_eq!(objects(spare), model.clone(), "the spare copy diverged");
            }
        }
    }

    #[test]
    fn vni_keys_separate_tenants() {
        let writer = world_tables();
        let tables = writer.snapshot();
        let a = tables.endpoint(VNI_A, u32::from(POD_A1)).unwrap();
        let b = tables.endpoint(VNI_B, u32::from(POD_B1)).unwrap();
        assert_eq!(POD_A1, POD_B1);
        assert_ne!(a, b);
        assert!(tables.endpoint(VNI_B, u32::from(POD_A1B)).is_none());
        let _ = Vni::MAX;
    }
}
