//! The bouncer's ARP responder: a request for the subnet's router or for a known
//! endpoint of the sender's subnet is turned into the reply in place.

use std::net::Ipv4Addr;

use smoltcp::wire::EthernetAddress;

use super::verdict::DropReason;
use crate::tables::{Tables, VpcEntry};
use crate::wire::geneve::SluiceOption;
use crate::wire::{arp, ethernet};

/// Answers the ARP request in `inner` (an Ethernet frame). Returns the HOST_HINT to
/// attach when the target is an endpoint (not the router).
#[inline]
pub(crate) fn respond(
    tables: &Tables,
    vpc: &VpcEntry,
    inner: &mut [u8],
) -> Result<Option<SluiceOption>, DropReason> {
    let (eth, arp_bytes) = inner.split_at_mut(ethernet::HEADER_LEN);
    let mut packet = arp::checked(arp_bytes).map_err(|_| DropReason::ArpMalformed)?;
    if packet.operation() != arp::Operation::Request {
        return Err(DropReason::ArpNotRequest);
    }
    let sender = ipv4(packet.source_protocol_addr())?;
    let target = ipv4(packet.target_protocol_addr())?;
    if sender == target {
        // A gratuitous announcement, not a question.
        return Err(DropReason::ArpNotRequest);
    }
    let subnet = tables
        .subnet_for(vpc, sender.to_bits())
        .ok_or(DropReason::ArpUnknownTarget)?;
    let (answer, hint) = if target == subnet.router_ip {
        (subnet.router_mac, None)
    } else if subnet.contains(target.to_bits()) {
        let endpoint = tables
            .endpoint(vpc.vni, target.to_bits())
            .ok_or(DropReason::ArpUnknownTarget)?;
        let host = tables
            .host(endpoint.host)
            .ok_or(DropReason::ArpUnknownTarget)?;
        let hint = SluiceOption::HostHint {
            endpoint: target,
            host: host.ip,
        };
        (endpoint.mac.0, Some(hint))
    } else {
        return Err(DropReason::ArpUnknownTarget);
    };
    let requester: [u8; 6] = packet
        .source_hardware_addr()
        .try_into()
        .map_err(|_| DropReason::ArpMalformed)?;
    arp::answer_request_in_place(&mut packet, EthernetAddress(answer))
        .map_err(|_| DropReason::ArpMalformed)?;
    eth[ethernet::DST_ADDR_OFFSET..ethernet::DST_ADDR_OFFSET + 6].copy_from_slice(&requester);
    eth[ethernet::SRC_ADDR_OFFSET..ethernet::SRC_ADDR_OFFSET + 6].copy_from_slice(&answer);
    Ok(hint)
}

fn ipv4(bytes: &[u8]) -> Result<Ipv4Addr, DropReason> {
    let octets: [u8; 4] = bytes.try_into().map_err(|_| DropReason::ArpMalformed)?;
    Ok(Ipv4Addr::from(octets))
}
