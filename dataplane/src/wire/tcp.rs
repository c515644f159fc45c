//! TCP: smoltcp's view and option codec under short names, plus named offsets.
//!
//! What smoltcp 0.14's `Packet::new_checked` validates: buffer >= 20 bytes and
//! 20 <= data offset * 4 <= buffer. It does not check the checksum, the flags, or the
//! options (`TcpOption::parse` checks each option's length as it is read). The view does
//! not know where the segment ends: `payload()` runs to the end of the buffer, so build it
//! over the IPv4 payload (which ends at the IPv4 total length), never over the rest of an
//! Ethernet frame, or padding becomes payload and checksums go wrong.

pub use smoltcp::wire::{
    TcpControl as Control, TcpOption, TcpPacket as Packet, TcpRepr as Repr,
    TcpSeqNumber as SeqNumber,
};

use crate::wire::{malformed, Error, Layer};

/// Offset of the source port.
pub const SRC_PORT_OFFSET: usize = 0;
/// Offset of the destination port.
pub const DST_PORT_OFFSET: usize = 2;
/// Offset of the sequence number.
pub const SEQ_OFFSET: usize = 4;
/// Offset of the acknowledgment number.
pub const ACK_OFFSET: usize = 8;
/// Offset of the data offset and flags word.
pub const DATA_OFFSET_FLAGS_OFFSET: usize = 12;
/// Offset of the window.
pub const WINDOW_OFFSET: usize = 14;
/// Offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 16;
/// Offset of the urgent pointer.
pub const URGENT_OFFSET: usize = 18;
/// Offset of the options, if the data offset is above 5.
pub const OPTIONS_OFFSET: usize = 20;
/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Length of a header with the most options (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// `Packet::new_checked` with this crate's error.
#[inline]
pub fn checked<T: AsRef<[u8]>>(buffer: T) -> Result<Packet<T>, Error> {
    Packet::new_checked(buffer).map_err(malformed(Layer::Tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::{emit_eth_ipv4, Fields};
    use crate::wire::{checksum, ethernet, ipv4};
    use std::net::Ipv4Addr;

    const SYN_FRAME: &[u8] = include_bytes!("../../tests/fixtures/eth_ipv4_tcp_syn.bin");
    const POD_A_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x0a];
    const POD_B_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x14];
    const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
    /// Linux's SYN option layout, as scapy wrote it.
    const SYN_OPTIONS: [TcpOption<'static>; 5] = [
        TcpOption::MaxSegmentSize(1410),
        TcpOption::SackPermitted,
        TcpOption::TimeStamp {
            tsval: 0x1122_3344,
            tsecr: 0,
        },
        TcpOption::NoOperation,
        TcpOption::WindowScale(7),
    ];

    fn segment(frame: &[u8]) -> &[u8] {
        ipv4::checked(&frame[ethernet::HEADER_LEN..])
            .unwrap()
            .payload()
    }

    #[test]
    fn parse_syn_with_options() {
        let seg = segment(SYN_FRAME);
        let t = checked(seg).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40002, 8080));
        assert_eq!(t.seq_number(), SeqNumber(0x0102_0304));
        assert_eq!(t.ack_number(), SeqNumber(0));
        assert!(t.syn() && !t.ack() && !t.fin() && !t.rst() && !t.psh() && !t.urg());
        assert_eq!(t.header_len(), 40, "data offset 10");
        assert_eq!(t.window_len(), 64240);
        assert_eq!(t.urgent_at(), 0);
        assert!(t.payload().is_empty());
        assert_eq!(t.checksum(), 0x32e5);
        assert_eq!(checksum::tcp_ipv4(POD_A_IP, POD_B_IP, seg), t.checksum());
        assert!(t.verify_checksum(&POD_A_IP.into(), &POD_B_IP.into()));

        let mut rest = t.options();
        let mut parsed = Vec::new();
        while !rest.is_empty() {
            let (next, option) = TcpOption::parse(rest).unwrap();
            parsed.push(option);
            rest = next;
        }
        assert_eq!(parsed, SYN_OPTIONS);
    }

    #[test]
    fn emit_matches_fixture() {
        let mut buf = vec![0u8; SYN_FRAME.len()];
        let fields = Fields {
            ident: 0x2222,
            dont_frag: true,
            ttl: 64,
            protocol: ipv4::Protocol::Tcp,
            src: POD_A_IP,
            dst: POD_B_IP,
            options: &[],
        };
        let header_len = MIN_HEADER_LEN + 20;
        let l4 = emit_eth_ipv4(&mut buf, POD_A_MAC, POD_B_MAC, fields, header_len);
        let mut t = Packet::new_unchecked(&mut buf[l4..]);
        t.set_src_port(40002);
        t.set_dst_port(8080);
        t.set_seq_number(SeqNumber(0x0102_0304));
        t.set_ack_number(SeqNumber(0));
        t.set_header_len(header_len as u8);
        t.clear_flags();
        t.set_syn(true);
        t.set_window_len(64240);
        let mut rest = t.options_mut();
        for option in SYN_OPTIONS {
            rest = option.emit(rest);
        }
        assert!(rest.is_empty());
        let csum = checksum::tcp_ipv4(POD_A_IP, POD_B_IP, t.as_ref());
        t.set_checksum(csum);
        assert_eq!(buf, SYN_FRAME);
    }

    #[test]
    fn malformed_is_an_error() {
        let seg = segment(SYN_FRAME);
        for len in 0..seg.len() {
            assert_eq!(
                checked(&seg[..len]).unwrap_err(),
                Error::Malformed(Layer::Tcp),
                "{len}"
            );
        }
        let mut bad = seg.to_vec();
        bad[DATA_OFFSET_FLAGS_OFFSET] = 0x40; // data offset 4, below the minimum
        assert!(checked(&bad[..]).is_err());
        // A truncated option is an error from the option codec, not a panic.
        assert!(TcpOption::parse(&[0x08, 0x0a, 0, 0]).is_err());
        assert!(TcpOption::parse(&[0x02, 0x00]).is_err());
    }
}
