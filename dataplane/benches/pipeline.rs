//! Per-packet cost of each gateway path, without I/O, at small and large tables.
//!
//! Each measurement processes a batch of 1,000 different flows (random endpoints and
//! services drawn from the whole table), copied fresh into headroom-prefixed buffers
//! outside the timed region, so a reported batch time in µs is the cost in ns/packet.
//! Inner frames are 60 bytes (64 with the FCS), as in the perf issue.
//!
//! `scripts/bench-pipeline.sh` runs this and prints ns/packet with large/small ratios.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_dataplane::pipeline::{process, Frame, Verdict};
use sluice_dataplane::tables::TableWriter;
use sluice_dataplane::testkit::*;

const FLOWS: usize = 1_000;
/// 14 + 20 + 8 + 18 = 60 bytes of inner Ethernet frame.
const UDP_PAYLOAD: [u8; 18] = [0x5a; 18];
/// 14 + 20 + 20 + 6 = 60 bytes.
const TCP_PAYLOAD: [u8; 6] = [0x5a; 6];

struct Setup {
    name: &'static str,
    world: ScaledWorld,
    writer: TableWriter,
}

fn from_host(world: &ScaledWorld, i: usize, inner: &[u8]) -> Vec<u8> {
    let host = i % ScaledWorld::WORKER_HOSTS;
    let _ = world;
    let outer = OuterSpec::from_host(ScaledWorld::host(host), ScaledWorld::host_mac(host), VNI_A);
    geneve_packet(&outer, inner)
}

/// `FLOWS` packets of one path.
fn packets(world: &ScaledWorld, path: &str, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Xorshift(seed);
    let n = world.endpoints;
    (0..FLOWS)
        .map(|_| {
            let a = rng.below(n);
            let (sa, src) = world.endpoint(a);
            let src_mac = world.endpoint_mac(a);
            match path {
                "bounce" => {
                    // Another endpoint of the same subnet.
                    let mut b = rng.below(n / world.subnets) * world.subnets + sa;
                    if b == a {
                        b = (a + world.subnets) % n;
                    }
                    let (_, dst) = world.endpoint(b);
                    let inner = inner_udp(src_mac, world.endpoint_mac(b), src, dst, (1000, 2000), &UDP_PAYLOAD);
                    from_host(world, a, &inner)
                }
                "route" => {
                    let mut b = rng.below(n);
                    if b % world.subnets == sa {
                        b = (b + 1) % n;
                    }
                    let (_, dst) = world.endpoint(b);
                    let inner = inner_udp(src_mac, ScaledWorld::router_mac(sa), src, dst, (1000, 2000), &UDP_PAYLOAD);
                    from_host(world, a, &inner)
                }
                "dnat" => {
                    let vip = ScaledWorld::vip(rng.below(world.services));
                    let port = 1024 + rng.below(60_000) as u16;
                    let inner = inner_tcp(src_mac, ScaledWorld::router_mac(sa), src, vip, (port, 80), &TCP_PAYLOAD);
                    from_host(world, a, &inner)
                }
                "arp" => {
                    let b = (a + world.subnets) % n;
                    let (_, dst) = world.endpoint(b);
                    from_host(world, a, &inner_arp_request(src_mac, src, dst))
                }
                _ => unreachable!("unknown path {path}"),
            }
        })
        .collect()
}

fn bench_paths(c: &mut Criterion) {
    let setups = [
        ("small", ScaledWorld::new(10, 10, 100)),
        ("large", ScaledWorld::new(1_000_000, 10_000, 100)),
    ];
    let setups: Vec<Setup> = setups
        .into_iter()
        .map(|(name, world)| {
            let writer = world.tables();
            Setup { name, world, writer }
        })
        .collect();
    let local = local();
    for path in ["bounce", "route", "dnat", "arp"] {
        let mut group = c.benchmark_group(path);
        group.throughput(Throughput::Elements(FLOWS as u64));
        for setup in &setups {
            let packets = packets(&setup.world, path, 0x5eed);
            let tables = setup.writer.snapshot();
            // Every packet of the set takes the path it is meant to.
            let want = if path == "arp" { Verdict::Reply } else { Verdict::Forward };
            for p in &packets {
                let mut buf = with_headroom(p);
                let mut frame = Frame::new(&mut buf, HEADROOM, p.len()).unwrap();
                assert_eq!(process(&tables, &local, &mut frame), want, "{path} at {}", setup.name);
            }
            let buffers: Vec<Vec<u8>> = packets.iter().map(|p| with_headroom(p)).collect();
            let lens: Vec<usize> = packets.iter().map(Vec::len).collect();
            group.bench_function(setup.name, |b| {
                b.iter_batched_ref(
                    || buffers.clone(),
                    |bufs| {
                        let mut forwarded = 0usize;
                        for (buf, len) in bufs.iter_mut().zip(&lens) {
                            let mut frame = Frame::new(buf, HEADROOM, *len).unwrap();
                            if process(&tables, &local, &mut frame) != Verdict::Drop(sluice_dataplane::pipeline::DropReason::NoRoute) {
                                forwarded += 1;
                            }
                        }
                        forwarded
                    },
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_paths
}
criterion_main!(benches);
