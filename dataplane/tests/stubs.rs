//! The worker stubs (`bpf/stubs.bpf.c`, loaded by `sluice_dataplane::stubs`) on the real
//! kernel. Most tests run the programs on crafted frames with BPF_PROG_TEST_RUN (nothing
//! is sent anywhere) and compare the result byte for byte with frames built here
//! independently (etherparse and the testkit's hand-written Geneve). The last test wires
//! pod namespaces through veths and pings across the agent stub.
//!
//! Needs root (BPF, bpffs, namespaces). Each test pins its maps in its own directory
//! `/sys/fs/bpf/sl-stubs-<pid>-<n>`, removed by a guard even when the test fails; bpffs
//! is mounted at /sys/fs/bpf first if it is not.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, UdpHeader};
use sluice_api::MacAddr;
use sluice_dataplane::stubs::{
    action, flow_hash, layout, NodeIdentity, NodeStubs, PodEntry, RevNatKey, RevNatValue,
    StubError, StubProgram, TestRun, COUNTERS, MAX_BOUNCERS,
};
use sluice_dataplane::testkit::{
    self, geneve_packet, inner_arp_request, inner_tcp, inner_udp, OuterSpec, RawOption, GW, GW2,
    GW2_MAC, GW3, GW3_MAC, GW_MAC, H1, H1_MAC, H2, H2_MAC, POD_A1, POD_A1B, POD_A1B_MAC,
    POD_A1_MAC, POD_A2, POD_A2_MAC, ROUTER_A1_MAC, VIP_TCP, VIP_TCP_PORT, VIP_UDP, VIP_UDP_PORT,
    VNI_A, VNI_B,
};

mod common;

use common::{assert_root, in_ns, ip, nsenter, unique};

/// This worker.
const NODE: Ipv4Addr = H1;
const NODE_MAC: MacAddr = H1_MAC;
/// Any index: BPF_PROG_TEST_RUN returns the redirect without following it.
const NODE_IFINDEX: u32 = 7;
/// The pod under test sits behind the loopback interface, the ingress interface of
/// BPF_PROG_TEST_RUN when no context is given.
const POD_IFINDEX: u32 = 1;
/// A second pod on this host (only named in maps).
const NEIGHBOR_POD_IFINDEX: u32 = 42;
const BOUNCERS: [(Ipv4Addr, MacAddr); 3] = [(GW, GW_MAC), (GW2, GW2_MAC), (GW3, GW3_MAC)];

/// A unique pin directory on bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        assert_root("worker stub");
        mount_bpffs();
        PinDir(Path::new("/sys/fs/bpf").join(unique("sl-stubs")))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = NodeStubs::unpin_all(&self.0) {
            eprintln!("cleaning up {}: {e}", self.0.display());
        }
    }
}

fn mount_bpffs() {
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading mounts");
        if !mounts.lines().any(|l| l.contains(" /sys/fs/bpf bpf ")) {
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .expect("running mount");
            assert!(status.success(), "mounting bpffs at /sys/fs/bpf");
        }
    });
}

/// Stubs loaded in their own pin directory, with the node, the bouncers' MACs and pod
/// A1 (VNI A) behind the loopback interface.
struct Bed {
    stubs: NodeStubs,
    // Dropped after `stubs`.
    _pins: PinDir,
}

fn pod_a1() -> PodEntry {
    PodEntry {
        vni: VNI_A,
        ip: POD_A1,
        mac: POD_A1_MAC.0,
        router_mac: ROUTER_A1_MAC.0,
        bouncers: BOUNCERS.iter().map(|(ip, _)| *ip).collect(),
    }
}

fn pod_a1b() -> PodEntry {
    PodEntry {
        ip: POD_A1B,
        mac: POD_A1B_MAC.0,
        ..pod_a1()
    }
}

impl Bed {
    fn new() -> Self {
        let pins = PinDir::new();
        let stubs = NodeStubs::load(&pins.0).expect("loading the stubs");
        stubs
            .set_node(&NodeIdentity {
                ip: NODE,
                mac: NODE_MAC.0,
                ifindex: NODE_IFINDEX,
            })
            .expect("set_node");
        for (ip, mac) in BOUNCERS.iter().chain(&[(H2, H2_MAC)]) {
            stubs.set_underlay_neighbor(*ip, mac.0).expect("neighbour");
        }
        stubs.add_pod(POD_IFINDEX, &pod_a1()).expect("add_pod");
        Bed { stubs, _pins: pins }
    }

    fn agent(&self, frame: &[u8]) -> TestRun {
        self.stubs
            .test_run(StubProgram::Agent, frame, None)
            .expect("test run")
    }

    fn transit(&self, frame: &[u8]) -> TestRun {
        self.stubs
            .test_run(StubProgram::Transit, frame, None)
            .expect("test run")
    }

    fn counter(&self, label: &str) -> u64 {
        let counters = self.stubs.counters().expect("counters");
        counters
            .iter()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no counter {label}"))
            .1
    }

    /// Asserts the counters: those named with their value, every other one zero.
    fn assert_counters(&self, expected: &[(&str, u64)]) {
        for (label, value) in self.stubs.counters().expect("counters") {
            let want = expected
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0, |(_, v)| *v);
            assert_eq!(value, want, "counter {label}");
        }
    }
}

/// The stubs' flow hash, written out again from its documentation.
fn hash(a: Ipv4Addr, b: Ipv4Addr) -> u32 {
    let mut h = (u32::from(a) ^ u32::from(b)).wrapping_mul(0x9E37_79B1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^ (h >> 13)
}

/// Which bouncer the wire contract's hash picks, with its MAC.
fn bouncer_for(src: Ipv4Addr, dst: Ipv4Addr) -> (Ipv4Addr, MacAddr) {
    BOUNCERS[(hash(src, dst) % BOUNCERS.len() as u32) as usize]
}

/// What the agent must send: the wire contract's outer headers, built with etherparse,
/// around `inner`.
fn encapsulated(
    to: (Ipv4Addr, MacAddr),
    vni: u32,
    flow: u32,
    options: &[RawOption],
    inner: &[u8],
) -> Vec<u8> {
    let mut geneve = testkit::geneve_header(vni, options);
    geneve.extend_from_slice(inner);
    let udp_len = u16::try_from(UdpHeader::LEN + geneve.len()).expect("fits");
    let mut ipv4 = Ipv4Header::new(udp_len, 64, IpNumber::UDP, NODE.octets(), to.0.octets())
        .expect("IPv4 header");
    ipv4.dont_fragment = true;
    ipv4.identification = 0;
    ipv4.header_checksum = ipv4.calc_header_checksum();
    let udp = UdpHeader {
        source_port: 49152 + (flow % 16384) as u16,
        destination_port: 6081,
        length: udp_len,
        checksum: 0,
    };
    let eth = Ethernet2Header {
        source: NODE_MAC.0,
        destination: to.1 .0,
        ether_type: EtherType::IPV4,
    };
    let mut out = eth.to_bytes().to_vec();
    out.extend_from_slice(&ipv4.to_bytes());
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(&geneve);
    out
}

/// A Geneve packet from `from` to this node carrying `inner`.
fn to_node(from: (Ipv4Addr, MacAddr), vni: u32, options: Vec<RawOption>, inner: &[u8]) -> Vec<u8> {
    let outer = OuterSpec {
        src_mac: from.1,
        dst_mac: NODE_MAC,
        src_ip: from.0,
        dst_ip: NODE,
        src_port: 50_000,
        vni,
        options,
    };
    geneve_packet(&outer, inner)
}

/// Checks an IPv4 header's checksum and a TCP/UDP checksum over the pseudo-header, by
/// summing (a valid packet sums to 0xFFFF), independently of how they were computed.
fn assert_checksums_valid(frame: &[u8]) {
    fn sum(bytes: &[u8], mut acc: u32) -> u32 {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
        }
        acc
    }
    fn fold(mut acc: u32) -> u16 {
        while acc > 0xFFFF {
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        acc as u16
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    assert_eq!(fold(sum(&ip[..ihl], 0)), 0xFFFF, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let proto = ip[9];
    if proto == 17 && l4[6..8] == [0, 0] {
        return; // no UDP checksum
    }
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    assert_eq!(
        fold(sum(l4, sum(&pseudo, 0))),
        0xFFFF,
        "TCP/UDP checksum (protocol {proto})"
    );
}

#[test]
fn flow_hash_is_the_documented_one() {
    for (a, b) in [(POD_A1, POD_A2), (GW, H2), (Ipv4Addr::UNSPECIFIED, POD_A1B)] {
        assert_eq!(flow_hash(a, b), hash(a, b));
        assert_eq!(flow_hash(a, b), flow_hash(b, a));
    }
}

#[test]
fn agent_encapsulates_to_the_hashed_bouncer() {
    let bed = Bed::new();
    let mut chosen = std::collections::HashSet::new();
    let flows = 40u8;
    for last in 1..=flows {
        let dst = Ipv4Addr::new(10, 0, 2, last);
        let inner = inner_udp(
            POD_A1_MAC,
            ROUTER_A1_MAC,
            POD_A1,
            dst,
            (40_000, 53),
            b"hello",
        );
        let run = bed.agent(&inner);
        assert_eq!(run.action, action::REDIRECT, "flow to {dst}");
        let to = bouncer_for(POD_A1, dst);
        chosen.insert(to.0);
        let expected = encapsulated(to, VNI_A, hash(POD_A1, dst), &[], &inner);
        assert_eq!(
            common::hex(&run.frame),
            common::hex(&expected),
            "flow to {dst}"
        );
        let port = u16::from_be_bytes([run.frame[34], run.frame[35]]);
        assert!(port >= 49152, "source port {port}");
    }
    assert!(
        chosen.len() > 1,
        "{flows} flows all went to one bouncer: {chosen:?}"
    );
    bed.assert_counters(&[("agent_encap_bouncer", u64::from(flows))]);
}

#[test]
fn agent_sends_arp_to_the_hashed_bouncer() {
    let bed = Bed::new();
    let arp = inner_arp_request(POD_A1_MAC, POD_A1, POD_A2);
    let run = bed.agent(&arp);
    assert_eq!(run.action, action::REDIRECT);
    let expected = encapsulated(
        bouncer_for(POD_A1, POD_A2),
        VNI_A,
        hash(POD_A1, POD_A2),
        &[],
        &arp,
    );
    assert_eq!(common::hex(&run.frame), common::hex(&expected));
    bed.assert_counters(&[("agent_encap_bouncer", 1)]);
}

#[test]
fn agent_redirects_to_a_pod_on_the_same_host_unchanged() {
    let bed = Bed::new();
    bed.stubs
        .add_pod(NEIGHBOR_POD_IFINDEX, &pod_a1b())
        .expect("add_pod");
    let frame = inner_tcp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (40_000, 80), b"x");
    let run = bed.agent(&frame);
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(run.frame, frame, "same-host frames are not touched");
    // Addressed to the router (another subnet's view of the same address): via a bouncer.
    let routed = inner_tcp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        POD_A1B,
        (40_000, 80),
        b"x",
    );
    let run = bed.agent(&routed);
    assert_eq!(
        common::hex(&run.frame),
        common::hex(&encapsulated(
            bouncer_for(POD_A1, POD_A1B),
            VNI_A,
            hash(POD_A1, POD_A1B),
            &[],
            &routed
        ))
    );
    bed.assert_counters(&[("agent_same_host", 1), ("agent_encap_bouncer", 1)]);
}

#[test]
fn transit_decapsulates_to_the_local_pod() {
    let bed = Bed::new();
    let inner = inner_udp(
        ROUTER_A1_MAC,
        MacAddr([0x02, 0xde, 0xad, 0, 0, 1]),
        POD_A2,
        POD_A1,
        (53, 40_000),
        b"reply",
    );
    let packet = to_node((GW, GW_MAC), VNI_A, vec![], &inner);
    let run = bed.transit(&packet);
    assert_eq!(run.action, action::REDIRECT);
    let mut expected = inner.clone();
    expected[..6].copy_from_slice(&POD_A1_MAC.0);
    assert_eq!(common::hex(&run.frame), common::hex(&expected));
    bed.assert_counters(&[("transit_delivered", 1)]);
}

#[test]
fn transit_caches_host_hints_and_the_agent_then_goes_direct() {
    let bed = Bed::new();
    assert_eq!(bed.stubs.cached_host(VNI_A, POD_A2).unwrap(), None);
    // The bouncer's answer to A1's ARP for A2, with a hint that A2 lives on H2.
    let reply = inner_arp_request(POD_A2_MAC, POD_A2, POD_A1);
    let packet = to_node(
        (GW, GW_MAC),
        VNI_A,
        vec![RawOption::host_hint(POD_A2, H2)],
        &reply,
    );
    assert_eq!(bed.transit(&packet).action, action::REDIRECT);
    assert_eq!(bed.stubs.cached_host(VNI_A, POD_A2).unwrap(), Some(H2));
    assert_eq!(
        bed.stubs.cached_host(VNI_B, POD_A2).unwrap(),
        None,
        "the hint is for VNI A only"
    );

    let inner = inner_udp(POD_A1_MAC, POD_A2_MAC, POD_A1, POD_A2, (40_000, 53), b"q");
    let run = bed.agent(&inner);
    assert_eq!(run.action, action::REDIRECT);
    let expected = encapsulated(
        (H2, H2_MAC),
        VNI_A,
        hash(POD_A1, POD_A2),
        &[RawOption::direct()],
        &inner,
    );
    assert_eq!(common::hex(&run.frame), common::hex(&expected));

    // Frames to the router still go through a bouncer, cache or not.
    let routed = inner_udp(
        POD_A1_MAC,
        ROUTER_A1_MAC,
        POD_A1,
        POD_A2,
        (40_000, 53),
        b"q",
    );
    let run = bed.agent(&routed);
    assert_eq!(&run.frame[30..34], &bouncer_for(POD_A1, POD_A2).0.octets());
    bed.assert_counters(&[
        ("transit_delivered", 1),
        ("transit_host_hint", 1),
        ("agent_encap_direct", 1),
        ("agent_encap_bouncer", 1),
    ]);
}

#[test]
fn transit_caches_the_sender_of_direct_packets() {
    let bed = Bed::new();
    let inner = inner_udp(POD_A2_MAC, POD_A1_MAC, POD_A2, POD_A1, (53, 40_000), b"a");
    let packet = to_node((H2, H2_MAC), VNI_A, vec![RawOption::direct()], &inner);
    let run = bed.transit(&packet);
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(run.frame, inner);
    assert_eq!(bed.stubs.cached_host(VNI_A, POD_A2).unwrap(), Some(H2));
    bed.assert_counters(&[("transit_delivered", 1), ("transit_direct", 1)]);
}

/// A host_cache entry older than HOST_CACHE_TTL_NS is a miss: the agent goes back to a
/// bouncer (a pod that was deleted or moved stops drawing DIRECT traffic to its old host),
/// and the next hint or DIRECT packet makes the entry fresh again.
#[test]
fn host_cache_entries_older_than_the_ttl_are_not_used() {
    let bed = Bed::new();
    let ttl = Duration::from_nanos(layout::HOST_CACHE_TTL_NS);
    let learn = || {
        let reply = inner_arp_request(POD_A2_MAC, POD_A2, POD_A1);
        let hint = vec![RawOption::host_hint(POD_A2, H2)];
        let packet = to_node((GW, GW_MAC), VNI_A, hint, &reply);
        assert_eq!(bed.transit(&packet).action, action::REDIRECT);
    };
    let inner = inner_udp(POD_A1_MAC, POD_A2_MAC, POD_A1, POD_A2, (40_000, 53), b"q");
    let outer_dst = |frame: &[u8]| Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);

    learn();
    // Just inside the TTL (one second to spare for the test's own time): still direct.
    assert!(bed
        .stubs
        .age_cached_host(VNI_A, POD_A2, ttl - Duration::from_secs(1))
        .unwrap());
    let run = bed.agent(&inner);
    assert_eq!((run.action, outer_dst(&run.frame)), (action::REDIRECT, H2));

    // Past it: the entry is still there, but the agent asks a bouncer.
    assert!(bed
        .stubs
        .age_cached_host(VNI_A, POD_A2, Duration::from_secs(2))
        .unwrap());
    assert_eq!(bed.stubs.cached_host(VNI_A, POD_A2).unwrap(), Some(H2));
    let run = bed.agent(&inner);
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(outer_dst(&run.frame), bouncer_for(POD_A1, POD_A2).0);

    // The bouncer's next hint refreshes it: direct again.
    learn();
    let run = bed.agent(&inner);
    assert_eq!(outer_dst(&run.frame), H2);
    bed.assert_counters(&[
        ("transit_delivered", 2),
        ("transit_host_hint", 2),
        ("agent_encap_direct", 2),
        ("agent_encap_bouncer", 1),
    ]);
    assert!(!bed
        .stubs
        .age_cached_host(VNI_B, POD_A2, Duration::from_secs(1))
        .unwrap());
}

/// The gateway DNATed client A2 -> VIP into A2 -> backend A1 and says so; the backend's
/// reply must leave this node from the VIP, with checksums valid.
#[test]
fn service_orig_is_recorded_and_replies_are_reverse_natted() {
    let bed = Bed::new();
    let backend_port = 8080;
    let client_port = 40_000;
    let cases = [
        (6u8, VIP_TCP, VIP_TCP_PORT, true),
        (17, VIP_UDP, VIP_UDP_PORT, true),
        (17, VIP_UDP, VIP_UDP_PORT, false), // UDP without a checksum
    ];
    let build = |proto: u8, src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), csum: bool| {
        let mut frame = if proto == 6 {
            inner_tcp(POD_A1_MAC, ROUTER_A1_MAC, src, dst, ports, b"payload!")
        } else {
            inner_udp(POD_A1_MAC, ROUTER_A1_MAC, src, dst, ports, b"payload!")
        };
        if !csum {
            frame[40..42].copy_from_slice(&[0, 0]);
        }
        frame
    };
    for (i, (proto, vip, vip_port, csum)) in cases.into_iter().enumerate() {
        let client_port = client_port + i as u16;
        let request = build(proto, POD_A2, POD_A1, (client_port, backend_port), true);
        let packet = to_node(
            (GW, GW_MAC),
            VNI_A,
            vec![RawOption::service_orig(vip, vip_port, proto)],
            &request,
        );
        assert_eq!(bed.transit(&packet).action, action::REDIRECT);
        let key = RevNatKey {
            vni: VNI_A,
            proto,
            src_ip: POD_A1,
            src_port: backend_port,
            dst_ip: POD_A2,
            dst_port: client_port,
        };
        let entries = bed.stubs.reverse_nat().unwrap();
        assert!(
            entries.contains(&(key, RevNatValue { vip, vip_port })),
            "{key:?} in {entries:?}"
        );

        let reply = build(proto, POD_A1, POD_A2, (backend_port, client_port), csum);
        let run = bed.agent(&reply);
        assert_eq!(run.action, action::REDIRECT);
        let inner = &run.frame[50..];
        let expected = build(proto, vip, POD_A2, (vip_port, client_port), csum);
        assert_eq!(common::hex(inner), common::hex(&expected), "case {i}");
        assert_checksums_valid(inner);
        // The outer headers are those of any encapsulation to the hashed bouncer, over the
        // rewritten flow.
        let outer = encapsulated(
            bouncer_for(vip, POD_A2),
            VNI_A,
            hash(vip, POD_A2),
            &[],
            &expected,
        );
        assert_eq!(common::hex(&run.frame), common::hex(&outer), "case {i}");
    }
    // A reply of a flow that was never DNATed goes out as it is.
    let plain = build(6, POD_A1, POD_A2, (backend_port, 1234), true);
    assert_eq!(&bed.agent(&plain).frame[50..], plain.as_slice());
    bed.assert_counters(&[
        ("transit_delivered", 3),
        ("transit_service_orig", 3),
        ("agent_reverse_nat", 3),
        ("agent_encap_bouncer", 4),
    ]);
}

#[test]
fn drops_are_counted_by_reason() {
    let bed = Bed::new();
    let inner = inner_udp(
        ROUTER_A1_MAC,
        POD_A1_MAC,
        POD_A2,
        POD_A1,
        (53, 40_000),
        b"x",
    );
    let mut expected = Vec::new();
    let mut drop = |run: TestRun, label: &'static str| {
        assert_eq!(run.action, action::DROP, "{label}");
        expected.push(label);
    };

    // Transit: an unknown critical option (any class) drops; an unknown non-critical
    // one is skipped.
    let critical = RawOption {
        class: 0x0103,
        kind: 0x80 | 0x11,
        body: vec![0; 4],
    };
    let ours_critical = RawOption {
        class: 0xFF01,
        kind: 0x80 | 0x7F,
        body: vec![],
    };
    for option in [critical, ours_critical] {
        drop(
            bed.transit(&to_node((GW, GW_MAC), VNI_A, vec![option], &inner)),
            "drop_unknown_critical_option",
        );
    }
    let harmless = RawOption {
        class: 0x0103,
        kind: 0x11,
        body: vec![0; 8],
    };
    let run = bed.transit(&to_node(
        (GW, GW_MAC),
        VNI_A,
        vec![harmless.clone(), RawOption::host_hint(POD_A2, H2)],
        &inner,
    ));
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(run.frame, inner);
    // More options than the stub parses.
    drop(
        bed.transit(&to_node((GW, GW_MAC), VNI_A, vec![harmless; 9], &inner)),
        "drop_too_many_options",
    );
    // A known option with the wrong body length.
    let bad_hint = RawOption {
        body: vec![0; 4],
        ..RawOption::host_hint(POD_A2, H2)
    };
    drop(
        bed.transit(&to_node((GW, GW_MAC), VNI_A, vec![bad_hint], &inner)),
        "drop_bad_option",
    );
    // No local endpoint: another VNI, another address.
    drop(
        bed.transit(&to_node((GW, GW_MAC), VNI_B, vec![], &inner)),
        "drop_no_local_endpoint",
    );
    let elsewhere = inner_udp(ROUTER_A1_MAC, POD_A1_MAC, POD_A2, POD_A1B, (53, 1), b"x");
    drop(
        bed.transit(&to_node((GW, GW_MAC), VNI_A, vec![], &elsewhere)),
        "drop_no_local_endpoint",
    );
    // Truncated: the Geneve header cut short, the inner IPv4 header cut short.
    let whole = to_node((GW, GW_MAC), VNI_A, vec![], &inner);
    drop(bed.transit(&whole[..46]), "drop_truncated");
    drop(bed.transit(&whole[..50 + 14 + 10]), "drop_truncated");
    // Geneve version 1.
    let mut v1 = whole.clone();
    v1[42] |= 0x40;
    drop(bed.transit(&v1), "drop_bad_geneve");

    // Agent: truncated IPv4, a spoofed source, not IPv4 or ARP, then an unknown pod.
    let egress = inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, POD_A2, (1, 2), b"x");
    drop(bed.agent(&egress[..14 + 12]), "drop_truncated");
    let spoofed = inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1B, POD_A2, (1, 2), b"x");
    drop(bed.agent(&spoofed), "drop_spoofed_source");
    let mut ipv6 = egress.clone();
    ipv6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    drop(bed.agent(&ipv6), "drop_unsupported_ethertype");
    assert_eq!(bed.stubs.remove_pod(POD_IFINDEX).unwrap(), Some(pod_a1()));
    drop(bed.agent(&egress), "drop_unknown_pod");

    let mut want: Vec<(&str, u64)> = vec![("transit_delivered", 1), ("transit_host_hint", 1)];
    for label in expected {
        match want.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => want.push((label, 1)),
        }
    }
    bed.assert_counters(&want);
    // Every label is distinct and stable.
    let labels: std::collections::HashSet<_> = COUNTERS.iter().map(|c| c.label()).collect();
    assert_eq!(labels.len(), COUNTERS.len());
}

#[test]
fn transit_passes_everything_else_untouched() {
    let bed = Bed::new();
    let inner = inner_udp(
        ROUTER_A1_MAC,
        POD_A1_MAC,
        POD_A2,
        POD_A1,
        (53, 40_000),
        b"x",
    );
    let mut frames = vec![
        // Plain UDP to the node.
        inner_udp(GW_MAC, NODE_MAC, GW, NODE, (5000, 53), b"dns"),
        // Geneve to another address.
        geneve_packet(
            &OuterSpec {
                dst_ip: H2,
                ..OuterSpec::from_host(GW, GW_MAC, VNI_A)
            },
            &inner,
        ),
        // TCP to the node, and ARP.
        inner_tcp(GW_MAC, NODE_MAC, GW, NODE, (5000, 6081), b"tcp"),
        inner_arp_request(GW_MAC, GW, NODE),
    ];
    // An IPv4 fragment of Geneve to the node.
    let mut fragment = to_node((GW, GW_MAC), VNI_A, vec![], &inner);
    fragment[20] |= 0x20;
    frames.push(fragment);
    for frame in &frames {
        let run = bed.transit(frame);
        assert_eq!(run.action, action::PASS);
        assert_eq!(run.frame, *frame);
    }
    bed.assert_counters(&[("transit_passed", frames.len() as u64)]);
}

#[test]
fn a_reload_readopts_the_pinned_maps() {
    let pins = PinDir::new();
    let stubs = NodeStubs::load(&pins.0).expect("first load");
    stubs
        .set_node(&NodeIdentity {
            ip: NODE,
            mac: NODE_MAC.0,
            ifindex: NODE_IFINDEX,
        })
        .unwrap();
    stubs.add_pod(POD_IFINDEX, &pod_a1()).unwrap();
    stubs.add_pod(NEIGHBOR_POD_IFINDEX, &pod_a1b()).unwrap();
    let frame = inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1, 2), b"x");
    assert_eq!(
        stubs
            .test_run(StubProgram::Agent, &frame, None)
            .unwrap()
            .action,
        action::REDIRECT
    );
    drop(stubs);
    for name in [
        "pods",
        "endpoints",
        "counters",
        "prog_agent",
        "prog_transit",
    ] {
        assert!(pins.0.join(name).exists(), "{name} is pinned");
    }

    let again = NodeStubs::load(&pins.0).expect("second load");
    assert_eq!(
        again.pods().unwrap(),
        vec![(POD_IFINDEX, pod_a1()), (NEIGHBOR_POD_IFINDEX, pod_a1b())]
    );
    // The new programs use the old maps: the same frame still short-circuits, and the
    // counter continues.
    let run = again.test_run(StubProgram::Agent, &frame, None).unwrap();
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(
        again
            .counter(sluice_dataplane::stubs::Counter::AgentSameHost)
            .unwrap(),
        2
    );
    let counts = again.map_entry_counts().unwrap();
    assert_eq!((counts.pods, counts.local_endpoints), (2, 2));
}

#[test]
fn pods_are_added_and_removed_whole() {
    let bed = Bed::new();
    let mut bad = pod_a1b();
    bad.bouncers.clear();
    assert!(matches!(
        bed.stubs.add_pod(NEIGHBOR_POD_IFINDEX, &bad),
        Err(StubError::InvalidPod(_))
    ));
    bad.bouncers = vec![GW; MAX_BOUNCERS + 1];
    assert!(bed.stubs.add_pod(NEIGHBOR_POD_IFINDEX, &bad).is_err());
    let counts = bed.stubs.map_entry_counts().unwrap();
    assert_eq!((counts.pods, counts.local_endpoints), (1, 1));

    // A hint and a reverse-NAT entry naming A1, then A1 goes.
    let request = inner_tcp(ROUTER_A1_MAC, POD_A1_MAC, POD_A2, POD_A1, (4000, 80), b"x");
    let packet = to_node(
        (H2, H2_MAC),
        VNI_A,
        vec![
            RawOption::direct(),
            RawOption::service_orig(VIP_TCP, VIP_TCP_PORT, 6),
        ],
        &request,
    );
    assert_eq!(bed.transit(&packet).action, action::REDIRECT);
    let counts = bed.stubs.map_entry_counts().unwrap();
    assert_eq!((counts.host_cache, counts.reverse_nat), (1, 1));
    assert_eq!(bed.counter("transit_service_orig"), 1);

    assert_eq!(bed.stubs.remove_pod(POD_IFINDEX).unwrap(), Some(pod_a1()));
    assert_eq!(bed.stubs.remove_pod(POD_IFINDEX).unwrap(), None);
    let counts = bed.stubs.map_entry_counts().unwrap();
    assert_eq!(
        (counts.pods, counts.local_endpoints, counts.reverse_nat),
        (0, 0, 0)
    );
    assert_eq!(counts.neighbors, 4);
    bed.stubs.remove_underlay_neighbor(H2).unwrap();
    bed.stubs.remove_underlay_neighbor(H2).unwrap();
    assert_eq!(bed.stubs.map_entry_counts().unwrap().neighbors, 3);
}

#[test]
fn loading_outside_bpffs_fails_clearly() {
    assert_root("worker stub");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = NodeStubs::load(&dir.path().join("pins")).unwrap_err();
    assert!(matches!(err, StubError::NotBpffs { .. }), "{err}");
    assert!(err.to_string().contains("mount -t bpf"), "{err}");
}

/// Two pods in their own namespaces behind veths into a host namespace, the agent stub on
/// the host sides: they ping each other through the same-host short-circuit.
#[test]
fn pods_on_one_host_ping_through_the_agent() {
    let pins = PinDir::new();
    let base = unique("sl-stub");
    let host = format!("{base}-h");
    let pods = [format!("{base}-p1"), format!("{base}-p2")];
    let _guard = Namespaces(vec![host.clone(), pods[0].clone(), pods[1].clone()]);
    for ns in [&host, &pods[0], &pods[1]] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let stubs = NodeStubs::load(&pins.0).expect("loading");
    let addrs = [POD_A1, POD_A1B];
    let macs = [POD_A1_MAC, POD_A1B_MAC];
    for i in 0..2 {
        let host_if = format!("h{i}");
        ip(&[
            "-n",
            &host,
            "link",
            "add",
            &host_if,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pods[i],
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        ip(&[
            "-n",
            &pods[i],
            "link",
            "set",
            "eth0",
            "address",
            &macs[i].to_string(),
        ]);
        ip(&[
            "-n",
            &pods[i],
            "addr",
            "add",
            &format!("{}/24", addrs[i]),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pods[i], "link", "set", "eth0", "up"]);
        ip(&["-n", &host, "link", "set", &host_if, "up"]);
        // Static neighbours: ARP would go to a bouncer, and there is none here.
        let other = 1 - i;
        ip(&[
            "-n",
            &pods[i],
            "neigh",
            "add",
            &addrs[other].to_string(),
            "lladdr",
            &macs[other].to_string(),
            "dev",
            "eth0",
        ]);
        let pod_if = in_ns(&pods[i], || nix::net::if_::if_nametoindex("eth0").unwrap());
        in_ns(&pods[i], || stubs.attach_pod_side(pod_if)).expect("pod side");
        let host_index = in_ns(&host, || {
            nix::net::if_::if_nametoindex(host_if.as_str()).unwrap()
        });
        in_ns(&host, || stubs.attach_agent(host_index)).expect("agent");
        let entry = PodEntry {
            ip: addrs[i],
            mac: macs[i].0,
            ..pod_a1()
        };
        in_ns(&host, || stubs.add_pod(host_index, &entry)).expect("add_pod");
    }
    // The agent needs a node to run at all (it is never used for same-host traffic).
    let lo = 1;
    stubs
        .set_node(&NodeIdentity {
            ip: NODE,
            mac: NODE_MAC.0,
            ifindex: lo,
        })
        .unwrap();
    let out = nsenter(
        &pods[0],
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &POD_A1B.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "ping failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Requests and replies both took the short-circuit.
    assert!(
        stubs
            .counter(sluice_dataplane::stubs::Counter::AgentSameHost)
            .unwrap()
            >= 6
    );
    // Re-attaching replaces our own program; detaching twice, or from an interface that
    // does not exist, is fine.
    let host_index = in_ns(&host, || nix::net::if_::if_nametoindex("h0").unwrap());
    in_ns(&host, || stubs.attach_agent(host_index)).expect("re-attach");
    in_ns(&host, || NodeStubs::detach(host_index)).expect("detach");
    in_ns(&host, || NodeStubs::detach(host_index)).expect("detach again");
    in_ns(&host, || NodeStubs::detach(999_999)).expect("detach from nothing");
    assert!(!ip(&["-n", &host, "-d", "link", "show", "dev", "h0"]).contains("prog/xdp"));

    // A program Sluice's stubs did not load (here the gateway's NIC program) is refused.
    let h1 = in_ns(&host, || nix::net::if_::if_nametoindex("h1").unwrap());
    in_ns(&host, || NodeStubs::detach(h1)).expect("detach h1");
    let foreign = in_ns(&host, || {
        sluice_dataplane::nic::NicProgram::attach(
            "h1",
            sluice_dataplane::nic::XdpMode::Native,
            &[NODE],
        )
    })
    .expect("attaching the gateway's program");
    let err = in_ns(&host, || stubs.attach_agent(h1)).unwrap_err();
    assert!(
        matches!(&err, StubError::Occupied { prog_name, .. } if prog_name == "sluice_gw_nic"),
        "{err}"
    );
    drop(foreign);
}

/// Deletes the named namespaces on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Without an entry in the neighbour map the agent asks the kernel's FIB (in the
/// namespace of the interface the frame arrived on) and drops, counted, when it has no
/// answer. Runs in its own namespace so that the machine's routes play no part.
#[test]
fn agent_falls_back_to_the_fib_for_neighbours() {
    let pins = PinDir::new();
    let ns = unique("sl-stub-fib");
    let _guard = Namespaces(vec![ns.clone()]);
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    for (a, b) in [("u0", "u1"), ("p0", "p1")] {
        ip(&[
            "-n", &ns, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
        ip(&["-n", &ns, "link", "set", a, "up"]);
        ip(&["-n", &ns, "link", "set", b, "up"]);
    }
    ip(&["-n", &ns, "addr", "add", &format!("{NODE}/24"), "dev", "u0"]);
    // The FIB helper answers only for interfaces that forward.
    in_ns(&ns, || {
        std::fs::write("/proc/sys/net/ipv4/conf/u0/forwarding", "1").expect("forwarding on")
    });
    ip(&[
        "-n",
        &ns,
        "neigh",
        "add",
        &GW.to_string(),
        "lladdr",
        &GW_MAC.to_string(),
        "dev",
        "u0",
        "nud",
        "permanent",
    ]);
    let stubs = NodeStubs::load(&pins.0).expect("loading");
    let (uplink, pod_if) = in_ns(&ns, || {
        (
            nix::net::if_::if_nametoindex("u0").unwrap(),
            nix::net::if_::if_nametoindex("p0").unwrap(),
        )
    });
    stubs
        .set_node(&NodeIdentity {
            ip: NODE,
            mac: NODE_MAC.0,
            ifindex: uplink,
        })
        .unwrap();
    let frame = inner_udp(POD_A1_MAC, ROUTER_A1_MAC, POD_A1, POD_A2, (1, 2), b"x");
    let run_with = |bouncer: Ipv4Addr| {
        let pod = PodEntry {
            bouncers: vec![bouncer],
            ..pod_a1()
        };
        stubs.add_pod(pod_if, &pod).unwrap();
        in_ns(&ns, || {
            stubs.test_run(StubProgram::Agent, &frame, Some(pod_if))
        })
        .unwrap()
    };
    // Resolved by the FIB: the neighbour's MAC.
    let run = run_with(GW);
    assert_eq!(run.action, action::REDIRECT);
    assert_eq!(
        common::hex(&run.frame),
        common::hex(&encapsulated(
            (GW, GW_MAC),
            VNI_A,
            hash(POD_A1, POD_A2),
            &[],
            &frame
        ))
    );
    // On the link but unresolved, and unroutable: dropped.
    for bouncer in [GW2, Ipv4Addr::new(198, 19, 0, 1)] {
        assert_eq!(run_with(bouncer).action, action::DROP, "{bouncer}");
    }
    assert_eq!(
        stubs
            .counter(sluice_dataplane::stubs::Counter::DropNoNeighbor)
            .unwrap(),
        2
    );
}

/// A map pinned with another layout (another Sluice version) is not silently replaced:
/// loading fails, names the pin directory and says how to start over.
#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    let pins = PinDir::new();
    std::fs::create_dir_all(&pins.0).expect("pin dir");
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut old =
        libbpf_rs::MapHandle::create(libbpf_rs::MapType::Hash, Some("pods"), 4, 8, 16, &opts)
            .expect("creating a map");
    old.pin(pins.0.join("pods")).expect("pinning it");
    let err = NodeStubs::load(&pins.0).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StubError::Load { .. }), "{text}");
    assert!(text.contains(&pins.0.display().to_string()), "{text}");
    assert!(text.contains("unpin_all"), "{text}");
    NodeStubs::unpin_all(&pins.0).expect("unpin");
    NodeStubs::load(&pins.0).expect("loading into a clean directory");
}
