//! The Sluice wire contract: every number that the gateway and the XDP stubs must agree on
//! to exchange Geneve packets (see DESIGN.md, "Wire contract").
//!
//! This is the only place in Rust where these values are defined; everything else imports
//! them. The stubs' C header carries the same values and a test checks the two agree, so
//! keep every item a plain `pub const` whose value is written out right here (a literal
//! or a sum of literals, never a reference to another module), one per line.

/// UDP destination port of Geneve (IANA, RFC 8926).
pub const GENEVE_UDP_PORT: u16 = 6081;

/// Geneve protocol type of the payload: transparent Ethernet bridging, i.e. the payload is
/// a whole inner Ethernet frame.
pub const GENEVE_PROTO_ETHERNET: u16 = 0x6558;

/// Geneve option class of all Sluice options (in the experimental range 0xFF00-0xFFFF).
pub const SLUICE_OPTION_CLASS: u16 = 0xFF01;

/// Option type HOST_HINT (gateway -> worker): body is endpoint IPv4, host IPv4; "this
/// endpoint lives on that host", so the source stub may go direct next time.
pub const OPT_HOST_HINT: u8 = 0x01;

/// Option type DIRECT (worker -> worker): empty body; the packet was sent without a
/// gateway and the receiver may answer directly.
pub const OPT_DIRECT: u8 = 0x02;

/// Option type SERVICE_ORIG (gateway -> backend's worker): body is VIP IPv4, VIP port,
/// protocol, one zero pad byte; the packet was DNATed from that VIP.
pub const OPT_SERVICE_ORIG: u8 = 0x03;

/// Option type STALE (worker -> gateway): body is endpoint IPv4; the worker received a
/// packet for an endpoint it no longer hosts.
pub const OPT_STALE: u8 = 0x04;

/// High bit of a Geneve option type: the option is critical (RFC 8926 section 3.5). A
/// receiver that does not understand a critical option must drop the packet. None of
/// Sluice's own options are critical.
pub const OPTION_CRITICAL_BIT: u8 = 0x80;

/// Lowest outer UDP source port; the source port carries a flow hash for RSS entropy.
pub const UDP_SRC_PORT_BASE: u16 = 49152;

/// Number of outer UDP source ports used for flow entropy, from [`UDP_SRC_PORT_BASE`].
pub const UDP_SRC_PORT_RANGE: u16 = 16384;

/// TTL of the outer IPv4 header.
pub const OUTER_TTL: u8 = 64;

/// Bytes a pod's MTU is below the underlay MTU: pod MTU = underlay MTU - 100. Covers the
/// outer IPv4, UDP and Geneve headers, the inner Ethernet header, and Sluice options.
pub const ENCAP_MTU_OVERHEAD: u16 = 100;

/// Outer Ethernet (14) + IPv4 without options (20) + UDP (8) + Geneve base header (8),
/// i.e. the bytes in front of the Geneve options.
pub const OUTER_HEADERS_LEN: usize = 14 + 20 + 8 + 8;

/// Outer UDP source port for a flow: `UDP_SRC_PORT_BASE + flow_hash % UDP_SRC_PORT_RANGE`.
#[inline]
#[must_use]
pub const fn udp_src_port(flow_hash: u32) -> u16 {
    // The remainder is below UDP_SRC_PORT_RANGE (16384), so the cast is lossless and the
    // sum is at most 65535.
    UDP_SRC_PORT_BASE + (flow_hash % UDP_SRC_PORT_RANGE as u32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::geneve::SluiceOption;
    use std::net::Ipv4Addr;

    #[test]
    fn src_port_stays_in_range() {
        assert_eq!(udp_src_port(0), UDP_SRC_PORT_BASE);
        assert_eq!(udp_src_port(16383), u16::MAX);
        assert_eq!(udp_src_port(16384), UDP_SRC_PORT_BASE);
        assert_eq!(udp_src_port(u32::MAX), UDP_SRC_PORT_BASE + 16383);
        assert_eq!(udp_src_port(0xDEAD_BEEF), 0xFEEF);
    }

    #[test]
    fn outer_headers_len_matches_the_views() {
        use crate::wire::{ethernet, geneve, ipv4, udp};
        assert_eq!(
            OUTER_HEADERS_LEN,
            ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + geneve::HEADER_LEN
        );
    }

    /// The MTU overhead must cover the encapsulation the underlay adds to an inner IPv4
    /// packet (outer IPv4 + UDP + Geneve + inner Ethernet, which happens to equal
    /// OUTER_HEADERS_LEN) with every Sluice option attached at once.
    #[test]
    fn mtu_overhead_covers_all_sluice_options() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let all = [
            SluiceOption::HostHint {
                endpoint: a,
                host: a,
            },
            SluiceOption::Direct,
            SluiceOption::ServiceOrig {
                vip: a,
                port: 1,
                protocol: 6,
            },
            SluiceOption::Stale { endpoint: a },
        ];
        let options: usize = all.iter().map(SluiceOption::wire_len).sum();
        let encap = 20 + 8 + 8 + 14 + options;
        assert!(
            encap <= usize::from(ENCAP_MTU_OVERHEAD),
            "{encap} > {ENCAP_MTU_OVERHEAD}"
        );
    }
}
