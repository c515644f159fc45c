//! One copy of the gateway's tables and the lookups the packet path makes on it.
//!
//! Besides what workers read, each entry keeps a little derived state (how many subnets
//! use each prefix length in a VPC, how many endpoints live in a subnet, how many objects
//! name a host) that lets a transaction be validated without scanning a table.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hashbrown::HashMap;
use sluice_api::{Endpoint, Host, Ipv4Cidr, MacAddr, Object, ObjectKey, Service, Subnet, Vpc};

use super::keys;
use super::maglev::{MaglevBackend, MaglevTable};

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

/// An endpoint: its MAC and the underlay host it lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub mac: MacAddr,
    pub host: Ipv4Addr,
}

/// A service with its Maglev table. Shared (`Arc`) by both copies of the tables.
#[derive(Debug)]
pub struct ServiceEntry {
    pub service: Service,
    /// `None` when no backend has weight: packets to the VIP are dropped as `NoBackend`.
    pub maglev: Option<MaglevTable>,
}

impl ServiceEntry {
    pub fn new(service: Service) -> Self {
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
        Self { service, maglev }
    }

    /// The backend (address, port) for a flow, if any backend takes traffic.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<(Ipv4Addr, u16)> {
        let maglev = self.maglev.as_ref()?;
        let backend = self
            .service
            .backends
            .get(maglev.lookup(flow_hash) as usize)?;
        Some((backend.ip, backend.port))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct HostEntry {
    pub(crate) mac: MacAddr,
    /// Endpoints, subnets (bouncers) and VPCs (dividers) naming this host.
    pub(crate) refs: u32,
}

/// One copy of all tables. Workers only read it.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub(crate) hosts: HashMap<u32, HostEntry>,
    pub(crate) vpcs: HashMap<u32, VpcEntry>,
    pub(crate) subnets: HashMap<u64, SubnetEntry>,
    pub(crate) endpoints: HashMap<u64, EndpointEntry>,
    pub(crate) services: HashMap<u128, Arc<ServiceEntry>>,
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
            if let Some(subnet) = self.subnets.get(&keys::subnet(vni, len, network)) {
                return Some(subnet);
            }
        }
        None
    }

    #[inline]
    pub fn endpoint(&self, vni: u32, ip: u32) -> Option<&EndpointEntry> {
        self.endpoints.get(&keys::endpoint(vni, ip))
    }

    #[inline]
    pub fn host_mac(&self, ip: u32) -> Option<MacAddr> {
        self.hosts.get(&ip).map(|h| h.mac)
    }

    #[inline]
    pub fn service(&self, vni: u32, vip: u32, port: u16, protocol: u8) -> Option<&ServiceEntry> {
        self.services
            .get(&keys::service(vni, vip, port, protocol))
            .map(|s| &**s)
    }

    pub fn len_hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn len_endpoints(&self) -> usize {
        self.endpoints.len()
    }

    pub fn len_services(&self) -> usize {
        self.services.len()
    }

    /// The object stored under `key`, as the control plane describes it.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        match *key {
            ObjectKey::Host { ip } => self
                .hosts
                .get(&keys::ip(ip))
                .map(|h| Object::Host(Host { ip, mac: h.mac })),
            ObjectKey::Vpc { vni } => self
                .vpcs
                .get(&vni.get())
                .map(|v| Object::Vpc((*v.vpc).clone())),
            ObjectKey::Subnet { vni, cidr } => self
                .subnets
                .get(&keys::subnet(vni.get(), cidr.prefix_len(), cidr.first()))
                .map(|s| Object::Subnet((*s.subnet).clone())),
            ObjectKey::Endpoint { vni, ip } => self
                .endpoints
                .get(&keys::endpoint(vni.get(), keys::ip(ip)))
                .map(|e| {
                    Object::Endpoint(Endpoint {
                        vni,
                        ip,
                        mac: e.mac,
                        host: e.host,
                    })
                }),
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

    /// Every object, for listing and snapshots. Order is unspecified.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        let hosts = self.hosts.iter().map(|(ip, h)| {
            Object::Host(Host {
                ip: Ipv4Addr::from(*ip),
                mac: h.mac,
            })
        });
        let vpcs = self.vpcs.values().map(|v| Object::Vpc((*v.vpc).clone()));
        let subnets = self
            .subnets
            .values()
            .map(|s| Object::Subnet((*s.subnet).clone()));
        let endpoints = self.endpoints.iter().map(|(key, e)| {
            Object::Endpoint(Endpoint {
                // The key was built from a valid VNI and address.
                vni: sluice_api::Vni::new((key >> 32) as u32).unwrap_or_else(|_| unreachable_vni()),
                ip: Ipv4Addr::from(*key as u32),
                mac: e.mac,
                host: e.host,
            })
        });
        let services = self
            .services
            .values()
            .map(|s| Object::Service(s.service.clone()));
        hosts
            .chain(vpcs)
            .chain(subnets)
            .chain(endpoints)
            .chain(services)
    }
}

#[cold]
fn unreachable_vni() -> sluice_api::Vni {
    // Keys are only ever built from validated VNIs; reaching this is a bug in this module.
    panic!("endpoint table holds a key with an invalid VNI")
}
