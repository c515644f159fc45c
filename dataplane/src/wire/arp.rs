//! ARP over Ethernet/IPv4: smoltcp's view under short names, named offsets, and the one
//! thing a bouncer needs that smoltcp lacks: turning a request into its reply in place.
//!
//! What smoltcp 0.14's `Packet::new_checked` validates: only that the buffer holds the
//! 8-byte fixed part and the four addresses at the lengths the packet itself announces.
//! It does not check hardware type, protocol type or the address lengths, so a packet with
//! hlen 0 passes and its setters would panic on a 6-byte MAC. [`checked`] therefore also
//! requires Ethernet/IPv4 (1, 0x0800, 6, 4), the only ARP Sluice handles. Neither checks
//! the operation: `Operation::Unknown` is the caller's to drop.

pub use smoltcp::wire::{
    ArpHardware as Hardware, ArpOperation as Operation, ArpPacket as Packet, ArpRepr as Repr,
};

use crate::wire::ethernet::{self, Address as EthernetAddress};
use crate::wire::{malformed, Error, Layer};

/// Offset of the hardware type.
pub const HTYPE_OFFSET: usize = 0;
/// Offset of the protocol type.
pub const PTYPE_OFFSET: usize = 2;
/// Offset of the hardware address length.
pub const HLEN_OFFSET: usize = 4;
/// Offset of the protocol address length.
pub const PLEN_OFFSET: usize = 5;
/// Offset of the operation.
pub const OPER_OFFSET: usize = 6;
/// Offset of the sender hardware address (Ethernet/IPv4 layout).
pub const SHA_OFFSET: usize = 8;
/// Offset of the sender protocol address (Ethernet/IPv4 layout).
pub const SPA_OFFSET: usize = 14;
/// Offset of the target hardware address (Ethernet/IPv4 layout).
pub const THA_OFFSET: usize = 18;
/// Offset of the target protocol address (Ethernet/IPv4 layout).
pub const TPA_OFFSET: usize = 24;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ETHERNET_IPV4_LEN: usize = 28;
/// Hardware address length of Ethernet.
pub const HLEN_ETHERNET: u8 = 6;
/// Protocol address length of IPv4.
pub const PLEN_IPV4: u8 = 4;

/// `Packet::new_checked`, plus: the packet is Ethernet/IPv4.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Packet<T>, Error> {
    let packet = Packet::new_checked(buffer).map_err(malformed(Layer::Arp))?;
    if packet.hardware_type() != Hardware::Ethernet
        || packet.protocol_type() != ethernet::EtherType::Ipv4
        || packet.hardware_len() != HLEN_ETHERNET
        || packet.protocol_len() != PLEN_IPV4
    {
        return Err(Error::ArpNotEthernetIpv4);
    }
    Ok(packet)
}

/// Turn an Ethernet/IPv4 request into its reply in place: "the requested address is at
/// `answer`". The requester becomes the target; the requested address becomes the sender.
/// The caller rewrites the Ethernet header (destination = requester, source = `answer`).
pub fn answer_request_in_place<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    answer: EthernetAddress,
) -> Result<(), Error> {
    let Repr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = Repr::parse(packet).map_err(|_| Error::ArpNotEthernetIpv4)?
    else {
        return Err(Error::ArpNotEthernetIpv4);
    };
    if operation != Operation::Request {
        return Err(Error::ArpNotRequest);
    }
    Repr::EthernetIpv4 {
        operation: Operation::Reply,
        source_hardware_addr: answer,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    }
    .emit(packet);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::HEADER_LEN;
    use std::net::Ipv4Addr;

    const REQUEST: &[u8] = include_bytes!("../../tests/fixtures/eth_arp_request.bin");
    const REPLY: &[u8] = include_bytes!("../../tests/fixtures/eth_arp_reply.bin");
    const POD_A_MAC: EthernetAddress = EthernetAddress([0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a]);
    const ROUTER_MAC: EthernetAddress = EthernetAddress([0x02, 0x5a, 0x00, 0x00, 0x01, 0x01]);
    const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

    fn request_repr() -> Repr {
        Repr::EthernetIpv4 {
            operation: Operation::Request,
            source_hardware_addr: POD_A_MAC,
            source_protocol_addr: POD_A_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ROUTER_IP,
        }
    }

    fn reply_repr() -> Repr {
        Repr::EthernetIpv4 {
            operation: Operation::Reply,
            source_hardware_addr: ROUTER_MAC,
            source_protocol_addr: ROUTER_IP,
            target_hardware_addr: POD_A_MAC,
            target_protocol_addr: POD_A_IP,
        }
    }

    #[test]
    fn parse_request_and_reply() {
        let p = checked(&REQUEST[HEADER_LEN..]).unwrap();
        assert_eq!(p.hardware_type(), Hardware::Ethernet);
        assert_eq!(p.protocol_type(), ethernet::EtherType::Ipv4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(p.source_hardware_addr(), POD_A_MAC.as_bytes());
        assert_eq!(p.source_protocol_addr(), POD_A_IP.octets());
        assert_eq!(p.target_hardware_addr(), [0; 6]);
        assert_eq!(p.target_protocol_addr(), ROUTER_IP.octets());
        assert_eq!(Repr::parse(&p).unwrap(), request_repr());

        let p = checked(&REPLY[HEADER_LEN..]).unwrap();
        assert_eq!(p.operation(), Operation::Reply);
        assert_eq!(Repr::parse(&p).unwrap(), reply_repr());
        assert_eq!(
            &REPLY[HEADER_LEN + SHA_OFFSET..][..6],
            ROUTER_MAC.as_bytes()
        );
        assert_eq!(&REPLY[HEADER_LEN + TPA_OFFSET..][..4], POD_A_IP.octets());
    }

    #[test]
    fn emit_matches_fixtures() {
        for (repr, fixture) in [(request_repr(), REQUEST), (reply_repr(), REPLY)] {
            let mut buf = [0u8; ETHERNET_IPV4_LEN];
            assert_eq!(repr.buffer_len(), ETHERNET_IPV4_LEN);
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(buf, fixture[HEADER_LEN..]);
        }
    }

    /// What a bouncer does to a request for its router address.
    #[test]
    fn request_answered_in_place_is_the_reply() {
        let mut frame = REQUEST.to_vec();
        let requester = {
            let mut arp = checked(&mut frame[HEADER_LEN..]).unwrap();
            answer_request_in_place(&mut arp, ROUTER_MAC).unwrap();
            // A reply is not answered again.
            assert_eq!(
                answer_request_in_place(&mut arp, ROUTER_MAC),
                Err(Error::ArpNotRequest)
            );
            EthernetAddress::from_bytes(arp.target_hardware_addr())
        };
        let mut eth = ethernet::Frame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(requester);
        eth.set_src_addr(ROUTER_MAC);
        assert_eq!(frame, REPLY);
    }

    #[test]
    fn malformed_is_an_error() {
        let arp = &REQUEST[HEADER_LEN..];
        for len in 0..ETHERNET_IPV4_LEN {
            assert_eq!(
                checked(&arp[..len]).unwrap_err(),
                Error::Malformed(Layer::Arp),
                "{len}"
            );
        }
        for (offset, value) in [
            (HTYPE_OFFSET + 1, 6),
            (PTYPE_OFFSET, 0x86),
            (HLEN_OFFSET, 0),
            (PLEN_OFFSET, 16),
        ] {
            let mut bad = arp.to_vec();
            bad[offset] = value;
            assert!(checked(&bad[..]).is_err(), "byte {offset} = {value}");
        }
    }
}
