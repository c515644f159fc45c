//! Writes one packet of every gateway path into DIR, as seeds for the fuzz target
//! (`scripts/fuzz.sh`). Each seed starts with the fuzz target's mode byte.

use std::net::Ipv4Addr;

use sluice_dataplane::testkit::*;

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    std::fs::create_dir_all(&dir)?;
    let a = OuterSpec::from_host(H1, H1_MAC, VNI_A);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "bounce",
            geneve_packet(
                &a,
                &inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x"),
            ),
        ),
        (
            "route",
            geneve_packet(
                &a,
                &inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, POD_A2, (1, 2), b"x"),
            ),
        ),
        (
            "divider",
            geneve_packet(
                &a,
                &inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, POD_A3, (1, 2), b"x"),
            ),
        ),
        (
            "dnat_tcp",
            geneve_packet(
                &a,
                &inner_tcp(
                    POD_A1_MAC,
                    ROUTER_A1_MAC,
                    POD_A1,
                    VIP_TCP,
                    (40000, 80),
                    b"GET",
                ),
            ),
        ),
        (
            "dnat_udp",
            geneve_packet(
                &a,
                &inner_udp(
                    POD_A1_MAC,
                    ROUTER_A1_MAC,
                    POD_A1,
                    VIP_UDP,
                    (40000, 53),
                    b"q",
                ),
            ),
        ),
        (
            "arp_peer",
            geneve_packet(&a, &inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B)),
        ),
        (
            "arp_router",
            geneve_packet(
                &a,
                &inner_arp_request(POD_A1_MAC, POD_A1, Ipv4Addr::new(10, 0, 1, 1)),
            ),
        ),
        (
            "icmp",
            geneve_packet(&a, &inner_icmp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B)),
        ),
        (
            "options",
            geneve_packet(
                &a.clone()
                    .with_option(RawOption::host_hint(POD_A1, H1))
                    .with_option(RawOption::service_orig(VIP_TCP, 80, 6))
                    .with_option(RawOption::stale(POD_A1B)),
                &inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x"),
            ),
        ),
    ];
    for (name, packet) in seeds {
        let mut seed = vec![1u8];
        seed.extend_from_slice(&packet);
        std::fs::write(format!("{dir}/{name}"), seed)?;
    }
    Ok(())
}
