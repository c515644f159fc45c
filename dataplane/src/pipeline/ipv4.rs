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

use smoltcp::wire::{IpProtocol, Ipv4Packet};

use super::verdict::DropReason;
use super::Local;
use crate::tables::maglev::flow_hash;
use crate::tables::{Tables, VpcEntry};
use crate::wire::checksum;
use crate::wire::geneve::SluiceOption;

const ETHERNET_LEN: usize = 14;
const IPV4_TTL_OFFSET: usize = 8;
const IPV4_CHECKSUM_OFFSET: usize = 10;
const IPV4_DST_OFFSET: usize = 16;
const L4_DST_PORT_OFFSET: usize = 2;
const UDP_CHECKSUM_OFFSET: usize = 6;
const UDP_HEADER_LEN: usize = 8;
const TCP_CHECKSUM_OFFSET: usize = 16;
const TCP_MIN_HEADER_LEN: usize = 20;

/// Where the packet goes and what it carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NextHop {
    pub host: u32,
    pub host_hint: Option<SluiceOption>,
    pub service_orig: Option<SluiceOption>,
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
    let vni = vpc.vpc.vni.get();
    let ip_bytes = inner
        .get_mut(ETHERNET_LEN..)
        .ok_or(DropReason::InnerMalformed)?;
    let ip = Ipv4Packet::new_checked(&*ip_bytes).map_err(|_| DropReason::InnerMalformed)?;
    if ip.version() != 4 {
        return Err(DropReason::InnerMalformed);
    }
    let header_len = usize::from(ip.header_len());
    let src = u32::from(ip.src_addr());
    let mut dst = u32::from(ip.dst_addr());
    let mut service_orig = incoming_service;

    if vpc.vpc.service_cidr.contains(Ipv4Addr::from(dst)) {
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(DropReason::ServiceFragment);
        }
        let protocol: u8 = ip.next_header().into();
        let total_len = usize::from(ip.total_len());
        let (new_dst, orig) = dnat(
            tables,
            vni,
            &mut ip_bytes[..total_len],
            header_len,
            protocol,
            src,
            dst,
        )?;
        dst = new_dst;
        service_orig = Some(orig);
    }

    let vni_subnet = tables.subnet_for(vpc, dst).ok_or(DropReason::NoRoute)?;
    let subnet = &vni_subnet.subnet;
    if !subnet.cidr.contains(Ipv4Addr::from(src)) && inner[6..12] != subnet.router_mac.0 {
        // First routing hop: later gateways see the router MAC as source and leave the TTL.
        decrement_ttl(&mut inner[ETHERNET_LEN..])?;
        inner[6..12].copy_from_slice(&subnet.router_mac.0);
    }

    let host_hint = match tables.endpoint(vni, src) {
        Some(source) => Some(SluiceOption::HostHint {
            endpoint: Ipv4Addr::from(src),
            host: source.host,
        }),
        None => incoming_hint,
    };

    let host = match tables.endpoint(vni, dst) {
        Some(endpoint) => {
            inner[0..6].copy_from_slice(&endpoint.mac.0);
            endpoint.host
        }
        None if vpc.vpc.dividers.contains(&local.ip) => {
            let bouncer = pick(&subnet.bouncers, src, dst).ok_or(DropReason::UnknownEndpoint)?;
            if bouncer == local.ip {
                return Err(DropReason::UnknownEndpoint);
            }
            bouncer
        }
        None if subnet.bouncers.contains(&local.ip) => return Err(DropReason::UnknownEndpoint),
        None => pick(&vpc.vpc.dividers, src, dst).ok_or(DropReason::NoRoute)?,
    };
    Ok(NextHop {
        host: u32::from(host),
        host_hint,
        service_orig,
    })
}

/// Rewrites the destination of a packet to a service VIP; returns the backend address
/// and the SERVICE_ORIG option describing the VIP.
#[inline]
fn dnat(
    tables: &Tables,
    vni: u32,
    ip: &mut [u8],
    header_len: usize,
    protocol: u8,
    src: u32,
    vip: u32,
) -> Result<(u32, SluiceOption), DropReason> {
    let (checksum_offset, min_len) = match IpProtocol::from(protocol) {
        IpProtocol::Tcp => (TCP_CHECKSUM_OFFSET, TCP_MIN_HEADER_LEN),
        IpProtocol::Udp => (UDP_CHECKSUM_OFFSET, UDP_HEADER_LEN),
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
    let (backend_ip, backend_port) = service.pick(hash).ok_or(DropReason::NoBackend)?;
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
    let csum = if protocol == u8::from(IpProtocol::Udp) {
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
    Ok((backend, orig))
}

#[inline]
fn decrement_ttl(ip: &mut [u8]) -> Result<(), DropReason> {
    let ttl = ip[IPV4_TTL_OFFSET];
    if ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let old_word = read_u16(ip, IPV4_TTL_OFFSET);
    ip[IPV4_TTL_OFFSET] = ttl - 1;
    let new_word = read_u16(ip, IPV4_TTL_OFFSET);
    let csum = read_u16(ip, IPV4_CHECKSUM_OFFSET);
    write_u16(
        ip,
        IPV4_CHECKSUM_OFFSET,
        checksum::update_u16(csum, old_word, new_word),
    );
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

#[inline]
fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

#[inline]
fn write_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
}
