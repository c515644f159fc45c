//! What the engine pays for xsk-rs's fixed data address: each packet is moved right by
//! `REQUIRED_HEADROOM` before the pipeline and back to the data address after it
//! (`engine::headroom::process_shifted`). Measured for 60- and 1,450-byte packets as
//! copies alone, and as a whole same-subnet bounce with the shift next to the same
//! bounce given real headroom (what raw descriptors would allow), in one run.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_dataplane::engine::headroom::process_shifted;
use sluice_dataplane::pipeline::{process, Frame, Verdict};
use sluice_dataplane::testkit::*;

/// The data segment of a 2,048-byte UMEM frame after the kernel's 256-byte XDP headroom.
const SEGMENT: usize = 2048 - 256;

fn bounce_packet(total: usize) -> Vec<u8> {
    // Outer Ethernet + IPv4 + UDP + Geneve (50) and inner Ethernet + IPv4 + UDP (42).
    let payload = vec![0x5a; total.saturating_sub(92)];
    let inner = inner_udp(
        POD_A1_MAC,
        POD_A1B_MAC,
        POD_A1,
        POD_A1B,
        (1000, 2000),
        &payload,
    );
    geneve_packet(&OuterSpec::from_host(H1, H1_MAC, VNI_A), &inner)
}

fn bench_shift(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_headroom");
    for len in [60usize, 1450] {
        let mut segment = vec![0xabu8; SEGMENT];
        group.bench_function(format!("copies_only/{len}"), |b| {
            b.iter(|| {
                let out = process_shifted(&mut segment, std::hint::black_box(len), |_| {
                    Verdict::Forward
                });
                std::hint::black_box(out)
            })
        });
    }

    let writer = world_tables();
    let tables = writer.snapshot();
    let local = local();
    for total in [114usize, 1450] {
        let packet = bounce_packet(total);
        assert_eq!(packet.len(), total);
        // Both variants restore the received packet first, as a fresh RX would.
        let mut segment = vec![0u8; SEGMENT];
        group.bench_function(format!("bounce_shifted/{total}"), |b| {
            b.iter(|| {
                segment[..total].copy_from_slice(&packet);
                let out = process_shifted(&mut segment, total, |f| process(&tables, &local, f));
                std::hint::black_box(out)
            })
        });
        let mut buf = with_headroom(&packet);
        group.bench_function(format!("bounce_with_headroom/{total}"), |b| {
            b.iter(|| {
                buf[HEADROOM..HEADROOM + total].copy_from_slice(&packet);
                let mut frame = Frame::new(&mut buf, HEADROOM, total).expect("fits");
                let verdict = process(&tables, &local, &mut frame);
                std::hint::black_box((verdict, frame.start(), frame.len()))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench_shift
}
criterion_main!(benches);
