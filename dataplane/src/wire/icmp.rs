//! ICMPv4: smoltcp's view under short names, plus named offsets.
//!
//! What smoltcp 0.14's `Packet::new_checked` validates: only buffer >= 8 bytes. It does
//! not check type, code or checksum. The checksum covers the whole buffer
//! (`verify_checksum`/`fill_checksum` sum all of it), so build the view over exactly the
//! IPv4 payload. The echo identifier and sequence getters read bytes 4..8 whatever the
//! type is; check `msg_type()` first.

pub use smoltcp::wire::{
    Icmpv4DstUnreachable as DstUnreachable, Icmpv4Message as Message, Icmpv4Packet as Packet,
    Icmpv4Repr as Repr, Icmpv4TimeExceeded as TimeExceeded,
};

use crate::wire::{malformed, Error, Layer};

/// Offset of the type.
pub const TYPE_OFFSET: usize = 0;
/// Offset of the code.
pub const CODE_OFFSET: usize = 1;
/// Offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 2;
/// Offset of an echo request's or reply's identifier.
pub const ECHO_IDENT_OFFSET: usize = 4;
/// Offset of an echo request's or reply's sequence number.
pub const ECHO_SEQ_OFFSET: usize = 6;
/// Length of the ICMP header (type, code, checksum, 4 type-specific bytes).
pub const HEADER_LEN: usize = 8;

/// `Packet::new_checked` with this crate's error.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Packet<T>, Error> {
    Packet::new_checked(buffer).map_err(malformed(Layer::Icmpv4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::{emit_eth_ipv4, Fields};
    use crate::wire::{checksum, ethernet, ipv4};
    use std::net::Ipv4Addr;

    const ECHO_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_icmp_echo.bin");
    const POD_A_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a];
    const POD_B_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x14];

    fn echo_data() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    fn message(frame: &[u8]) -> &[u8] {
        ipv4::checked(&frame[ethernet::HEADER_LEN..])
            .unwrap()
            .payload()
    }

    #[test]
    fn parse_echo_request() {
        let msg = message(ECHO_FRAME);
        let p = checked(msg).unwrap();
        assert_eq!(p.msg_type(), Message::EchoRequest);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0xc4b5);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x4242, 7));
        assert_eq!(p.data(), echo_data());
        assert!(p.verify_checksum());
        assert_eq!(
            checksum::data(msg),
            0xffff,
            "a valid message sums to all ones"
        );
        assert_eq!(!checksum::data_skipping(msg, CHECKSUM_OFFSET), p.checksum());
        assert_eq!(
            Repr::parse(&p, &Default::default()).unwrap(),
            Repr::EchoRequest {
                ident: 0x4242,
                seq_no: 7,
                data: &echo_data()
            }
        );
    }

    #[test]
    fn emit_matches_fixture() {
        let data = echo_data();
        let mut buf = vec![0u8; ECHO_FRAME.len()];
        let fields = Fields {
            ident: 0x3333,
            dont_frag: true,
            ttl: 64,
            protocol: ipv4::Protocol::Icmp,
            src: Ipv4Addr::new(10, 0, 1, 10),
            dst: Ipv4Addr::new(10, 0, 1, 20),
            options: &[],
        };
        let l4 = emit_eth_ipv4(
            &mut buf,
            POD_A_MAC,
            POD_B_MAC,
            fields,
            HEADER_LEN + data.len(),
        );

        // With the view's setters and our checksum.
        let mut p = Packet::new_unchecked(&mut buf[l4..]);
        p.set_msg_type(Message::EchoRequest);
        p.set_msg_code(0);
        p.set_echo_ident(0x4242);
        p.set_echo_seq_no(7);
        p.data_mut().copy_from_slice(&data);
        let csum = !checksum::data_skipping(p.as_ref(), CHECKSUM_OFFSET);
        p.set_checksum(csum);
        assert_eq!(buf, ECHO_FRAME);

        // And with smoltcp's Repr, which fills its own checksum.
        let mut msg = [0u8; HEADER_LEN + 32];
        let repr = Repr::EchoRequest {
            ident: 0x4242,
            seq_no: 7,
            data: &data,
        };
        repr.emit(
            &mut Packet::new_unchecked(&mut msg[..]),
            &Default::default(),
        );
        assert_eq!(msg, ECHO_FRAME[l4..]);
    }

    #[test]
    fn truncated_is_an_error() {
        let msg = message(ECHO_FRAME);
        for len in 0..HEADER_LEN {
            assert_eq!(
                checked(&msg[..len]).unwrap_err(),
                Error::Malformed(Layer::Icmpv4)
            );
        }
        assert!(checked(&msg[..HEADER_LEN]).unwrap().data().is_empty());
    }
}
