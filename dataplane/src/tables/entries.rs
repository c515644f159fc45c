//! One copy of the gateway's tables and the lookups the packet path makes on it.
//!
//! Besides what workers read, each entry keeps a little derived state (how many subnets
//! use each prefix length in a VPC, how many endpoints live in a subnet, how many objects
//! name a host) that lets a transaction be validated without scanning a table.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hashbrown::HashMap;
use sluice_api::{
    Endpoint, Host, Ipv4Cidr, MacAddr, Object, ObjectKey, ObjectKind, Service, Subnet, Vni, Vpc,
};

use super::endpoints::EndpointTable;
use super::keys;
use super::maglev::{MaglevBackend, MaglevTable};
use super::service_ids::ServiceInstance;
use super::slab::Slab;

/// A VPC as the packet path sees it.
#[derive(Clone, Debug)]
pub struct VpcEntry {
    pub vpc: Arc<Vpc>,
    /// Copies of hot fields of `vpc`, kept in step by [`VpcEntry::set_vpc`].
    pub vni: u32,
    pub service_net: u32,
    pub service_mask: u32,
    /// Bit `n` set: some subnet of this VPC has prefix length `n`.
    pub(crate) prefix_lens: u64,
    /// How many subnets use each prefix length.
    pub(crate) prefix_counts: [u32; 33],
    /// The VPC's subnets as (network, prefix length), for overlap checks.
    pub(crate) subnets: BTreeSet<(u32, u8)>,
    pub(crate) services: u32,
}

impl VpcEntry {
    pub(crate) fn new(vpc: Arc<Vpc>) -> Self {
        Self {
            vni: vpc.vni.get(),
            service_net: vpc.service_cidr.first(),
            service_mask: vpc.service_cidr.mask(),
            vpc,
            prefix_lens: 0,
            prefix_counts: [0; 33],
            subnets: BTreeSet::new(),
            services: 0,
        }
    }

    /// Replaces the VPC's definition, keeping its derived state; returns the old one.
    pub(crate) fn set_vpc(&mut self, vpc: Arc<Vpc>) -> Arc<Vpc> {
        self.vni = vpc.vni.get();
        self.service_net = vpc.service_cidr.first();
        self.service_mask = vpc.service_cidr.mask();
        std::mem::replace(&mut self.vpc, vpc)
    }

    /// Whether `ip` is in the VPC's service CIDR.
    #[inline]
    pub fn is_service_ip(&self, ip: u32) -> bool {
        ip & self.service_mask == self.service_net
    }

    pub fn subnet_count(&self) -> usize {
        self.subnets.len()
    }

    pub fn service_count(&self) -> u32 {
        self.services
    }
}

/// A subnet as the packet path sees it.
#[derive(Clone, Debug)]
pub struct SubnetEntry {
    pub subnet: Arc<Subnet>,
    /// Copies of hot fields of `subnet`, kept in step by [`SubnetEntry::set_subnet`].
    pub router_ip: Ipv4Addr,
    pub router_mac: [u8; 6],
    pub net: u32,
    pub mask: u32,
    pub(crate) endpoints: u32,
}

impl SubnetEntry {
    pub(crate) fn new(subnet: Arc<Subnet>) -> Self {
        Self {
            router_ip: subnet.router_ip(),
            router_mac: subnet.router_mac.0,
            net: subnet.cidr.first(),
            mask: subnet.cidr.mask(),
            subnet,
            endpoints: 0,
        }
    }

    /// Replaces the subnet's definition (same CIDR), keeping its endpoint count.
    pub(crate) fn set_subnet(&mut self, subnet: Arc<Subnet>) -> Arc<Subnet> {
        self.router_ip = subnet.router_ip();
        self.router_mac = subnet.router_mac.0;
        std::mem::replace(&mut self.subnet, subnet)
    }

    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask == self.net
    }

    pub fn endpoint_count(&self) -> u32 {
        self.endpoints
    }
}

/// An endpoint: its MAC, and the slab ids of its host and subnet, so that forwarding to
/// it needs no further hash lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub mac: MacAddr,
    pub host: HostId,
    pub subnet: SubnetId,
}

/// Index of a host in [`Tables`]; stable while the host exists.
pub type HostId = u32;
/// Index of a subnet in [`Tables`]; stable while the subnet exists.
pub type SubnetId = u32;

/// Dense index of a service, for per-service counters; see [`ServiceInstance`].
pub type ServiceId = u32;

/// A service with its Maglev table. Shared (`Arc`) by both copies of the tables.
#[derive(Debug)]
pub struct ServiceEntry {
    pub service: Service,
    /// `None` when no backend has weight: packets to the VIP are dropped as `NoBackend`.
    pub maglev: Option<MaglevTable>,
    /// Its id and stamp, the same in both copies (handed out by the writer).
    pub instance: ServiceInstance,
}

impl ServiceEntry {
    pub fn new(service: Service, instance: ServiceInstance) -> Self {
        let weighted: Vec<_> = service
            .backends
            .iter()
            .map(|b| MaglevBackend {
                ip: b.ip,
                port: b.port,
                weight: b.weight,
            })
            .collect();
        // Errors here are "no backend can take traffic", which the packet path reports
        // as `NoBackend`; everything else was validated with the object.
        let maglev = MaglevTable::new(&weighted).ok();
        Self {
            service,
            maglev,
            instance,
        }
    }

    /// The backend (address, port) for a flow, if any backend takes traffic.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<(Ipv4Addr, u16)> {
        self.pick_indexed(flow_hash).map(|(_, ip, port)| (ip, port))
    }

    /// Like [`Self::pick`], with the backend's position in `service.backends`.
    #[inline]
    pub fn pick_indexed(&self, flow_hash: u64) -> Option<(u16, Ipv4Addr, u16)> {
        let maglev = self.maglev.as_ref()?;
        let index = maglev.lookup(flow_hash);
        let backend = self.service.backends.get(index as usize)?;
        Some((index, backend.ip, backend.port))
    }
}

/// An underlay host.
#[derive(Clone, Copy, Debug)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Endpoints, subnets (bouncers) and VPCs (dividers) naming this host.
    pub(crate) refs: u32,
}

/// One copy of all tables. Workers only read it.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub(crate) host_ids: HashMap<u32, HostId>,
    pub(crate) hosts: Slab<HostEntry>,
    pub(crate) vpcs: HashMap<u32, VpcEntry>,
    pub(crate) subnet_ids: HashMap<u64, SubnetId>,
    pub(crate) subnets: Slab<SubnetEntry>,
    pub(crate) endpoints: EndpointTable,
    pub(crate) services: HashMap<u128, Arc<ServiceEntry>>,
    /// Above every service id this copy has held: the size of a per-service array.
    pub(crate) service_id_bound: u32,
    pub(crate) generation: u64,
}

impl Tables {
    /// Bumped by every transaction that changed something.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    #[inline]
    pub fn vpc(&self, vni: u32) -> Option<&VpcEntry> {
        self.vpcs.get(&vni)
    }

    /// The subnet of `vpc` holding `ip` (longest prefix first; subnets of a VPC never
    /// overlap, so the first hit is the only one).
    #[inline]
    pub fn subnet_for(&self, vpc: &VpcEntry, ip: u32) -> Option<&SubnetEntry> {
        let vni = vpc.vni;
        let mut lens = vpc.prefix_lens;
        while lens != 0 {
            let len = 63 - lens.leading_zeros() as u8;
            lens &= !(1u64 << len);
            let network = ip & Ipv4Cidr::mask_for(len);
            if let Some(id) = self.subnet_ids.get(&keys::subnet(vni, len, network)) {
                return self.subnets.get(*id);
            }
        }
        None
    }

    /// Loads the slot where the endpoint (vni, ip) would be, so that a lookup soon after
    /// hits the cache; returns a meaningless value for `std::hint::black_box`.
    #[inline(always)]
    pub fn touch_endpoint(&self, vni: u32, ip: u32) -> u64 {
        self.endpoints.touch(keys::endpoint(vni, ip))
    }

    #[inline]
    pub fn endpoint(&self, vni: u32, ip: u32) -> Option<&EndpointEntry> {
        self.endpoints.get(keys::endpoint(vni, ip))
    }

    #[inline]
    pub fn host_mac(&self, ip: u32) -> Option<MacAddr> {
        let id = self.host_ids.get(&ip)?;
        self.hosts.get(*id).map(|h| h.mac)
    }

    #[inline]
    pub fn host_id(&self, ip: Ipv4Addr) -> Option<HostId> {
        self.host_ids.get(&ip.to_bits()).copied()
    }

    #[inline]
    pub fn host(&self, id: HostId) -> Option<&HostEntry> {
        self.hosts.get(id)
    }

    #[inline]
    pub fn subnet(&self, id: SubnetId) -> Option<&SubnetEntry> {
        self.subnets.get(id)
    }

    /// The underlay address of the host endpoint `entry` lives on.
    pub fn endpoint_host(&self, entry: &EndpointEntry) -> Option<Ipv4Addr> {
        self.hosts.get(entry.host).map(|h| h.ip)
    }

    #[inline]
    pub fn service(&self, vni: u32, vip: u32, port: u16, protocol: u8) -> Option<&ServiceEntry> {
        self.services
            .get(&keys::service(vni, vip, port, protocol))
            .map(|s| &**s)
    }

    pub fn len_hosts(&self) -> usize {
        self.host_ids.len()
    }

    pub fn len_endpoints(&self) -> usize {
        self.endpoints.len()
    }

    pub fn len_services(&self) -> usize {
        self.services.len()
    }

    /// Every service id is below this: the length a per-service counter array needs.
    #[inline]
    pub fn service_id_bound(&self) -> u32 {
        self.service_id_bound
    }

    /// Every service entry. Order is unspecified.
    pub fn service_entries(&self) -> impl Iterator<Item = &ServiceEntry> + '_ {
        self.services.values().map(|s| &**s)
    }

    /// The object stored under `key`, as the control plane describes it.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        match *key {
            ObjectKey::Host { ip } => {
                let host = self.hosts.get(*self.host_ids.get(&keys::ip(ip))?)?;
                Some(Object::Host(Host { ip, mac: host.mac }))
            }
            ObjectKey::Vpc { vni } => self
                .vpcs
                .get(&vni.get())
                .map(|v| Object::Vpc((*v.vpc).clone())),
            ObjectKey::Subnet { vni, cidr } => {
                let key = keys::subnet(vni.get(), cidr.prefix_len(), cidr.first());
                let subnet = self.subnets.get(*self.subnet_ids.get(&key)?)?;
                Some(Object::Subnet((*subnet.subnet).clone()))
            }
            ObjectKey::Endpoint { vni, ip } => {
                let entry = self
                    .endpoints
                    .get(keys::endpoint(vni.get(), keys::ip(ip)))?;
                self.endpoint_object(vni, ip, entry)
            }
            ObjectKey::Service {
                vni,
                vip,
                port,
                protocol,
            } => self
                .services
                .get(&keys::service(
                    vni.get(),
                    keys::ip(vip),
                    port,
                    protocol.number(),
                ))
                .map(|s| Object::Service(s.service.clone())),
        }
    }

    fn endpoint_object(&self, vni: Vni, ip: Ipv4Addr, entry: &EndpointEntry) -> Option<Object> {
        Some(Object::Endpoint(Endpoint {
            vni,
            ip,
            mac: entry.mac,
            host: self.endpoint_host(entry)?,
        }))
    }

    /// Every object, for listing and snapshots. Order is unspecified.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        [
            ObjectKind::Host,
            ObjectKind::Vpc,
            ObjectKind::Subnet,
            ObjectKind::Endpoint,
            ObjectKind::Service,
        ]
        .into_iter()
        .flat_map(|kind| self.objects_of(kind))
    }

    /// The objects of one table; costs in proportion to that table only.
    pub fn objects_of(&self, kind: ObjectKind) -> Box<dyn Iterator<Item = Object> + '_> {
        match kind {
            ObjectKind::Host => Box::new(self.host_ids.values().filter_map(|id| {
                let host = self.hosts.get(*id)?;
                Some(Object::Host(Host {
                    ip: host.ip,
                    mac: host.mac,
                }))
            })),
            ObjectKind::Vpc => Box::new(self.vpcs.values().map(|v| Object::Vpc((*v.vpc).clone()))),
            ObjectKind::Subnet => {
                Box::new(self.subnet_ids.values().filter_map(|id| {
                    Some(Object::Subnet((*self.subnets.get(*id)?.subnet).clone()))
                }))
            }
            ObjectKind::Endpoint => Box::new(self.endpoints.iter().filter_map(|(key, entry)| {
                // Keys are built from valid VNIs only.
                let vni = Vni::new((key >> 32) as u32).ok()?;
                self.endpoint_object(vni, Ipv4Addr::from(key as u32), entry)
            })),
            ObjectKind::Service => Box::new(
                self.services
                    .values()
                    .map(|s| Object::Service(s.service.clone())),
            ),
        }
    }
}
