//! Test support (feature `testkit`): a standard tenant world, packet builders and a
//! decoder, for unit tests, property tests, benches and the fuzz target.
//!
//! Packets are built and decoded with `etherparse` plus hand-written Geneve bytes, never
//! with this crate's own `wire` module, so that tests of the pipeline check it against an
//! independent implementation.

use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use sluice_api::{
    Backend, Endpoint, Host, MacAddr, Object, Protocol, Service, Subnet, Transaction, Vni, Vpc,
};

use crate::pipeline::Local;
use crate::tables::TableWriter;

/// Headroom in front of every built packet, as an AF_XDP frame would have.
pub const HEADROOM: usize = 256;

pub const GENEVE_PORT: u16 = 6081;
pub const OPTION_CLASS: u16 = 0xFF01;

/// Underlay addresses of the standard world (198.18.0.0/15, the benchmarking range).
pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
/// The divider of VPC A.
pub const GW2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GW2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
/// The bouncer of subnet A3 (this gateway does not know A3's endpoints).
pub const GW3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const GW3_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
pub const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub const H1_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x11]);
pub const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
pub const H2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x12]);
pub const H3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
pub const H3_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x13]);

pub const VNI_A: u32 = 100;
pub const VNI_B: u32 = 200;
pub const ROUTER_A1_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 1, 1]);
pub const ROUTER_A2_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 2, 1]);
pub const ROUTER_A3_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 3, 1]);
pub const ROUTER_B1_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 1, 1]);

/// Pods of VPC A: two in subnet A1 (10.0.1.0/24), one in A2 (10.0.2.0/24).
pub const POD_A1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const POD_A1_MAC: MacAddr = MacAddr([0x0a, 0x58, 10, 0, 1, 10]);
pub const POD_A1B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
pub const POD_A1B_MAC: MacAddr = MacAddr([0x0a, 0x58, 10, 0, 1, 11]);
pub const POD_A2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);
pub const POD_A2_MAC: MacAddr = MacAddr([0x0a, 0x58, 10, 0, 2, 10]);
/// In subnet A3, bounced by GW3: unknown here.
pub const POD_A3: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 10);
/// VPC B overlaps VPC A: the same address lives on another host with another MAC.
pub const POD_B1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const POD_B1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0xbb, 0, 1, 10]);

/// TCP service of VPC A with three backends; UDP service with one.
pub const VIP_TCP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const VIP_TCP_PORT: u16 = 80;
pub const VIP_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
pub const VIP_UDP_PORT: u16 = 53;
/// A VIP with a service whose backends are all drained.
pub const VIP_DRAINED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);

pub fn vni(value: u32) -> Vni {
    Vni::new(value).expect("test VNI in range")
}

/// This gateway: GW, bouncer of A1, A2 and B1; not a divider.
pub fn local() -> Local {
    Local::new(GW, GW_MAC)
}

/// The standard world as one transaction.
pub fn world() -> Transaction {
    let host = |ip, mac| Object::Host(Host { ip, mac });
    let subnet = |vni_value, cidr: &str, router_mac, bouncers| {
        Object::Subnet(Subnet {
            vni: vni(vni_value),
            cidr: cidr.parse().expect("test CIDR"),
            router_mac,
            bouncers,
        })
    };
    let endpoint = |vni_value, ip, mac, host| {
        Object::Endpoint(Endpoint {
            vni: vni(vni_value),
            ip,
            mac,
            host,
        })
    };
    let backend = |ip, port, weight| Backend { ip, port, weight };
    Transaction {
        upserts: vec![
            host(GW, GW_MAC),
            host(GW2, GW2_MAC),
            host(GW3, GW3_MAC),
            host(H1, H1_MAC),
            host(H2, H2_MAC),
            host(H3, H3_MAC),
            Object::Vpc(Vpc {
                vni: vni(VNI_A),
                cidr: "10.0.0.0/16".parse().expect("test CIDR"),
                service_cidr: "10.96.0.0/12".parse().expect("test CIDR"),
                dividers: vec![GW2],
            }),
            Object::Vpc(Vpc {
                vni: vni(VNI_B),
                cidr: "10.0.0.0/16".parse().expect("test CIDR"),
                service_cidr: "10.96.0.0/12".parse().expect("test CIDR"),
                dividers: vec![GW2],
            }),
            subnet(VNI_A, "10.0.1.0/24", ROUTER_A1_MAC, vec![GW]),
            subnet(VNI_A, "10.0.2.0/24", ROUTER_A2_MAC, vec![GW]),
            subnet(VNI_A, "10.0.3.0/24", ROUTER_A3_MAC, vec![GW3]),
            subnet(VNI_B, "10.0.1.0/24", ROUTER_B1_MAC, vec![GW]),
            endpoint(VNI_A, POD_A1, POD_A1_MAC, H1),
            endpoint(VNI_A, POD_A1B, POD_A1B_MAC, H2),
            endpoint(VNI_A, POD_A2, POD_A2_MAC, H3),
            endpoint(VNI_B, POD_B1, POD_B1_MAC, H3),
            Object::Service(Service {
                vni: vni(VNI_A),
                vip: VIP_TCP,
                port: VIP_TCP_PORT,
                protocol: Protocol::Tcp,
                backends: vec![
                    backend(POD_A1, 8080, 1),
                    backend(POD_A1B, 8080, 1),
                    backend(POD_A2, 8080, 1),
                ],
            }),
            Object::Service(Service {
                vni: vni(VNI_A),
                vip: VIP_UDP,
                port: VIP_UDP_PORT,
                protocol: Protocol::Udp,
                backends: vec![backend(POD_A2, 5353, 1)],
            }),
            Object::Service(Service {
                vni: vni(VNI_A),
                vip: VIP_DRAINED,
                port: 80,
                protocol: Protocol::Tcp,
                backends: vec![backend(POD_A2, 8080, 0)],
            }),
        ],
        deletes: vec![],
    }
}

/// Tables holding the standard world.
pub fn world_tables() -> TableWriter {
    let mut writer = TableWriter::new();
    writer.apply(&world()).expect("the standard world is valid");
    writer
}

/// A raw Geneve option: class, type, body (a multiple of 4 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOption {
    pub class: u16,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl RawOption {
    pub fn host_hint(endpoint: Ipv4Addr, host: Ipv4Addr) -> Self {
        let mut body = endpoint.octets().to_vec();
        body.extend_from_slice(&host.octets());
        Self {
            class: OPTION_CLASS,
            kind: 0x01,
            body,
        }
    }

    pub fn direct() -> Self {
        Self {
            class: OPTION_CLASS,
            kind: 0x02,
            body: vec![],
        }
    }

    pub fn service_orig(vip: Ipv4Addr, port: u16, protocol: u8) -> Self {
        let mut body = vip.octets().to_vec();
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&[protocol, 0]);
        Self {
            class: OPTION_CLASS,
            kind: 0x03,
            body,
        }
    }

    pub fn stale(endpoint: Ipv4Addr) -> Self {
        Self {
            class: OPTION_CLASS,
            kind: 0x04,
            body: endpoint.octets().to_vec(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.class.to_be_bytes());
        out.push(self.kind);
        out.push((self.body.len() / 4) as u8 & 0x1f);
        out.extend_from_slice(&self.body);
    }
}

/// The outer headers of a packet arriving at the gateway.
#[derive(Clone, Debug)]
pub struct OuterSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub vni: u32,
    pub options: Vec<RawOption>,
}

impl OuterSpec {
    /// From worker host `src` (with MAC `src_mac`) to the gateway, on `vni`.
    pub fn from_host(src: Ipv4Addr, src_mac: MacAddr, vni: u32) -> Self {
        Self {
            src_mac,
            dst_mac: GW_MAC,
            src_ip: src,
            dst_ip: GW,
            src_port: 50_000,
            vni,
            options: vec![],
        }
    }

    pub fn with_option(mut self, option: RawOption) -> Self {
        self.options.push(option);
        self
    }
}

/// Geneve header plus options, by hand (RFC 8926).
pub fn geneve_header(vni: u32, options: &[RawOption]) -> Vec<u8> {
    let mut opts = Vec::new();
    for option in options {
        option.write(&mut opts);
    }
    let mut out = vec![(opts.len() / 4) as u8 & 0x3f, 0];
    out.extend_from_slice(&0x6558u16.to_be_bytes());
    out.extend_from_slice(&(vni << 8).to_be_bytes());
    out.extend_from_slice(&opts);
    out
}

/// A whole underlay packet: outer Ethernet/IPv4/UDP by etherparse, Geneve by hand.
pub fn geneve_packet(outer: &OuterSpec, inner: &[u8]) -> Vec<u8> {
    let mut payload = geneve_header(outer.vni, &outer.options);
    payload.extend_from_slice(inner);
    let builder = PacketBuilder::ethernet2(outer.src_mac.0, outer.dst_mac.0)
        .ipv4(outer.src_ip.octets(), outer.dst_ip.octets(), 64)
        .udp(outer.src_port, GENEVE_PORT);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, &payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// `packet` preceded by [`HEADROOM`] zero bytes; the packet starts at `HEADROOM`.
pub fn with_headroom(packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + packet.len()];
    buf[HEADROOM..].copy_from_slice(packet);
    buf
}

/// Inner Ethernet/IPv4/UDP frame.
pub fn inner_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(ports.0, ports.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Inner Ethernet/IPv4/TCP frame (a SYN-ACK-less data segment).
pub fn inner_tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(ports.0, ports.1, 0x1234_5678, 65_535);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Inner Ethernet/IPv4/ICMP echo request.
pub fn inner_icmp(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(7, 1);
    let payload = [0x5a; 32];
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, &payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Inner ARP request (Ethernet broadcast) from `sender` asking for `target`.
pub fn inner_arp_request(sender_mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&sender_mac.0);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&sender_mac.0);
    out.extend_from_slice(&sender.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// An underlay packet as the gateway emitted it, decoded independently.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub outer_dst_mac: [u8; 6],
    pub outer_src_mac: [u8; 6],
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub outer_ttl: u8,
    pub outer_dont_fragment: bool,
    pub outer_ip_checksum_ok: bool,
    pub udp_src_port: u16,
    pub udp_dst_port: u16,
    pub udp_checksum: u16,
    pub vni: u32,
    pub options: Vec<RawOption>,
    pub inner: Vec<u8>,
}

impl Decoded {
    pub fn option(&self, kind: u8) -> Option<&RawOption> {
        self.options
            .iter()
            .find(|o| o.class == OPTION_CLASS && o.kind == kind)
    }
}

/// Decodes an underlay Geneve packet; `Err` names what is wrong with it.
pub fn decode(packet: &[u8]) -> Result<Decoded, String> {
    let sliced = SlicedPacket::from_ethernet(packet).map_err(|e| format!("outer: {e}"))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = sliced.link else {
        return Err("outer: no Ethernet II header".into());
    };
    let Some(NetSlice::Ipv4(ip_slice)) = &sliced.net else {
        return Err("outer: not IPv4".into());
    };
    let ip = ip_slice.header().to_header();
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        return Err("outer: not UDP".into());
    };
    let ip_checksum_ok = ip.calc_header_checksum() == ip.header_checksum;
    let geneve = udp.payload();
    if geneve.len() < 8 {
        return Err("geneve: truncated".into());
    }
    if geneve[0] >> 6 != 0 {
        return Err("geneve: version".into());
    }
    let opt_len = usize::from(geneve[0] & 0x3f) * 4;
    if geneve.len() < 8 + opt_len {
        return Err("geneve: options truncated".into());
    }
    if u16::from_be_bytes([geneve[2], geneve[3]]) != 0x6558 {
        return Err("geneve: protocol".into());
    }
    let vni = u32::from_be_bytes([geneve[4], geneve[5], geneve[6], geneve[7]]) >> 8;
    let mut options = Vec::new();
    let mut rest = &geneve[8..8 + opt_len];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("geneve: option header truncated".into());
        }
        let body_len = usize::from(rest[3] & 0x1f) * 4;
        if rest.len() < 4 + body_len {
            return Err("geneve: option body truncated".into());
        }
        options.push(RawOption {
            class: u16::from_be_bytes([rest[0], rest[1]]),
            kind: rest[2],
            body: rest[4..4 + body_len].to_vec(),
        });
        rest = &rest[4 + body_len..];
    }
    Ok(Decoded {
        outer_dst_mac: eth.destination(),
        outer_src_mac: eth.source(),
        outer_src: Ipv4Addr::from(ip.source),
        outer_dst: Ipv4Addr::from(ip.destination),
        outer_ttl: ip.time_to_live,
        outer_dont_fragment: ip.dont_fragment,
        outer_ip_checksum_ok: ip_checksum_ok,
        udp_src_port: udp.source_port(),
        udp_dst_port: udp.destination_port(),
        udp_checksum: udp.checksum(),
        vni,
        options,
        inner: geneve[8 + opt_len..].to_vec(),
    })
}

/// Whether the inner frame's IPv4 header checksum and its TCP or UDP checksum are right,
/// as etherparse computes them. `Err` names the first wrong one.
pub fn check_inner_checksums(inner: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(inner).map_err(|e| format!("inner: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = sliced.net else {
        return Ok(());
    };
    let header = ip.header().to_header();
    if header.calc_header_checksum() != header.header_checksum {
        return Err("inner IPv4 header checksum".into());
    }
    match sliced.transport {
        Some(TransportSlice::Udp(udp)) => {
            let stored = udp.checksum();
            if stored != 0 {
                let computed = udp
                    .to_header()
                    .calc_checksum_ipv4(&header, udp.payload())
                    .map_err(|e| format!("udp: {e}"))?;
                if computed != stored {
                    return Err(format!(
                        "inner UDP checksum {stored:#06x}, want {computed:#06x}"
                    ));
                }
            }
        }
        Some(TransportSlice::Tcp(tcp)) => {
            let computed = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .map_err(|e| format!("tcp: {e}"))?;
            if computed != tcp.checksum() {
                return Err(format!(
                    "inner TCP checksum {:#06x}, want {computed:#06x}",
                    tcp.checksum()
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sets the inner IPv4 TTL of an Ethernet frame and recomputes its header checksum.
pub fn set_inner_ttl(frame: &mut [u8], ttl: u8) {
    frame[14 + 8] = ttl;
    fix_ipv4_checksum(frame, 14);
}

/// Recomputes the IPv4 header checksum of the header at `offset` (IHL honoured).
pub fn fix_ipv4_checksum(packet: &mut [u8], offset: usize) {
    let header_len = usize::from(packet[offset] & 0x0f) * 4;
    packet[offset + 10] = 0;
    packet[offset + 11] = 0;
    let mut sum = 0u32;
    for chunk in packet[offset..offset + header_len].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    packet[offset + 10..offset + 12].copy_from_slice(&checksum.to_be_bytes());
}

/// A world of any size, for benches: VPC 100 (10.0.0.0/8, services in 172.16.0.0/12),
/// `endpoints` pods spread round-robin over /16 subnets (at least two) and over 1,000
/// worker hosts, and `services` TCP services on port 80 with `backends` backends each.
/// This gateway (GW) bounces every subnet; GW2 is the divider.
#[derive(Clone, Debug)]
pub struct ScaledWorld {
    pub endpoints: usize,
    pub services: usize,
    pub backends: usize,
    pub subnets: usize,
}

impl ScaledWorld {
    pub const WORKER_HOSTS: usize = 1_000;
    const PER_SUBNET: usize = 65_000;

    pub fn new(endpoints: usize, services: usize, backends: usize) -> Self {
        let subnets = endpoints.div_ceil(Self::PER_SUBNET).max(2);
        Self {
            endpoints,
            services,
            backends,
            subnets,
        }
    }

    pub fn host(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
    }

    pub fn host_mac(i: usize) -> MacAddr {
        MacAddr([0x02, 0x01, 0, 0, (i >> 8) as u8, i as u8])
    }

    /// The subnet index and address of endpoint `i`.
    pub fn endpoint(&self, i: usize) -> (usize, Ipv4Addr) {
        let subnet = i % self.subnets;
        let k = 10 + i / self.subnets;
        (
            subnet,
            Ipv4Addr::new(10, subnet as u8, (k >> 8) as u8, k as u8),
        )
    }

    pub fn endpoint_mac(&self, i: usize) -> MacAddr {
        MacAddr([
            0x0a,
            0x58,
            (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ])
    }

    pub fn router_mac(subnet: usize) -> MacAddr {
        MacAddr([0x02, 0xaa, 0, 0, subnet as u8, 1])
    }

    pub fn vip(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 16 + (j >> 16) as u8, (j >> 8) as u8, j as u8)
    }

    /// The whole world as one transaction.
    pub fn transaction(&self) -> Transaction {
        let mut upserts = vec![
            Object::Host(Host {
                ip: GW,
                mac: GW_MAC,
            }),
            Object::Host(Host {
                ip: GW2,
                mac: GW2_MAC,
            }),
        ];
        for i in 0..Self::WORKER_HOSTS {
            upserts.push(Object::Host(Host {
                ip: Self::host(i),
                mac: Self::host_mac(i),
            }));
        }
        upserts.push(Object::Vpc(Vpc {
            vni: vni(VNI_A),
            cidr: "10.0.0.0/8".parse().expect("test CIDR"),
            service_cidr: "172.16.0.0/12".parse().expect("test CIDR"),
            dividers: vec![GW2],
        }));
        for s in 0..self.subnets {
            upserts.push(Object::Subnet(Subnet {
                vni: vni(VNI_A),
                cidr: format!("10.{s}.0.0/16").parse().expect("test CIDR"),
                router_mac: Self::router_mac(s),
                bouncers: vec![GW],
            }));
        }
        for i in 0..self.endpoints {
            upserts.push(Object::Endpoint(Endpoint {
                vni: vni(VNI_A),
                ip: self.endpoint(i).1,
                mac: self.endpoint_mac(i),
                host: Self::host(i % Self::WORKER_HOSTS),
            }));
        }
        for j in 0..self.services {
            let backends = (0..self.backends)
                .map(|k| Backend {
                    ip: self.endpoint((j * self.backends + k) % self.endpoints).1,
                    // Distinct ports keep backends distinct when endpoints are few.
                    port: 8000 + k as u16,
                    weight: 1,
                })
                .collect();
            upserts.push(Object::Service(Service {
                vni: vni(VNI_A),
                vip: Self::vip(j),
                port: 80,
                protocol: Protocol::Tcp,
                backends,
            }));
        }
        Transaction {
            upserts,
            deletes: vec![],
        }
    }

    pub fn tables(&self) -> TableWriter {
        let mut writer = TableWriter::new();
        writer
            .apply(&self.transaction())
            .expect("the scaled world is valid");
        writer
    }

    /// The host that endpoint `i` lives on.
    pub fn endpoint_host(&self, i: usize) -> Ipv4Addr {
        Self::host(i % Self::WORKER_HOSTS)
    }
}

/// A small deterministic generator (xorshift64*) so benches and tests need no RNG crate.
#[derive(Clone, Debug)]
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The gateway paths the benches measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchPath {
    /// Same-subnet bounce to a known endpoint.
    Bounce,
    /// Cross-subnet routing to a known endpoint.
    Route,
    /// Service DNAT to a backend.
    Dnat,
    /// ARP request for a peer, answered with a HOST_HINT.
    Arp,
}

impl BenchPath {
    pub const ALL: [BenchPath; 4] = [Self::Bounce, Self::Route, Self::Dnat, Self::Arp];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Bounce => "bounce",
            Self::Route => "route",
            Self::Dnat => "dnat",
            Self::Arp => "arp",
        }
    }
}

impl ScaledWorld {
    /// `count` packets of `path` between random endpoints (and services) of the whole
    /// table, each from its source's host. Inner frames are 60 bytes (64 with FCS).
    pub fn flows(&self, path: BenchPath, count: usize, seed: u64) -> Vec<Vec<u8>> {
        // 14 + 20 + 8 + 18 and 14 + 20 + 20 + 6 bytes.
        const UDP_PAYLOAD: [u8; 18] = [0x5a; 18];
        const TCP_PAYLOAD: [u8; 6] = [0x5a; 6];
        let mut rng = Xorshift(seed | 1);
        let (n, subnets) = (self.endpoints, self.subnets);
        (0..count)
            .map(|_| {
                let a = rng.below(n);
                let (sa, src) = self.endpoint(a);
                let src_mac = self.endpoint_mac(a);
                let host = a % Self::WORKER_HOSTS;
                let outer = OuterSpec::from_host(Self::host(host), Self::host_mac(host), VNI_A);
                let inner = match path {
                    BenchPath::Bounce => {
                        let mut b = rng.below(n / subnets) * subnets + sa;
                        if b == a {
                            b = (a + subnets) % n;
                        }
                        let (_, dst) = self.endpoint(b);
                        inner_udp(
                            src_mac,
                            self.endpoint_mac(b),
                            src,
                            dst,
                            (1000, 2000),
                            &UDP_PAYLOAD,
                        )
                    }
                    BenchPath::Route => {
                        let mut b = rng.below(n);
                        if b % subnets == sa {
                            b = (b + 1) % n;
                        }
                        let (_, dst) = self.endpoint(b);
                        inner_udp(
                            src_mac,
                            Self::router_mac(sa),
                            src,
                            dst,
                            (1000, 2000),
                            &UDP_PAYLOAD,
                        )
                    }
                    BenchPath::Dnat => {
                        let vip = Self::vip(rng.below(self.services));
                        let port = 1024 + rng.below(60_000) as u16;
                        inner_tcp(
                            src_mac,
                            Self::router_mac(sa),
                            src,
                            vip,
                            (port, 80),
                            &TCP_PAYLOAD,
                        )
                    }
                    BenchPath::Arp => {
                        let (_, dst) = self.endpoint((a + subnets) % n);
                        inner_arp_request(src_mac, src, dst)
                    }
                };
                geneve_packet(&outer, &inner)
            })
            .collect()
    }
}
