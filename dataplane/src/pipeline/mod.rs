//! The gateway's per-packet logic: `process(tables, local, frame) -> Verdict`.
//!
//! A pure function over the tables and one frame, rewritten in place: no I/O, no
//! allocation, no locks, so it is unit-tested, fuzzed and benchmarked without sockets and
//! the engine calls it for each frame of a batch. It implements every packet path of the
//! design: the ARP responder (with HOST_HINT), same-subnet bounce, cross-subnet routing
//! through the divider role, and service DNAT (with SERVICE_ORIG). Anything else is a
//! [`Verdict::Drop`] with a [`DropReason`].
//!
//! Tenant isolation: every lookup is keyed by the VNI the packet arrived with, and the
//! packet always leaves with that same VNI.

mod arp;
mod bytes;
mod frame;
mod ipv4;
mod outer;
mod verdict;

use std::net::Ipv4Addr;

use sluice_api::MacAddr;

pub use frame::Frame;
pub use ipv4::pair_hash;
pub use verdict::{DropCounters, DropReason, ServiceHit, Verdict};

use crate::tables::maglev::flow_hash;
use crate::tables::Tables;
use crate::wire::ethernet;
use outer::Encap;

/// Bytes of headroom a frame needs in front of its data so that the gateway can always
/// attach its options (two options of 12 bytes, beyond a bare 50-byte outer header).
pub const REQUIRED_HEADROOM: usize = 24;

/// The gateway's own underlay identity on the interface the frame arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The outer headers every packet this gateway sends starts from.
    template: outer::OuterTemplate,
}

impl Local {
    pub const fn new(ip: Ipv4Addr, mac: MacAddr) -> Self {
        Self {
            ip,
            mac,
            template: outer::OuterTemplate::new(ip.octets(), mac.0),
        }
    }

    #[inline(always)]
    pub(crate) const fn ip_bits(&self) -> u32 {
        self.ip.to_bits()
    }
}

/// Processes one received frame in place. On `Forward` and `Reply` the frame holds the
/// packet to transmit (its start may have moved into the headroom).
#[inline]
pub fn process(tables: &Tables, local: &Local, frame: &mut Frame<'_>) -> Verdict {
    // Inlined, the unused report costs nothing.
    process_counted(tables, local, frame, &mut None)
}

/// Like [`process`], and when the packet is forwarded to a service backend, sets `*hit`
/// to that service and backend (it leaves `*hit` alone otherwise): what the engine needs
/// for per-service counters, at the cost of one store on the DNAT path only.
#[inline]
pub fn process_counted(
    tables: &Tables,
    local: &Local,
    frame: &mut Frame<'_>,
    hit: &mut Option<ServiceHit>,
) -> Verdict {
    match process_frame(tables, local, frame, hit) {
        Ok(verdict) => verdict,
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Processes a batch: `verdicts[i]` becomes the verdict of `frames[i]`, exactly as
/// [`process`] would decide it. First every packet's endpoint slots are loaded, so that
/// their cache misses overlap instead of stalling one packet after another; then each
/// packet is processed. With large tables this is what keeps the cost per packet near
/// the small-table cost.
pub fn process_batch(
    tables: &Tables,
    local: &Local,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    let mut sink = 0u64;
    let mut vpc: Option<&crate::tables::VpcEntry> = None;
    for frame in frames.iter() {
        let Some(flow) = peek_flow(frame.data()) else {
            continue;
        };
        sink ^=
            tables.touch_endpoint(flow.vni, flow.dst) ^ tables.touch_endpoint(flow.vni, flow.src);
        if vpc.is_none_or(|v| v.vni != flow.vni) {
            vpc = tables.vpc(flow.vni);
        }
        // A service packet: resolve its backend now too, so that the service entry, its
        // Maglev slot and the backend's endpoint slot are in cache for the real pass.
        if let (Some(v), Some((src_port, dst_port, protocol))) = (vpc, flow.ports) {
            if v.is_service_ip(flow.dst) {
                let backend = tables
                    .service(flow.vni, flow.dst, dst_port, protocol)
                    .and_then(|service| {
                        service.pick(flow_hash(
                            flow.src.into(),
                            flow.dst.into(),
                            src_port,
                            dst_port,
                            protocol,
                        ))
                    });
                if let Some((ip, _)) = backend {
                    sink ^= tables.touch_endpoint(flow.vni, ip.to_bits());
                }
            }
        }
    }
    std::hint::black_box(sink);
    for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
        *verdict = process(tables, local, frame);
    }
}

/// What [`process_batch`] reads of a packet before processing it.
struct PeekedFlow {
    vni: u32,
    src: u32,
    dst: u32,
    /// Source port, destination port and protocol, for TCP and UDP.
    ports: Option<(u16, u16, u8)>,
}

/// The flow of a packet read at the offsets a well-formed packet has, without validating
/// anything: only a hint for [`process_batch`]'s loads.
#[inline(always)]
fn peek_flow(data: &[u8]) -> Option<PeekedFlow> {
    const GENEVE_AFTER_IP: usize = 8;
    let ip_len = usize::from(*data.get(ethernet::HEADER_LEN)? & 0x0f) * 4;
    let geneve = ethernet::HEADER_LEN + ip_len + GENEVE_AFTER_IP;
    let options = usize::from(*data.get(geneve)? & 0x3f) * 4;
    let inner_ip = geneve + 8 + options + ethernet::HEADER_LEN;
    // Only inner IPv4 carries addresses worth loading (ARP is answered from the subnet).
    let ethertype = data.get(inner_ip - 2..inner_ip)?;
    if ethertype != ethernet::ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let vni = data.get(geneve + 4..geneve + 7)?;
    let header = data.get(inner_ip..inner_ip + 20)?;
    let protocol = header[9];
    let l4 = inner_ip + usize::from(header[0] & 0x0f) * 4;
    let ports = match (protocol, data.get(l4..l4 + 4)) {
        (6 | 17, Some(p)) => Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
            protocol,
        )),
        _ => None,
    };
    Some(PeekedFlow {
        vni: u32::from_be_bytes([0, vni[0], vni[1], vni[2]]),
        src: u32::from_be_bytes([header[12], header[13], header[14], header[15]]),
        dst: u32::from_be_bytes([header[16], header[17], header[18], header[19]]),
        ports,
    })
}

#[inline]
fn process_frame(
    tables: &Tables,
    local: &Local,
    frame: &mut Frame<'_>,
    hit: &mut Option<ServiceHit>,
) -> Result<Verdict, DropReason> {
    let rx = outer::parse(frame.data(), local)?;
    let vpc = tables.vpc(rx.vni).ok_or(DropReason::UnknownVni)?;
    let inner_start = frame.start() + rx.inner_off;
    let inner_len = rx.inner_len;
    let inner = &mut frame.buf_mut()[inner_start..inner_start + inner_len];
    if inner.len() < ethernet::HEADER_LEN {
        return Err(DropReason::InnerMalformed);
    }
    let ethertype = u16::from_be_bytes([inner[12], inner[13]]);
    match ethertype {
        ethernet::ETHERTYPE_ARP => {
            let hint = arp::respond(tables, vpc, inner)?;
            let to = Encap {
                dst_ip: rx.src_ip,
                dst_mac: rx.src_mac,
                vni: rx.vni,
                udp_src_port: rx.udp_src_port,
            };
            outer::encap(frame, local, inner_start, inner_len, &to, [hint, None])?;
            Ok(Verdict::Reply)
        }
        ethernet::ETHERTYPE_IPV4 => {
            let next = ipv4::forward(tables, local, vpc, inner, rx.host_hint, rx.service_orig)?;
            if next.ip == local.ip_bits() {
                return Err(DropReason::Loop);
            }
            if rx.stale && next.ip == rx.src_ip {
                return Err(DropReason::StaleEndpoint);
            }
            let to = Encap {
                dst_ip: next.ip,
                dst_mac: next.mac,
                vni: rx.vni,
                udp_src_port: rx.udp_src_port,
            };
            let options = [next.service_orig, next.host_hint];
            outer::encap(frame, local, inner_start, inner_len, &to, options)?;
            if next.service.is_some() {
                *hit = next.service;
            }
            Ok(Verdict::Forward)
        }
        _ => Err(DropReason::InnerUnsupported),
    }
}

#[cfg(test)]
mod tests;
