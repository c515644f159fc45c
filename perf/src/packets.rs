//! The generator's frames: one template per run, and the bytes that make flow `i` of it.
//!
//! A template is a 60-byte Ethernet/IPv4/UDP frame (64 on the wire with the FCS), alone
//! (`plain`) or inside Geneve (`geneve`: outer Ethernet/IPv4/UDP/Geneve, then that 60-byte
//! inner frame). The *flow header* is the IPv4/UDP header that varies per flow: the outer
//! one of a plain frame, the inner one of a Geneve frame. Flow `i` gets source port
//! `1024 + i % 60000`, source address `base + i / 60000`, and, when the run targets
//! `services` services, destination address `vip_base + i % services`. UDP checksums are
//! zero (no checksum, valid for IPv4); the flow header's IPv4 checksum is recomputed.
//!
//! The frame's last 16 bytes are the stamp area: "SLUICETS" and CLOCK_MONOTONIC
//! nanoseconds, read by the sink program (bpf/bench.bpf.c) for one-way delay.

use std::net::Ipv4Addr;

use sluice_api::MacAddr;
use sluice_dataplane::testkit::{geneve_packet, inner_udp, OuterSpec};

/// The stamp's magic, as the sink reads it.
pub const STAMP_MAGIC: [u8; 8] = *b"SLUICETS";
/// UDP payload bytes that make a 60-byte Ethernet/IPv4/UDP frame.
pub const PAYLOAD_64: usize = 60 - 14 - 20 - 8;
/// Distinct source ports per source address.
pub const PORTS_PER_ADDRESS: u32 = 60_000;

/// One side's addresses.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// What the generator sends.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Underlay (outer) source and destination.
    pub src: Addrs,
    pub dst: Addrs,
    /// `Some` for Geneve: the VNI and the inner frame's source and destination.
    pub geneve: Option<(u32, Addrs, Addrs)>,
    /// Destination UDP port of the flow header.
    pub port: u16,
    /// Distinct flows (1..=16,000,000).
    pub flows: u32,
    /// When non-zero, flow `i` goes to `vip_base + i % services` (the flow header's
    /// destination address).
    pub services: u32,
    pub vip_base: Ipv4Addr,
}

/// A built template and where its flow header sits.
#[derive(Clone, Debug)]
pub struct Template {
    pub frame: Vec<u8>,
    /// Offset of the flow header's IPv4 header.
    pub ip_offset: usize,
    base_src: u32,
    vip_base: u32,
    services: u32,
}

impl Template {
    pub fn new(spec: &Spec) -> Self {
        let payload = [0u8; PAYLOAD_64];
        let (frame, ip_offset, base_src) = match spec.geneve {
            None => (
                inner_udp(
                    spec.src.mac,
                    spec.dst.mac,
                    spec.src.ip,
                    spec.dst.ip,
                    (1024, spec.port),
                    &payload,
                ),
                14,
                spec.src.ip,
            ),
            Some((vni, inner_src, inner_dst)) => {
                let inner = inner_udp(
                    inner_src.mac,
                    inner_dst.mac,
                    inner_src.ip,
                    inner_dst.ip,
                    (1024, spec.port),
                    &payload,
                );
                let outer = OuterSpec {
                    src_mac: spec.src.mac,
                    dst_mac: spec.dst.mac,
                    src_ip: spec.src.ip,
                    dst_ip: spec.dst.ip,
                    src_port: 50_000,
                    vni,
                    options: vec![],
                };
                let frame = geneve_packet(&outer, &inner);
                // Outer Ethernet, IPv4, UDP and an 8-byte Geneve header, then the inner
                // Ethernet header.
                (frame, 14 + 20 + 8 + 8 + 14, inner_src.ip)
            }
        };
        let mut template = Self {
            frame,
            ip_offset,
            base_src: u32::from(base_src),
            vip_base: u32::from(spec.vip_base),
            services: spec.services,
        };
        // Zero the UDP checksums (outer Geneve UDP too: the gateway rewrites the outer
        // headers anyway, and zero is what the wire contract sends).
        let udp = template.ip_offset + 20;
        template.frame[udp + 6..udp + 8].fill(0);
        if spec.geneve.is_some() {
            template.frame[14 + 20 + 6..14 + 20 + 8].fill(0);
        }
        let mut first = template.frame.clone();
        template.patch(&mut first, 0);
        template.frame = first;
        template
    }

    /// Writes flow `flow`'s header fields into `frame` (a copy of [`Self::frame`]).
    pub fn patch(&self, frame: &mut [u8], flow: u32) {
        if frame.len() < self.frame.len() {
            return;
        }
        let ip = self.ip_offset;
        let src = self.base_src.wrapping_add(flow / PORTS_PER_ADDRESS);
        frame[ip + 12..ip + 16].copy_from_slice(&src.to_be_bytes());
        if self.services > 0 {
            let dst = self.vip_base.wrapping_add(flow % self.services);
            frame[ip + 16..ip + 20].copy_from_slice(&dst.to_be_bytes());
        }
        let port = 1024 + (flow % PORTS_PER_ADDRESS) as u16;
        frame[ip + 20..ip + 22].copy_from_slice(&port.to_be_bytes());
        frame[ip + 10..ip + 12].fill(0);
        let sum = ipv4_checksum(&frame[ip..ip + 20]);
        frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    }

    /// Writes the stamp area (the last 16 bytes).
    pub fn stamp(frame: &mut [u8], monotonic_ns: u64) {
        let n = frame.len();
        if n < 16 {
            return;
        }
        frame[n - 16..n - 8].copy_from_slice(&STAMP_MAGIC);
        frame[n - 8..].copy_from_slice(&monotonic_ns.to_le_bytes());
    }
}

/// The IPv4 header checksum of `header` (its checksum field zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::testkit::decode;

    fn addrs(last: u8) -> Addrs {
        Addrs {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ip: Ipv4Addr::new(198, 18, 0, last),
        }
    }

    fn plain(flows: u32, services: u32) -> Spec {
        Spec {
            src: addrs(11),
            dst: addrs(1),
            geneve: None,
            port: 80,
            flows,
            services,
            vip_base: Ipv4Addr::new(198, 19, 128, 0),
        }
    }

    #[test]
    fn plain_frames_are_64_bytes_on_the_wire_with_valid_ip_checksums() {
        let t = Template::new(&plain(1_000_000, 0));
        assert_eq!(t.frame.len(), 60);
        let mut f = t.frame.clone();
        t.patch(&mut f, 999_999);
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "a valid header sums to zero");
        assert_eq!(&f[26..30], &[198, 18, 0, 11 + 16]);
        assert_eq!(
            u16::from_be_bytes([f[34], f[35]]),
            1024 + (999_999 % 60_000) as u16
        );
    }

    #[test]
    fn services_spread_flows_over_vips() {
        let t = Template::new(&plain(10, 5));
        let mut f = t.frame.clone();
        t.patch(&mut f, 7);
        assert_eq!(&f[30..34], &[198, 19, 128, 2]);
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }

    #[test]
    fn geneve_frames_carry_a_64_byte_inner_frame_and_the_stamp_at_the_end() {
        let spec = Spec {
            geneve: Some((100, addrs(21), addrs(22))),
            ..plain(10, 0)
        };
        let t = Template::new(&spec);
        let mut f = t.frame.clone();
        t.patch(&mut f, 3);
        Template::stamp(&mut f, 42);
        let d = decode(&f).expect("a Geneve frame");
        assert_eq!(d.inner.len(), 60);
        assert_eq!(&f[f.len() - 16..f.len() - 8], b"SLUICETS");
        assert_eq!(ipv4_checksum(&f[t.ip_offset..t.ip_offset + 20]), 0);
    }
}
