//! The standalone controller's objects and allocations in an embedded database (redb):
//! one table per kind plus allocation indexes, every change one ACID write transaction,
//! so a restart loses nothing and a crash mid-change leaves the previous state.
//!
//! Allocation rules:
//! * VNIs: 24 bits, 0 reserved; handed out from a cursor that moves forward (so a freed
//!   VNI is not reused at once), skipping VNIs in use; never random.
//! * Pod addresses, per subnet: the lowest free host address, skipping the network
//!   address, the router (first host) and the broadcast address; the index is keyed by
//!   (VPC, address), so no two endpoints of a VPC ever share one. Finding it costs
//!   O(log n), not a scan of the subnet's used addresses: each subnet keeps a cursor
//!   (the lowest address never handed out) and the set of released addresses below it
//!   (see [`take_address`]).
//! * MACs: locally administered and derived from the address, so unique wherever the
//!   address is (see [`endpoint_mac`]).
//! * Service VIPs: the lowest free address of the VPC's service CIDR unless given.
//!
//! This module decides nothing about gateways; it only keeps objects consistent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_api::{Ipv4Cidr, MacAddr, Vni};

use super::objects::{
    service_key, ClusterObject, EndpointAlloc, EndpointSpec, Kind, Metadata, NoStatus, Node,
    NodeSpec, ObjectRef, Resource, Service, ServiceStatus, Subnet, SubnetStatus, Vpc, VpcStatus,
};
use super::source::{AttachRequest, Code, ObjectSource, Snapshot, SourceError};

type Json = TableDefinition<'static, &'static str, &'static [u8]>;
type Index = TableDefinition<'static, (&'static str, u32), &'static str>;

const VPCS: Json = TableDefinition::new("vpcs");
const SUBNETS: Json = TableDefinition::new("subnets");
const SERVICES: Json = TableDefinition::new("services");
const GATEWAYS: Json = TableDefinition::new("gateways");
const NODES: Json = TableDefinition::new("nodes");
const ENDPOINTS: Json = TableDefinition::new("endpoints");
/// VNI -> VPC name.
const VNIS: TableDefinition<'static, u32, &'static str> = TableDefinition::new("vnis");
/// (VPC name, pod address) -> endpoint attachment.
const ADDRESSES: Index = TableDefinition::new("addresses");
/// (VPC name, VIP) -> service `namespace/name`.
const VIPS: Index = TableDefinition::new("vips");
/// Allocation cursors.
const META: TableDefinition<'static, &'static str, u32> = TableDefinition::new("meta");
/// Per subnet, keyed by (VPC, its first pod address): the lowest address not handed out
/// since the cursor was made. Every address below it is held (in [`ADDRESSES`]) or
/// released (in [`ADDRESS_FREE`]).
const ADDRESS_NEXT: TableDefinition<'static, (&'static str, u32), u32> =
    TableDefinition::new("address_next");
/// Released pod addresses below their subnet's [`ADDRESS_NEXT`]: (VPC, address) to the
/// subnet's first pod address.
const ADDRESS_FREE: TableDefinition<'static, (&'static str, u32), u32> =
    TableDefinition::new("address_free");
const VNI_CURSOR: &str = "vni_cursor";

fn json_table(kind: Kind) -> Json {
    match kind {
        Kind::Vpc => VPCS,
        Kind::Subnet => SUBNETS,
        Kind::Service => SERVICES,
        Kind::Gateway => GATEWAYS,
        Kind::Node => NODES,
        Kind::Endpoint => ENDPOINTS,
    }
}

/// The MAC of a pod interface with address `ip`: `0a:58:` then the address, as
/// Kubernetes bridges do. Locally administered (bit 1 of the first octet) and unicast.
/// Unique within a VPC because addresses are; a MAC is only ever seen inside its VPC.
pub fn endpoint_mac(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x0a, 0x58, a, b, c, d])
}

/// The virtual router MAC of a subnet whose router address is `ip`: `0a:59:` then the
/// address, so it never equals an endpoint's MAC.
pub fn router_mac(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x0a, 0x59, a, b, c, d])
}

/// The redb store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

fn storage(path: &Path) -> impl Fn(redb::Error) -> SourceError + '_ {
    move |source| SourceError::Storage {
        path: path.display().to_string(),
        source: Box::new(source),
    }
}

fn rejected(
    code: Code,
    object: impl ToString,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> SourceError {
    SourceError::Rejected {
        code,
        object: object.to_string(),
        field: field.into(),
        reason: reason.into(),
    }
}

impl Store {
    /// Opens the store at `path`, creating it (and its tables) if it does not exist.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let err = storage(path);
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        (|| -> Result<(), redb::Error> {
            for kind in Kind::ALL {
                txn.open_table(json_table(kind))?;
            }
            txn.open_table(VNIS)?;
            txn.open_table(ADDRESSES)?;
            txn.open_table(VIPS)?;
            txn.open_table(META)?;
            txn.open_table(ADDRESS_NEXT)?;
            txn.open_table(ADDRESS_FREE)?;
            Ok(())
        })()
        .map_err(&err)?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Runs `change` in one write transaction: committed whole if it succeeds, dropped
    /// (nothing written) if it fails.
    fn write<T>(
        &self,
        change: impl FnOnce(&WriteTransaction) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let err = storage(&self.path);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let out = change(&txn)?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(out)
    }

    fn s(&self) -> impl Fn(redb::Error) -> SourceError + '_ {
        storage(&self.path)
    }
}

fn get<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    kind: Kind,
    name: &str,
) -> Result<Option<T>, StoreFault> {
    match table.get(name)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|source| StoreFault::Decode {
                what: format!("{kind} {name}"),
                source,
            }),
    }
}

fn all<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    kind: Kind,
) -> Result<BTreeMap<String, T>, StoreFault> {
    let mut out = BTreeMap::new();
    for entry in table.iter()? {
        let (name, bytes) = entry?;
        let value = serde_json::from_slice(bytes.value()).map_err(|source| StoreFault::Decode {
            what: format!("{kind} {}", name.value()),
            source,
        })?;
        out.insert(name.value().to_owned(), value);
    }
    Ok(out)
}

fn put<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    name: &str,
    value: &T,
) -> Result<(), StoreFault> {
    let bytes = serde_json::to_vec(value).map_err(|source| StoreFault::Decode {
        what: name.to_owned(),
        source,
    })?;
    table.insert(name, bytes.as_slice())?;
    Ok(())
}

/// A failure of the database itself or of a stored value, inside a transaction.
#[derive(Debug, thiserror::Error)]
enum StoreFault {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("decoding {what}: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreFault {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl Store {
    fn fault(&self, fault: StoreFault) -> SourceError {
        match fault {
            StoreFault::Db(e) => self.s()(e),
            StoreFault::Decode { what, source } => SourceError::Corrupt {
                path: self.path.display().to_string(),
                what,
                source,
            },
        }
    }
}

/// Wraps a closure's `StoreFault`s into `SourceError`s.
macro_rules! tx {
    ($store:expr, $body:expr) => {
        ($body).map_err(|e: StoreFault| $store.fault(e))
    };
}

/// Addresses of `cidr` a pod may have: after the router, before the broadcast address.
fn host_range(cidr: Ipv4Cidr) -> (u32, u32) {
    (cidr.first() + 2, cidr.last() - 1)
}

/// The lowest address in `lo..=hi` that `used` (sorted ascending) does not hold.
fn lowest_free(lo: u32, hi: u32, used: impl Iterator<Item = u32>) -> Option<u32> {
    let mut next = lo;
    for ip in used {
        if ip > next {
            break;
        }
        if ip == next {
            if next == hi {
                return None;
            }
            next += 1;
        }
    }
    (next <= hi && lo <= hi).then_some(next)
}

fn used_in(
    index: &impl ReadableTable<(&'static str, u32), &'static str>,
    vpc: &str,
    lo: u32,
    hi: u32,
) -> Result<Vec<u32>, StoreFault> {
    let mut out = Vec::new();
    for entry in index.range((vpc, lo)..=(vpc, hi))? {
        out.push(entry?.0.value().1);
    }
    Ok(out)
}

/// Hands out the lowest free pod address of the subnet whose pod addresses are
/// `lo..=hi` in `vpc` (the caller records it in [`ADDRESSES`]); `None` when it is full.
///
/// O(log n) in the subnet's pods: the lowest released address if there is one, else the
/// cursor. A subnet without a cursor (new, or a store written before cursors existed)
/// gets one built once from [`ADDRESSES`].
fn take_address(
    txn: &WriteTransaction,
    vpc: &str,
    lo: u32,
    hi: u32,
) -> Result<Option<u32>, StoreFault> {
    let mut cursors = txn.open_table(ADDRESS_NEXT)?;
    let mut free = txn.open_table(ADDRESS_FREE)?;
    let addresses = txn.open_table(ADDRESSES)?;
    let stored = cursors.get((vpc, lo))?.map(|v| v.value());
    let next = match stored {
        Some(next) => next,
        None => {
            let used = used_in(&addresses, vpc, lo, hi)?;
            let next = used.last().map_or(lo, |&top| top + 1);
            let mut held = used.iter().copied().peekable();
            for ip in lo..next {
                if held.next_if_eq(&ip).is_none() {
                    free.insert((vpc, ip), lo)?;
                }
            }
            next
        }
    };
    let released = free
        .range((vpc, lo)..=(vpc, hi))?
        .next()
        .transpose()?
        .map(|(k, _)| k.value().1);
    let ip = match released {
        Some(ip) => {
            free.remove((vpc, ip))?;
            ip
        }
        None if next <= hi => next,
        None => {
            cursors.insert((vpc, lo), next)?;
            return Ok(None);
        }
    };
    cursors.insert((vpc, lo), next.max(ip + 1))?;
    if addresses.get((vpc, ip))?.is_some() {
        // The cursor disagrees with the index (it cannot, unless edited by hand): start
        // it over from the index, which is the authority.
        // A rebuilt cursor is consistent, so this recurses at most once.
        drop((cursors, free, addresses));
        forget_cursor(txn, vpc, lo, hi)?;
        return take_address(txn, vpc, lo, hi);
    }
    Ok(Some(ip))
}

/// Returns `ip` of the subnet whose first pod address is `lo` to its free addresses.
fn release_address(txn: &WriteTransaction, vpc: &str, lo: u32, ip: u32) -> Result<(), StoreFault> {
    let mut cursors = txn.open_table(ADDRESS_NEXT)?;
    let Some(mut next) = cursors.get((vpc, lo))?.map(|v| v.value()) else {
        // No cursor yet: the next take builds it from the index.
        return Ok(());
    };
    if ip >= next {
        return Ok(());
    }
    let mut free = txn.open_table(ADDRESS_FREE)?;
    if ip + 1 == next {
        // The top address: move the cursor down over it and any released run below.
        next = ip;
        while next > lo && free.remove((vpc, next - 1))?.is_some() {
            next -= 1;
        }
        cursors.insert((vpc, lo), next)?;
    } else {
        free.insert((vpc, ip), lo)?;
    }
    Ok(())
}

/// Drops the cursor of pod addresses `lo..=hi` (a subnet deleted or moved; it holds no
/// endpoint then).
fn forget_cursor(txn: &WriteTransaction, vpc: &str, lo: u32, hi: u32) -> Result<(), StoreFault> {
    txn.open_table(ADDRESS_NEXT)?.remove((vpc, lo))?;
    let mut free = txn.open_table(ADDRESS_FREE)?;
    let released: Vec<u32> = free
        .range((vpc, lo)..=(vpc, hi))?
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for ip in released {
        free.remove((vpc, ip))?;
    }
    Ok(())
}

impl Store {
    fn apply_vpc(&self, txn: &WriteTransaction, mut vpc: Vpc) -> Result<Vpc, SourceError> {
        let name = vpc.name().to_owned();
        let what = ObjectRef {
            kind: Kind::Vpc,
            name: name.clone(),
        };
        let mut vpcs = tx!(self, txn.open_table(VPCS).map_err(StoreFault::from))?;
        let old: Option<Vpc> = tx!(self, get(&vpcs, Kind::Vpc, &name))?;
        let vni = match &old {
            Some(old) => {
                let subnets: BTreeMap<String, Subnet> = tx!(
                    self,
                    txn.open_table(SUBNETS)
                        .map_err(StoreFault::from)
                        .and_then(|t| all(&t, Kind::Subnet))
                )?;
                if old.spec.cidr != vpc.spec.cidr {
                    if let Some(s) = subnets.values().find(|s| s.spec.vpc == name) {
                        return Err(rejected(
                            Code::FailedPrecondition,
                            &what,
                            "spec.cidr",
                            format!(
                                "cannot change from {} while subnet {} uses it",
                                old.spec.cidr,
                                s.name()
                            ),
                        ));
                    }
                }
                if old.spec.service_cidr != vpc.spec.service_cidr {
                    let vips = tx!(self, txn.open_table(VIPS).map_err(StoreFault::from))?;
                    let held = tx!(self, used_in(&vips, &name, 0, u32::MAX))?;
                    if !held.is_empty() {
                        return Err(rejected(
                            Code::FailedPrecondition,
                            &what,
                            "spec.serviceCidr",
                            format!(
                                "cannot change from {} while {} service VIPs are allocated in it",
                                old.spec.service_cidr,
                                held.len()
                            ),
                        ));
                    }
                }
                old.status
                    .as_ref()
                    .and_then(|s| s.vni)
                    .ok_or_else(|| SourceError::Corrupt {
                        path: self.path.display().to_string(),
                        what: format!("VPC {name} has no VNI"),
                        source: serde::de::Error::custom("status.vni missing"),
                    })?
            }
            None => self.allocate_vni(txn, &name)?,
        };
        vpc.status = Some(VpcStatus {
            vni: Some(vni),
            divider_gateways: Vec::new(),
        });
        tx!(self, put(&mut vpcs, &name, &vpc))?;
        Ok(vpc)
    }

    fn allocate_vni(&self, txn: &WriteTransaction, vpc: &str) -> Result<Vni, SourceError> {
        tx!(
            self,
            (|| {
                let mut meta = txn.open_table(META)?;
                let mut vnis = txn.open_table(VNIS)?;
                let cursor = meta.get(VNI_CURSOR)?.map_or(1, |v| v.value());
                let start = cursor.clamp(1, Vni::MAX);
                let mut candidate = start;
                loop {
                    if vnis.get(candidate)?.is_none() {
                        vnis.insert(candidate, vpc)?;
                        let next = if candidate == Vni::MAX {
                            1
                        } else {
                            candidate + 1
                        };
                        meta.insert(VNI_CURSOR, next)?;
                        return Ok(Ok(Vni::new(candidate).expect("in range")));
                    }
                    candidate = if candidate == Vni::MAX {
                        1
                    } else {
                        candidate + 1
                    };
                    if candidate == start {
                        return Ok(Err(rejected(
                            Code::ResourceExhausted,
                            format!("VPC {vpc}"),
                            "status.vni",
                            "every 24-bit VNI is in use",
                        )));
                    }
                }
            })()
        )?
    }

    fn apply_subnet(
        &self,
        txn: &WriteTransaction,
        mut subnet: Subnet,
    ) -> Result<Subnet, SourceError> {
        let name = subnet.name().to_owned();
        let what = ObjectRef {
            kind: Kind::Subnet,
            name: name.clone(),
        };
        let vpcs = tx!(self, txn.open_table(VPCS).map_err(StoreFault::from))?;
        let Some(vpc) = tx!(self, get::<Vpc>(&vpcs, Kind::Vpc, &subnet.spec.vpc))? else {
            return Err(rejected(
                Code::NotFound,
                &what,
                "spec.vpc",
                format!("VPC {} does not exist", subnet.spec.vpc),
            ));
        };
        let cidr = subnet.spec.cidr;
        if !vpc.spec.cidr.covers(cidr) {
            return Err(rejected(
                Code::InvalidArgument,
                &what,
                "spec.cidr",
                format!(
                    "{cidr} is outside VPC {}'s cidr {}",
                    vpc.name(),
                    vpc.spec.cidr
                ),
            ));
        }
        let mut subnets = tx!(self, txn.open_table(SUBNETS).map_err(StoreFault::from))?;
        let others: BTreeMap<String, Subnet> = tx!(self, all(&subnets, Kind::Subnet))?;
        for other in others.values() {
            if other.name() != name
                && other.spec.vpc == subnet.spec.vpc
                && other.spec.cidr.overlaps(cidr)
            {
                return Err(rejected(
                    Code::InvalidArgument,
                    &what,
                    "spec.cidr",
                    format!(
                        "{cidr} overlaps subnet {} ({})",
                        other.name(),
                        other.spec.cidr
                    ),
                ));
            }
        }
        if let Some(old) = others.get(&name) {
            if old.spec.vpc != subnet.spec.vpc || old.spec.cidr != cidr {
                let addresses = tx!(self, txn.open_table(ADDRESSES).map_err(StoreFault::from))?;
                let held = tx!(
                    self,
                    used_in(
                        &addresses,
                        &old.spec.vpc,
                        old.spec.cidr.first(),
                        old.spec.cidr.last()
                    )
                )?;
                if !held.is_empty() {
                    let field = if old.spec.vpc != subnet.spec.vpc {
                        "spec.vpc"
                    } else {
                        "spec.cidr"
                    };
                    return Err(rejected(
                        Code::FailedPrecondition,
                        &what,
                        field,
                        format!(
                            "cannot change while {} endpoints are attached; detach them first",
                            held.len()
                        ),
                    ));
                }
                let (lo, hi) = host_range(old.spec.cidr);
                tx!(self, forget_cursor(txn, &old.spec.vpc, lo, hi))?;
            }
        }
        let router = cidr
            .first_host()
            .expect("checked by validate: at least /30");
        subnet.status = Some(SubnetStatus {
            vni: vpc.status.as_ref().and_then(|s| s.vni),
            router_ip: Some(router),
            router_mac: Some(router_mac(router)),
            bouncer_gateways: Vec::new(),
        });
        tx!(self, put(&mut subnets, &name, &subnet))?;
        Ok(subnet)
    }

    fn apply_service(
        &self,
        txn: &WriteTransaction,
        mut svc: Service,
    ) -> Result<Service, SourceError> {
        let key = service_key(&svc.metadata);
        let what = ObjectRef {
            kind: Kind::Service,
            name: key.clone(),
        };
        let vpcs = tx!(self, txn.open_table(VPCS).map_err(StoreFault::from))?;
        let Some(vpc) = tx!(self, get::<Vpc>(&vpcs, Kind::Vpc, &svc.spec.vpc))? else {
            return Err(rejected(
                Code::NotFound,
                &what,
                "spec.vpc",
                format!("VPC {} does not exist", svc.spec.vpc),
            ));
        };
        let mut services = tx!(self, txn.open_table(SERVICES).map_err(StoreFault::from))?;
        let mut vips = tx!(self, txn.open_table(VIPS).map_err(StoreFault::from))?;
        let old: Option<Service> = tx!(self, get(&services, Kind::Service, &key))?;
        let old_vip = old.as_ref().and_then(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.vip)
                .map(|v| (o.spec.vpc.clone(), v))
        });
        let scidr = vpc.spec.service_cidr;
        let (lo, hi) = (scidr.first() + 1, scidr.last() - 1);
        let vip = match svc.spec.vip {
            Some(vip) => {
                let v = u32::from(vip);
                if !scidr.contains(vip) || v < lo || v > hi {
                    return Err(rejected(
                        Code::InvalidArgument,
                        &what,
                        "spec.vip",
                        format!(
                            "{vip} is not a host address of VPC {}'s serviceCidr {scidr}",
                            vpc.name()
                        ),
                    ));
                }
                let holder = tx!(
                    self,
                    vips.get((svc.spec.vpc.as_str(), v))
                        .map(|g| g.map(|g| g.value().to_owned()))
                        .map_err(StoreFault::from)
                )?;
                if let Some(holder) = holder.filter(|h| *h != key) {
                    return Err(rejected(
                        Code::FailedPrecondition,
                        &what,
                        "spec.vip",
                        format!("{vip} is held by service {holder}"),
                    ));
                }
                vip
            }
            None => match &old_vip {
                Some((vpc_name, vip)) if *vpc_name == svc.spec.vpc => *vip,
                _ => {
                    let used = tx!(self, used_in(&vips, &svc.spec.vpc, lo, hi))?;
                    let Some(v) = lowest_free(lo, hi, used.into_iter()) else {
                        return Err(rejected(
                            Code::ResourceExhausted,
                            &what,
                            "spec.vip",
                            format!(
                                "VPC {}'s serviceCidr {scidr} has no free address",
                                vpc.name()
                            ),
                        ));
                    };
                    Ipv4Addr::from(v)
                }
            },
        };
        tx!(
            self,
            (|| {
                if let Some((vpc_name, v)) = &old_vip {
                    vips.remove((vpc_name.as_str(), u32::from(*v)))?;
                }
                vips.insert((svc.spec.vpc.as_str(), u32::from(vip)), key.as_str())?;
                Ok::<_, StoreFault>(())
            })()
        )?;
        svc.status = Some(ServiceStatus {
            vip: Some(vip),
            endpoints: Vec::new(),
        });
        tx!(self, put(&mut services, &key, &svc))?;
        Ok(svc)
    }

    fn apply_plain<S: Serialize + Clone, T: Serialize>(
        &self,
        txn: &WriteTransaction,
        kind: Kind,
        mut object: Resource<S, T>,
    ) -> Result<Resource<S, T>, SourceError> {
        object.status = None;
        let name = object.name().to_owned();
        tx!(
            self,
            (|| {
                let mut table = txn.open_table(json_table(kind))?;
                put(&mut table, &name, &object)
            })()
        )?;
        Ok(object)
    }

    fn delete_one(&self, txn: &WriteTransaction, what: &ObjectRef) -> Result<(), SourceError> {
        let name = what.name.as_str();
        let not_found = || {
            rejected(
                Code::NotFound,
                what,
                "metadata.name",
                format!("no {} named {name}", what.kind),
            )
        };
        match what.kind {
            Kind::Vpc => {
                let mut vpcs = tx!(self, txn.open_table(VPCS).map_err(StoreFault::from))?;
                let Some(vpc) = tx!(self, get::<Vpc>(&vpcs, Kind::Vpc, name))? else {
                    return Err(not_found());
                };
                let subnets: BTreeMap<String, Subnet> = tx!(
                    self,
                    txn.open_table(SUBNETS)
                        .map_err(StoreFault::from)
                        .and_then(|t| all(&t, Kind::Subnet))
                )?;
                if let Some(s) = subnets.values().find(|s| s.spec.vpc == name) {
                    return Err(rejected(
                        Code::FailedPrecondition,
                        what,
                        "metadata.name",
                        format!("subnet {} is still in the VPC; delete it first", s.name()),
                    ));
                }
                let services: BTreeMap<String, Service> = tx!(
                    self,
                    txn.open_table(SERVICES)
                        .map_err(StoreFault::from)
                        .and_then(|t| all(&t, Kind::Service))
                )?;
                if let Some((key, _)) = services.iter().find(|(_, s)| s.spec.vpc == name) {
                    return Err(rejected(
                        Code::FailedPrecondition,
                        what,
                        "metadata.name",
                        format!("service {key} is still in the VPC; delete it first"),
                    ));
                }
                tx!(
                    self,
                    (|| {
                        vpcs.remove(name)?;
                        if let Some(vni) = vpc.status.and_then(|s| s.vni) {
                            txn.open_table(VNIS)?.remove(vni.get())?;
                        }
                        Ok::<_, StoreFault>(())
                    })()
                )
            }
            Kind::Subnet => {
                let mut subnets = tx!(self, txn.open_table(SUBNETS).map_err(StoreFault::from))?;
                let Some(subnet) = tx!(self, get::<Subnet>(&subnets, Kind::Subnet, name))? else {
                    return Err(not_found());
                };
                let addresses = tx!(self, txn.open_table(ADDRESSES).map_err(StoreFault::from))?;
                let held = tx!(
                    self,
                    used_in(
                        &addresses,
                        &subnet.spec.vpc,
                        subnet.spec.cidr.first(),
                        subnet.spec.cidr.last()
                    )
                )?;
                if !held.is_empty() {
                    return Err(rejected(
                        Code::FailedPrecondition,
                        what,
                        "metadata.name",
                        format!(
                            "{} endpoints are still attached; detach them first",
                            held.len()
                        ),
                    ));
                }
                let (lo, hi) = host_range(subnet.spec.cidr);
                tx!(
                    self,
                    (|| {
                        subnets.remove(name)?;
                        forget_cursor(txn, &subnet.spec.vpc, lo, hi)
                    })()
                )
            }
            Kind::Service => {
                let mut services = tx!(self, txn.open_table(SERVICES).map_err(StoreFault::from))?;
                let Some(svc) = tx!(self, get::<Service>(&services, Kind::Service, name))? else {
                    return Err(not_found());
                };
                tx!(
                    self,
                    (|| {
                        services.remove(name)?;
                        if let Some(vip) = svc.status.and_then(|s| s.vip) {
                            txn.open_table(VIPS)?
                                .remove((svc.spec.vpc.as_str(), u32::from(vip)))?;
                        }
                        Ok::<_, StoreFault>(())
                    })()
                )
            }
            Kind::Gateway => {
                let mut table = tx!(self, txn.open_table(GATEWAYS).map_err(StoreFault::from))?;
                match tx!(
                    self,
                    table
                        .remove(name)
                        .map(|o| o.is_some())
                        .map_err(StoreFault::from)
                )? {
                    true => Ok(()),
                    false => Err(not_found()),
                }
            }
            Kind::Node => {
                let mut nodes = tx!(self, txn.open_table(NODES).map_err(StoreFault::from))?;
                if tx!(self, get::<Node>(&nodes, Kind::Node, name))?.is_none() {
                    return Err(not_found());
                }
                let prefix = format!("{name}/");
                let endpoints = tx!(self, txn.open_table(ENDPOINTS).map_err(StoreFault::from))?;
                let attached = tx!(
                    self,
                    endpoints
                        .range(prefix.as_str()..)
                        .map_err(StoreFault::from)
                        .and_then(|mut r| Ok(r
                            .next()
                            .transpose()?
                            .map(|(k, _)| k.value().to_owned())))
                )?;
                if let Some(ep) = attached.filter(|k| k.starts_with(&prefix)) {
                    return Err(rejected(
                        Code::FailedPrecondition,
                        what,
                        "metadata.name",
                        format!("endpoint {ep} is still attached on the node"),
                    ));
                }
                tx!(
                    self,
                    nodes.remove(name).map(|_| ()).map_err(StoreFault::from)
                )
            }
            Kind::Endpoint => Err(rejected(
                Code::InvalidArgument,
                what,
                "kind",
                "endpoints are released by DetachEndpoint",
            )),
        }
    }
}

/// Rebuilding allocations recorded elsewhere (Kubernetes mode: a new leader's store
/// from Vpc status and pod annotations), so they are kept rather than made again.
impl Store {
    /// A registered node.
    pub fn node(&self, name: &str) -> Result<Option<Node>, SourceError> {
        let txn = self.db.begin_read().map_err(|e| self.s()(e.into()))?;
        tx!(
            self,
            txn.open_table(NODES)
                .map_err(StoreFault::from)
                .and_then(|t| get(&t, Kind::Node, name))
        )
    }

    /// Adds `vpc` with the VNI in its status (it must have one, unused here) instead of
    /// allocating one; a VPC already stored is left as it is.
    pub fn restore_vpc(&self, vpc: Vpc) -> Result<Vpc, SourceError> {
        let name = vpc.name().to_owned();
        let what = ObjectRef {
            kind: Kind::Vpc,
            name: name.clone(),
        };
        let Some(vni) = vpc.status.as_ref().and_then(|s| s.vni) else {
            return Err(rejected(
                Code::InvalidArgument,
                &what,
                "status.vni",
                "no VNI to restore",
            ));
        };
        ClusterObject::Vpc(vpc.clone())
            .validate()
            .map_err(|e| rejected(Code::InvalidArgument, &what, e.field, e.reason))?;
        self.write(|txn| {
            let mut vpcs = tx!(self, txn.open_table(VPCS).map_err(StoreFault::from))?;
            if let Some(old) = tx!(self, get::<Vpc>(&vpcs, Kind::Vpc, &name))? {
                return Ok(old);
            }
            let mut vnis = tx!(self, txn.open_table(VNIS).map_err(StoreFault::from))?;
            let holder = tx!(
                self,
                vnis.get(vni.get())
                    .map(|g| g.map(|g| g.value().to_owned()))
                    .map_err(StoreFault::from)
            )?;
            if let Some(holder) = holder {
                return Err(rejected(
                    Code::FailedPrecondition,
                    &what,
                    "status.vni",
                    format!("VNI {} is held by VPC {holder}", vni.get()),
                ));
            }
            let mut vpc = vpc.clone();
            vpc.status = Some(VpcStatus {
                vni: Some(vni),
                divider_gateways: Vec::new(),
            });
            tx!(
                self,
                vnis.insert(vni.get(), name.as_str())
                    .map(|_| ())
                    .map_err(StoreFault::from)
            )?;
            tx!(self, put(&mut vpcs, &name, &vpc))?;
            Ok(vpc)
        })
    }

    /// Adds an endpoint allocated before (by another controller) with its address,
    /// which must be a pod address of its subnet that no other endpoint of the VPC
    /// holds; the VNI is the subnet's. An endpoint already stored is left as it is.
    pub fn restore_endpoint(&self, spec: EndpointSpec) -> Result<EndpointAlloc, SourceError> {
        let key = EndpointSpec::attachment(&spec.node, &spec.container_id, &spec.interface);
        let what = format!("endpoint {key}");
        self.write(|txn| {
            let mut endpoints = tx!(self, txn.open_table(ENDPOINTS).map_err(StoreFault::from))?;
            if let Some(existing) =
                tx!(self, get::<EndpointAlloc>(&endpoints, Kind::Endpoint, &key))?
            {
                return Ok(existing);
            }
            let subnets = tx!(self, txn.open_table(SUBNETS).map_err(StoreFault::from))?;
            let Some(subnet) = tx!(self, get::<Subnet>(&subnets, Kind::Subnet, &spec.subnet))?
            else {
                return Err(rejected(
                    Code::NotFound,
                    &what,
                    "subnet",
                    format!("subnet {} does not exist", spec.subnet),
                ));
            };
            let (lo, hi) = host_range(subnet.spec.cidr);
            let ip = u32::from(spec.ip);
            if subnet.spec.vpc != spec.vpc || !(lo..=hi).contains(&ip) {
                return Err(rejected(
                    Code::InvalidArgument,
                    &what,
                    "ip",
                    format!(
                        "{} is not a pod address of subnet {} ({} in VPC {})",
                        spec.ip,
                        subnet.name(),
                        subnet.spec.cidr,
                        subnet.spec.vpc
                    ),
                ));
            }
            let Some(vni) = subnet.status.as_ref().and_then(|s| s.vni) else {
                return Err(rejected(
                    Code::FailedPrecondition,
                    &what,
                    "subnet",
                    format!("subnet {} has no VNI", subnet.name()),
                ));
            };
            let mut addresses = tx!(self, txn.open_table(ADDRESSES).map_err(StoreFault::from))?;
            let holder = tx!(
                self,
                addresses
                    .get((spec.vpc.as_str(), ip))
                    .map(|g| g.map(|g| g.value().to_owned()))
                    .map_err(StoreFault::from)
            )?;
            if let Some(holder) = holder {
                return Err(rejected(
                    Code::FailedPrecondition,
                    &what,
                    "ip",
                    format!("{} is held by endpoint {holder}", spec.ip),
                ));
            }
            let alloc: EndpointAlloc = Resource {
                api_version: super::objects::API_VERSION.to_owned(),
                metadata: Metadata::named(key.clone()),
                spec: EndpointSpec {
                    vni,
                    mac: endpoint_mac(spec.ip),
                    ..spec
                },
                status: None::<NoStatus>,
            };
            tx!(
                self,
                (|| {
                    addresses.insert((alloc.spec.vpc.as_str(), ip), key.as_str())?;
                    drop(addresses);
                    put(&mut endpoints, &key, &alloc)?;
                    // The subnet's cursor is rebuilt from the addresses at its next take.
                    forget_cursor(txn, &alloc.spec.vpc, lo, hi)
                })()
            )?;
            Ok(alloc)
        })
    }
}

impl ObjectSource for Store {
    fn snapshot(&self) -> Result<Snapshot, SourceError> {
        let txn = self.db.begin_read().map_err(|e| self.s()(e.into()))?;
        tx!(
            self,
            (|| {
                Ok(Snapshot {
                    vpcs: all(&txn.open_table(VPCS)?, Kind::Vpc)?,
                    subnets: all(&txn.open_table(SUBNETS)?, Kind::Subnet)?,
                    services: all(&txn.open_table(SERVICES)?, Kind::Service)?,
                    gateways: all(&txn.open_table(GATEWAYS)?, Kind::Gateway)?,
                    nodes: all(&txn.open_table(NODES)?, Kind::Node)?,
                    endpoints: all(&txn.open_table(ENDPOINTS)?, Kind::Endpoint)?,
                })
            })()
        )
    }

    fn apply(&self, mut objects: Vec<ClusterObject>) -> Result<Vec<ClusterObject>, SourceError> {
        for o in &objects {
            o.validate()
                .map_err(|e| rejected(Code::InvalidArgument, o.reference(), e.field, e.reason))?;
        }
        // Dependencies first, so one manifest may hold a VPC and its subnets in any order.
        objects.sort_by_key(|o| match o {
            ClusterObject::Gateway(_) | ClusterObject::Node(_) => 0,
            ClusterObject::Vpc(_) => 1,
            ClusterObject::Subnet(_) => 2,
            ClusterObject::Service(_) => 3,
            ClusterObject::Endpoint(_) => 4,
        });
        self.write(|txn| {
            objects
                .into_iter()
                .map(|o| {
                    Ok(match o {
                        ClusterObject::Vpc(v) => ClusterObject::Vpc(self.apply_vpc(txn, v)?),
                        ClusterObject::Subnet(s) => {
                            ClusterObject::Subnet(self.apply_subnet(txn, s)?)
                        }
                        ClusterObject::Service(s) => {
                            ClusterObject::Service(self.apply_service(txn, s)?)
                        }
                        ClusterObject::Gateway(g) => {
                            ClusterObject::Gateway(self.apply_plain(txn, Kind::Gateway, g)?)
                        }
                        other @ (ClusterObject::Node(_) | ClusterObject::Endpoint(_)) => {
                            return Err(rejected(
                                Code::InvalidArgument,
                                other.reference(),
                                "kind",
                                format!(
                                    "a {} is registered by its agent (RegisterNode, \
                                     AttachEndpoint), not applied",
                                    other.kind()
                                ),
                            ))
                        }
                    })
                })
                .collect()
        })
    }

    fn delete(&self, refs: &[ObjectRef]) -> Result<usize, SourceError> {
        let mut refs = refs.to_vec();
        // Dependents first, so one manifest deletes a VPC with its subnets and services.
        refs.sort_by_key(|r| match r.kind {
            Kind::Service | Kind::Endpoint => 0,
            Kind::Subnet => 1,
            Kind::Vpc => 2,
            Kind::Gateway | Kind::Node => 3,
        });
        self.write(|txn| {
            for r in &refs {
                self.delete_one(txn, r)?;
            }
            Ok(refs.len())
        })
    }

    fn register_node(&self, name: &str, spec: NodeSpec) -> Result<Node, SourceError> {
        let node = ClusterObject::Node(Resource::new(Metadata::named(name), spec));
        node.validate()
            .map_err(|e| rejected(Code::InvalidArgument, node.reference(), e.field, e.reason))?;
        let ClusterObject::Node(node) = node else {
            unreachable!("built as a node")
        };
        self.write(|txn| self.apply_plain(txn, Kind::Node, node))
    }

    fn attach(&self, req: &AttachRequest) -> Result<EndpointAlloc, SourceError> {
        let key = EndpointSpec::attachment(&req.node, &req.container_id, &req.interface);
        let what = format!("endpoint {key}");
        for (field, value) in [
            ("node", &req.node),
            ("container_id", &req.container_id),
            ("interface", &req.interface),
        ] {
            if value.is_empty() || value.contains('/') {
                return Err(rejected(
                    Code::InvalidArgument,
                    &what,
                    field,
                    format!("{value:?} must be non-empty and contain no '/'"),
                ));
            }
        }
        self.write(|txn| {
            let mut endpoints = tx!(self, txn.open_table(ENDPOINTS).map_err(StoreFault::from))?;
            if let Some(existing) =
                tx!(self, get::<EndpointAlloc>(&endpoints, Kind::Endpoint, &key))?
            {
                return Ok(existing);
            }
            let nodes = tx!(self, txn.open_table(NODES).map_err(StoreFault::from))?;
            if tx!(self, get::<Node>(&nodes, Kind::Node, &req.node))?.is_none() {
                return Err(rejected(
                    Code::FailedPrecondition,
                    &what,
                    "node",
                    format!(
                        "node {} is not registered; call RegisterNode first",
                        req.node
                    ),
                ));
            }
            let subnets: BTreeMap<String, Subnet> = tx!(
                self,
                txn.open_table(SUBNETS)
                    .map_err(StoreFault::from)
                    .and_then(|t| all(&t, Kind::Subnet))
            )?;
            let subnet = resolve_network(&req.network, &subnets)
                .map_err(|(code, reason)| rejected(code, &what, "network", reason))?;
            let status = subnet.status.clone().unwrap_or_default();
            let vni = status.vni.ok_or_else(|| SourceError::Corrupt {
                path: self.path.display().to_string(),
                what: format!("subnet {} has no VNI", subnet.name()),
                source: serde::de::Error::custom("status.vni missing"),
            })?;
            let vpc = subnet.spec.vpc.clone();
            let (lo, hi) = host_range(subnet.spec.cidr);
            let Some(ip) = tx!(self, take_address(txn, &vpc, lo, hi))? else {
                return Err(rejected(
                    Code::ResourceExhausted,
                    &what,
                    "network",
                    format!(
                        "subnet {} ({}) has no free address",
                        subnet.name(),
                        subnet.spec.cidr
                    ),
                ));
            };
            let ip = Ipv4Addr::from(ip);
            let alloc: EndpointAlloc = Resource {
                api_version: super::objects::API_VERSION.to_owned(),
                metadata: Metadata::named(key.clone()),
                spec: EndpointSpec {
                    node: req.node.clone(),
                    container_id: req.container_id.clone(),
                    interface: req.interface.clone(),
                    pod_namespace: req.pod_namespace.clone(),
                    pod_name: req.pod_name.clone(),
                    vpc: vpc.clone(),
                    subnet: subnet.name().to_owned(),
                    vni,
                    ip,
                    mac: endpoint_mac(ip),
                },
                status: None::<NoStatus>,
            };
            tx!(
                self,
                (|| {
                    txn.open_table(ADDRESSES)?
                        .insert((vpc.as_str(), u32::from(ip)), key.as_str())?;
                    put(&mut endpoints, &key, &alloc)
                })()
            )?;
            Ok(alloc)
        })
    }

    fn detach(
        &self,
        node: &str,
        container_id: &str,
        interface: &str,
    ) -> Result<Option<EndpointAlloc>, SourceError> {
        let key = EndpointSpec::attachment(node, container_id, interface);
        self.write(|txn| {
            tx!(
                self,
                (|| {
                    let mut endpoints = txn.open_table(ENDPOINTS)?;
                    let Some(alloc) = get::<EndpointAlloc>(&endpoints, Kind::Endpoint, &key)?
                    else {
                        return Ok(None);
                    };
                    endpoints.remove(key.as_str())?;
                    let vpc = alloc.spec.vpc.as_str();
                    let ip = u32::from(alloc.spec.ip);
                    txn.open_table(ADDRESSES)?.remove((vpc, ip))?;
                    let subnet =
                        get::<Subnet>(&txn.open_table(SUBNETS)?, Kind::Subnet, &alloc.spec.subnet)?;
                    // A subnet cannot go while it has endpoints; without one there is
                    // no cursor to return the address to.
                    if let Some(subnet) = subnet.filter(|s| s.spec.vpc == vpc) {
                        release_address(txn, vpc, host_range(subnet.spec.cidr).0, ip)?;
                    }
                    Ok(Some(alloc))
                })()
            )
        })
    }
}

/// The subnet `network` names: `VPC/SUBNET`, `SUBNET`, or empty when exactly one subnet
/// exists (the standalone stand-in for a namespace's default network).
fn resolve_network<'a>(
    network: &str,
    subnets: &'a BTreeMap<String, Subnet>,
) -> Result<&'a Subnet, (Code, String)> {
    if network.is_empty() {
        let mut all = subnets.values();
        return match (all.next(), all.next()) {
            (Some(only), None) => Ok(only),
            (None, _) => Err((Code::NotFound, "no subnet exists yet".into())),
            _ => Err((
                Code::InvalidArgument,
                format!(
                    "empty, and {} subnets exist: name one as VPC/SUBNET",
                    subnets.len()
                ),
            )),
        };
    }
    let (vpc, name) = match network.split_once('/') {
        Some((vpc, name)) => (Some(vpc), name),
        None => (None, network),
    };
    let subnet = subnets
        .get(name)
        .ok_or_else(|| (Code::NotFound, format!("subnet {name} does not exist")))?;
    if let Some(vpc) = vpc.filter(|v| *v != subnet.spec.vpc) {
        return Err((
            Code::NotFound,
            format!(
                "subnet {name} is in VPC {}, not in VPC {vpc}",
                subnet.spec.vpc
            ),
        ));
    }
    Ok(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::objects::parse_manifest;
    use redb::ReadableTableMetadata;

    const WORLD: &str = "\
kind: Vpc
metadata: {name: blue}
spec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/28}
---
kind: Subnet
metadata: {name: blue-a}
spec: {vpc: blue, cidr: 10.0.1.0/29}
---
kind: Vpc
metadata: {name: red}
spec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16}
---
kind: Subnet
metadata: {name: red-a}
spec: {vpc: red, cidr: 10.0.1.0/24}
";

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("controller.redb")).unwrap()
    }

    fn node(store: &Store, name: &str, last: u8) {
        store
            .register_node(
                name,
                NodeSpec {
                    ip: Ipv4Addr::new(198, 18, 0, last),
                    mac: MacAddr([2, 0, 0, 0, 0, last]),
                },
            )
            .unwrap();
    }

    fn attach(store: &Store, container: &str, network: &str) -> Result<EndpointAlloc, SourceError> {
        store.attach(&AttachRequest {
            node: "n1".into(),
            container_id: container.into(),
            interface: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: container.into(),
            network: network.into(),
        })
    }

    fn code(e: SourceError) -> (Code, String) {
        match e {
            SourceError::Rejected { code, field, .. } => (code, field),
            other => panic!("not a rejection: {other}"),
        }
    }

    #[test]
    fn lowest_free_skips_used_addresses() {
        assert_eq!(lowest_free(2, 6, [].into_iter()), Some(2));
        assert_eq!(lowest_free(2, 6, [2, 3, 5].into_iter()), Some(4));
        assert_eq!(lowest_free(2, 6, [2, 3, 4, 5, 6].into_iter()), None);
        assert_eq!(lowest_free(2, 6, [3].into_iter()), Some(2));
        assert_eq!(lowest_free(2, 1, [].into_iter()), None);
    }

    /// Attaches and detaches in a scrambled order on red-a (a /24): every address the
    /// cursor hands out is the lowest free one, as a scan of the index would find,
    /// including after the cursor is dropped (a store written before cursors existed)
    /// and after a reopen.
    #[test]
    fn the_address_cursor_always_hands_out_the_lowest_free_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        store.apply(parse_manifest(WORLD).unwrap()).unwrap();
        node(&store, "n1", 11);
        let (lo, hi) = host_range("10.0.1.0/24".parse().unwrap());
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        let mut rng = 0x2545_f491_u32;
        let mut step = |n: u32| {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng % n
        };
        for round in 0..240u32 {
            if round == 120 {
                // Drop the cursor: the next attach rebuilds it from the index.
                store
                    .write(|txn| tx!(store, forget_cursor(txn, "red", lo, hi)))
                    .unwrap();
            }
            if round == 180 {
                drop(store);
                store = super::tests::store(&dir);
            }
            let detach = !held.is_empty() && step(3) == 0;
            if detach {
                let victim = held
                    .keys()
                    .nth(step(held.len() as u32) as usize)
                    .unwrap()
                    .clone();
                let gone = store.detach("n1", &victim, "eth0").unwrap().unwrap();
                assert_eq!(u32::from(gone.spec.ip), held.remove(&victim).unwrap());
            } else {
                let want = lowest_free(lo, hi, {
                    let mut used: Vec<u32> = held.values().copied().collect();
                    used.sort_unstable();
                    used.into_iter()
                })
                .unwrap();
                let container = format!("p{round}");
                let got = u32::from(attach(&store, &container, "red-a").unwrap().spec.ip);
                assert_eq!(got, want, "round {round}: held {:?}", held.values());
                held.insert(container, got);
            }
        }
        // Deleting the subnet drops its cursor: a smaller subnet at the same start
        // allocates from its own range.
        for container in held.keys() {
            store.detach("n1", container, "eth0").unwrap();
        }
        let refs = [ObjectRef {
            kind: Kind::Subnet,
            name: "red-a".into(),
        }];
        store.delete(&refs).unwrap();
        let txn = store.db.begin_read().unwrap();
        assert_eq!(txn.open_table(ADDRESS_NEXT).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(ADDRESS_FREE).unwrap().len().unwrap(), 0);
        drop(txn);
        store
            .apply(
                parse_manifest(
                    "kind: Subnet\nmetadata: {name: red-a}\nspec: {vpc: red, cidr: 10.0.1.0/30}\n",
                )
                .unwrap(),
            )
            .unwrap();
        let only = attach(&store, "last", "red-a").unwrap();
        assert_eq!(only.spec.ip, Ipv4Addr::new(10, 0, 1, 2));
        let (c, _) = code(attach(&store, "one-more", "red-a").unwrap_err());
        assert_eq!(c, Code::ResourceExhausted);
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let ip = Ipv4Addr::new(10, 0, 1, 2);
        for mac in [endpoint_mac(ip), router_mac(ip)] {
            assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
            assert!(mac.is_unicast());
        }
        assert_ne!(endpoint_mac(ip), router_mac(ip));
        assert_ne!(endpoint_mac(ip), endpoint_mac(Ipv4Addr::new(10, 0, 1, 3)));
    }

    #[test]
    fn vnis_and_addresses_are_allocated_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<EndpointAlloc>;
        {
            let store = store(&dir);
            store.apply(parse_manifest(WORLD).unwrap()).unwrap();
            node(&store, "n1", 11);
            let snap = store.snapshot().unwrap();
            let vni = |n: &str| snap.vpcs[n].status.as_ref().unwrap().vni.unwrap().get();
            assert_eq!((vni("blue"), vni("red")), (1, 2));
            let sub = snap.subnets["blue-a"].status.clone().unwrap();
            assert_eq!(sub.router_ip, Some(Ipv4Addr::new(10, 0, 1, 1)));
            // 10.0.1.0/29: .0 network, .1 router, .7 broadcast: .2 to .6 for pods.
            first = (0..3)
                .map(|i| attach(&store, &format!("c{i}"), "blue/blue-a").unwrap())
                .collect();
            let ips: Vec<_> = first.iter().map(|a| a.spec.ip.octets()[3]).collect();
            assert_eq!(ips, [2, 3, 4]);
            // Idempotent per attachment.
            assert_eq!(attach(&store, "c1", "blue/blue-a").unwrap(), first[1]);
            // Overlapping CIDRs in another VPC allocate independently.
            let red = attach(&store, "r0", "red-a").unwrap();
            assert_eq!(red.spec.ip, Ipv4Addr::new(10, 0, 1, 2));
            assert_eq!(red.spec.vni.get(), 2);
            // Released on detach, and the hole is filled first.
            let gone = store.detach("n1", "c1", "eth0").unwrap().unwrap();
            assert_eq!(gone.spec.ip.octets()[3], 3);
            assert!(store.detach("n1", "c1", "eth0").unwrap().is_none());
        }
        // Reopen: every allocation is still there, and new ones do not collide.
        let store = store(&dir);
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.endpoints.len(), 3);
        assert_eq!(snap.endpoints[&first[0].metadata.name], first[0]);
        let again = attach(&store, "c9", "blue-a").unwrap();
        assert_eq!(again.spec.ip.octets()[3], 3, "the released address");
        let more: Vec<_> = (10..12)
            .map(|i| {
                attach(&store, &format!("c{i}"), "blue-a")
                    .unwrap()
                    .spec
                    .ip
                    .octets()[3]
            })
            .collect();
        assert_eq!(more, [5, 6]);
        let (c, field) = code(attach(&store, "c99", "blue-a").unwrap_err());
        assert_eq!((c, field.as_str()), (Code::ResourceExhausted, "network"));
        // A new VPC gets a new VNI, not one in use.
        store
            .apply(parse_manifest("kind: Vpc\nmetadata: {name: green}\nspec: {cidr: 10.1.0.0/16, serviceCidr: 10.97.0.0/16}\n").unwrap())
            .unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(
            snap.vpcs["green"]
                .status
                .as_ref()
                .unwrap()
                .vni
                .unwrap()
                .get(),
            3
        );
    }

    #[test]
    fn vnis_are_not_reused_at_once_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let vpc = |name: &str| {
            parse_manifest(&format!(
                "kind: Vpc\nmetadata: {{name: {name}}}\nspec: {{cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16}}\n"
            ))
            .unwrap()
        };
        store.apply(vpc("a")).unwrap();
        store.apply(vpc("b")).unwrap();
        store
            .delete(&[ObjectRef {
                kind: Kind::Vpc,
                name: "a".into(),
            }])
            .unwrap();
        store.apply(vpc("c")).unwrap();
        let snap = store.snapshot().unwrap();
        let vni = |n: &str| snap.vpcs[n].status.as_ref().unwrap().vni.unwrap().get();
        assert_eq!((vni("b"), vni("c")), (2, 3));
    }

    #[test]
    fn services_get_vips_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.apply(parse_manifest(WORLD).unwrap()).unwrap();
        let svc = |name: &str, vip: &str| {
            parse_manifest(&format!(
                "kind: Service\nmetadata: {{name: {name}}}\nspec: {{vpc: blue, {vip} ports: [{{port: 80}}]}}\n"
            ))
            .unwrap()
        };
        let out = store.apply(svc("a", "")).unwrap();
        let ClusterObject::Service(a) = &out[0] else {
            panic!()
        };
        assert_eq!(
            a.status.as_ref().unwrap().vip,
            Some(Ipv4Addr::new(10, 96, 0, 1))
        );
        // Re-applying keeps the VIP.
        let out = store.apply(svc("a", "")).unwrap();
        let ClusterObject::Service(a) = &out[0] else {
            panic!()
        };
        assert_eq!(
            a.status.as_ref().unwrap().vip,
            Some(Ipv4Addr::new(10, 96, 0, 1))
        );
        let (c, f) = code(store.apply(svc("b", "vip: 10.96.0.1,")).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::FailedPrecondition, "spec.vip"));
        let (c, f) = code(store.apply(svc("b", "vip: 10.97.0.1,")).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::InvalidArgument, "spec.vip"));
        store.apply(svc("b", "vip: 10.96.0.2,")).unwrap();
        let out = store.apply(svc("c", "")).unwrap();
        let ClusterObject::Service(c3) = &out[0] else {
            panic!()
        };
        assert_eq!(
            c3.status.as_ref().unwrap().vip,
            Some(Ipv4Addr::new(10, 96, 0, 3))
        );
    }

    #[test]
    fn changes_that_would_orphan_objects_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.apply(parse_manifest(WORLD).unwrap()).unwrap();
        node(&store, "n1", 11);
        attach(&store, "c0", "blue-a").unwrap();
        let before = store.snapshot().unwrap();
        let vpc_ref = ObjectRef {
            kind: Kind::Vpc,
            name: "blue".into(),
        };
        let subnet_ref = ObjectRef {
            kind: Kind::Subnet,
            name: "blue-a".into(),
        };
        let (c, _) = code(store.delete(std::slice::from_ref(&vpc_ref)).unwrap_err());
        assert_eq!(c, Code::FailedPrecondition);
        let (c, _) = code(store.delete(std::slice::from_ref(&subnet_ref)).unwrap_err());
        assert_eq!(c, Code::FailedPrecondition);
        let moved = parse_manifest(
            "kind: Subnet\nmetadata: {name: blue-a}\nspec: {vpc: blue, cidr: 10.0.2.0/24}\n",
        )
        .unwrap();
        let (c, f) = code(store.apply(moved).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::FailedPrecondition, "spec.cidr"));
        let outside = parse_manifest(
            "kind: Subnet\nmetadata: {name: blue-b}\nspec: {vpc: blue, cidr: 10.9.2.0/24}\n",
        )
        .unwrap();
        let (c, f) = code(store.apply(outside).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::InvalidArgument, "spec.cidr"));
        let overlap = parse_manifest(
            "kind: Subnet\nmetadata: {name: blue-b}\nspec: {vpc: blue, cidr: 10.0.0.0/23}\n",
        )
        .unwrap();
        let (c, f) = code(store.apply(overlap).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::InvalidArgument, "spec.cidr"));
        // A manifest with one bad object writes none of its objects.
        let mixed = parse_manifest("kind: Vpc\nmetadata: {name: new}\nspec: {cidr: 10.5.0.0/16, serviceCidr: 10.6.0.0/16}\n---\nkind: Subnet\nmetadata: {name: x}\nspec: {vpc: nope, cidr: 10.5.0.0/24}\n").unwrap();
        let (c, f) = code(store.apply(mixed).unwrap_err());
        assert_eq!((c, f.as_str()), (Code::NotFound, "spec.vpc"));
        assert_eq!(store.snapshot().unwrap(), before);
        let (c, f) = code(attach(&store, "c1", "blue/red-a").unwrap_err());
        assert_eq!((c, f.as_str()), (Code::NotFound, "network"));
        let (c, f) = code(attach(&store, "c1", "").unwrap_err());
        assert_eq!((c, f.as_str()), (Code::InvalidArgument, "network"));
        // Detach, then delete in one go: subnet before VPC whatever the order given.
        store.detach("n1", "c0", "eth0").unwrap();
        store.delete(&[vpc_ref, subnet_ref]).unwrap();
        assert!(!store.snapshot().unwrap().vpcs.contains_key("blue"));
    }
}
