//! Ethernet II frames: smoltcp's view under short names, plus named offsets.
//!
//! What smoltcp 0.14's `Frame::new_checked` validates: only that the buffer holds the
//! 14-byte header. The payload is everything after it, so trailing padding of short frames
//! stays in the payload; the IPv4 view bounds it with the total length. No 802.1Q tags:
//! a tagged frame shows EtherType 0x8100 (`EtherType::Unknown`) and is the caller's to drop.
//! No FCS: AF_XDP and veth frames do not carry it.

pub use smoltcp::wire::{
    EthernetAddress as Address, EthernetFrame as Frame, EthernetProtocol as EtherType,
    EthernetRepr as Repr,
};

use crate::wire::{malformed, Error, Layer};

/// Offset of the destination MAC.
pub const DST_ADDR_OFFSET: usize = 0;
/// Offset of the source MAC.
pub const SRC_ADDR_OFFSET: usize = 6;
/// Offset of the EtherType.
pub const ETHERTYPE_OFFSET: usize = 12;
/// Length of an Ethernet II header (no VLAN tag).
pub const HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// `Frame::new_checked` with this crate's error.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Frame<T>, Error> {
    Frame::new_checked(buffer).map_err(malformed(Layer::Ethernet))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_udp.bin");
    const ARP_REQUEST: &[u8] = include_bytes!("../../tests/fixtures/eth_arp_request.bin");
    const POD_A_MAC: Address = Address([0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a]);
    const POD_B_MAC: Address = Address([0x02, 0x5a, 0x00, 0x00, 0x01, 0x14]);

    #[test]
    fn constants_agree_with_smoltcp() {
        assert_eq!(HEADER_LEN, smoltcp::wire::ETHERNET_HEADER_LEN);
        assert_eq!(u16::from(EtherType::Ipv4), ETHERTYPE_IPV4);
        assert_eq!(u16::from(EtherType::Arp), ETHERTYPE_ARP);
    }

    #[test]
    fn parse_fixtures() {
        let f = checked(UDP_FRAME).unwrap();
        assert_eq!(f.dst_addr(), POD_B_MAC);
        assert_eq!(f.src_addr(), POD_A_MAC);
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.payload().len(), UDP_FRAME.len() - HEADER_LEN);
        assert_eq!(
            &UDP_FRAME[ETHERTYPE_OFFSET..HEADER_LEN],
            ETHERTYPE_IPV4.to_be_bytes()
        );

        let f = checked(ARP_REQUEST).unwrap();
        assert_eq!(f.dst_addr(), Address::BROADCAST);
        assert_eq!(f.src_addr(), POD_A_MAC);
        assert_eq!(f.ethertype(), EtherType::Arp);
    }

    #[test]
    fn emit_matches_fixtures() {
        let mut buf = [0u8; HEADER_LEN];
        let repr = Repr {
            src_addr: POD_A_MAC,
            dst_addr: POD_B_MAC,
            ethertype: EtherType::Ipv4,
        };
        repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
        assert_eq!(buf, UDP_FRAME[..HEADER_LEN]);
        assert_eq!(Repr::parse(&checked(UDP_FRAME).unwrap()).unwrap(), repr);

        let mut buf = [0u8; HEADER_LEN];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(Address::BROADCAST);
        f.set_src_addr(POD_A_MAC);
        f.set_ethertype(EtherType::Arp);
        assert_eq!(buf, ARP_REQUEST[..HEADER_LEN]);
    }

    #[test]
    fn truncated_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                checked(&UDP_FRAME[..len]).unwrap_err(),
                Error::Malformed(Layer::Ethernet)
            );
        }
        assert!(checked(&UDP_FRAME[..HEADER_LEN])
            .unwrap()
            .payload()
            .is_empty());
    }
}
