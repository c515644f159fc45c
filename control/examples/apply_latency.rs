//! How long `Gateway.Apply` takes end to end (client encode, Unix socket, server decode
//! and validation, the table writer thread, publication, reply), for one endpoint into
//! tables of 10 and of 1,000,000 endpoints, and for a batch of 10,000 endpoints.
//!
//! Run: `cargo run --release -p sluice-control --example apply_latency [-- ROUNDS]`
//! (ROUNDS single-endpoint adds and as many deletes per table size; default 2,000).
//! The small table is the baseline measured in the same run: the design asks that the
//! large/small ratio stay near 1 and the single-endpoint p99 under 1 ms.

use std::time::{Duration, Instant};

use sluice_api::client::{self, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::{Endpoint, Object, ObjectKey, Transaction};
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen};
use sluice_dataplane::testkit::{vni, ScaledWorld, VNI_A};

struct Figures {
    add: Vec<Duration>,
    delete: Vec<Duration>,
    batch_add: Vec<Duration>,
    batch_delete: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    (
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        *samples.last().expect("samples"),
    )
}

fn endpoint(world: &ScaledWorld, i: usize) -> Endpoint {
    let (_, ip) = world.endpoint(i);
    Endpoint {
        vni: vni(VNI_A),
        ip,
        mac: world.endpoint_mac(i),
        host: ScaledWorld::host(i % ScaledWorld::WORKER_HOSTS),
    }
}

fn key(e: &Endpoint) -> ObjectKey {
    ObjectKey::Endpoint {
        vni: e.vni,
        ip: e.ip,
    }
}

async fn timed_apply(
    client: &mut pb::gateway_client::GatewayClient<tonic::transport::Channel>,
    txn: &Transaction,
) -> Duration {
    // Encoding the request is part of what a client pays; building the model is not.
    let start = Instant::now();
    client
        .apply(pb::Transaction::from(txn))
        .await
        .expect("a valid transaction");
    start.elapsed()
}

async fn measure(size: usize, rounds: usize, batches: usize) -> Figures {
    let built = Instant::now();
    let world = ScaledWorld::new(size, 1, 1);
    let writer = world.tables();
    eprintln!("  {size} endpoints loaded in {:.1?}", built.elapsed());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("gw.sock");
    // Measures latency, not the rate limit: lift it for this run.
    let limits = Limits {
        requests_per_second: 1_000_000,
        request_burst: 1_000_000,
        ..Limits::default()
    };
    let _server = GatewayHarness::start(Listen::Unix(socket.clone()), writer, limits)
        .expect("the server starts");
    let channel = client::connect(&Target::Unix(socket), None)
        .await
        .expect("connects");
    let mut client = client::gateway(channel);

    // Fresh addresses past every endpoint of the world.
    let fresh = |i: usize| endpoint(&world, size + world.subnets + i);
    let one = |e: &Endpoint, delete: bool| Transaction {
        upserts: if delete {
            vec![]
        } else {
            vec![Object::Endpoint(e.clone())]
        },
        deletes: if delete { vec![key(e)] } else { vec![] },
    };
    // Warm up the connection and both table copies.
    for i in 0..200 {
        let e = fresh(i);
        timed_apply(&mut client, &one(&e, false)).await;
        timed_apply(&mut client, &one(&e, true)).await;
    }
    let (mut add, mut delete) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        add.push(timed_apply(&mut client, &one(&fresh(i), false)).await);
    }
    for i in 0..rounds {
        delete.push(timed_apply(&mut client, &one(&fresh(i), true)).await);
    }

    let batch: Vec<Endpoint> = (0..10_000).map(fresh).collect();
    let batch_add_txn = Transaction {
        upserts: batch.iter().cloned().map(Object::Endpoint).collect(),
        deletes: vec![],
    };
    let batch_delete_txn = Transaction {
        upserts: vec![],
        deletes: batch.iter().map(key).collect(),
    };
    let (mut batch_add, mut batch_delete) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        batch_add.push(timed_apply(&mut client, &batch_add_txn).await);
        batch_delete.push(timed_apply(&mut client, &batch_delete_txn).await);
    }
    Figures {
        add,
        delete,
        batch_add,
        batch_delete,
    }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(2_000);
    let batches = 11;
    let mut rows = Vec::new();
    for size in [10, 1_000_000] {
        eprintln!("measuring at {size} endpoints");
        let mut f = measure(size, rounds, batches).await;
        rows.push((
            size,
            summary(&mut f.add),
            summary(&mut f.delete),
            summary(&mut f.batch_add),
            summary(&mut f.batch_delete),
        ));
    }
    println!("Gateway.Apply over a Unix socket, {rounds} single-endpoint applies of each kind,");
    println!("{batches} batches of 10,000 endpoints (median, max):\n");
    println!("| table size | add 1: p50 µs | p99 µs | max µs | delete 1: p50 µs | p99 µs | add 10,000: median ms | max ms | delete 10,000: median ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (size, add, delete, badd, bdel) in &rows {
        println!(
            "| {size} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            us(add.0),
            us(add.1),
            us(add.2),
            us(delete.0),
            us(delete.1),
            ms(badd.0),
            ms(badd.2),
            ms(bdel.0),
            ms(bdel.2)
        );
    }
    let (small, large) = (&rows[0], &rows[1]);
    println!(
        "\nlarge/small: add p50 {:.2}, add p99 {:.2}, batch add {:.2}",
        large.1 .0.as_secs_f64() / small.1 .0.as_secs_f64(),
        large.1 .1.as_secs_f64() / small.1 .1.as_secs_f64(),
        large.3 .0.as_secs_f64() / small.3 .0.as_secs_f64(),
    );
}
