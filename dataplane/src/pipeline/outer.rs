//! The outer headers: validating what arrives (Ethernet / IPv4 / UDP / Geneve and its
//! options) and writing fresh ones in front of the inner frame for what leaves.
//!
//! This is the hottest code of the gateway, so it reads fields at named offsets after
//! one length check per layer instead of building a view per layer; the offsets are the
//! `wire` modules' constants, whose golden tests pin them against scapy's bytes.

use super::frame::Frame;
use super::verdict::DropReason;
use super::Local;
use crate::wire::contract::{
    GENEVE_PROTO_ETHERNET, GENEVE_UDP_PORT, OPTION_CRITICAL_BIT, OUTER_HEADERS_LEN, OUTER_TTL,
};
use crate::wire::geneve::{self, SluiceOption};
use crate::wire::{checksum, ethernet, ipv4, udp};

/// What the outer headers hold at most: two options (HOST_HINT and SERVICE_ORIG).
pub(crate) const MAX_OPTIONS: usize = 2;
const IPV4_FLAGS_DF: u16 = ipv4::FLAG_DF;
/// More-fragments flag and fragment offset: either set means a fragment.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
const IPPROTO_UDP: u8 = 17;
const GENEVE_VERSION_SHIFT: u8 = 6;
const GENEVE_OPT_LEN_MASK: u8 = 0x3f;
const GENEVE_OAM_BIT: u8 = 0x80;
const GENEVE_VNI_OFFSET: usize = 4;
const GENEVE_PROTOCOL_OFFSET: usize = 2;

#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// What the pipeline needs from a validated outer header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outer {
    pub vni: u32,
    pub src_ip: u32,
    pub src_mac: [u8; 6],
    pub udp_src_port: u16,
    /// Offset of the inner Ethernet frame from the start of the packet.
    pub inner_off: usize,
    pub inner_len: usize,
    pub host_hint: Option<SluiceOption>,
    pub service_orig: Option<SluiceOption>,
    pub stale: bool,
}

/// Validates the outer headers of a frame addressed to `local`.
#[inline]
pub(crate) fn parse(data: &[u8], local: &Local) -> Result<Outer, DropReason> {
    let Some(ip) = data.get(ethernet::HEADER_LEN..) else {
        return Err(DropReason::OuterEthernetTruncated);
    };
    if be16(data, ethernet::ETHERTYPE_OFFSET) != ethernet::ETHERTYPE_IPV4 {
        return Err(DropReason::OuterNotIpv4);
    }
    if ip.len() < ipv4::MIN_HEADER_LEN || ip[ipv4::VER_IHL_OFFSET] >> 4 != ipv4::VERSION {
        return Err(DropReason::OuterIpv4Malformed);
    }
    let ip_header_len = usize::from(ip[ipv4::VER_IHL_OFFSET] & 0x0f) * 4;
    let ip_total_len = usize::from(be16(ip, ipv4::TOTAL_LEN_OFFSET));
    if ip_header_len < ipv4::MIN_HEADER_LEN || ip_total_len < ip_header_len || ip_total_len > ip.len() {
        return Err(DropReason::OuterIpv4Malformed);
    }
    // A header whose sum (checksum field included) is all ones is intact.
    if checksum::data(&ip[..ip_header_len]) != 0xffff {
        return Err(DropReason::OuterIpv4Checksum);
    }
    if be32(ip, ipv4::DST_ADDR_OFFSET) != local.ip_bits() {
        return Err(DropReason::NotForUs);
    }
    if be16(ip, ipv4::FLAGS_FRAG_OFFSET) & IPV4_FRAGMENT_MASK != 0 {
        return Err(DropReason::OuterFragment);
    }
    if ip[ipv4::PROTOCOL_OFFSET] != IPPROTO_UDP {
        return Err(DropReason::OuterNotUdp);
    }
    let udp_bytes = &ip[ip_header_len..ip_total_len];
    if udp_bytes.len() < udp::HEADER_LEN {
        return Err(DropReason::OuterUdpMalformed);
    }
    let udp_len = usize::from(be16(udp_bytes, udp::LENGTH_OFFSET));
    if udp_len < udp::HEADER_LEN || udp_len > udp_bytes.len() {
        return Err(DropReason::OuterUdpMalformed);
    }
    if be16(udp_bytes, udp::DST_PORT_OFFSET) != GENEVE_UDP_PORT {
        return Err(DropReason::NotGeneve);
    }
    let gen = &udp_bytes[udp::HEADER_LEN..udp_len];
    if gen.len() < geneve::HEADER_LEN || gen[0] >> GENEVE_VERSION_SHIFT != geneve::VERSION {
        return Err(DropReason::GeneveMalformed);
    }
    let gen_header_len = geneve::HEADER_LEN + usize::from(gen[0] & GENEVE_OPT_LEN_MASK) * 4;
    if gen_header_len > gen.len() {
        return Err(DropReason::GeneveMalformed);
    }
    if gen[1] & GENEVE_OAM_BIT != 0 {
        return Err(DropReason::GeneveOam);
    }
    if be16(gen, GENEVE_PROTOCOL_OFFSET) != GENEVE_PROTO_ETHERNET {
        return Err(DropReason::GeneveNotEthernet);
    }
    let mut outer = Outer {
        vni: be32(gen, GENEVE_VNI_OFFSET) >> 8,
        src_ip: be32(ip, ipv4::SRC_ADDR_OFFSET),
        src_mac: [data[6], data[7], data[8], data[9], data[10], data[11]],
        udp_src_port: be16(udp_bytes, udp::SRC_PORT_OFFSET),
        inner_off: ethernet::HEADER_LEN + ip_header_len + udp::HEADER_LEN + gen_header_len,
        inner_len: gen.len() - gen_header_len,
        host_hint: None,
        service_orig: None,
        stale: false,
    };
    if gen_header_len > geneve::HEADER_LEN {
        parse_options(&gen[geneve::HEADER_LEN..gen_header_len], &mut outer)?;
    }
    Ok(outer)
}

fn parse_options(area: &[u8], outer: &mut Outer) -> Result<(), DropReason> {
    for raw in geneve::Options::new(area) {
        let raw = raw.map_err(|_| DropReason::GeneveMalformed)?;
        match SluiceOption::parse(&raw).map_err(|_| DropReason::BadOption)? {
            Some(opt @ SluiceOption::HostHint { .. }) => outer.host_hint = Some(opt),
            Some(opt @ SluiceOption::ServiceOrig { .. }) => outer.service_orig = Some(opt),
            Some(SluiceOption::Stale { .. }) => outer.stale = true,
            Some(SluiceOption::Direct) => {}
            None if raw.kind & OPTION_CRITICAL_BIT != 0 => {
                return Err(DropReason::UnknownCriticalOption)
            }
            None => {}
        }
    }
    Ok(())
}

/// Where a frame goes next on the underlay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Encap {
    pub dst_ip: u32,
    pub dst_mac: [u8; 6],
    pub vni: u32,
    pub udp_src_port: u16,
}

/// The ones'-complement sum of the outer IPv4 header's fields that never change for a
/// given gateway address (version/IHL, DF, TTL/protocol, source address).
pub(crate) const fn outer_ip_fixed_sum(local_ip: u32) -> u32 {
    0x4500 + IPV4_FLAGS_DF as u32 + (((OUTER_TTL as u32) << 8) | IPPROTO_UDP as u32) + (local_ip >> 16) + (local_ip & 0xffff)
}

/// Writes fresh outer headers (and `options`) in front of the inner frame at
/// `buf[inner_start..inner_start + inner_len]` and makes the result the packet.
#[inline]
pub(crate) fn encap(
    frame: &mut Frame<'_>,
    local: &Local,
    inner_start: usize,
    inner_len: usize,
    to: &Encap,
    options: &[SluiceOption],
) -> Result<(), DropReason> {
    let options_len: usize = options.iter().map(SluiceOption::wire_len).sum();
    let outer_len = OUTER_HEADERS_LEN + options_len;
    let start = inner_start.checked_sub(outer_len).ok_or(DropReason::NoHeadroom)?;
    let ip_total = outer_len - ethernet::HEADER_LEN + inner_len;
    let ip_total = u16::try_from(ip_total).map_err(|_| DropReason::NoHeadroom)?;
    let out = &mut frame.buf_mut()[start..inner_start];
    let (eth, rest) = out.split_at_mut(ethernet::HEADER_LEN);
    let (ip, rest) = rest.split_at_mut(ipv4::MIN_HEADER_LEN);
    let (udp_bytes, gen) = rest.split_at_mut(udp::HEADER_LEN);

    eth[..6].copy_from_slice(&to.dst_mac);
    eth[6..12].copy_from_slice(&local.mac.0);
    eth[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());

    let sum = local.outer_ip_sum + u32::from(ip_total) + (to.dst_ip >> 16) + (to.dst_ip & 0xffff);
    let sum = (sum & 0xffff) + (sum >> 16);
    let ip_checksum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    let total = ip_total.to_be_bytes();
    let csum = ip_checksum.to_be_bytes();
    let src = local.ip.octets();
    let dst = to.dst_ip.to_be_bytes();
    ip.copy_from_slice(&[
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, OUTER_TTL, IPPROTO_UDP, csum[0], csum[1], src[0],
        src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ]);

    let sport = to.udp_src_port.to_be_bytes();
    let dport = GENEVE_UDP_PORT.to_be_bytes();
    let udp_len = (ip_total - ipv4::MIN_HEADER_LEN as u16).to_be_bytes();
    udp_bytes.copy_from_slice(&[sport[0], sport[1], dport[0], dport[1], udp_len[0], udp_len[1], 0, 0]);

    let proto = GENEVE_PROTO_ETHERNET.to_be_bytes();
    let vni = (to.vni << 8).to_be_bytes();
    gen[..geneve::HEADER_LEN].copy_from_slice(&[
        (options_len / 4) as u8,
        0,
        proto[0],
        proto[1],
        vni[0],
        vni[1],
        vni[2],
        0,
    ]);
    let mut at = geneve::HEADER_LEN;
    for option in options {
        at += option.emit(&mut gen[at..]);
    }
    frame.set_bounds(start, outer_len + inner_len);
    Ok(())
}
