//! The controller's cost per pod add and delete as the cluster grows: CPU time of the
//! controller's thread and `Gateway.Apply` calls per pod, with 100, 1,000 and 10,000
//! pods already attached.
//!
//! The controller logic is the real one, in process: the redb [`Store`] (allocation, one
//! durable write transaction per pod) and the [`Controller`] (placement, incremental
//! desired tables, one `Apply` per gateway that holds the pod's subnet or VPC). The
//! two gateways are real `sluice.v1.Gateway` services (dataplane's `GatewayHarness`) on
//! Unix sockets, each in its own threads, so the CPU time measured on this thread is
//! the controller's (and its gRPC client's), not the gateways'.
//!
//! Run: `cargo run --release -p sluice-control --example pod_churn [-- BATCH]`
//! (BATCH pods added then deleted at each size; default 500). CPU time is the thread's
//! own from `/proc/thread-self/schedstat` (nanoseconds on a CPU), so waiting for fsync
//! or for a gateway's reply is not counted. The 100-pod row is the baseline measured
//! in the same run: the design asks that per-pod CPU not grow with the pods attached
//! and that calls per pod stay constant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_control::controller::objects::parse_manifest;
use sluice_control::controller::source::{AttachRequest, ObjectSource};
use sluice_control::controller::{Controller, Store};
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen};
use sluice_dataplane::tables::TableWriter;

const NODES: usize = 20;
/// Two /17 subnets hold every pod: per-subnet pod counts grow with the cluster, which is
/// what a scan of a subnet's used addresses would show.
const WORLD: &str = "\
kind: Vpc
metadata: {name: blue}
spec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16}
---
kind: Subnet
metadata: {name: blue-a}
spec: {vpc: blue, cidr: 10.0.0.0/17}
---
kind: Subnet
metadata: {name: blue-b}
spec: {vpc: blue, cidr: 10.0.128.0/17}
";

/// CPU time this thread has spent on a CPU.
fn thread_cpu() -> Duration {
    let text =
        std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat is readable");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat starts with nanoseconds on CPU");
    Duration::from_nanos(ns)
}

fn request(i: usize) -> AttachRequest {
    AttachRequest {
        node: format!("node-{}", i % NODES),
        container_id: format!("c{i}"),
        interface: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{i}"),
        network: if i.is_multiple_of(2) {
            "blue-a"
        } else {
            "blue-b"
        }
        .into(),
    }
}

struct Row {
    pods: usize,
    fill: Duration,
    add_cpu: Duration,
    add_calls: u64,
    delete_cpu: Duration,
    delete_calls: u64,
    wall: Duration,
}

async fn measure(pods: usize, batch: usize) -> Row {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let limits = Limits {
        requests_per_second: 1_000_000,
        request_burst: 1_000_000,
        ..Limits::default()
    };
    let mut gateways = Vec::new();
    let mut manifest = WORLD.to_owned();
    for g in 1..=2 {
        let socket = dir.path().join(format!("gw{g}.sock"));
        gateways.push(
            GatewayHarness::start(Listen::Unix(socket.clone()), TableWriter::new(), limits)
                .expect("a gateway service starts"),
        );
        manifest.push_str(&format!(
            "---\nkind: Gateway\nmetadata: {{name: gw{g}}}\nspec: {{ip: 198.18.0.{g}, mac: \"02:00:00:00:00:0{g}\", control: \"unix://{}\"}}\n",
            socket.display()
        ));
    }
    let store = Arc::new(Store::open(&dir.path().join("controller.redb")).expect("the store"));
    store
        .apply(parse_manifest(&manifest).expect("the world parses"))
        .expect("the world applies");
    for n in 0..NODES {
        store
            .register_node(
                &format!("node-{n}"),
                sluice_control::controller::objects::NodeSpec {
                    ip: std::net::Ipv4Addr::new(198, 18, 1, n as u8 + 1),
                    mac: sluice_api::MacAddr([2, 0, 0, 1, 0, n as u8 + 1]),
                },
            )
            .expect("a node registers");
    }
    let controller = Controller::new(store, None);
    controller.reconcile().await.expect("the first sync");

    let filled = Instant::now();
    for i in 0..pods {
        controller.attach(&request(i)).await.expect("attach");
    }
    let fill = filled.elapsed();

    let wall = Instant::now();
    let (cpu, calls) = (thread_cpu(), controller.apply_calls());
    for i in pods..pods + batch {
        controller.attach(&request(i)).await.expect("attach");
    }
    let (add_cpu, add_calls) = (thread_cpu() - cpu, controller.apply_calls() - calls);
    let (cpu, calls) = (thread_cpu(), controller.apply_calls());
    for i in pods..pods + batch {
        let r = request(i);
        controller
            .detach(&r.node, &r.container_id, &r.interface)
            .await
            .expect("detach")
            .expect("it was attached");
    }
    let (delete_cpu, delete_calls) = (thread_cpu() - cpu, controller.apply_calls() - calls);
    let wall = wall.elapsed();
    for gateway in gateways {
        gateway.stop().expect("the gateway stops");
    }
    Row {
        pods,
        fill,
        add_cpu,
        add_calls,
        delete_cpu,
        delete_calls,
        wall,
    }
}

fn per_pod_us(total: Duration, batch: usize) -> f64 {
    total.as_secs_f64() * 1e6 / batch as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("BATCH is a number"))
        .unwrap_or(500);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = Vec::new();
    for pods in [100, 1_000, 10_000] {
        eprintln!("measuring with {pods} pods attached");
        rows.push(measure(pods, batch).await);
    }
    println!(
        "Controller cost per pod: {batch} pods added, then deleted, on top of the pods attached; \
         2 gateways, {NODES} nodes, 2 subnets. Load average at start: {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| pods attached | add: CPU µs/pod | Apply calls/pod | delete: CPU µs/pod | Apply calls/pod | wall ms/pod (add+delete) | filling the model, s |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} |",
            r.pods,
            per_pod_us(r.add_cpu, batch),
            r.add_calls as f64 / batch as f64,
            per_pod_us(r.delete_cpu, batch),
            r.delete_calls as f64 / batch as f64,
            r.wall.as_secs_f64() * 1e3 / (2 * batch) as f64,
            r.fill.as_secs_f64(),
        );
    }
    let (small, large) = (&rows[0], &rows[rows.len() - 1]);
    println!(
        "\n10,000/100: add CPU {:.2}, delete CPU {:.2}",
        large.add_cpu.as_secs_f64() / small.add_cpu.as_secs_f64(),
        large.delete_cpu.as_secs_f64() / small.delete_cpu.as_secs_f64(),
    );
}
