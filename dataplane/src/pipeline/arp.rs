//! The bouncer's ARP responder: a request for the subnet's router or for a known
//! endpoint of the sender's subnet is turned into the reply in place.

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpHardware, ArpOperation, ArpPacket, EthernetProtocol};

use super::verdict::DropReason;
use crate::tables::{Tables, VpcEntry};
use crate::wire::geneve::SluiceOption;

const ETHERNET_LEN: usize = 14;

/// Answers the ARP request in `inner` (an Ethernet frame). Returns the HOST_HINT to
/// attach when the target is an endpoint (not the router).
#[inline]
pub(crate) fn respond(
    tables: &Tables,
    vpc: &VpcEntry,
    inner: &mut [u8],
) -> Result<Option<SluiceOption>, DropReason> {
    let arp_bytes = inner
        .get(ETHERNET_LEN..)
        .ok_or(DropReason::InnerMalformed)?;
    let arp = ArpPacket::new_checked(arp_bytes).map_err(|_| DropReason::ArpMalformed)?;
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.protocol_type() != EthernetProtocol::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return Err(DropReason::ArpMalformed);
    }
    if arp.operation() != ArpOperation::Request {
        return Err(DropReason::ArpNotRequest);
    }
    let sender_mac: [u8; 6] = arp
        .source_hardware_addr()
        .try_into()
        .map_err(|_| DropReason::ArpMalformed)?;
    let sender_ip = ipv4(arp.source_protocol_addr())?;
    let target_ip = ipv4(arp.target_protocol_addr())?;
    if sender_ip == target_ip {
        // A gratuitous announcement, not a question.
        return Err(DropReason::ArpNotRequest);
    }
    let subnet = tables
        .subnet_for(vpc, sender_ip)
        .ok_or(DropReason::ArpUnknownTarget)?;
    let target = Ipv4Addr::from(target_ip);
    let (answer_mac, hint) = if target == subnet.router_ip {
        (subnet.subnet.router_mac.0, None)
    } else if subnet.subnet.cidr.contains(target) {
        let endpoint = tables
            .endpoint(vpc.vpc.vni.get(), target_ip)
            .ok_or(DropReason::ArpUnknownTarget)?;
        let hint = SluiceOption::HostHint {
            endpoint: target,
            host: endpoint.host,
        };
        (endpoint.mac.0, Some(hint))
    } else {
        return Err(DropReason::ArpUnknownTarget);
    };

    let mut arp = ArpPacket::new_unchecked(&mut inner[ETHERNET_LEN..]);
    arp.set_operation(ArpOperation::Reply);
    arp.set_target_hardware_addr(&sender_mac);
    arp.set_target_protocol_addr(&sender_ip.to_be_bytes());
    arp.set_source_hardware_addr(&answer_mac);
    arp.set_source_protocol_addr(&target_ip.to_be_bytes());
    inner[0..6].copy_from_slice(&sender_mac);
    inner[6..12].copy_from_slice(&answer_mac);
    Ok(hint)
}

fn ipv4(bytes: &[u8]) -> Result<u32, DropReason> {
    let octets: [u8; 4] = bytes.try_into().map_err(|_| DropReason::ArpMalformed)?;
    Ok(u32::from_be_bytes(octets))
}
