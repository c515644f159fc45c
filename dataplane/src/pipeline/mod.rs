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
mod frame;
mod ipv4;
mod outer;
mod verdict;

use std::net::Ipv4Addr;

use sluice_api::MacAddr;

pub use frame::Frame;
pub use ipv4::pair_hash;
pub use verdict::{DropCounters, DropReason, Verdict};

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
    match process_frame(tables, local, frame) {
        Ok(verdict) => verdict,
        Err(reason) => Verdict::Drop(reason),
    }
}

#[inline]
fn process_frame(
    tables: &Tables,
    local: &Local,
    frame: &mut Frame<'_>,
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
            Ok(Verdict::Forward)
        }
        _ => Err(DropReason::InnerUnsupported),
    }
}

#[cfg(test)]
mod tests;
