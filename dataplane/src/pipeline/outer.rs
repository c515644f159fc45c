//! The outer headers: validating what arrives (Ethernet / IPv4 / UDP / Geneve and its
//! options) and writing fresh ones in front of the inner frame for what leaves.
//!
//! This is the hottest code of the gateway, so it reads fields at named offsets after
//! one length check per layer instead of building a view per layer; the offsets are the
//! `wire` modules' constants, whose golden tests pin them against scapy's bytes.

use super::bytes::{read_u16, read_u32, IPPROTO_UDP, IPV4_FRAGMENT_MASK};
use super::frame::Frame;
use super::verdict::DropReason;
use super::Local;
use crate::wire::contract::{
    GENEVE_PROTO_ETHERNET, GENEVE_UDP_PORT, OPTION_CRITICAL_BIT, OPT_HOST_HINT, OPT_SERVICE_ORIG,
    OUTER_HEADERS_LEN, OUTER_TTL, SLUICE_OPTION_CLASS,
};
use crate::wire::geneve::{self, SluiceOption};
use crate::wire::{checksum, ethernet, ipv4, udp};

/// What the outer headers hold at most: two options (HOST_HINT and SERVICE_ORIG).
pub(crate) const MAX_OPTIONS: usize = 2;
const IPV4_FLAGS_DF: u16 = ipv4::FLAG_DF;
const GENEVE_VERSION_SHIFT: u8 = 6;
const GENEVE_OPT_LEN_MASK: u8 = 0x3f;
const GENEVE_OAM_BIT: u8 = 0x80;
const GENEVE_VNI_OFFSET: usize = 4;
const GENEVE_PROTOCOL_OFFSET: usize = 2;

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
    if read_u16(data, ethernet::ETHERTYPE_OFFSET) != ethernet::ETHERTYPE_IPV4 {
        return Err(DropReason::OuterNotIpv4);
    }
    if ip.len() < ipv4::MIN_HEADER_LEN || ip[ipv4::VER_IHL_OFFSET] >> 4 != ipv4::VERSION {
        return Err(DropReason::OuterIpv4Malformed);
    }
    let ip_header_len = usize::from(ip[ipv4::VER_IHL_OFFSET] & 0x0f) * 4;
    let ip_total_len = usize::from(read_u16(ip, ipv4::TOTAL_LEN_OFFSET));
    if ip_header_len < ipv4::MIN_HEADER_LEN
        || ip_total_len < ip_header_len
        || ip_total_len > ip.len()
    {
        return Err(DropReason::OuterIpv4Malformed);
    }
    // A header whose sum (checksum field included) is all ones is intact.
    if checksum::data(&ip[..ip_header_len]) != 0xffff {
        return Err(DropReason::OuterIpv4Checksum);
    }
    if read_u32(ip, ipv4::DST_ADDR_OFFSET) != local.ip_bits() {
        return Err(DropReason::NotForUs);
    }
    if read_u16(ip, ipv4::FLAGS_FRAG_OFFSET) & IPV4_FRAGMENT_MASK != 0 {
        return Err(DropReason::OuterFragment);
    }
    if ip[ipv4::PROTOCOL_OFFSET] != IPPROTO_UDP {
        return Err(DropReason::OuterNotUdp);
    }
    let udp_bytes = &ip[ip_header_len..ip_total_len];
    if udp_bytes.len() < udp::HEADER_LEN {
        return Err(DropReason::OuterUdpMalformed);
    }
    let udp_len = usize::from(read_u16(udp_bytes, udp::LENGTH_OFFSET));
    if udp_len < udp::HEADER_LEN || udp_len > udp_bytes.len() {
        return Err(DropReason::OuterUdpMalformed);
    }
    if read_u16(udp_bytes, udp::DST_PORT_OFFSET) != GENEVE_UDP_PORT {
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
    if read_u16(gen, GENEVE_PROTOCOL_OFFSET) != GENEVE_PROTO_ETHERNET {
        return Err(DropReason::GeneveNotEthernet);
    }
    let mut outer = Outer {
        vni: read_u32(gen, GENEVE_VNI_OFFSET) >> 8,
        src_ip: read_u32(ip, ipv4::SRC_ADDR_OFFSET),
        src_mac: [data[6], data[7], data[8], data[9], data[10], data[11]],
        udp_src_port: read_u16(udp_bytes, udp::SRC_PORT_OFFSET),
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

/// Offsets of the fields that differ between packets in the outer headers.
mod at {
    use crate::wire::{ethernet, ipv4, udp};
    const IP: usize = ethernet::HEADER_LEN;
    const UDP: usize = IP + ipv4::MIN_HEADER_LEN;
    pub const GENEVE: usize = UDP + udp::HEADER_LEN;
    pub const DST_MAC: usize = ethernet::DST_ADDR_OFFSET;
    pub const IP_TOTAL_LEN: usize = IP + ipv4::TOTAL_LEN_OFFSET;
    pub const IP_CHECKSUM: usize = IP + ipv4::CHECKSUM_OFFSET;
    pub const IP_DST: usize = IP + ipv4::DST_ADDR_OFFSET;
    pub const UDP_SRC_PORT: usize = UDP + udp::SRC_PORT_OFFSET;
    pub const UDP_LEN: usize = UDP + udp::LENGTH_OFFSET;
    pub const GENEVE_OPT_LEN: usize = GENEVE;
    pub const GENEVE_VNI: usize = GENEVE + 4;
}

/// The outer headers a gateway writes, with every field that is the same for all its
/// packets filled in: its MAC and address, IPv4 version, DF, TTL and protocol, UDP
/// destination port 6081 and checksum 0, Geneve version and protocol. `encap` copies it
/// and patches the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OuterTemplate {
    bytes: [u8; OUTER_HEADERS_LEN],
    /// Ones'-complement sum of the template's IPv4 header words.
    ip_sum: u32,
}

impl OuterTemplate {
    pub(crate) const fn new(ip: [u8; 4], mac: [u8; 6]) -> Self {
        let mut b = [0u8; OUTER_HEADERS_LEN];
        let [m0, m1, m2, m3, m4, m5] = mac;
        let (e0, e1) = (
            (ethernet::ETHERTYPE_IPV4 >> 8) as u8,
            ethernet::ETHERTYPE_IPV4 as u8,
        );
        let (p0, p1) = ((GENEVE_UDP_PORT >> 8) as u8, GENEVE_UDP_PORT as u8);
        let (g0, g1) = (
            (GENEVE_PROTO_ETHERNET >> 8) as u8,
            GENEVE_PROTO_ETHERNET as u8,
        );
        let [a, bb, c, d] = ip;
        let fixed: [u8; OUTER_HEADERS_LEN] = [
            0,
            0,
            0,
            0,
            0,
            0,
            m0,
            m1,
            m2,
            m3,
            m4,
            m5,
            e0,
            e1, // Ethernet
            0x45,
            0,
            0,
            0,
            0,
            0,
            (IPV4_FLAGS_DF >> 8) as u8,
            0,
            OUTER_TTL,
            IPPROTO_UDP,
            0,
            0,
            a,
            bb,
            c,
            d,
            0,
            0,
            0,
            0, // IPv4
            0,
            0,
            p0,
            p1,
            0,
            0,
            0,
            0, // UDP, checksum 0
            0,
            0,
            g0,
            g1,
            0,
            0,
            0,
            0, // Geneve
        ];
        let mut i = 0;
        while i < OUTER_HEADERS_LEN {
            b[i] = fixed[i];
            i += 1;
        }
        let mut ip_sum = 0u32;
        let mut w = ethernet::HEADER_LEN;
        while w < ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN {
            ip_sum += ((b[w] as u32) << 8) | b[w + 1] as u32;
            w += 2;
        }
        Self { bytes: b, ip_sum }
    }
}

/// Writes one option; the two a gateway sends get a fixed-layout fast path.
#[inline(always)]
fn write_option(area: &mut [u8], option: &SluiceOption) -> usize {
    const SERVICE_ORIG_WORDS: u8 = 2;
    const HOST_HINT_WORDS: u8 = 2;
    let [c0, c1] = SLUICE_OPTION_CLASS.to_be_bytes();
    let bytes = match *option {
        SluiceOption::HostHint { endpoint, host } => {
            let ([e0, e1, e2, e3], [h0, h1, h2, h3]) = (endpoint.octets(), host.octets());
            [
                c0,
                c1,
                OPT_HOST_HINT,
                HOST_HINT_WORDS,
                e0,
                e1,
                e2,
                e3,
                h0,
                h1,
                h2,
                h3,
            ]
        }
        SluiceOption::ServiceOrig {
            vip,
            port,
            protocol,
        } => {
            let ([v0, v1, v2, v3], [p0, p1]) = (vip.octets(), port.to_be_bytes());
            [
                c0,
                c1,
                OPT_SERVICE_ORIG,
                SERVICE_ORIG_WORDS,
                v0,
                v1,
                v2,
                v3,
                p0,
                p1,
                protocol,
                0,
            ]
        }
        other => return other.emit(area),
    };
    match area.get_mut(..bytes.len()) {
        Some(out) => {
            out.copy_from_slice(&bytes);
            bytes.len()
        }
        None => 0,
    }
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
    options: [Option<SluiceOption>; MAX_OPTIONS],
) -> Result<(), DropReason> {
    let [first, second] = options;
    let options_len = first.map_or(0, |o| o.wire_len()) + second.map_or(0, |o| o.wire_len());
    let outer_len = OUTER_HEADERS_LEN + options_len;
    let start = inner_start
        .checked_sub(outer_len)
        .ok_or(DropReason::NoHeadroom)?;
    let ip_total = outer_len - ethernet::HEADER_LEN + inner_len;
    let ip_total = u16::try_from(ip_total).map_err(|_| DropReason::NoHeadroom)?;
    let (base, option_area) = frame.buf_mut()[start..inner_start].split_at_mut(OUTER_HEADERS_LEN);
    let Ok(out) = <&mut [u8; OUTER_HEADERS_LEN]>::try_from(base) else {
        return Err(DropReason::NoHeadroom);
    };
    let template = &local.template;
    *out = template.bytes;

    out[at::DST_MAC..at::DST_MAC + 6].copy_from_slice(&to.dst_mac);
    out[at::IP_TOTAL_LEN..at::IP_TOTAL_LEN + 2].copy_from_slice(&ip_total.to_be_bytes());
    out[at::IP_DST..at::IP_DST + 4].copy_from_slice(&to.dst_ip.to_be_bytes());
    let sum = template.ip_sum + u32::from(ip_total) + (to.dst_ip >> 16) + (to.dst_ip & 0xffff);
    let sum = (sum & 0xffff) + (sum >> 16);
    let ip_checksum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    out[at::IP_CHECKSUM..at::IP_CHECKSUM + 2].copy_from_slice(&ip_checksum.to_be_bytes());
    out[at::UDP_SRC_PORT..at::UDP_SRC_PORT + 2].copy_from_slice(&to.udp_src_port.to_be_bytes());
    let udp_len = ip_total - ipv4::MIN_HEADER_LEN as u16;
    out[at::UDP_LEN..at::UDP_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
    out[at::GENEVE_OPT_LEN] = (options_len / 4) as u8;
    out[at::GENEVE_VNI..at::GENEVE_VNI + 3].copy_from_slice(&to.vni.to_be_bytes()[1..]);

    let mut written = 0;
    if let Some(option) = first {
        written = write_option(option_area, &option);
    }
    if let Some(option) = second {
        write_option(&mut option_area[written..], &option);
    }
    frame.set_bounds(start, outer_len + inner_len);
    Ok(())
}
