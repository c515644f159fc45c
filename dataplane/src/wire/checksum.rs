//! Internet checksums (RFC 1071) and incremental updates (RFC 1624) for in-place rewrites.
//!
//! Conventions, the same for every function here:
//! * A *sum* is the 16-bit ones'-complement sum of big-endian 16-bit words, folded with
//!   end-around carry and **not** complemented ([`data`], [`data_skipping`],
//!   [`pseudo_header_ipv4`], [`combine`]).
//! * A *checksum* is the value to store in a header field: the complement of a sum
//!   ([`ipv4_header`], [`udp_ipv4`], [`tcp_ipv4`], and every `update_*`).
//! * Functions that take a checksum field's offset treat that field as zero, so they can
//!   be called on a header whose field still holds the old value. Offsets and slices must
//!   start at even positions in the packet, as every real checksum field does.
//!
//! UDP over IPv4 is special (RFC 768): a field of 0 means "no checksum" and must stay 0
//! across rewrites, and a computed checksum of 0 is sent as 0xFFFF. [`udp_ipv4`] and the
//! `update_udp_*` functions handle both; use the plain `update_*` for IPv4 and TCP.
//!
//! These run per packet: no allocation, no panics, everything `#[inline]`. The sum reads
//! native-endian words and swaps once at the end (RFC 1071 section 2(B)).

use std::net::Ipv4Addr;

/// Add `bytes` to a native-endian accumulator of 32-bit words. Four bytes at a time into a
/// 64-bit accumulator cannot overflow for any slice shorter than 16 GiB.
#[inline]
fn add_ne(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => {
            acc + u64::from(u16::from_ne_bytes([a, b])) + u64::from(u16::from_ne_bytes([c, 0]))
        }
        [a, b] => acc + u64::from(u16::from_ne_bytes([a, b])),
        [a] => acc + u64::from(u16::from_ne_bytes([a, 0])),
        _ => acc,
    }
}

/// Fold a wide accumulator to 16 bits with end-around carry.
#[inline]
const fn fold(acc: u64) -> u16 {
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Ones'-complement sum of `bytes` (odd trailing byte padded with zero), not complemented.
#[inline]
#[must_use]
pub fn data(bytes: &[u8]) -> u16 {
    u16::from_be(fold(add_ne(0, bytes)))
}

/// Ones'-complement sum of `bytes` with the 16-bit field at `field` (an even offset)
/// treated as zero; bytes of the field beyond the end of `bytes` are simply absent.
#[inline]
#[must_use]
pub fn data_skipping(bytes: &[u8], field: usize) -> u16 {
    let head = bytes.get(..field).unwrap_or(bytes);
    let tail = bytes.get(field.saturating_add(2)..).unwrap_or(&[]);
    u16::from_be(fold(add_ne(add_ne(0, head), tail)))
}

/// Ones'-complement sum of two sums.
#[inline]
#[must_use]
pub const fn combine(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// Sum of the IPv4 pseudo-header of a TCP or UDP checksum: source, destination, zero,
/// protocol, and the transport length (header plus payload).
#[inline]
#[must_use]
pub fn pseudo_header_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let (s, d) = (src.to_bits(), dst.to_bits());
    fold(
        u64::from(s >> 16)
            + u64::from(s & 0xffff)
            + u64::from(d >> 16)
            + u64::from(d & 0xffff)
            + u64::from(protocol)
            + u64::from(length),
    )
}

/// Offset of the checksum in an IPv4 header.
const IPV4_CHECKSUM: usize = 10;
/// Offset of the checksum in a UDP header.
const UDP_CHECKSUM: usize = 6;
/// Offset of the checksum in a TCP header.
const TCP_CHECKSUM: usize = 16;
/// IP protocol number of TCP.
const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
const PROTO_UDP: u8 = 17;

/// The checksum to store in an IPv4 header: `header` is the whole header (IHL * 4 bytes,
/// options included); its checksum field is treated as zero.
#[inline]
#[must_use]
pub fn ipv4_header(header: &[u8]) -> u16 {
    !data_skipping(header, IPV4_CHECKSUM)
}

/// The checksum to store in a UDP header over IPv4. `datagram` is exactly the UDP header
/// plus payload (its length is the pseudo-header length); its checksum field is treated as
/// zero. A computed 0 is returned as 0xFFFF, since 0 means "no checksum".
#[inline]
#[must_use]
pub fn udp_ipv4(src: Ipv4Addr, dst: Ipv4Addr, datagram: &[u8]) -> u16 {
    let pseudo = pseudo_header_ipv4(src, dst, PROTO_UDP, datagram.len() as u16);
    udp_nonzero(!combine(pseudo, data_skipping(datagram, UDP_CHECKSUM)))
}

/// The checksum to store in a TCP header over IPv4. `segment` is exactly the TCP header
/// (options included) plus payload; its checksum field is treated as zero.
#[inline]
#[must_use]
pub fn tcp_ipv4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let pseudo = pseudo_header_ipv4(src, dst, PROTO_TCP, segment.len() as u16);
    !combine(pseudo, data_skipping(segment, TCP_CHECKSUM))
}

/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`: the checksum after one 16-bit word of the
/// covered data changed from `old` to `new`.
#[inline]
#[must_use]
pub const fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(!csum as u64 + !old as u64 + new as u64)
}

/// [`update_u16`] for a 32-bit field (two words), e.g. an IPv4 address given as
/// `Ipv4Addr::to_bits()`.
#[inline]
#[must_use]
pub const fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    !fold(
        !csum as u64
            + !(old >> 16) as u16 as u64
            + !(old as u16) as u64
            + (new >> 16) as u64
            + (new & 0xffff) as u64,
    )
}

/// [`update_u16`] for a run of bytes that changed from `old` to `new` in place. Both must
/// have the same length and start at the same even offset of the covered data.
#[inline]
#[must_use]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    !combine(combine(!csum, !data(old)), data(new))
}

/// A UDP checksum field may not carry a computed 0; it is sent as 0xFFFF.
#[inline]
const fn udp_nonzero(csum: u16) -> u16 {
    if csum == 0 {
        0xffff
    } else {
        csum
    }
}

/// [`update_u16`] for a UDP checksum field: 0 ("no checksum") stays 0, and a result of 0
/// becomes 0xFFFF.
#[inline]
#[must_use]
pub const fn update_udp_u16(csum: u16, old: u16, new: u16) -> u16 {
    if csum == 0 {
        0
    } else {
        udp_nonzero(update_u16(csum, old, new))
    }
}

/// [`update_u32`] for a UDP checksum field, e.g. after rewriting an address of the
/// pseudo-header. Same rules as [`update_udp_u16`].
#[inline]
#[must_use]
pub const fn update_udp_u32(csum: u16, old: u32, new: u32) -> u16 {
    if csum == 0 {
        0
    } else {
        udp_nonzero(update_u32(csum, old, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4Header, TcpHeader, TcpOptions, UdpHeader};
    use proptest::prelude::*;

    /// RFC 1071 section 3's worked example.
    #[test]
    fn rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(data(&bytes[..7]), 0xddf2 - 0xf7);
        assert_eq!(data(&[]), 0);
    }

    /// RFC 1624 section 4's example: a word 0x5555 changes to 0x3285 under HC 0xDD2F.
    #[test]
    fn rfc1624_example() {
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn skipping_a_field_past_the_end_does_not_panic() {
        assert_eq!(data_skipping(&[1, 2, 3], 10), data(&[1, 2, 3]));
        assert_eq!(data_skipping(&[1, 2, 3], 2), data(&[1, 2]));
        assert_eq!(
            data_skipping(&[1, 2, 3, 4, 5], usize::MAX),
            data(&[1, 2, 3, 4, 5])
        );
        assert_eq!(ipv4_header(&[]), 0xffff);
    }

    fn addr(bits: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(bits)
    }

    /// A UDP datagram whose payload word is chosen so the computed checksum is 0.
    fn udp_summing_to_zero(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> [u8; 10] {
        let mut d = [0u8; 10];
        d[0..2].copy_from_slice(&sport.to_be_bytes());
        d[2..4].copy_from_slice(&dport.to_be_bytes());
        d[4..6].copy_from_slice(&10u16.to_be_bytes());
        let rest = combine(pseudo_header_ipv4(src, dst, PROTO_UDP, 10), data(&d));
        d[8..10].copy_from_slice(&(!rest).to_be_bytes());
        d
    }

    #[test]
    fn udp_computed_zero_is_sent_as_ffff() {
        let (src, dst) = (addr(0x0a00_010a), addr(0x0a00_0114));
        let d = udp_summing_to_zero(src, dst, 1234, 5678);
        assert_eq!(udp_ipv4(src, dst, &d), 0xffff);
        let header = UdpHeader::from_slice(&d).unwrap().0;
        assert_eq!(
            header
                .calc_checksum_ipv4_raw(src.octets(), dst.octets(), &d[8..])
                .unwrap(),
            0xffff
        );
    }

    #[test]
    fn udp_update_landing_on_zero_gives_ffff() {
        let (src, dst) = (addr(0x0a00_010a), addr(0x0a00_0114));
        let after = udp_summing_to_zero(src, dst, 1234, 5678);
        let mut before = after;
        before[2..4].copy_from_slice(&9999u16.to_be_bytes());
        let csum = udp_ipv4(src, dst, &before);
        assert_eq!(update_udp_u16(csum, 9999, 5678), 0xffff);
        assert_eq!(
            update_u16(csum, 9999, 5678),
            0x0000,
            "the plain update gives the other zero"
        );
    }

    #[test]
    fn udp_no_checksum_stays_zero() {
        assert_eq!(update_udp_u16(0, 1, 2), 0);
        assert_eq!(update_udp_u32(0, 0x0a00_0001, 0x0a00_0002), 0);
    }

    prop_compose! {
        /// A random IPv4 header, options included, serialized by etherparse.
        fn ipv4_header_bytes()(
            ident: u16, ttl: u8, proto: u8, src: [u8; 4], dst: [u8; 4], df: bool,
            payload_len in 0u16..1400,
            options in prop::collection::vec(any::<[u8; 4]>(), 0..=10),
        ) -> Vec<u8> {
            let options: Vec<u8> = options.concat();
            let mut h = Ipv4Header::new(payload_len, ttl, proto.into(), src, dst).unwrap();
            h.identification = ident;
            h.dont_fragment = df;
            h.options = options.as_slice().try_into().unwrap();
            h.total_len += options.len() as u16;
            h.header_checksum = h.calc_header_checksum();
            h.to_bytes().to_vec()
        }
    }

    fn etherparse_ipv4_checksum(header: &[u8]) -> u16 {
        Ipv4Header::from_slice(header)
            .unwrap()
            .0
            .calc_header_checksum()
    }

    proptest! {
        #[test]
        fn data_matches_smoltcp(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(data(&bytes), smoltcp::wire::checksum::data(&bytes));
        }

        #[test]
        fn data_skipping_matches_zeroed_copy(
            mut bytes in prop::collection::vec(any::<u8>(), 0..200), field in 0usize..100,
        ) {
            let field = field * 2;
            let expected = {
                for b in bytes.iter_mut().skip(field).take(2) { *b = 0; }
                data(&bytes)
            };
            prop_assert_eq!(data_skipping(&bytes, field), expected);
        }

        #[test]
        fn ipv4_full_matches_etherparse(header in ipv4_header_bytes()) {
            let stored = u16::from_be_bytes([header[10], header[11]]);
            prop_assert_eq!(ipv4_header(&header), stored);
            prop_assert_eq!(ipv4_header(&header), etherparse_ipv4_checksum(&header));
        }

        #[test]
        fn ipv4_incremental_matches_full(
            mut header in ipv4_header_bytes(),
            word in prop::sample::select(vec![4usize, 6, 8]),
            new_word: u16,
            which_addr in prop::sample::select(vec![12usize, 16]),
            new_addr: u32,
        ) {
            // etherparse has no field for the reserved flag bit (0x8000 of the word at 6),
            // so it could not serve as the oracle for a header that sets it.
            let new_word = if word == 6 { new_word & 0x7fff } else { new_word };
            let csum = u16::from_be_bytes([header[10], header[11]]);
            let old_word = u16::from_be_bytes([header[word], header[word + 1]]);
            header[word..word + 2].copy_from_slice(&new_word.to_be_bytes());
            let csum = update_u16(csum, old_word, new_word);
            prop_assert_eq!(csum, etherparse_ipv4_checksum(&header));
            prop_assert_eq!(csum, ipv4_header(&header));

            let mut a = [0u8; 4];
            a.copy_from_slice(&header[which_addr..which_addr + 4]);
            header[which_addr..which_addr + 4].copy_from_slice(&new_addr.to_be_bytes());
            let csum = update_u32(csum, u32::from_be_bytes(a), new_addr);
            prop_assert_eq!(csum, etherparse_ipv4_checksum(&header));
            prop_assert_eq!(csum, ipv4_header(&header));
        }

        #[test]
        fn udp_full_and_incremental_match_etherparse(
            src: u32, dst: u32, new_dst: u32, sport: u16, dport: u16, new_dport: u16,
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let (src, dst, new_dst) = (addr(src), addr(dst), addr(new_dst));
            let header = UdpHeader {
                source_port: sport, destination_port: dport,
                length: (8 + payload.len()) as u16, checksum: 0,
            };
            let mut d = header.to_bytes().to_vec();
            d.extend_from_slice(&payload);
            let csum = udp_ipv4(src, dst, &d);
            prop_assert_eq!(
                csum, header.calc_checksum_ipv4_raw(src.octets(), dst.octets(), &payload).unwrap()
            );

            // DNAT: destination address (pseudo-header) and port change.
            let csum = update_udp_u32(csum, dst.to_bits(), new_dst.to_bits());
            let csum = update_udp_u16(csum, dport, new_dport);
            let moved = UdpHeader { destination_port: new_dport, ..header };
            let expected =
                moved.calc_checksum_ipv4_raw(src.octets(), new_dst.octets(), &payload).unwrap();
            prop_assert_eq!(csum, expected);
        }

        #[test]
        fn tcp_full_and_incremental_match_etherparse(
            src: u32, dst: u32, new_src: u32, sport: u16, new_sport: u16, dport: u16,
            seq: u32, new_seq: u32, ack: u32, window: u16, flags: u8,
            options in prop::collection::vec(any::<[u8; 4]>(), 0..=10),
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let (src, dst, new_src) = (addr(src), addr(dst), addr(new_src));
            let mut header = TcpHeader::new(sport, dport, seq, window);
            header.acknowledgment_number = ack;
            header.syn = flags & 1 != 0;
            header.ack = flags & 2 != 0;
            header.psh = flags & 4 != 0;
            header.fin = flags & 8 != 0;
            header.options = TcpOptions::try_from_slice(&options.concat()).unwrap();
            let mut segment = header.to_bytes().to_vec();
            segment.extend_from_slice(&payload);
            let csum = tcp_ipv4(src, dst, &segment);
            prop_assert_eq!(
                csum, header.calc_checksum_ipv4_raw(src.octets(), dst.octets(), &payload).unwrap()
            );

            // SNAT-style rewrite: source address, source port, and a 4-byte run.
            let csum = update_u32(csum, src.to_bits(), new_src.to_bits());
            let csum = update_u16(csum, sport, new_sport);
            let csum = update_bytes(csum, &seq.to_be_bytes(), &new_seq.to_be_bytes());
            let moved = TcpHeader { source_port: new_sport, sequence_number: new_seq, ..header };
            let expected =
                moved.calc_checksum_ipv4_raw(new_src.octets(), dst.octets(), &payload).unwrap();
            prop_assert_eq!(csum, expected);
        }
    }
}
