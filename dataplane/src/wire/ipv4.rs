//! IPv4: smoltcp's view under short names, named offsets, and what smoltcp lacks: a
//! version check, access to the options, and an in-place TTL decrement.
//!
//! The header length always comes from IHL (`Packet::header_len()`, options allowed);
//! never assume 20 bytes. Only headers Sluice itself builds (the outer header) have none.
//!
//! What smoltcp 0.14's `Packet::new_checked` validates: buffer >= 20 bytes, buffer >= IHL
//! * 4, IHL * 4 <= total length <= buffer, and IHL >= 5. What it does **not** check:
//! * the version nibble ([`checked`] adds that);
//! * the header checksum (`verify_checksum()` or [`crate::wire::checksum::ipv4_header`]);
//! * fragmentation: MF and the fragment offset are not looked at (smoltcp's `Repr::parse`
//!   rejects fragments, the view does not);
//! * that total length equals the buffer: trailing bytes (Ethernet padding) are allowed,
//!   so always take the payload from `payload()`, which ends at the total length.
//!
//! Note also that smoltcp's `Repr::emit` always writes IHL 5, DF set, identification 0
//! and DSCP/ECN 0, which is exactly Sluice's outer header and nothing else.

pub use smoltcp::wire::{
    IpProtocol as Protocol, Ipv4Address as Address, Ipv4Cidr as Cidr, Ipv4Packet as Packet,
    Ipv4Repr as Repr,
};

use crate::wire::checksum;
use crate::wire::{malformed, Error, Layer};

/// Offset of the version and IHL byte.
pub const VER_IHL_OFFSET: usize = 0;
/// Offset of DSCP and ECN.
pub const DSCP_ECN_OFFSET: usize = 1;
/// Offset of the total length.
pub const TOTAL_LEN_OFFSET: usize = 2;
/// Offset of the identification.
pub const IDENT_OFFSET: usize = 4;
/// Offset of the flags and fragment offset.
pub const FLAGS_FRAG_OFFSET: usize = 6;
/// Offset of the TTL; TTL and protocol form one 16-bit checksum word.
pub const TTL_OFFSET: usize = 8;
/// Offset of the protocol.
pub const PROTOCOL_OFFSET: usize = 9;
/// Offset of the header checksum.
pub const CHECKSUM_OFFSET: usize = 10;
/// Offset of the source address.
pub const SRC_ADDR_OFFSET: usize = 12;
/// Offset of the destination address.
pub const DST_ADDR_OFFSET: usize = 16;
/// Offset of the options, if IHL > 5.
pub const OPTIONS_OFFSET: usize = 20;
/// Length of a header without options (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;
/// Length of a header with the most options (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;
/// The version field of IPv4.
pub const VERSION: u8 = 4;
/// Don't Fragment, in the flags and fragment offset word.
pub const FLAG_DF: u16 = 0x4000;

/// `Packet::new_checked`, plus: the version is 4.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Packet<T>, Error> {
    let packet = Packet::new_checked(buffer).map_err(malformed(Layer::Ipv4))?;
    match packet.version() {
        VERSION => Ok(packet),
        other => Err(Error::Ipv4Version(other)),
    }
}

/// The whole header, options included (IHL * 4 bytes). Empty if the buffer is shorter,
/// which a checked packet never is.
#[inline]
pub fn header<T: AsRef<[u8]>>(packet: &Packet<T>) -> &[u8] {
    packet
        .as_ref()
        .get(..usize::from(packet.header_len()))
        .unwrap_or(&[])
}

/// The options between the fixed header and the payload (IHL * 4 - 20 bytes).
#[inline]
pub fn options<T: AsRef<[u8]>>(packet: &Packet<T>) -> &[u8] {
    header(packet).get(OPTIONS_OFFSET..).unwrap_or(&[])
}

/// Decrement the TTL and update the header checksum incrementally (RFC 1624). Returns the
/// new TTL, or `None`, changing nothing, if the TTL was already 0 or 1 and the packet must
/// not be forwarded.
#[inline]
pub fn decrement_ttl<T: AsRef<[u8]> + AsMut<[u8]>>(packet: &mut Packet<T>) -> Option<u8> {
    let ttl = packet.hop_limit();
    if ttl <= 1 {
        return None;
    }
    let protocol = u8::from(packet.next_header());
    let old = u16::from_be_bytes([ttl, protocol]);
    let new = u16::from_be_bytes([ttl - 1, protocol]);
    packet.set_hop_limit(ttl - 1);
    packet.set_checksum(checksum::update_u16(packet.checksum(), old, new));
    Some(ttl - 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ethernet;

    const UDP_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_udp.bin");
    const OPTIONS_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_options_udp.bin");
    const POD_A_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a];
    const ROUTER_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x01];
    const POD_A_IP: Address = Address::new(10, 0, 1, 10);
    const POD_B_IP: Address = Address::new(10, 0, 1, 20);
    const POD_C_IP: Address = Address::new(10, 0, 2, 20);
    /// Record Route, length 7, pointer 4, one slot holding 10.0.1.1, then End of List.
    const RR_OPTION: [u8; 8] = [0x07, 0x07, 0x04, 10, 0, 1, 1, 0x00];

    /// IPv4 header fields the fixtures vary.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Fields<'a> {
        pub ident: u16,
        pub dont_frag: bool,
        pub ttl: u8,
        pub protocol: Protocol,
        pub src: Address,
        pub dst: Address,
        pub options: &'a [u8],
    }

    /// Write an Ethernet header and an IPv4 header (with our checksum) for an L4 payload
    /// of `l4_len` bytes into the zeroed `buf`; return the L4 offset. Shared by the other
    /// wire files' emit tests.
    pub(crate) fn emit_eth_ipv4(
        buf: &mut [u8],
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        ip: Fields<'_>,
        l4_len: usize,
    ) -> usize {
        ethernet::Repr {
            src_addr: ethernet::Address(src_mac),
            dst_addr: ethernet::Address(dst_mac),
            ethertype: ethernet::EtherType::Ipv4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut buf[..]));
        let header_len = MIN_HEADER_LEN + ip.options.len();
        let at = ethernet::HEADER_LEN;
        buf[at + OPTIONS_OFFSET..at + header_len].copy_from_slice(ip.options);
        let mut p = Packet::new_unchecked(&mut buf[at..]);
        p.set_version(VERSION);
        p.set_header_len(header_len as u8);
        p.set_total_len((header_len + l4_len) as u16);
        p.set_ident(ip.ident);
        p.set_dont_frag(ip.dont_frag);
        p.set_hop_limit(ip.ttl);
        p.set_next_header(ip.protocol);
        p.set_src_addr(ip.src);
        p.set_dst_addr(ip.dst);
        let csum = checksum::ipv4_header(header(&p));
        p.set_checksum(csum);
        at + header_len
    }

    #[test]
    fn parse_plain_header() {
        let p = checked(&UDP_FRAME[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert!(options(&p).is_empty());
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 47);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), Protocol::Udp);
        assert_eq!(p.checksum(), 0x126d);
        assert!(p.verify_checksum());
        assert_eq!(checksum::ipv4_header(header(&p)), p.checksum());
        assert_eq!((p.src_addr(), p.dst_addr()), (POD_A_IP, POD_B_IP));
        assert_eq!(p.payload().len(), 27);
        let raw = &UDP_FRAME[ethernet::HEADER_LEN..];
        assert_eq!(&raw[SRC_ADDR_OFFSET..DST_ADDR_OFFSET], POD_A_IP.octets());
        assert_eq!(
            u16::from_be_bytes([raw[FLAGS_FRAG_OFFSET], raw[FLAGS_FRAG_OFFSET + 1]]),
            FLAG_DF
        );
    }

    #[test]
    fn parse_header_with_options() {
        let p = checked(&OPTIONS_FRAME[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(p.header_len(), 28, "IHL 7");
        assert_eq!(options(&p), RR_OPTION);
        assert_eq!(p.total_len(), 40);
        assert_eq!(
            (p.ident(), p.hop_limit(), p.dont_frag()),
            (0x0101, 63, false)
        );
        assert_eq!((p.src_addr(), p.dst_addr()), (POD_A_IP, POD_C_IP));
        assert!(p.verify_checksum());
        assert_eq!(checksum::ipv4_header(header(&p)), p.checksum());
        // The payload starts after the options: it is the UDP header (port 40001).
        assert_eq!(p.payload().len(), 12);
        assert_eq!(p.payload()[..2], 40001u16.to_be_bytes());
    }

    #[test]
    fn emit_matches_fixtures() {
        let mut buf = vec![0u8; UDP_FRAME.len()];
        let fields = Fields {
            ident: 0x1234,
            dont_frag: true,
            ttl: 64,
            protocol: Protocol::Udp,
            src: POD_A_IP,
            dst: POD_B_IP,
            options: &[],
        };
        let l4 = emit_eth_ipv4(&mut buf, POD_A_MAC, [0x02, 0x5a, 0, 0, 1, 0x14], fields, 27);
        assert_eq!(l4, 34);
        buf[l4..].copy_from_slice(&UDP_FRAME[l4..]);
        assert_eq!(buf, UDP_FRAME);

        let mut buf = vec![0u8; OPTIONS_FRAME.len()];
        let fields = Fields {
            ident: 0x0101,
            dont_frag: false,
            ttl: 63,
            protocol: Protocol::Udp,
            src: POD_A_IP,
            dst: POD_C_IP,
            options: &RR_OPTION,
        };
        let l4 = emit_eth_ipv4(&mut buf, POD_A_MAC, ROUTER_MAC, fields, 12);
        assert_eq!(l4, ethernet::HEADER_LEN + 28);
        buf[l4..].copy_from_slice(&OPTIONS_FRAME[l4..]);
        assert_eq!(buf, OPTIONS_FRAME);
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_right() {
        let mut frame = OPTIONS_FRAME.to_vec();
        let mut p = checked(&mut frame[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(decrement_ttl(&mut p), Some(62));
        assert_eq!(p.hop_limit(), 62);
        assert!(p.verify_checksum());
        assert_eq!(checksum::ipv4_header(header(&p)), p.checksum());
        p.set_hop_limit(1);
        let before = p.checksum();
        assert_eq!(decrement_ttl(&mut p), None);
        assert_eq!((p.hop_limit(), p.checksum()), (1, before));
    }

    #[test]
    fn malformed_is_an_error() {
        for fixture in [UDP_FRAME, OPTIONS_FRAME] {
            let ip = &fixture[ethernet::HEADER_LEN..];
            let total = usize::from(checked(ip).unwrap().total_len());
            for len in 0..total {
                assert_eq!(
                    checked(&ip[..len]).unwrap_err(),
                    Error::Malformed(Layer::Ipv4),
                    "{len}"
                );
            }
            // Trailing bytes (Ethernet padding) are allowed and not part of the payload.
            let mut padded = ip.to_vec();
            padded.extend_from_slice(&[0; 6]);
            assert_eq!(
                checked(&padded[..]).unwrap().payload(),
                checked(ip).unwrap().payload()
            );
        }
        let ip = &OPTIONS_FRAME[ethernet::HEADER_LEN..];
        let with = |offset: usize, value: u8| {
            let mut bad = ip.to_vec();
            bad[offset] = value;
            bad
        };
        assert_eq!(
            checked(&with(VER_IHL_OFFSET, 0x67)[..]).unwrap_err(),
            Error::Ipv4Version(6)
        );
        // IHL 4 (below the minimum) and IHL 15 (past the total length).
        assert!(checked(&with(VER_IHL_OFFSET, 0x44)[..]).is_err());
        assert!(checked(&with(VER_IHL_OFFSET, 0x4f)[..]).is_err());
        // Total length 0x0100, past the buffer.
        assert!(checked(&with(TOTAL_LEN_OFFSET, 0x01)[..]).is_err());
    }
}
