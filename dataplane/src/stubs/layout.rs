//! Byte layouts of the stubs' map keys and values, and their counters: the Rust mirror of
//! the STUB MAPS and STUB COUNTERS blocks of `bpf/sluice.h`.
//!
//! Integers the C side keeps in host order (VNI, ifindex, counts) are written with
//! `to_ne_bytes`; addresses and ports stay in network order, as the packet carries them,
//! so the programs compare them without swapping. The sizes and the counter order are
//! checked against the header by `tests/contract_header.rs`; the offsets by the C side's
//! `_Static_assert`s and by the packet tests.

use std::net::Ipv4Addr;

use super::{PodEntry, StubError, MAX_BOUNCERS};

/// `sizeof(struct node_config)`: ip (0), ifindex (4), mac (8), pad (14).
pub const NODE_CONFIG_SIZE: usize = 16;
/// `sizeof(struct pod_value)`: vni (0), ip (4), mac (8), router_mac (14),
/// bouncer_count (20), bouncers (24).
pub const POD_VALUE_SIZE: usize = 24 + 4 * MAX_BOUNCERS;
/// `sizeof(struct endpoint_key)`: vni (0), ip (4).
pub const ENDPOINT_KEY_SIZE: usize = 8;
/// `sizeof(struct endpoint_value)`: ifindex (0), mac (4), pad (10).
pub const ENDPOINT_VALUE_SIZE: usize = 12;
/// `sizeof(struct neighbor_value)`: mac (0), pad (6).
pub const NEIGHBOR_VALUE_SIZE: usize = 8;
/// `sizeof(struct rev_nat_key)`: vni (0), src_ip (4), dst_ip (8), src_port (12),
/// dst_port (14), proto (16), pad (17).
pub const REV_NAT_KEY_SIZE: usize = 20;
/// `sizeof(struct rev_nat_value)`: vip (0), vip_port (4), pad (6).
pub const REV_NAT_VALUE_SIZE: usize = 8;
/// `sizeof(struct host_cache_value)`: host (0), pad (4), learned_ns (8).
pub const HOST_CACHE_VALUE_SIZE: usize = 16;
/// How long the agent stub trusts a host_cache entry after the transit stub learned it
/// (`HOST_CACHE_TTL_NS`): older entries are misses, so traffic to a pod that was deleted
/// or moved goes back through a bouncer (which re-hints) instead of to its old host.
pub const HOST_CACHE_TTL_NS: u64 = 10_000_000_000;

/// What the stubs count, in the order of `enum stub_counter` in `bpf/sluice.h`.
///
/// `agent_*` and `transit_delivered`/`transit_passed` are packet outcomes, `drop_*` are
/// drops by reason: together they count every packet the programs see exactly once.
/// `agent_reverse_nat` and `transit_host_hint`/`_direct`/`_service_orig` count events on
/// packets already counted by an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// Agent: redirected to a pod on this host without encapsulation.
    AgentSameHost = 0,
    /// Agent: encapsulated to a bouncer.
    AgentEncapBouncer,
    /// Agent: encapsulated straight to the destination's host, with DIRECT.
    AgentEncapDirect,
    /// Agent: a backend's reply had its source rewritten back to the service VIP.
    AgentReverseNat,
    /// Transit: decapsulated and redirected to a local pod.
    TransitDelivered,
    /// Transit: not Geneve for this node, passed to the kernel untouched.
    TransitPassed,
    /// Transit: a HOST_HINT was cached.
    TransitHostHint,
    /// Transit: the sender of a DIRECT packet was cached.
    TransitDirect,
    /// Transit: a SERVICE_ORIG was recorded as a reverse-NAT entry.
    TransitServiceOrig,
    /// Agent: the interface is not in the pods map.
    DropUnknownPod,
    /// Agent: the node's identity is not set yet.
    DropNoNode,
    /// Agent: neither IPv4 nor ARP.
    DropUnsupportedEthertype,
    /// A header runs past the end of the frame, or the IPv4 header is malformed.
    DropTruncated,
    /// Agent: the pod sent from an address that is not its own.
    DropSpoofedSource,
    /// Agent: the pod's entry names no bouncer.
    DropNoBouncer,
    /// Agent: no MAC for the outer destination (neither in the map nor the FIB).
    DropNoNeighbor,
    /// The kernel refused to move the frame's start (pushing or stripping the outer
    /// headers).
    DropEncapFailed,
    /// Transit: Geneve version, protocol or option lengths are wrong.
    DropBadGeneve,
    /// Transit: a Sluice option has the wrong length for its type.
    DropBadOption,
    /// Transit: a critical option this stub does not understand.
    DropUnknownCriticalOption,
    /// Transit: more options than the stub parses.
    DropTooManyOptions,
    /// Transit: no pod on this node has the inner destination.
    DropNoLocalEndpoint,
}

/// Every counter, in slot order.
pub const COUNTERS: [Counter; 22] = [
    Counter::AgentSameHost,
    Counter::AgentEncapBouncer,
    Counter::AgentEncapDirect,
    Counter::AgentReverseNat,
    Counter::TransitDelivered,
    Counter::TransitPassed,
    Counter::TransitHostHint,
    Counter::TransitDirect,
    Counter::TransitServiceOrig,
    Counter::DropUnknownPod,
    Counter::DropNoNode,
    Counter::DropUnsupportedEthertype,
    Counter::DropTruncated,
    Counter::DropSpoofedSource,
    Counter::DropNoBouncer,
    Counter::DropNoNeighbor,
    Counter::DropEncapFailed,
    Counter::DropBadGeneve,
    Counter::DropBadOption,
    Counter::DropUnknownCriticalOption,
    Counter::DropTooManyOptions,
    Counter::DropNoLocalEndpoint,
];

impl Counter {
    /// Stable snake_case label: the C enumerator without its `STUB_CTR_` prefix,
    /// lowercased.
    pub const fn label(self) -> &'static str {
        match self {
            Self::AgentSameHost => "agent_same_host",
            Self::AgentEncapBouncer => "agent_encap_bouncer",
            Self::AgentEncapDirect => "agent_encap_direct",
            Self::AgentReverseNat => "agent_reverse_nat",
            Self::TransitDelivered => "transit_delivered",
            Self::TransitPassed => "transit_passed",
            Self::TransitHostHint => "transit_host_hint",
            Self::TransitDirect => "transit_direct",
            Self::TransitServiceOrig => "transit_service_orig",
            Self::DropUnknownPod => "drop_unknown_pod",
            Self::DropNoNode => "drop_no_node",
            Self::DropUnsupportedEthertype => "drop_unsupported_ethertype",
            Self::DropTruncated => "drop_truncated",
            Self::DropSpoofedSource => "drop_spoofed_source",
            Self::DropNoBouncer => "drop_no_bouncer",
            Self::DropNoNeighbor => "drop_no_neighbor",
            Self::DropEncapFailed => "drop_encap_failed",
            Self::DropBadGeneve => "drop_bad_geneve",
            Self::DropBadOption => "drop_bad_option",
            Self::DropUnknownCriticalOption => "drop_unknown_critical_option",
            Self::DropTooManyOptions => "drop_too_many_options",
            Self::DropNoLocalEndpoint => "drop_no_local_endpoint",
        }
    }
}

/// The flow hash of the stubs (`flow_hash` in `bpf/stubs.bpf.c`) over the inner source
/// and destination (or ARP's sender and target). It picks the bouncer,
/// `bouncers[hash % n]`, and the outer UDP source port,
/// `UDP_SRC_PORT_BASE + hash % UDP_SRC_PORT_RANGE`. Symmetric, so both directions of a
/// flow take the same bouncer.
#[must_use]
pub fn flow_hash(src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
    let mut h = (u32::from(src) ^ u32::from(dst)).wrapping_mul(0x9E37_79B1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^ (h >> 13)
}

fn ip_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn mac_at(bytes: &[u8], at: usize) -> [u8; 6] {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[at..at + 6]);
    mac
}

fn check_len(bytes: &[u8], want: usize, what: &str) -> Result<(), String> {
    if bytes.len() == want {
        Ok(())
    } else {
        Err(format!("{what} of {} bytes, expected {want}", bytes.len()))
    }
}

/// `struct node_config`, the single entry of `node_cfg`.
pub(super) struct NodeConfig {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

impl NodeConfig {
    pub fn encode(&self) -> [u8; NODE_CONFIG_SIZE] {
        let mut b = [0u8; NODE_CONFIG_SIZE];
        b[0..4].copy_from_slice(&self.ip.octets());
        b[4..8].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[8..14].copy_from_slice(&self.mac);
        b
    }
}

/// `struct pod_value`, keyed by the host-side ifindex in `pods`.
#[derive(Debug)]
pub(super) struct PodValue {
    vni: u32,
    ip: Ipv4Addr,
    mac: [u8; 6],
    router_mac: [u8; 6],
    bouncers: Vec<Ipv4Addr>,
}

impl PodValue {
    pub fn from_entry(pod: &PodEntry) -> Result<Self, StubError> {
        let n = pod.bouncers.len();
        if n == 0 || n > MAX_BOUNCERS {
            return Err(StubError::InvalidPod(format!(
                "pod {} (VNI {}): {n} bouncers, expected 1 to {MAX_BOUNCERS}",
                pod.ip, pod.vni
            )));
        }
        if pod.vni >= 1 << 24 {
            return Err(StubError::InvalidPod(format!(
                "pod {}: VNI {} does not fit 24 bits",
                pod.ip, pod.vni
            )));
        }
        Ok(PodValue {
            vni: pod.vni,
            ip: pod.ip,
            mac: pod.mac,
            router_mac: pod.router_mac,
            bouncers: pod.bouncers.clone(),
        })
    }

    pub fn encode(&self) -> [u8; POD_VALUE_SIZE] {
        let mut b = [0u8; POD_VALUE_SIZE];
        b[0..4].copy_from_slice(&self.vni.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ip.octets());
        b[8..14].copy_from_slice(&self.mac);
        b[14..20].copy_from_slice(&self.router_mac);
        // At most MAX_BOUNCERS (checked in from_entry), so the cast is lossless.
        b[20..24].copy_from_slice(&(self.bouncers.len() as u32).to_ne_bytes());
        for (i, bouncer) in self.bouncers.iter().enumerate() {
            b[24 + 4 * i..28 + 4 * i].copy_from_slice(&bouncer.octets());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        check_len(b, POD_VALUE_SIZE, "value")?;
        let count = u32_at(b, 20) as usize;
        if count == 0 || count > MAX_BOUNCERS {
            return Err(format!("bouncer count {count}"));
        }
        Ok(PodValue {
            vni: u32_at(b, 0),
            ip: ip_at(b, 4),
            mac: mac_at(b, 8),
            router_mac: mac_at(b, 14),
            bouncers: (0..count).map(|i| ip_at(b, 24 + 4 * i)).collect(),
        })
    }

    pub fn into_entry(self) -> PodEntry {
        PodEntry {
            vni: self.vni,
            ip: self.ip,
            mac: self.mac,
            router_mac: self.router_mac,
            bouncers: self.bouncers,
        }
    }
}

/// `struct endpoint_key`: the key of `endpoints` and `host_cache`.
pub(super) struct EndpointKey {
    pub vni: u32,
    pub ip: Ipv4Addr,
}

impl EndpointKey {
    pub fn encode(&self) -> [u8; ENDPOINT_KEY_SIZE] {
        let mut b = [0u8; ENDPOINT_KEY_SIZE];
        b[0..4].copy_from_slice(&self.vni.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ip.octets());
        b
    }
}

/// `struct host_cache_value`: a remote endpoint's host and when the transit stub learned
/// it (`bpf_ktime_get_ns`, CLOCK_MONOTONIC nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HostCacheValue {
    pub host: Ipv4Addr,
    pub learned_ns: u64,
}

impl HostCacheValue {
    pub fn encode(&self) -> [u8; HOST_CACHE_VALUE_SIZE] {
        let mut b = [0u8; HOST_CACHE_VALUE_SIZE];
        b[0..4].copy_from_slice(&self.host.octets());
        b[8..16].copy_from_slice(&self.learned_ns.to_ne_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        check_len(b, HOST_CACHE_VALUE_SIZE, "value")?;
        let mut learned = [0u8; 8];
        learned.copy_from_slice(&b[8..16]);
        Ok(HostCacheValue {
            host: ip_at(b, 0),
            learned_ns: u64::from_ne_bytes(learned),
        })
    }
}

/// `struct endpoint_value`: a local pod's host-side ifindex and pod-side MAC.
pub(super) struct EndpointValue {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl EndpointValue {
    pub fn encode(&self) -> [u8; ENDPOINT_VALUE_SIZE] {
        let mut b = [0u8; ENDPOINT_VALUE_SIZE];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..10].copy_from_slice(&self.mac);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        check_len(b, ENDPOINT_VALUE_SIZE, "value")?;
        Ok(EndpointValue {
            ifindex: u32_at(b, 0),
            mac: mac_at(b, 4),
        })
    }
}

/// A key of `rev_nat`: the reply flow of a service backend, as the backend sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub vni: u32,
    /// IP protocol, 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// The backend's address and port (the reply's source).
    pub src_ip: Ipv4Addr,
    pub src_port: u16,
    /// The client's address and port (the reply's destination).
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
}

impl RevNatKey {
    pub fn encode(&self) -> [u8; REV_NAT_KEY_SIZE] {
        let mut b = [0u8; REV_NAT_KEY_SIZE];
        b[0..4].copy_from_slice(&self.vni.to_ne_bytes());
        b[4..8].copy_from_slice(&self.src_ip.octets());
        b[8..12].copy_from_slice(&self.dst_ip.octets());
        b[12..14].copy_from_slice(&self.src_port.to_be_bytes());
        b[14..16].copy_from_slice(&self.dst_port.to_be_bytes());
        b[16] = self.proto;
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        check_len(b, REV_NAT_KEY_SIZE, "key")?;
        Ok(RevNatKey {
            vni: u32_at(b, 0),
            src_ip: ip_at(b, 4),
            dst_ip: ip_at(b, 8),
            src_port: u16::from_be_bytes([b[12], b[13]]),
            dst_port: u16::from_be_bytes([b[14], b[15]]),
            proto: b[16],
        })
    }
}

/// A value of `rev_nat`: the service address the reply must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    pub vip: Ipv4Addr,
    pub vip_port: u16,
}

impl RevNatValue {
    pub fn encode(&self) -> [u8; REV_NAT_VALUE_SIZE] {
        let mut b = [0u8; REV_NAT_VALUE_SIZE];
        b[0..4].copy_from_slice(&self.vip.octets());
        b[4..6].copy_from_slice(&self.vip_port.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        check_len(b, REV_NAT_VALUE_SIZE, "value")?;
        Ok(RevNatValue {
            vip: ip_at(b, 0),
            vip_port: u16::from_be_bytes([b[4], b[5]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_in_slot_order() {
        for (i, c) in COUNTERS.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.label());
        }
    }

    #[test]
    fn pod_value_round_trips() {
        let pod = PodEntry {
            vni: 0x00AB_CDEF,
            ip: Ipv4Addr::new(10, 1, 2, 3),
            mac: [2, 0, 0, 0, 0, 1],
            router_mac: [2, 0, 0, 0, 0, 0xfe],
            bouncers: vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)],
        };
        let bytes = PodValue::from_entry(&pod).unwrap().encode();
        assert_eq!(&bytes[4..8], &[10, 1, 2, 3]);
        assert_eq!(&bytes[24..28], &[198, 18, 0, 1]);
        assert_eq!(PodValue::decode(&bytes).unwrap().into_entry(), pod);
    }

    #[test]
    fn pod_values_out_of_range_are_refused() {
        let mut pod = PodEntry {
            vni: 1,
            ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: [0; 6],
            router_mac: [0; 6],
            bouncers: vec![],
        };
        assert!(PodValue::from_entry(&pod).is_err());
        pod.bouncers = vec![Ipv4Addr::new(198, 18, 0, 1); MAX_BOUNCERS + 1];
        assert!(PodValue::from_entry(&pod).is_err());
        pod.bouncers.truncate(1);
        pod.vni = 1 << 24;
        assert!(PodValue::from_entry(&pod).is_err());
    }

    #[test]
    fn rev_nat_key_round_trips() {
        let key = RevNatKey {
            vni: 7,
            proto: 6,
            src_ip: Ipv4Addr::new(10, 0, 0, 2),
            src_port: 8080,
            dst_ip: Ipv4Addr::new(10, 0, 0, 3),
            dst_port: 40000,
        };
        assert_eq!(RevNatKey::decode(&key.encode()).unwrap(), key);
    }
}
