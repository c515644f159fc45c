//! The outer headers: validating what arrives (Ethernet / IPv4 / UDP / Geneve and its
//! options) and writing fresh ones in front of the inner frame for what leaves.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket,
};

use super::frame::Frame;
use super::verdict::DropReason;
use super::Local;
use crate::wire::contract::{
    GENEVE_PROTO_ETHERNET, GENEVE_UDP_PORT, OPTION_CRITICAL_BIT, OUTER_HEADERS_LEN, OUTER_TTL,
};
use crate::wire::geneve::{self, SluiceOption};

const ETHERNET_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// What the outer headers may hold at most: the base headers and two options.
pub(crate) const MAX_OPTIONS: usize = 2;

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
    let eth = EthernetFrame::new_checked(data).map_err(|_| DropReason::OuterEthernetTruncated)?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(DropReason::OuterNotIpv4);
    }
    let src_mac = eth.src_addr().0;
    let ip_bytes = &data[ETHERNET_LEN..];
    let ip = Ipv4Packet::new_checked(ip_bytes).map_err(|_| DropReason::OuterIpv4Malformed)?;
    if ip.version() != 4 {
        return Err(DropReason::OuterIpv4Malformed);
    }
    if !ip.verify_checksum() {
        return Err(DropReason::OuterIpv4Checksum);
    }
    if ip.dst_addr() != local.ip {
        return Err(DropReason::NotForUs);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::OuterFragment);
    }
    if ip.next_header() != IpProtocol::Udp {
        return Err(DropReason::OuterNotUdp);
    }
    let ip_header_len = usize::from(ip.header_len());
    let ip_payload = &ip_bytes[ip_header_len..usize::from(ip.total_len())];
    let udp = UdpPacket::new_checked(ip_payload).map_err(|_| DropReason::OuterUdpMalformed)?;
    if udp.dst_port() != GENEVE_UDP_PORT {
        return Err(DropReason::NotGeneve);
    }
    let geneve_bytes = &ip_payload[UDP_LEN..usize::from(udp.len())];
    let header =
        geneve::Header::new_checked(geneve_bytes).map_err(|_| DropReason::GeneveMalformed)?;
    if header.oam() {
        return Err(DropReason::GeneveOam);
    }
    if header.protocol() != GENEVE_PROTO_ETHERNET {
        return Err(DropReason::GeneveNotEthernet);
    }
    let mut outer = Outer {
        vni: header.vni(),
        src_ip: u32::from(ip.src_addr()),
        src_mac,
        udp_src_port: udp.src_port(),
        inner_off: ETHERNET_LEN + ip_header_len + UDP_LEN + header.header_len(),
        inner_len: geneve_bytes.len() - header.header_len(),
        host_hint: None,
        service_orig: None,
        stale: false,
    };
    for raw in geneve::Options::new(header.options()) {
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
    Ok(outer)
}

/// Where a frame goes next on the underlay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Encap {
    pub dst_ip: u32,
    pub dst_mac: [u8; 6],
    pub vni: u32,
    pub udp_src_port: u16,
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
    let options_len: usize = options.iter().map(|o| o.wire_len()).sum();
    let outer_len = OUTER_HEADERS_LEN + options_len;
    let start = inner_start
        .checked_sub(outer_len)
        .ok_or(DropReason::NoHeadroom)?;
    let ip_total = outer_len - ETHERNET_LEN + inner_len;
    let ip_total = u16::try_from(ip_total).map_err(|_| DropReason::NoHeadroom)?;
    let out = &mut frame.buf_mut()[start..inner_start];

    let mut eth = EthernetFrame::new_unchecked(&mut out[..ETHERNET_LEN]);
    eth.set_dst_addr(EthernetAddress(to.dst_mac));
    eth.set_src_addr(EthernetAddress(local.mac.0));
    eth.set_ethertype(EthernetProtocol::Ipv4);

    let mut ip = Ipv4Packet::new_unchecked(&mut out[ETHERNET_LEN..ETHERNET_LEN + IPV4_LEN]);
    ip.set_version(4);
    ip.set_header_len(IPV4_LEN as u8);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(ip_total);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_dont_frag(true);
    ip.set_frag_offset(0);
    ip.set_hop_limit(OUTER_TTL);
    ip.set_next_header(IpProtocol::Udp);
    ip.set_src_addr(local.ip);
    ip.set_dst_addr(Ipv4Addr::from(to.dst_ip));
    ip.fill_checksum();

    let udp_off = ETHERNET_LEN + IPV4_LEN;
    let mut udp = UdpPacket::new_unchecked(&mut out[udp_off..udp_off + UDP_LEN]);
    udp.set_src_port(to.udp_src_port);
    udp.set_dst_port(GENEVE_UDP_PORT);
    udp.set_len(ip_total - IPV4_LEN as u16);
    udp.set_checksum(0);

    let repr = geneve::Repr {
        oam: false,
        critical: false,
        protocol: GENEVE_PROTO_ETHERNET,
        vni: to.vni,
    };
    repr.emit_with_options(&mut out[udp_off + UDP_LEN..], options)
        .map_err(|_| DropReason::NoHeadroom)?;
    frame.set_bounds(start, outer_len + inner_len);
    Ok(())
}
