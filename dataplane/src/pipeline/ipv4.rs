//! Inner IPv4: service DNAT, then the bouncer and divider decisions.
//!
//! * Service: (VNI, VIP, port, protocol) picks a backend with Maglev; destination address
//!   and port are rewritten with incremental checksums and SERVICE_ORIG is attached.
//! * Same subnet: the bouncer sets the inner destination MAC and sends to the endpoint's
//!   host.
//! * Across subnets: the first gateway on the path routes (TTL minus one, source MAC
//!   becomes the destination subnet's router MAC). A gateway that does not know the
//!   endpoint hands the packet on: a bouncer to a divider of the VPC, a divider to a
//!   bouncer of the destination subnet. Neither ever hands it back, so there are no loops.

use std::net::Ipv4Addr;

use super::bytes::{read_u16, read_u32, write_u16, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAGMENT_MASK};
use super::verdict::{DropReason, ServiceHit};
use super::Local;
use crate::tables::maglev::flow_hash;
use crate::tables::{SubnetEntry, Tables, VpcEntry};
use crate::wire::geneve::SluiceOption;
use crate::wire::{checksum, ethernet, ipv4, tcp, udp};

const IPV4_CHECKSUM_OFFSET: usize = ipv4::CHECKSUM_OFFSET;
const IPV4_DST_OFFSET: usize = ipv4::DST_ADDR_OFFSET;
/// UDP and TCP put their ports at the same offsets.
const L4_DST_PORT_OFFSET: usize = udp::DST_PORT_OFFSET;
const ETH_SRC: std::ops::Range<usize> = ethernet::SRC_ADDR_OFFSET..ethernet::SRC_ADDR_OFFSET + 6;
const ETH_DST: std::ops::Range<usize> = ethernet::DST_ADDR_OFFSET..ethernet::DST_ADDR_OFFSET + 6;

/// Where the packet goes and what it carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NextHop {
    pub ip: u32,
    pub mac: [u8; 6],
    pub host_hint: Option<SluiceOption>,
    pub service_orig: Option<SluiceOption>,
    /// The service and backend this gateway translated the packet to, if it did.
    pub service: Option<ServiceHit>,
}

/// Decides the next hop for the IPv4 frame `inner` and rewrites it for that hop.
#[inline]
pub(crate) fn forward(
    tables: &Tables,
    local: &Local,
    vpc: &VpcEntry,
    inner: &mut [u8],
    incoming_hint: Option<SluiceOption>,
    incoming_service: Option<SluiceOption>,
) -> Result<NextHop, DropReason> {
    let vni = vpc.vni;
    let (eth, ip) = inner.split_at_mut(ethernet::HEADER_LEN);
    if ip.len() < ipv4::MIN_HEADER_LEN || ip[ipv4::VER_IHL_OFFSET] >> 4 != ipv4::VERSION {
        return Err(DropReason::InnerMalformed);
    }
    let header_len = usize::from(ip[ipv4::VER_IHL_OFFSET] & 0x0f) * 4;
    let total_len = usize::from(read_u16(ip, ipv4::TOTAL_LEN_OFFSET));
    if header_len < ipv4::MIN_HEADER_LEN || total_len < header_len || total_len > ip.len() {
        return Err(DropReason::InnerMalformed);
    }
    let ip = &mut ip[..total_len];
    let src = read_u32(ip, ipv4::SRC_ADDR_OFFSET);
    let mut dst = read_u32(ip, IPV4_DST_OFFSET);
    let mut service_orig = incoming_service;
    let mut service = None;

    if vpc.is_service_ip(dst) {
        if read_u16(ip, ipv4::FLAGS_FRAG_OFFSET) & IPV4_FRAGMENT_MASK != 0 {
            return Err(DropReason::ServiceFragment);
        }
        let protocol = ip[ipv4::PROTOCOL_OFFSET];
        let (backend, orig, hit) = dnat(tables, vni, ip, header_len, protocol, src, dst)?;
        dst = backend;
        service_orig = Some(orig);
        service = Some(hit);
    }

    let host = match tables.endpoint(vni, dst) {
        // Bouncer: the endpoint is known here. Its entry names its subnet and host.
        Some(endpoint) => {
            let subnet = tables.subnet(endpoint.subnet).ok_or(DropReason::NoRoute)?;
            route(eth, ip, subnet, src)?;
            eth[ETH_DST].copy_from_slice(&endpoint.mac.0);
            tables.host(endpoint.host).ok_or(DropReason::NoRoute)?
        }
        None => {
            let subnet = tables.subnet_for(vpc, dst).ok_or(DropReason::NoRoute)?;
            route(eth, ip, subnet, src)?;
            let next = hand_on(vpc, subnet, local, src, dst)?;
            let id = tables.host_id(next).ok_or(DropReason::NoRoute)?;
            tables.host(id).ok_or(DropReason::NoRoute)?
        }
    };

    let host_hint = match tables.endpoint(vni, src) {
        Some(source) => Some(SluiceOption::HostHint {
            endpoint: Ipv4Addr::from(src),
            host: tables
                .host(source.host)
                .map_or(Ipv4Addr::UNSPECIFIED, |h| h.ip),
        }),
        None => incoming_hint,
    };
    Ok(NextHop {
        ip: host.ip.to_bits(),
        mac: host.mac.0,
        host_hint,
        service_orig,
        service,
    })
}

/// Routing between subnets: the first gateway on the path decrements the TTL and puts
/// the destination subnet's router MAC as source; later gateways see that MAC and leave
/// the TTL alone.
#[inline]
fn route(eth: &mut [u8], ip: &mut [u8], subnet: &SubnetEntry, src: u32) -> Result<(), DropReason> {
    if !subnet.contains(src) && eth[ETH_SRC] != subnet.router_mac {
        decrement_ttl(ip)?;
        eth[ETH_SRC].copy_from_slice(&subnet.router_mac);
    }
    Ok(())
}

/// The gateway to hand a packet to when this one does not know its endpoint: a divider
/// passes it to a bouncer of the destination subnet; a bouncer of another subnet passes
/// it to a divider. Neither ever hands it back, so there are no loops.
fn hand_on(
    vpc: &VpcEntry,
    subnet: &SubnetEntry,
    local: &Local,
    src: u32,
    dst: u32,
) -> Result<Ipv4Addr, DropReason> {
    let bouncers = &subnet.subnet.bouncers;
    if vpc.vpc.dividers.contains(&local.ip) {
        let bouncer = pick(bouncers, src, dst).ok_or(DropReason::UnknownEndpoint)?;
        if bouncer == local.ip {
            return Err(DropReason::UnknownEndpoint);
        }
        Ok(bouncer)
    } else if bouncers.contains(&local.ip) {
        Err(DropReason::UnknownEndpoint)
    } else {
        pick(&vpc.vpc.dividers, src, dst).ok_or(DropReason::NoRoute)
    }
}

/// Rewrites the destination of a packet to a service VIP; returns the backend address,
/// the SERVICE_ORIG option describing the VIP, and which service and backend it was.
#[inline]
fn dnat(
    tables: &Tables,
    vni: u32,
    ip: &mut [u8],
    header_len: usize,
    protocol: u8,
    src: u32,
    vip: u32,
) -> Result<(u32, SluiceOption, ServiceHit), DropReason> {
    let (checksum_offset, min_len) = match protocol {
        IPPROTO_TCP => (tcp::CHECKSUM_OFFSET, tcp::MIN_HEADER_LEN),
        IPPROTO_UDP => (udp::CHECKSUM_OFFSET, udp::HEADER_LEN),
        _ => return Err(DropReason::NoService),
    };
    let l4 = ip.get(header_len..).ok_or(DropReason::InnerMalformed)?;
    if l4.len() < min_len {
        return Err(DropReason::InnerMalformed);
    }
    let src_port = u16::from_be_bytes([l4[0], l4[1]]);
    let vip_port = u16::from_be_bytes([l4[2], l4[3]]);
    let service = tables
        .service(vni, vip, vip_port, protocol)
        .ok_or(DropReason::NoService)?;
    let hash = flow_hash(
        Ipv4Addr::from(src),
        Ipv4Addr::from(vip),
        src_port,
        vip_port,
        protocol,
    );
    let (index, backend_ip, backend_port) =
        service.pick_indexed(hash).ok_or(DropReason::NoBackend)?;
    let backend = u32::from(backend_ip);

    let ip_csum = read_u16(ip, IPV4_CHECKSUM_OFFSET);
    write_u16(
        ip,
        IPV4_CHECKSUM_OFFSET,
        checksum::update_u32(ip_csum, vip, backend),
    );
    ip[IPV4_DST_OFFSET..IPV4_DST_OFFSET + 4].copy_from_slice(&backend.to_be_bytes());

    let l4 = &mut ip[header_len..];
    let csum = read_u16(l4, checksum_offset);
    let csum = if protocol == IPPROTO_UDP {
        let csum = checksum::update_udp_u32(csum, vip, backend);
        checksum::update_udp_u16(csum, vip_port, backend_port)
    } else {
        let csum = checksum::update_u32(csum, vip, backend);
        checksum::update_u16(csum, vip_port, backend_port)
    };
    write_u16(l4, checksum_offset, csum);
    write_u16(l4, L4_DST_PORT_OFFSET, backend_port);

    let orig = SluiceOption::ServiceOrig {
        vip: Ipv4Addr::from(vip),
        port: vip_port,
        protocol,
    };
    let hit = ServiceHit {
        instance: service.instance,
        backend: index,
    };
    Ok((backend, orig, hit))
}

#[inline]
fn decrement_ttl(ip: &mut [u8]) -> Result<(), DropReason> {
    let mut packet = ipv4::Packet::new_unchecked(ip);
    ipv4::decrement_ttl(&mut packet).ok_or(DropReason::TtlExceeded)?;
    Ok(())
}

/// A gateway from `list` for the pair (src, dst): the same pair always picks the same one.
#[inline]
pub(crate) fn pick(list: &[Ipv4Addr], src: u32, dst: u32) -> Option<Ipv4Addr> {
    if list.is_empty() {
        return None;
    }
    let index = (pair_hash(src, dst) as usize) % list.len();
    Some(list[index])
}

/// A fixed, cheap mix of two addresses (also easy to write in C for the stubs).
#[inline]
pub fn pair_hash(src: u32, dst: u32) -> u32 {
    let mut h = src.wrapping_mul(0x9E37_79B1) ^ dst.wrapping_mul(0x85EB_CA77);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h
}
