//! Operations on one copy of the tables: `check` (may this op be applied now?), `apply`
//! (do it, keep derived state right, and return the op that undoes it).
//!
//! `apply` never fails: it is called only after `check` passed on the same state, when
//! replaying onto the second copy, and when undoing. It costs O(1) per op, plus the size
//! of the VPC's subnet index for subnet ops.

use std::net::Ipv4Addr;
use std::sync::Arc;

use sluice_api::{Endpoint, Host, Ipv4Cidr, ObjectKey, Subnet, Vpc};

use super::entries::{
    EndpointEntry, HostEntry, HostId, ServiceEntry, SubnetEntry, SubnetId, Tables, VpcEntry,
};
use super::keys;
use super::writer::{RejectKind, Rejected};

/// One change to one table. Values are shared (`Arc`) between the two copies.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    UpsertHost(Host),
    DeleteHost(Ipv4Addr),
    UpsertVpc(Arc<Vpc>),
    DeleteVpc(u32),
    UpsertSubnet(Arc<Subnet>),
    DeleteSubnet { vni: u32, cidr: Ipv4Cidr },
    UpsertEndpoint(Endpoint),
    DeleteEndpoint { vni: u32, ip: u32 },
    UpsertService(Arc<ServiceEntry>),
    DeleteService(u128),
}

fn reject(kind: RejectKind, item: ObjectKey, field: impl Into<String>, reason: String) -> Rejected {
    Rejected {
        kind,
        item,
        field: field.into(),
        reason,
    }
}

fn invalid(item: ObjectKey, field: impl Into<String>, reason: String) -> Rejected {
    reject(RejectKind::InvalidArgument, item, field, reason)
}

fn precondition(item: ObjectKey, field: impl Into<String>, reason: String) -> Rejected {
    reject(RejectKind::FailedPrecondition, item, field, reason)
}

impl Tables {
    fn check_hosts_known(
        &self,
        item: ObjectKey,
        field: &str,
        hosts: &[Ipv4Addr],
    ) -> Result<(), Rejected> {
        for (i, host) in hosts.iter().enumerate() {
            if !self.host_ids.contains_key(&keys::ip(*host)) {
                return Err(invalid(
                    item,
                    format!("{field}[{i}]"),
                    format!("{host} is not a known host; add it as a Host first"),
                ));
            }
        }
        Ok(())
    }

    fn vpc_for(&self, item: ObjectKey, vni: u32) -> Result<&VpcEntry, Rejected> {
        self.vpcs
            .get(&vni)
            .ok_or_else(|| invalid(item, "vni", format!("VPC {vni} does not exist")))
    }

    /// Whether `op` may be applied to the tables as they are now. `key` names the item in
    /// errors. Returns `Ok(false)` when the op would change nothing.
    pub(crate) fn check(&self, key: ObjectKey, op: &Op) -> Result<bool, Rejected> {
        match op {
            Op::UpsertHost(host) => Ok(self.host_by_ip(host.ip).is_none_or(|h| h.mac != host.mac)),
            Op::DeleteHost(ip) => match self.host_by_ip(*ip) {
                None => Ok(false),
                Some(h) if h.refs > 0 => Err(precondition(
                    key,
                    "ip",
                    format!(
                        "still named by {} endpoints, subnets or VPCs; remove those first",
                        h.refs
                    ),
                )),
                Some(_) => Ok(true),
            },
            Op::UpsertVpc(vpc) => {
                self.check_hosts_known(key, "dividers", &vpc.dividers)?;
                let Some(old) = self.vpcs.get(&vpc.vni.get()) else {
                    return Ok(true);
                };
                if *old.vpc == **vpc {
                    return Ok(false);
                }
                if old.vpc.cidr != vpc.cidr && !old.subnets.is_empty() {
                    return Err(precondition(
                        key,
                        "cidr",
                        format!(
                            "cannot change from {} while the VPC has {} subnets",
                            old.vpc.cidr,
                            old.subnets.len()
                        ),
                    ));
                }
                if old.vpc.service_cidr != vpc.service_cidr && old.services > 0 {
                    return Err(precondition(
                        key,
                        "serviceCidr",
                        format!(
                            "cannot change from {} while the VPC has {} services",
                            old.vpc.service_cidr, old.services
                        ),
                    ));
                }
                Ok(true)
            }
            Op::DeleteVpc(vni) => match self.vpcs.get(vni) {
                None => Ok(false),
                Some(v) if !v.subnets.is_empty() || v.services > 0 => Err(precondition(
                    key,
                    "vni",
                    format!(
                        "VPC still has {} subnets and {} services; delete them first",
                        v.subnets.len(),
                        v.services
                    ),
                )),
                Some(_) => Ok(true),
            },
            Op::UpsertSubnet(subnet) => {
                let vni = subnet.vni.get();
                let vpc = self.vpc_for(key, vni)?;
                if !vpc.vpc.cidr.covers(subnet.cidr) {
                    return Err(invalid(
                        key,
                        "cidr",
                        format!(
                            "{} is outside VPC {vni}'s cidr {}",
                            subnet.cidr, vpc.vpc.cidr
                        ),
                    ));
                }
                self.check_hosts_known(key, "bouncers", &subnet.bouncers)?;
                let subnet_key = keys::subnet(vni, subnet.cidr.prefix_len(), subnet.cidr.first());
                if let Some(old) = self
                    .subnet_ids
                    .get(&subnet_key)
                    .and_then(|id| self.subnets.get(*id))
                {
                    return Ok(*old.subnet != **subnet);
                }
                if let Some(other) = self.overlapping_subnet(vpc, subnet.cidr) {
                    return Err(invalid(
                        key,
                        "cidr",
                        format!("{} overlaps subnet {other} of VPC {vni}", subnet.cidr),
                    ));
                }
                Ok(true)
            }
            Op::DeleteSubnet { vni, cidr } => {
                let key_bits = keys::subnet(*vni, cidr.prefix_len(), cidr.first());
                match self
                    .subnet_ids
                    .get(&key_bits)
                    .and_then(|id| self.subnets.get(*id))
                {
                    None => Ok(false),
                    Some(s) if s.endpoints > 0 => Err(precondition(
                        key,
                        "cidr",
                        format!(
                            "subnet still holds {} endpoints; delete them first",
                            s.endpoints
                        ),
                    )),
                    Some(_) => Ok(true),
                }
            }
            Op::UpsertEndpoint(ep) => {
                let vni = ep.vni.get();
                let vpc = self.vpc_for(key, vni)?;
                let ip = keys::ip(ep.ip);
                let Some(subnet) = self.subnet_for(vpc, ip) else {
                    return Err(invalid(
                        key,
                        "ip",
                        format!("{} is outside every subnet of VPC {vni}", ep.ip),
                    ));
                };
                let cidr = subnet.subnet.cidr;
                if ip == cidr.first() || ip == cidr.last() || ep.ip == subnet.router_ip {
                    return Err(invalid(
                        key,
                        "ip",
                        format!(
                            "{} is the network, broadcast or router address of subnet {cidr}",
                            ep.ip
                        ),
                    ));
                }
                self.check_hosts_known(key, "host", std::slice::from_ref(&ep.host))
                    .map_err(|mut e| {
                        e.field = "host".into();
                        e
                    })?;
                Ok(self.endpoint(vni, ip).is_none_or(|old| {
                    old.mac != ep.mac || self.endpoint_host(old) != Some(ep.host)
                }))
            }
            Op::DeleteEndpoint { vni, ip } => Ok(self.endpoint(*vni, *ip).is_some()),
            Op::UpsertService(entry) => {
                let svc = &entry.service;
                let vni = svc.vni.get();
                let vpc = self.vpc_for(key, vni)?;
                if !vpc.vpc.service_cidr.contains(svc.vip) {
                    return Err(invalid(
                        key,
                        "vip",
                        format!(
                            "{} is outside VPC {vni}'s serviceCidr {}",
                            svc.vip, vpc.vpc.service_cidr
                        ),
                    ));
                }
                for (i, b) in svc.backends.iter().enumerate() {
                    if !vpc.vpc.cidr.contains(b.ip) {
                        return Err(invalid(
                            key,
                            format!("backends[{i}].ip"),
                            format!("{} is outside VPC {vni}'s cidr {}", b.ip, vpc.vpc.cidr),
                        ));
                    }
                }
                let service_key =
                    keys::service(vni, keys::ip(svc.vip), svc.port, svc.protocol.number());
                Ok(self
                    .services
                    .get(&service_key)
                    .is_none_or(|old| old.service != *svc))
            }
            Op::DeleteService(key) => Ok(self.services.contains_key(key)),
        }
    }

    /// A subnet of `vpc` that overlaps `cidr`, if any: one that covers it (a probe per
    /// prefix length in use) or one inside it (a range query on the VPC's index).
    fn overlapping_subnet(&self, vpc: &VpcEntry, cidr: Ipv4Cidr) -> Option<Ipv4Cidr> {
        let vni = vpc.vpc.vni.get();
        let mut lens = vpc.prefix_lens & ((2u64 << cidr.prefix_len()) - 1);
        while lens != 0 {
            let len = 63 - lens.leading_zeros() as u8;
            lens &= !(1u64 << len);
            let network = cidr.first() & Ipv4Cidr::mask_for(len);
            if self
                .subnet_ids
                .contains_key(&keys::subnet(vni, len, network))
            {
                return Some(Ipv4Cidr::truncate(Ipv4Addr::from(network), len));
            }
        }
        vpc.subnets
            .range((cidr.first(), 0)..=(cidr.last(), 32))
            .next()
            .map(|&(network, len)| Ipv4Cidr::truncate(Ipv4Addr::from(network), len))
    }

    fn host_by_ip(&self, ip: Ipv4Addr) -> Option<&HostEntry> {
        self.hosts.get(*self.host_ids.get(&keys::ip(ip))?)
    }

    fn host_ref(&mut self, ip: Ipv4Addr, delta: i32) {
        if let Some(id) = self.host_ids.get(&keys::ip(ip)) {
            if let Some(host) = self.hosts.get_mut(*id) {
                host.refs = host.refs.saturating_add_signed(delta);
            }
        }
    }

    fn host_ref_id(&mut self, id: HostId, delta: i32) {
        if let Some(host) = self.hosts.get_mut(id) {
            host.refs = host.refs.saturating_add_signed(delta);
        }
    }

    fn host_refs(&mut self, hosts: &[Ipv4Addr], delta: i32) {
        for host in hosts {
            self.host_ref(*host, delta);
        }
    }

    /// Applies `op` and returns the op that undoes it.
    pub(crate) fn apply(&mut self, op: Op) -> Op {
        match op {
            Op::UpsertHost(host) => {
                let ip = keys::ip(host.ip);
                let existing = self
                    .host_ids
                    .get(&ip)
                    .and_then(|id| self.hosts.get_mut(*id));
                match existing {
                    Some(entry) => {
                        let old = Host {
                            ip: host.ip,
                            mac: entry.mac,
                        };
                        entry.mac = host.mac;
                        Op::UpsertHost(old)
                    }
                    None => {
                        let entry = HostEntry {
                            ip: host.ip,
                            mac: host.mac,
                            refs: 0,
                        };
                        let id = self.hosts.insert(entry);
                        self.host_ids.insert(ip, id);
                        Op::DeleteHost(host.ip)
                    }
                }
            }
            Op::DeleteHost(ip) => {
                let removed = self
                    .host_ids
                    .remove(&keys::ip(ip))
                    .and_then(|id| self.hosts.remove(id));
                match removed {
                    Some(entry) => Op::UpsertHost(Host { ip, mac: entry.mac }),
                    None => Op::DeleteHost(ip),
                }
            }
            Op::UpsertVpc(vpc) => {
                let vni = vpc.vni.get();
                self.host_refs(&vpc.dividers, 1);
                let undo = match self.vpcs.get_mut(&vni) {
                    Some(entry) => Op::UpsertVpc(entry.set_vpc(vpc)),
                    None => {
                        self.vpcs.insert(vni, VpcEntry::new(vpc));
                        Op::DeleteVpc(vni)
                    }
                };
                if let Op::UpsertVpc(old) = &undo {
                    self.host_refs(&old.dividers, -1);
                }
                undo
            }
            Op::DeleteVpc(vni) => match self.vpcs.remove(&vni) {
                Some(entry) => {
                    self.host_refs(&entry.vpc.dividers, -1);
                    Op::UpsertVpc(entry.vpc)
                }
                None => Op::DeleteVpc(vni),
            },
            Op::UpsertSubnet(subnet) => {
                let vni = subnet.vni.get();
                let cidr = subnet.cidr;
                let key = keys::subnet(vni, cidr.prefix_len(), cidr.first());
                self.host_refs(&subnet.bouncers, 1);
                let existing = self
                    .subnet_ids
                    .get(&key)
                    .and_then(|id| self.subnets.get_mut(*id));
                let old = match existing {
                    Some(entry) => Some(entry.set_subnet(subnet)),
                    None => {
                        let id = self.subnets.insert(SubnetEntry::new(subnet));
                        self.subnet_ids.insert(key, id);
                        if let Some(vpc) = self.vpcs.get_mut(&vni) {
                            let len = cidr.prefix_len();
                            vpc.prefix_counts[len as usize] += 1;
                            vpc.prefix_lens |= 1 << len;
                            vpc.subnets.insert((cidr.first(), len));
                        }
                        None
                    }
                };
                match old {
                    Some(old) => {
                        self.host_refs(&old.bouncers, -1);
                        Op::UpsertSubnet(old)
                    }
                    None => Op::DeleteSubnet { vni, cidr },
                }
            }
            Op::DeleteSubnet { vni, cidr } => {
                let key = keys::subnet(vni, cidr.prefix_len(), cidr.first());
                let removed = self
                    .subnet_ids
                    .remove(&key)
                    .and_then(|id| self.subnets.remove(id));
                match removed {
                    Some(entry) => {
                        if let Some(vpc) = self.vpcs.get_mut(&vni) {
                            let len = cidr.prefix_len();
                            vpc.prefix_counts[len as usize] -= 1;
                            if vpc.prefix_counts[len as usize] == 0 {
                                vpc.prefix_lens &= !(1 << len);
                            }
                            vpc.subnets.remove(&(cidr.first(), len));
                        }
                        self.host_refs(&entry.subnet.bouncers, -1);
                        Op::UpsertSubnet(entry.subnet)
                    }
                    None => Op::DeleteSubnet { vni, cidr },
                }
            }
            Op::UpsertEndpoint(ep) => {
                let vni = ep.vni.get();
                let ip = keys::ip(ep.ip);
                // `check` made sure both exist.
                let (Some(&host), Some(subnet)) = (
                    self.host_ids.get(&keys::ip(ep.host)),
                    self.subnet_id_for(vni, ip),
                ) else {
                    return Op::DeleteEndpoint { vni, ip };
                };
                self.host_ref_id(host, 1);
                let new = EndpointEntry {
                    mac: ep.mac,
                    host,
                    subnet,
                };
                match self.endpoints.insert(keys::endpoint(vni, ip), new) {
                    Some(old) => {
                        self.host_ref_id(old.host, -1);
                        let old_host = self.hosts.get(old.host).map_or(ep.host, |h| h.ip);
                        Op::UpsertEndpoint(Endpoint {
                            mac: old.mac,
                            host: old_host,
                            ..ep
                        })
                    }
                    None => {
                        self.count_endpoint(subnet, 1);
                        Op::DeleteEndpoint { vni, ip }
                    }
                }
            }
            Op::DeleteEndpoint { vni, ip } => {
                match self.endpoints.remove(keys::endpoint(vni, ip)) {
                    Some(old) => {
                        self.count_endpoint(old.subnet, -1);
                        self.host_ref_id(old.host, -1);
                        let host = self.hosts.get(old.host).map(|h| h.ip);
                        match (sluice_api::Vni::new(vni), host) {
                            (Ok(vni), Some(host)) => Op::UpsertEndpoint(Endpoint {
                                vni,
                                ip: Ipv4Addr::from(ip),
                                mac: old.mac,
                                host,
                            }),
                            // Keys hold valid VNIs, and a host outlives its endpoints.
                            _ => Op::DeleteEndpoint { vni, ip },
                        }
                    }
                    None => Op::DeleteEndpoint { vni, ip },
                }
            }
            Op::UpsertService(entry) => {
                let svc = &entry.service;
                let vni = svc.vni.get();
                let key = keys::service(vni, keys::ip(svc.vip), svc.port, svc.protocol.number());
                self.service_id_bound = self.service_id_bound.max(entry.instance.id + 1);
                match self.services.insert(key, entry) {
                    Some(old) => Op::UpsertService(old),
                    None => {
                        if let Some(vpc) = self.vpcs.get_mut(&vni) {
                            vpc.services += 1;
                        }
                        Op::DeleteService(key)
                    }
                }
            }
            Op::DeleteService(key) => match self.services.remove(&key) {
                Some(old) => {
                    if let Some(vpc) = self.vpcs.get_mut(&old.service.vni.get()) {
                        vpc.services -= 1;
                    }
                    Op::UpsertService(old)
                }
                None => Op::DeleteService(key),
            },
        }
    }

    fn count_endpoint(&mut self, subnet: SubnetId, delta: i32) {
        if let Some(subnet) = self.subnets.get_mut(subnet) {
            subnet.endpoints = subnet.endpoints.saturating_add_signed(delta);
        }
    }

    /// The id of the subnet of VPC `vni` holding `ip`.
    fn subnet_id_for(&self, vni: u32, ip: u32) -> Option<SubnetId> {
        let vpc = self.vpcs.get(&vni)?;
        let mut lens = vpc.prefix_lens;
        while lens != 0 {
            let len = 63 - lens.leading_zeros() as u8;
            lens &= !(1u64 << len);
            if let Some(id) =
                self.subnet_ids
                    .get(&keys::subnet(vni, len, ip & Ipv4Cidr::mask_for(len)))
            {
                return Some(*id);
            }
        }
        None
    }
}
