//! Packet views: one file per protocol. Validate once at the edge (`new_checked` or this
//! crate's `checked`), then read and rewrite fields in place.
//!
//! * [`contract`]: the Sluice wire contract (Geneve port, option class and types, outer
//!   header sizes). The only place those numbers are defined.
//! * [`ethernet`], [`arp`], [`ipv4`], [`udp`], [`tcp`], [`icmp`]: smoltcp's borrowed views
//!   under short names, plus the named offsets and small checks smoltcp lacks.
//! * [`geneve`]: RFC 8926 header and option TLVs, and Sluice's own options.
//! * [`checksum`]: RFC 1071 sums and RFC 1624 incremental updates for in-place rewrites.
//!
//! Nothing here allocates, and no function panics on any input bytes: every view that
//! indexes into a buffer is built through a length check first.

pub mod arp;
pub mod checksum;
pub mod contract;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

/// The protocol layer a malformed packet failed at, for drop-reason accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II header.
    Ethernet,
    /// ARP packet.
    Arp,
    /// IPv4 header.
    Ipv4,
    /// UDP header.
    Udp,
    /// TCP header.
    Tcp,
    /// ICMPv4 message.
    Icmpv4,
}

impl core::fmt::Display for Layer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Udp => "UDP",
            Layer::Tcp => "TCP",
            Layer::Icmpv4 => "ICMPv4",
        })
    }
}

/// Why a packet could not be parsed or built. Small and `Copy`: it is produced per packet
/// and mapped to a drop counter, never logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header, or the header's own length fields (IHL,
    /// total length, UDP length, TCP data offset, ARP address lengths) are inconsistent
    /// with each other or with the buffer.
    #[error("malformed {0} header: buffer too short or length fields inconsistent")]
    Malformed(Layer),
    /// The IPv4 version nibble is not 4.
    #[error("IPv4 version field is {0}, expected 4")]
    Ipv4Version(u8),
    /// An ARP packet that is not Ethernet/IPv4 (hardware type 1, protocol 0x0800,
    /// address lengths 6 and 4); Sluice handles no other kind.
    #[error("ARP packet is not Ethernet/IPv4")]
    ArpNotEthernetIpv4,
    /// An ARP packet that is not a request where a request was required.
    #[error("ARP packet is not a request")]
    ArpNotRequest,
    /// A Geneve header or option failed to parse or build.
    #[error("Geneve: {0}")]
    Geneve(#[from] geneve::Error),
}

/// Map smoltcp's opaque error to the layer it came from.
#[inline]
pub(crate) fn malformed(layer: Layer) -> impl FnOnce(smoltcp::wire::Error) -> Error {
    move |_| Error::Malformed(layer)
}
