//! UDP: smoltcp's view under short names, plus named offsets.
//!
//! What smoltcp 0.14's `Packet::new_checked` validates: buffer >= 8 bytes and
//! 8 <= length field <= buffer. It does not check the checksum (0 means none over IPv4),
//! and it allows bytes after the datagram: `payload()` ends at the length field, so build
//! the view over the IPv4 payload. smoltcp's `Repr::parse` additionally rejects
//! destination port 0; the view does not. For checksums use
//! [`crate::wire::checksum::udp_ipv4`] and the `update_udp_*` functions, which keep the
//! "0 means no checksum" rule that the plain updates would break.

pub use smoltcp::wire::{UdpPacket as Packet, UdpRepr as Repr};

use crate::wire::{malformed, Error, Layer};

/// Offset of the source port.
pub const SRC_PORT_OFFSET: usize = 0;
/// Offset of the destination port.
pub const DST_PORT_OFFSET: usize = 2;
/// Offset of the length (header plus payload).
pub const LENGTH_OFFSET: usize = 4;
/// Offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 6;
/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// `Packet::new_checked` with this crate's error.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Packet<T>, Error> {
    Packet::new_checked(buffer).map_err(malformed(Layer::Udp))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ipv4::tests::{emit_eth_ipv4, Fields};
    use crate::wire::{checksum, ethernet, ipv4};
    use std::net::Ipv4Addr;

    const UDP_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_udp.bin");
    const OPTIONS_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_options_udp.bin");
    const POD_A_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a];
    const POD_B_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x14];
    const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
    const PAYLOAD: &[u8] = b"sluice udp payload!";

    /// Write a UDP datagram with its checksum into the zeroed `buf`. Shared with the
    /// Geneve tests.
    pub(crate) fn emit_udp(
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) {
        let len = HEADER_LEN + payload.len();
        let mut u = Packet::new_unchecked(&mut buf[..len]);
        u.set_src_port(sport);
        u.set_dst_port(dport);
        u.set_len(len as u16);
        u.payload_mut().copy_from_slice(payload);
        let csum = checksum::udp_ipv4(src, dst, u.as_ref());
        u.set_checksum(csum);
    }

    fn ip_payload(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, &[u8]) {
        let ip = ipv4::checked(&frame[ethernet::HEADER_LEN..]).unwrap();
        (ip.src_addr(), ip.dst_addr(), ip.payload())
    }

    #[test]
    fn parse_fixture() {
        let (src, dst, datagram) = ip_payload(UDP_FRAME);
        let u = checked(datagram).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (40000, 5353));
        assert_eq!(usize::from(u.len()), HEADER_LEN + PAYLOAD.len());
        assert_eq!(u.checksum(), 0xf692);
        assert_eq!(u.payload(), PAYLOAD);
        assert_eq!(checksum::udp_ipv4(src, dst, datagram), u.checksum());
        assert!(u.verify_checksum(&src.into(), &dst.into()));
        assert_eq!(
            &datagram[CHECKSUM_OFFSET..HEADER_LEN],
            0xf692u16.to_be_bytes()
        );

        // Behind an IPv4 header with options, found through IHL.
        let (src, dst, datagram) = ip_payload(OPTIONS_FRAME);
        let u = checked(datagram).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.payload()),
            (40001, 7, &b"opts"[..])
        );
        assert_eq!(checksum::udp_ipv4(src, dst, datagram), u.checksum());
    }

    #[test]
    fn emit_matches_fixture() {
        let mut buf = vec![0u8; UDP_FRAME.len()];
        let fields = Fields {
            ident: 0x1234,
            dont_frag: true,
            ttl: 64,
            protocol: ipv4::Protocol::Udp,
            src: POD_A_IP,
            dst: POD_B_IP,
            options: &[],
        };
        let l4 = emit_eth_ipv4(
            &mut buf,
            POD_A_MAC,
            POD_B_MAC,
            fields,
            HEADER_LEN + PAYLOAD.len(),
        );
        emit_udp(&mut buf[l4..], POD_A_IP, POD_B_IP, 40000, 5353, PAYLOAD);
        assert_eq!(buf, UDP_FRAME);
    }

    /// Service DNAT of the fixture, incrementally: destination address and port.
    #[test]
    fn incremental_dnat_matches_full_checksum() {
        let (src, dst, datagram) = ip_payload(UDP_FRAME);
        let mut d = datagram.to_vec();
        let new_dst = Ipv4Addr::new(10, 0, 2, 20);
        let mut u = checked(&mut d[..]).unwrap();
        let csum = checksum::update_udp_u32(u.checksum(), dst.to_bits(), new_dst.to_bits());
        let csum = checksum::update_udp_u16(csum, u.dst_port(), 53);
        u.set_dst_port(53);
        u.set_checksum(csum);
        assert_eq!(checksum::udp_ipv4(src, new_dst, &d), csum);
    }

    #[test]
    fn malformed_is_an_error() {
        let (_, _, datagram) = ip_payload(UDP_FRAME);
        for len in 0..datagram.len() {
            assert_eq!(
                checked(&datagram[..len]).unwrap_err(),
                Error::Malformed(Layer::Udp),
                "{len}"
            );
        }
        let mut bad = datagram.to_vec();
        bad[LENGTH_OFFSET..CHECKSUM_OFFSET].copy_from_slice(&7u16.to_be_bytes());
        assert!(checked(&bad[..]).is_err(), "length below the header");
    }
}
