//! Per-packet cost of each gateway path, without I/O, at small and large tables, with
//! criterion's statistics. Each measurement processes a batch of 1,000 different flows
//! (random endpoints and services drawn from the whole table), copied fresh into
//! headroom-prefixed buffers outside the timed region, so a batch time in µs is the cost
//! in ns/packet.
//!
//! Criterion runs cases one after another; on a machine that drifts, compare small and
//! large with `pipeline_interleaved`, which alternates them.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_dataplane::pipeline::{process, Frame, Verdict};
use sluice_dataplane::testkit::*;

const FLOWS: usize = 1_000;

fn bench_paths(c: &mut Criterion) {
    let worlds = [
        ("small", ScaledWorld::new(10, 10, 100)),
        ("large", ScaledWorld::new(1_000_000, 10_000, 100)),
    ];
    let tables: Vec<_> = worlds.iter().map(|(_, w)| w.tables().snapshot()).collect();
    let local = local();
    for path in BenchPath::ALL {
        let mut group = c.benchmark_group(path.name());
        group.throughput(Throughput::Elements(FLOWS as u64));
        for ((name, world), tables) in worlds.iter().zip(&tables) {
            let packets = world.flows(path, FLOWS, 0x5eed);
            let want = if path == BenchPath::Arp {
                Verdict::Reply
            } else {
                Verdict::Forward
            };
            let buffers: Vec<Vec<u8>> = packets.iter().map(|p| with_headroom(p)).collect();
            let lens: Vec<usize> = packets.iter().map(Vec::len).collect();
            for (buf, len) in buffers.clone().iter_mut().zip(&lens) {
                let mut frame = Frame::new(buf, HEADROOM, *len).expect("fits");
                assert_eq!(
                    process(tables, &local, &mut frame),
                    want,
                    "{} at {name}",
                    path.name()
                );
            }
            group.bench_function(*name, |b| {
                b.iter_batched_ref(
                    || buffers.clone(),
                    |bufs| {
                        for (buf, len) in bufs.iter_mut().zip(&lens) {
                            let mut frame = Frame::new(buf, HEADROOM, *len).expect("fits");
                            std::hint::black_box(process(tables, &local, &mut frame));
                        }
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
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench_paths
}
criterion_main!(benches);
