//! One test per packet path, and proof that every drop reason is reachable and counted.
//! Packets are built and decoded with `testkit` (etherparse), not with this crate's views.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::*;
use crate::tables::TableWriter;
use crate::testkit::*;

struct Out {
    verdict: Verdict,
    bytes: Vec<u8>,
}

fn run_with(writer: &TableWriter, local: &Local, packet: &[u8]) -> Out {
    let mut buf = with_headroom(packet);
    let tables = writer.snapshot();
    let mut frame = Frame::new(&mut buf, HEADROOM, packet.len()).unwrap();
    let verdict = process(&tables, local, &mut frame);
    let bytes = frame.data().to_vec();
    Out { verdict, bytes }
}

fn run(packet: &[u8]) -> Out {
    run_with(&world_tables(), &local(), packet)
}

fn from_h1(inner: &[u8]) -> Vec<u8> {
    geneve_packet(&OuterSpec::from_host(H1, H1_MAC, VNI_A), inner)
}

fn forwarded(out: &Out) -> Decoded {
    assert!(
        matches!(out.verdict, Verdict::Forward | Verdict::Reply),
        "expected a transmit verdict, got {:?}",
        out.verdict
    );
    let d = decode(&out.bytes).unwrap();
    // The wire contract for every packet a gateway sends.
    assert_eq!(d.outer_src, GW);
    assert_eq!(d.outer_src_mac, GW_MAC.0);
    assert_eq!(d.outer_ttl, 64);
    assert!(d.outer_dont_fragment);
    assert!(d.outer_ip_checksum_ok);
    assert_eq!(d.udp_dst_port, 6081);
    assert_eq!(d.udp_checksum, 0);
    check_inner_checksums(&d.inner).unwrap();
    d
}

fn hint(d: &Decoded) -> Option<(Ipv4Addr, Ipv4Addr)> {
    d.option(0x01).map(|o| {
        let b = &o.body;
        (
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        )
    })
}

#[test]
fn same_subnet_bounce_goes_to_the_endpoints_host() {
    // The pod's neighbour entry may be stale: the bouncer sets the destination MAC.
    let inner = inner_udp(
        POD_A1_MAC,
        MacAddr([0x02, 9, 9, 9, 9, 9]),
        POD_A1,
        POD_A1B,
        (1000, 2000),
        b"hi",
    );
    let out = run(&from_h1(&inner));
    assert_eq!(out.verdict, Verdict::Forward);
    let d = forwarded(&out);
    assert_eq!(d.outer_dst, H2);
    assert_eq!(d.outer_dst_mac, H2_MAC.0);
    assert_eq!(d.vni, VNI_A);
    assert_eq!(d.udp_src_port, 50_000, "the sender's flow entropy is kept");
    assert_eq!(
        hint(&d),
        Some((POD_A1, H1)),
        "the destination learns where the source lives"
    );
    assert!(d.option(0x03).is_none());
    let mut want = inner.clone();
    want[0..6].copy_from_slice(&POD_A1B_MAC.0);
    assert_eq!(d.inner, want, "only the inner destination MAC changes");
}

#[test]
fn arp_for_a_peer_is_answered_with_a_host_hint() {
    let request = inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B);
    let out = run(&from_h1(&request));
    assert_eq!(out.verdict, Verdict::Reply);
    let d = forwarded(&out);
    assert_eq!(d.outer_dst, H1, "the reply goes back to the asking host");
    assert_eq!(d.outer_dst_mac, H1_MAC.0);
    assert_eq!(d.vni, VNI_A);
    assert_eq!(hint(&d), Some((POD_A1B, H2)));
    let mut want = Vec::new();
    want.extend_from_slice(&POD_A1_MAC.0);
    want.extend_from_slice(&POD_A1B_MAC.0);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&POD_A1B_MAC.0);
    want.extend_from_slice(&POD_A1B.octets());
    want.extend_from_slice(&POD_A1_MAC.0);
    want.extend_from_slice(&POD_A1.octets());
    assert_eq!(d.inner, want);
}

#[test]
fn arp_for_the_router_is_answered_without_a_hint() {
    let request = inner_arp_request(POD_A1_MAC, POD_A1, Ipv4Addr::new(10, 0, 1, 1));
    let out = run(&from_h1(&request));
    assert_eq!(out.verdict, Verdict::Reply);
    let d = forwarded(&out);
    assert!(d.options.is_empty());
    assert_eq!(&d.inner[0..6], &POD_A1_MAC.0);
    assert_eq!(&d.inner[6..12], &ROUTER_A1_MAC.0);
    assert_eq!(
        &d.inner[22..28],
        &ROUTER_A1_MAC.0,
        "sender hardware address"
    );
    assert_eq!(&d.inner[28..32], &[10, 0, 1, 1]);
}

#[test]
fn cross_subnet_routes_once_with_ttl_and_router_mac() {
    let inner = inner_udp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        POD_A2,
        (1000, 2000),
        b"across",
    );
    let out = run(&from_h1(&inner));
    let d = forwarded(&out);
    assert_eq!(d.outer_dst, H3);
    assert_eq!(&d.inner[0..6], &POD_A2_MAC.0);
    assert_eq!(&d.inner[6..12], &ROUTER_A2_MAC.0);
    assert_eq!(d.inner[14 + 8], 63, "TTL decremented once");
    assert_eq!(
        &d.inner[14 + 12..],
        &inner[14 + 12..],
        "addresses and payload untouched"
    );

    // A packet already routed by another gateway (source MAC is the destination
    // subnet's router) keeps its TTL.
    let mut routed = inner.clone();
    routed[6..12].copy_from_slice(&ROUTER_A2_MAC.0);
    let d = forwarded(&run(&from_h1(&routed)));
    assert_eq!(d.inner[14 + 8], 64);
}

#[test]
fn unknown_endpoint_of_a_foreign_subnet_goes_to_a_divider() {
    let inner = inner_udp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        POD_A3,
        (1000, 2000),
        b"far",
    );
    let d = forwarded(&run(&from_h1(&inner)));
    assert_eq!(d.outer_dst, GW2, "GW bounces A1 but is not a divider");
    assert_eq!(d.outer_dst_mac, GW2_MAC.0);
    assert_eq!(d.inner[14 + 8], 63);
    assert_eq!(&d.inner[6..12], &ROUTER_A3_MAC.0);
    assert_eq!(
        hint(&d),
        Some((POD_A1, H1)),
        "the hint travels on through the divider"
    );

    // At the divider (GW2): hand it to the bouncer of A3, keep the hint, no second TTL.
    let divider = Local::new(GW2, GW2_MAC);
    let mut outer = OuterSpec::from_host(GW, GW_MAC, VNI_A);
    outer.dst_ip = GW2;
    outer.dst_mac = GW2_MAC;
    outer.options.push(RawOption::host_hint(POD_A1, H1));
    let mut routed = inner.clone();
    routed[6..12].copy_from_slice(&ROUTER_A3_MAC.0);
    let out = run_with(&world_tables(), &divider, &geneve_packet(&outer, &routed));
    assert_eq!(out.verdict, Verdict::Forward);
    let d = decode(&out.bytes).unwrap();
    assert_eq!(d.outer_dst, GW3);
    assert_eq!(d.outer_src, GW2);
    assert_eq!(d.inner[14 + 8], 64);
    assert_eq!(hint(&d), Some((POD_A1, H1)));
}

#[test]
fn service_dnat_rewrites_to_a_backend_with_valid_checksums() {
    let backends: BTreeSet<Ipv4Addr> = [POD_A1, POD_A1B, POD_A2].into();
    let mut seen = BTreeSet::new();
    for src_port in 20_000..20_300u16 {
        let inner = inner_tcp(
            POD_A1_MAC,
            ROUTER_A1_MAC,
            POD_A1,
            VIP_TCP,
            (src_port, VIP_TCP_PORT),
            b"GET /",
        );
        let d = forwarded(&run(&from_h1(&inner)));
        let dst = Ipv4Addr::new(d.inner[30], d.inner[31], d.inner[32], d.inner[33]);
        let dst_port = u16::from_be_bytes([d.inner[36], d.inner[37]]);
        assert!(backends.contains(&dst), "{dst} is not a backend");
        assert_eq!(dst_port, 8080);
        let orig = d.option(0x03).expect("SERVICE_ORIG attached");
        assert_eq!(orig.body, [10, 96, 0, 10, 0, 80, 6, 0]);
        assert_eq!(hint(&d), Some((POD_A1, H1)));
        // Sent to the host of exactly that backend.
        let host = match dst {
            POD_A1 => H1,
            POD_A1B => H2,
            _ => H3,
        };
        assert_eq!(d.outer_dst, host);
        // The same flow always picks the same backend.
        let again = forwarded(&run(&from_h1(&inner)));
        assert_eq!(again.inner, d.inner);
        seen.insert(dst);
    }
    assert_eq!(seen, backends, "300 flows reach every backend");
}

#[test]
fn udp_dnat_keeps_a_zero_checksum_zero_and_fixes_a_real_one() {
    let mut inner = inner_udp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        VIP_UDP,
        (5000, VIP_UDP_PORT),
        b"query",
    );
    let d = forwarded(&run(&from_h1(&inner)));
    assert_eq!(&d.inner[30..34], &POD_A2.octets());
    assert_eq!(u16::from_be_bytes([d.inner[36], d.inner[37]]), 5353);
    assert_ne!(u16::from_be_bytes([d.inner[40], d.inner[41]]), 0);

    inner[40] = 0;
    inner[41] = 0;
    let d = forwarded(&run(&from_h1(&inner)));
    assert_eq!(&d.inner[40..42], &[0, 0], "no checksum stays no checksum");
}

#[test]
fn overlapping_vpcs_never_mix() {
    // VPC B's 10.0.1.10 lives on H3 with its own MAC; VPC A's on H1.
    let inner = inner_udp(
        POD_B1_MAC,
        MacAddr([2, 1, 1, 1, 1, 1]),
        Ipv4Addr::new(10, 0, 1, 20),
        POD_B1,
        (1, 2),
        b"b",
    );
    let d = forwarded(&run(&geneve_packet(
        &OuterSpec::from_host(H2, H2_MAC, VNI_B),
        &inner,
    )));
    assert_eq!(d.vni, VNI_B);
    assert_eq!(d.outer_dst, H3);
    assert_eq!(&d.inner[0..6], &POD_B1_MAC.0);

    // 10.0.1.11 exists only in VPC A: VPC B cannot reach or resolve it.
    let arp = inner_arp_request(POD_B1_MAC, POD_B1, POD_A1B);
    let out = run(&geneve_packet(
        &OuterSpec::from_host(H3, H3_MAC, VNI_B),
        &arp,
    ));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::ArpUnknownTarget));
    let inner = inner_udp(
        POD_B1_MAC,
        MacAddr([2, 1, 1, 1, 1, 1]),
        POD_B1,
        POD_A1B,
        (1, 2),
        b"b",
    );
    let out = run(&geneve_packet(
        &OuterSpec::from_host(H3, H3_MAC, VNI_B),
        &inner,
    ));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::UnknownEndpoint));
}

#[test]
fn unknown_non_critical_options_are_skipped_and_not_forwarded() {
    let inner = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x");
    let outer = OuterSpec::from_host(H1, H1_MAC, VNI_A)
        .with_option(RawOption {
            class: 0x0103,
            kind: 0x05,
            body: vec![1, 2, 3, 4],
        })
        .with_option(RawOption::direct());
    let d = forwarded(&run(&geneve_packet(&outer, &inner)));
    assert_eq!(d.outer_dst, H2);
    assert!(d
        .options
        .iter()
        .all(|o| o.class == OPTION_CLASS && o.kind == 0x01));
}

#[test]
fn stale_packets_are_resent_but_never_back_to_the_disowning_host() {
    let inner = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x");
    let from_h1 = OuterSpec::from_host(H1, H1_MAC, VNI_A).with_option(RawOption::stale(POD_A1B));
    assert_eq!(
        forwarded(&run(&geneve_packet(&from_h1, &inner))).outer_dst,
        H2
    );
    let from_h2 = OuterSpec::from_host(H2, H2_MAC, VNI_A).with_option(RawOption::stale(POD_A1B));
    let out = run(&geneve_packet(&from_h2, &inner));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::StaleEndpoint));
}

#[test]
fn table_updates_show_in_the_next_lookup() {
    let mut writer = world_tables();
    let inner = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x");
    let packet = from_h1(&inner);
    assert_eq!(
        forwarded(&run_with(&writer, &local(), &packet)).outer_dst,
        H2
    );
    // The pod moves to H3.
    let moved = sluice_api::Transaction {
        upserts: vec![sluice_api::Object::Endpoint(sluice_api::Endpoint {
            vni: vni(VNI_A),
            ip: POD_A1B,
            mac: POD_A1B_MAC,
            host: H3,
        })],
        deletes: vec![],
    };
    writer.apply(&moved).unwrap();
    assert_eq!(
        forwarded(&run_with(&writer, &local(), &packet)).outer_dst,
        H3
    );
}

/// Overwrites the outer IPv4 header byte at `at` (offset inside that header) and fixes
/// the header checksum, so only the intended fault remains.
fn outer_ip_edit(packet: &mut [u8], at: usize, value: u8) {
    packet[14 + at] = value;
    fix_ipv4_checksum(packet, 14);
}

const UDP_OFF: usize = 14 + 20;
const GENEVE_OFF: usize = UDP_OFF + 8;

fn drop_case(reason: DropReason) -> (Local, Vec<u8>, usize) {
    let l = local();
    let bounce = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"payload");
    let good = from_h1(&bounce);
    let mut p = good.clone();
    let mut headroom = HEADROOM;
    match reason {
        DropReason::OuterEthernetTruncated => p.truncate(10),
        DropReason::OuterNotIpv4 => p[12..14].copy_from_slice(&[0x86, 0xdd]),
        DropReason::OuterIpv4Malformed => outer_ip_edit(&mut p, 0, 0x44),
        DropReason::OuterIpv4Checksum => p[14 + 10] ^= 0xff,
        DropReason::OuterFragment => outer_ip_edit(&mut p, 6, 0x20),
        DropReason::NotForUs => {
            p[14 + 19] = 99;
            fix_ipv4_checksum(&mut p, 14);
        }
        DropReason::OuterNotUdp => outer_ip_edit(&mut p, 9, 6),
        DropReason::OuterUdpMalformed => p[UDP_OFF + 4..UDP_OFF + 6].copy_from_slice(&[0, 4]),
        DropReason::NotGeneve => {
            p[UDP_OFF + 2..UDP_OFF + 4].copy_from_slice(&4789u16.to_be_bytes())
        }
        DropReason::GeneveMalformed => p[GENEVE_OFF] = 0x3f,
        DropReason::GeneveOam => p[GENEVE_OFF + 1] = 0x80,
        DropReason::GeneveNotEthernet => {
            p[GENEVE_OFF + 2..GENEVE_OFF + 4].copy_from_slice(&[0x08, 0])
        }
        DropReason::BadOption => {
            let bad = RawOption {
                class: OPTION_CLASS,
                kind: 0x01,
                body: vec![10, 0, 1, 10],
            };
            p = geneve_packet(
                &OuterSpec::from_host(H1, H1_MAC, VNI_A).with_option(bad),
                &bounce,
            );
        }
        DropReason::UnknownCriticalOption => {
            let crit = RawOption {
                class: 0x0103,
                kind: 0x85,
                body: vec![],
            };
            p = geneve_packet(
                &OuterSpec::from_host(H1, H1_MAC, VNI_A).with_option(crit),
                &bounce,
            );
        }
        DropReason::UnknownVni => {
            p = geneve_packet(&OuterSpec::from_host(H1, H1_MAC, 4242), &bounce)
        }
        DropReason::InnerMalformed => p = from_h1(&bounce[..20]),
        DropReason::InnerUnsupported => {
            let mut v6 = bounce.clone();
            v6[12..14].copy_from_slice(&[0x86, 0xdd]);
            p = from_h1(&v6);
        }
        DropReason::ArpMalformed => {
            let mut arp = inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B);
            arp[14 + 4] = 8;
            p = from_h1(&arp);
        }
        DropReason::ArpNotRequest => {
            let mut arp = inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B);
            arp[14 + 7] = 2;
            p = from_h1(&arp);
        }
        DropReason::ArpUnknownTarget => {
            p = from_h1(&inner_arp_request(
                POD_A1_MAC,
                POD_A1,
                Ipv4Addr::new(10, 0, 1, 99),
            ))
        }
        DropReason::NoRoute => {
            p = from_h1(&inner_udp(
                POD_A1_MAC,
                ROUTER_A1_MAC,
                POD_A1,
                Ipv4Addr::new(192, 0, 2, 1),
                (1, 2),
                b"x",
            ))
        }
        DropReason::UnknownEndpoint => {
            p = from_h1(&inner_udp(
                POD_A1_MAC,
                ROUTER_A1_MAC,
                POD_A1,
                Ipv4Addr::new(10, 0, 2, 99),
                (1, 2),
                b"x",
            ))
        }
        DropReason::NoService => {
            p = from_h1(&inner_tcp(
                POD_A1_MAC,
                ROUTER_A1_MAC,
                POD_A1,
                VIP_TCP,
                (1, 81),
                b"x",
            ))
        }
        DropReason::NoBackend => {
            p = from_h1(&inner_tcp(
                POD_A1_MAC,
                ROUTER_A1_MAC,
                POD_A1,
                VIP_DRAINED,
                (1, 80),
                b"x",
            ))
        }
        DropReason::ServiceFragment => {
            let mut frag = inner_tcp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, VIP_TCP, (1, 80), b"x");
            frag[14 + 6] = 0x20;
            fix_ipv4_checksum(&mut frag, 14);
            p = from_h1(&frag);
        }
        DropReason::TtlExceeded => {
            let mut inner = inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, POD_A2, (1, 2), b"x");
            set_inner_ttl(&mut inner, 1);
            p = from_h1(&inner);
        }
        DropReason::Loop => {
            // Tables that place an endpoint on the gateway itself: see `drop_world`.
            p = from_h1(&inner_udp(
                POD_A1_MAC,
                POD_A1B_MAC,
                POD_A1,
                Ipv4Addr::new(10, 0, 1, 77),
                (1, 2),
                b"x",
            ))
        }
        DropReason::StaleEndpoint => {
            let outer =
                OuterSpec::from_host(H2, H2_MAC, VNI_A).with_option(RawOption::stale(POD_A1B));
            p = geneve_packet(&outer, &bounce);
        }
        DropReason::NoHeadroom => headroom = 0,
    }
    (l, p, headroom)
}

/// The standard world plus an endpoint wrongly placed on the gateway's own address.
fn drop_world() -> TableWriter {
    let mut writer = world_tables();
    let txn = sluice_api::Transaction {
        upserts: vec![sluice_api::Object::Endpoint(sluice_api::Endpoint {
            vni: vni(VNI_A),
            ip: Ipv4Addr::new(10, 0, 1, 77),
            mac: MacAddr([2, 0, 0, 0, 0, 0x77]),
            host: GW,
        })],
        deletes: vec![],
    };
    writer.apply(&txn).unwrap();
    writer
}

#[test]
fn every_drop_reason_is_reachable_and_counted() {
    let writer = drop_world();
    let tables = writer.snapshot();
    let mut counters = DropCounters::default();
    for &reason in DropReason::ALL {
        let (local, packet, headroom) = drop_case(reason);
        let mut buf = vec![0u8; headroom + packet.len()];
        buf[headroom..].copy_from_slice(&packet);
        let mut frame = Frame::new(&mut buf, headroom, packet.len()).unwrap();
        let verdict = process(&tables, &local, &mut frame);
        assert_eq!(verdict, Verdict::Drop(reason), "case for {reason}");
        counters.record(verdict);
    }
    for (reason, count) in counters.iter() {
        assert_eq!(count, 1, "{reason} counted once");
    }
    assert_eq!(counters.total_dropped(), DropReason::COUNT as u64);
    assert_eq!(counters.forwarded + counters.replied, 0);
}

#[test]
fn the_bare_good_packet_is_forwarded() {
    // The baseline every drop case mutates really is good.
    let (local, packet, _) = drop_case(DropReason::NoHeadroom);
    let out = run_with(&drop_world(), &local, &packet);
    assert_eq!(out.verdict, Verdict::Forward);
}

/// Runs `packet` through `process_counted`; returns the verdict, the bytes and the hit.
fn run_counted(writer: &TableWriter, packet: &[u8]) -> (Out, Option<ServiceHit>) {
    let mut buf = with_headroom(packet);
    let tables = writer.snapshot();
    let mut frame = Frame::new(&mut buf, HEADROOM, packet.len()).unwrap();
    let mut hit = None;
    let verdict = process_counted(&tables, &local(), &mut frame, &mut hit);
    let bytes = frame.data().to_vec();
    (Out { verdict, bytes }, hit)
}

#[test]
fn dnat_reports_the_service_and_the_backend_it_chose() {
    let writer = world_tables();
    let tables = writer.snapshot();
    let service = |vip: Ipv4Addr, port: u16, protocol: u8| {
        tables
            .service(VNI_A, vip.to_bits(), port, protocol)
            .expect("in the world")
    };
    let tcp = service(VIP_TCP, VIP_TCP_PORT, 6);
    let udp = service(VIP_UDP, VIP_UDP_PORT, 17);
    assert_ne!(tcp.instance.id, udp.instance.id);
    for src_port in 30_000..30_100u16 {
        let inner = inner_tcp(
            POD_A1_MAC,
            ROUTER_A1_MAC,
            POD_A1,
            VIP_TCP,
            (src_port, VIP_TCP_PORT),
            b"GET /",
        );
        let (out, hit) = run_counted(&writer, &from_h1(&inner));
        let d = forwarded(&out);
        let hit = hit.expect("a DNAT packet reports its service");
        assert_eq!(hit.instance, tcp.instance);
        // The reported backend is the one the packet was rewritten to.
        let backend = &tcp.service.backends[usize::from(hit.backend)];
        assert_eq!(&d.inner[30..34], &backend.ip.octets());
        assert_eq!(u16::from_be_bytes([d.inner[36], d.inner[37]]), backend.port);
    }
    let inner = inner_udp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        VIP_UDP,
        (5000, VIP_UDP_PORT),
        b"q",
    );
    let (_, hit) = run_counted(&writer, &from_h1(&inner));
    assert_eq!(hit.map(|h| h.instance), Some(udp.instance));
}

#[test]
fn only_forwarded_dnat_packets_report_a_hit() {
    let writer = world_tables();
    // A bounce: no service.
    let inner = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x");
    let (out, hit) = run_counted(&writer, &from_h1(&inner));
    assert_eq!(out.verdict, Verdict::Forward);
    assert_eq!(hit, None);
    // A service without backends that take traffic: dropped, no hit.
    let inner = inner_tcp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        VIP_DRAINED,
        (1000, VIP_TCP_PORT),
        b"x",
    );
    let (out, hit) = run_counted(&writer, &from_h1(&inner));
    assert!(matches!(out.verdict, Verdict::Drop(_)), "{:?}", out.verdict);
    assert_eq!(hit, None);
}
