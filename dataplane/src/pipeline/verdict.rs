//! What happened to a packet: a small `Copy` outcome, and a counter for every drop reason.

use std::fmt;

use crate::tables::ServiceInstance;

/// The outcome of [`process`](super::process) for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten toward the next hop (a worker host or another gateway): transmit it.
    Forward,
    /// Turned into an answer to its sender (an ARP reply): transmit it.
    Reply,
    /// Not transmitted; return the frame to the fill ring and count the reason.
    Drop(DropReason),
}

/// A packet translated to a service backend and forwarded: which service (its id and
/// stamp, see [`ServiceInstance`]) and which backend (its position in the service's
/// backend list). Reported by [`process_counted`](super::process_counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHit {
    pub instance: ServiceInstance,
    pub backend: u16,
}

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why a frame was dropped. Every variant has a counter; see [`DropCounters`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in declaration order (the order of the counters).
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// How many reasons there are.
            pub const COUNT: usize = Self::ALL.len();

            /// A stable snake_case name, used as the `reason` label of metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Outer Ethernet header shorter than 14 bytes.
    OuterEthernetTruncated => "outer_ethernet_truncated",
    /// Outer EtherType is not IPv4.
    OuterNotIpv4 => "outer_not_ipv4",
    /// Outer IPv4 header malformed: version, IHL or total length inconsistent.
    OuterIpv4Malformed => "outer_ipv4_malformed",
    /// Outer IPv4 header checksum wrong.
    OuterIpv4Checksum => "outer_ipv4_checksum",
    /// Outer IPv4 fragment: Geneve is never fragmented on the underlay (DF set).
    OuterFragment => "outer_fragment",
    /// Outer destination is not this gateway.
    NotForUs => "not_for_us",
    /// Outer protocol is not UDP.
    OuterNotUdp => "outer_not_udp",
    /// Outer UDP header truncated or its length inconsistent.
    OuterUdpMalformed => "outer_udp_malformed",
    /// Outer UDP destination port is not Geneve's.
    NotGeneve => "not_geneve",
    /// Geneve header truncated, bad version, or options running past the packet.
    GeneveMalformed => "geneve_malformed",
    /// Geneve OAM (control) frame: Sluice has no Geneve control plane.
    GeneveOam => "geneve_oam",
    /// Geneve payload is not an Ethernet frame.
    GeneveNotEthernet => "geneve_not_ethernet",
    /// A Sluice option with a body of the wrong length.
    BadOption => "bad_option",
    /// An option marked critical that this gateway does not understand.
    UnknownCriticalOption => "unknown_critical_option",
    /// No VPC has this VNI.
    UnknownVni => "unknown_vni",
    /// Inner Ethernet, IPv4 or transport header truncated or inconsistent.
    InnerMalformed => "inner_malformed",
    /// Inner EtherType is neither IPv4 nor ARP (IPv6, VLAN tags, ...).
    InnerUnsupported => "inner_unsupported",
    /// ARP that is not Ethernet/IPv4.
    ArpMalformed => "arp_malformed",
    /// ARP that is not a request (replies, gratuitous announcements).
    ArpNotRequest => "arp_not_request",
    /// ARP for an address that is neither the router nor a known endpoint of the
    /// sender's subnet.
    ArpUnknownTarget => "arp_unknown_target",
    /// Destination inside no subnet of the VPC and not a service address.
    NoRoute => "no_route",
    /// Destination in a subnet this gateway bounces for, but no such endpoint.
    UnknownEndpoint => "unknown_endpoint",
    /// Destination in the service CIDR with no service on that address, port and protocol.
    NoService => "no_service",
    /// Service without any backend that takes traffic.
    NoBackend => "no_backend",
    /// Fragment addressed to a service: ports are only in the first fragment.
    ServiceFragment => "service_fragment",
    /// Routing would decrement the inner TTL to zero.
    TtlExceeded => "ttl_exceeded",
    /// The next hop is this gateway itself: tables disagree about where the endpoint is.
    Loop => "loop",
    /// A STALE packet would go back to the host that disowned the endpoint.
    StaleEndpoint => "stale_endpoint",
    /// Not enough headroom in the frame for the outer headers and options.
    NoHeadroom => "no_headroom",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Per-worker counters of packet outcomes. Plain integers: each worker owns its own and
/// the engine sums them when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCounters {
    pub forwarded: u64,
    pub replied: u64,
    drops: [u64; DropReason::COUNT],
}

impl Default for DropCounters {
    fn default() -> Self {
        Self {
            forwarded: 0,
            replied: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl DropCounters {
    #[inline]
    pub fn record(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Forward => self.forwarded += 1,
            Verdict::Reply => self.replied += 1,
            Verdict::Drop(reason) => self.drops[reason as usize] += 1,
        }
    }

    /// Counters from their parts (a published copy of a worker's counters).
    pub fn from_parts(forwarded: u64, replied: u64, drops: [u64; DropReason::COUNT]) -> Self {
        Self {
            forwarded,
            replied,
            drops,
        }
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Every reason with its count, zeros included, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize]))
    }

    /// Adds `other` into `self` (summing workers).
    pub fn merge(&mut self, other: &DropCounters) {
        self.forwarded += other.forwarded;
        self.replied += other.replied;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_snake_case() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert!(labels.iter().all(|l| l
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }

    #[test]
    fn discriminants_index_the_counters() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }
}
