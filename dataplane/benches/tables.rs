//! Cost of a table update against table size: one endpoint added and removed again
//! (two transactions, each validated, applied, published, and replayed onto the second
//! copy), in tables of 10 and of 1,000,000 endpoints. The design asks that an update cost
//! in proportion to what it changes, not to the size of the tables.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_api::{Endpoint, Object, ObjectKey, Transaction};
use sluice_dataplane::testkit::*;

fn bench_updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_one_endpoint");
    for (name, size) in [("10", 10), ("1000000", 1_000_000)] {
        let world = ScaledWorld::new(size, 1, 1);
        let mut writer = world.tables();
        // A free address in subnet 0: past every endpoint the world placed there.
        let (_, ip) = world.endpoint(world.endpoints + world.subnets);
        let add = Transaction {
            upserts: vec![Object::Endpoint(Endpoint {
                vni: vni(VNI_A),
                ip,
                mac: world.endpoint_mac(0),
                host: ScaledWorld::host(7),
            })],
            deletes: vec![],
        };
        let remove = Transaction {
            upserts: vec![],
            deletes: vec![ObjectKey::Endpoint {
                vni: vni(VNI_A),
                ip,
            }],
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    writer.apply(&add).expect("valid");
                    writer.apply(&remove).expect("valid");
                    total += start.elapsed() / 2;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = bench_updates
}
criterion_main!(benches);
