//! Property tests of the pipeline over the standard world (see `testkit`):
//! (a) no packet ever leaves with a different VNI than it came with, and nothing meant
//!     for one tenant is delivered to another tenant's endpoint;
//! (b) every rewritten packet has valid outer IPv4 and inner IPv4/TCP/UDP checksums as
//!     etherparse computes them.
//! Inputs are well-formed packets with random fields, and random corruptions of them.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use sluice_api::MacAddr;
use sluice_dataplane::pipeline::{process, process_batch, Frame, Verdict};
use sluice_dataplane::tables::Tables;
use sluice_dataplane::testkit::*;

/// Addresses the world knows in either VPC, plus some it does not.
fn arb_addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(POD_A1),
        Just(POD_A1B),
        Just(POD_A2),
        Just(POD_A3),
        Just(VIP_TCP),
        Just(VIP_UDP),
        Just(VIP_DRAINED),
        Just(Ipv4Addr::new(10, 0, 1, 1)),
        (0..4u8, any::<u8>()).prop_map(|(s, h)| Ipv4Addr::new(10, 0, s, h)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        Just(POD_A1_MAC),
        Just(ROUTER_A1_MAC),
        Just(ROUTER_A2_MAC),
        Just(POD_B1_MAC),
        any::<[u8; 6]>().prop_map(MacAddr),
    ]
}

#[derive(Clone, Debug)]
enum Kind {
    Udp,
    Tcp,
    Icmp,
    Arp,
}

#[derive(Clone, Debug)]
struct Input {
    vni: u32,
    from: (Ipv4Addr, MacAddr),
    kind: Kind,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    ports: (u16, u16),
    ttl: u8,
    zero_udp_checksum: bool,
    payload: Vec<u8>,
    options: Vec<RawOption>,
}

fn arb_option() -> impl Strategy<Value = RawOption> {
    prop_oneof![
        (arb_addr(), arb_addr()).prop_map(|(e, h)| RawOption::host_hint(e, h)),
        Just(RawOption::direct()),
        (arb_addr(), any::<u16>(), any::<u8>())
            .prop_map(|(v, p, t)| RawOption::service_orig(v, p, t)),
        arb_addr().prop_map(RawOption::stale),
        (
            any::<u16>(),
            0..0x7fu8,
            prop::collection::vec(any::<u8>(), 0..3)
        )
            .prop_map(|(class, kind, words)| RawOption {
                class,
                kind,
                body: words.iter().flat_map(|w| [*w; 4]).collect()
            }),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    (
        prop_oneof![Just(VNI_A), Just(VNI_B), 1..300u32],
        prop_oneof![
            Just((H1, H1_MAC)),
            Just((H2, H2_MAC)),
            Just((H3, H3_MAC)),
            Just((GW2, GW2_MAC))
        ],
        prop_oneof![
            Just(Kind::Udp),
            Just(Kind::Tcp),
            Just(Kind::Icmp),
            Just(Kind::Arp)
        ],
        (arb_addr(), arb_addr(), arb_mac(), arb_mac()),
        (
            prop_oneof![Just(VIP_TCP_PORT), Just(VIP_UDP_PORT), any::<u16>()],
            any::<u16>(),
        ),
        (1..=255u8, any::<bool>()),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(arb_option(), 0..3),
    )
        .prop_map(
            |(
                vni,
                from,
                kind,
                (src, dst, src_mac, dst_mac),
                (dport, sport),
                (ttl, zero),
                payload,
                options,
            )| Input {
                vni,
                from,
                kind,
                src,
                dst,
                src_mac,
                dst_mac,
                ports: (sport, dport),
                ttl,
                zero_udp_checksum: zero,
                payload,
                options,
            },
        )
}

fn build(input: &Input) -> Vec<u8> {
    let mut inner = match input.kind {
        Kind::Udp => inner_udp(
            input.src_mac,
            input.dst_mac,
            input.src,
            input.dst,
            input.ports,
            &input.payload,
        ),
        Kind::Tcp => inner_tcp(
            input.src_mac,
            input.dst_mac,
            input.src,
            input.dst,
            input.ports,
            &input.payload,
        ),
        Kind::Icmp => inner_icmp(input.src_mac, input.dst_mac, input.src, input.dst),
        Kind::Arp => inner_arp_request(input.src_mac, input.src, input.dst),
    };
    if !matches!(input.kind, Kind::Arp) {
        set_inner_ttl(&mut inner, input.ttl);
    }
    if matches!(input.kind, Kind::Udp) && input.zero_udp_checksum {
        inner[40] = 0;
        inner[41] = 0;
    }
    let mut outer = OuterSpec::from_host(input.from.0, input.from.1, input.vni);
    outer.options = input.options.clone();
    geneve_packet(&outer, &inner)
}

fn run(tables: &Tables, packet: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = with_headroom(packet);
    let mut frame = Frame::new(&mut buf, HEADROOM, packet.len()).unwrap();
    let verdict = process(tables, &local(), &mut frame);
    (verdict, frame.data().to_vec())
}

/// Endpoints per VNI: (address, MAC, host).
fn endpoints_of(vni: u32) -> &'static [(Ipv4Addr, MacAddr, Ipv4Addr)] {
    match vni {
        VNI_A => &[
            (POD_A1, POD_A1_MAC, H1),
            (POD_A1B, POD_A1B_MAC, H2),
            (POD_A2, POD_A2_MAC, H3),
        ],
        VNI_B => &[(POD_B1, POD_B1_MAC, H3)],
        _ => &[],
    }
}

fn check_output(input: &Input, verdict: Verdict, out: &[u8]) -> Result<(), TestCaseError> {
    if let Verdict::Drop(_) = verdict {
        return Ok(());
    }
    prop_assert!(
        input.vni == VNI_A || input.vni == VNI_B,
        "a packet of an unknown VNI was sent on"
    );
    let d = decode(out).map_err(TestCaseError::fail)?;
    prop_assert_eq!(d.vni, input.vni, "VNI changed");
    prop_assert!(d.outer_ip_checksum_ok, "outer IPv4 checksum");
    prop_assert_eq!(d.udp_dst_port, 6081);
    check_inner_checksums(&d.inner).map_err(TestCaseError::fail)?;
    if verdict == Verdict::Forward && d.inner.len() >= 34 {
        // Delivered to an endpoint's host: it must be an endpoint of the same VNI, and
        // the inner destination MAC is that endpoint's.
        let dst = Ipv4Addr::new(d.inner[30], d.inner[31], d.inner[32], d.inner[33]);
        let dst_mac = &d.inner[0..6];
        let gateways = [GW2, GW3];
        if !gateways.contains(&d.outer_dst) {
            let own = endpoints_of(input.vni).iter().find(|(ip, _, _)| *ip == dst);
            let Some((_, mac, host)) = own else {
                return Err(TestCaseError::fail(format!(
                    "delivered to {dst}, not an endpoint of VNI {}",
                    input.vni
                )));
            };
            prop_assert_eq!(
                dst_mac,
                &mac.0[..],
                "inner MAC of another tenant's endpoint"
            );
            prop_assert_eq!(d.outer_dst, *host);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn vni_is_preserved_and_tenants_stay_apart(input in arb_input()) {
        let writer = world_tables();
        let tables = writer.snapshot();
        let (verdict, out) = run(&tables, &build(&input));
        check_output(&input, verdict, &out)?;
    }

    #[test]
    fn corrupted_packets_never_panic_or_leak(input in arb_input(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let writer = world_tables();
        let tables = writer.snapshot();
        let mut packet = build(&input);
        for (at, value) in &flips {
            let i = at.index(packet.len());
            packet[i] = *value;
        }
        let (verdict, out) = run(&tables, &packet);
        if verdict != Verdict::Forward && verdict != Verdict::Reply {
            return Ok(());
        }
        // A corrupted packet may still be valid; whatever leaves keeps its arriving VNI.
        let arriving_vni = u32::from_be_bytes([0, packet[46], packet[47], packet[48]]);
        let d = decode(&out).map_err(TestCaseError::fail)?;
        prop_assert_eq!(d.vni, arriving_vni);
        prop_assert!(d.outer_ip_checksum_ok);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A batch gives each packet exactly the verdict and bytes `process` gives it alone.
    #[test]
    fn batches_decide_like_single_packets(inputs in prop::collection::vec(arb_input(), 1..48)) {
        let writer = world_tables();
        let tables = writer.snapshot();
        let packets: Vec<Vec<u8>> = inputs.iter().map(build).collect();
        let alone: Vec<(Verdict, Vec<u8>)> = packets.iter().map(|p| run(&tables, p)).collect();
        let mut buffers: Vec<Vec<u8>> = packets.iter().map(|p| with_headroom(p)).collect();
        let mut frames: Vec<Frame<'_>> = buffers
            .iter_mut()
            .zip(&packets)
            .map(|(buf, p)| Frame::new(buf, HEADROOM, p.len()).unwrap())
            .collect();
        let mut verdicts = vec![Verdict::Forward; frames.len()];
        process_batch(&tables, &local(), &mut frames, &mut verdicts);
        for (i, (frame, verdict)) in frames.iter().zip(&verdicts).enumerate() {
            prop_assert_eq!(*verdict, alone[i].0, "packet {}", i);
            if *verdict != Verdict::Drop(sluice_dataplane::pipeline::DropReason::NoHeadroom) {
                prop_assert_eq!(frame.data(), &alone[i].1[..], "packet {}", i);
            }
        }
    }
}

#[test]
fn the_generator_reaches_every_path() {
    // Guards the properties above against a generator that only ever produces drops.
    let writer = world_tables();
    let tables = writer.snapshot();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut forwards = 0;
    let mut replies = 0;
    for _ in 0..3000 {
        let input = arb_input().new_tree(&mut runner).unwrap().current();
        match run(&tables, &build(&input)).0 {
            Verdict::Forward => forwards += 1,
            Verdict::Reply => replies += 1,
            Verdict::Drop(_) => {}
        }
    }
    assert!(forwards > 100, "only {forwards} forwards");
    assert!(replies > 5, "only {replies} replies");
}
