//! Provisioning time, measured (not asserted): from the start of a CNI ADD (the real
//! `sluice-cni` process) to the first ping reply the new pod gets from a peer pod on the
//! same worker, with the ARP answered by the real gateway. Measured with 10 and with 500
//! pods already attached on the node; prints p50 and p99 and writes
//! perf/results/provision.md.
//!
//! Run by scripts/bench-provision.sh (release build, as root). Ignored in the normal
//! test run because it is a benchmark (about a minute), not a check.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SAMPLES: usize = 100;

fn ip_at(n: u32) -> String {
    // Pods from 10.1.0.10 on, in a /16.
    let v = u32::from(std::net::Ipv4Addr::new(10, 1, 0, 10)) + n;
    std::net::Ipv4Addr::from(v).to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[test]
#[ignore = "benchmark: run by scripts/bench-provision.sh"]
fn provisioning_time() {
    assert_root("provisioning benchmark");
    let base = unique("sl-prov");
    let underlay = Underlay::new(&base);
    let gw_ns = Netns::new(format!("{base}-gw"));
    underlay.plug(&gw_ns, GW.0, GW.1);
    let dir = tempfile::tempdir().expect("tempdir");
    // The allocator hands out addresses round robin: every sample gets a fresh one.
    let total = 1 + 500 + 2 * SAMPLES as u32 + 10;
    let alloc =
        allocation(GW, &[], ("10.1.0.10", "10.1.255.250")).replace("10.1.0.0/24", "10.1.0.0/16");
    let mut w = Worker::new(&base, "w1", &underlay, W1.0, W1.1, &alloc);
    let endpoints: Vec<String> = (0..total).map(ip_at).collect();
    let eps: Vec<(&str, &str)> = endpoints.iter().map(|e| (e.as_str(), W1.0)).collect();
    let _gw = Gateway::start(&gw_ns, dir.path(), &tables("10.1.0.0/16", &eps));
    w.start(&[]);
    let conf = w.netconf("1.0.0", "");

    let peer = Netns::new(format!("{base}-peer"));
    w.cni("ADD", "peer", &peer.path(), &conf).ok();
    let peer_ip = ip_at(0);

    let mut background = Vec::new();
    let mut report = String::from(
        "| pods already attached | samples | p50 ms | p99 ms | max ms | ADD alone p50 ms | ADD alone p99 ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for target in [10usize, 500] {
        while background.len() < target {
            let ns = Netns::new(format!("{base}-bg{}", background.len()));
            w.cni("ADD", &format!("bg{}", background.len()), &ns.path(), &conf)
                .ok();
            background.push(ns);
        }
        let mut times = Vec::with_capacity(SAMPLES);
        let mut adds = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES {
            let ns = Netns::new(format!("{base}-s{target}-{i}"));
            let id = format!("s{target}-{i}");
            let start = Instant::now();
            w.cni("ADD", &id, &ns.path(), &conf).ok();
            adds.push(start.elapsed());
            loop {
                let out = nsenter(&ns.name, &["ping", "-c", "1", "-W", "1", &peer_ip]);
                if out.status.success() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "pod {id} never reached its peer"
                );
            }
            times.push(start.elapsed());
            w.cni("DEL", &id, &ns.path(), &conf).ok();
        }
        times.sort();
        adds.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let line = format!(
            "| {} | {SAMPLES} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            target + 1,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap()),
            ms(percentile(&adds, 0.5)),
            ms(percentile(&adds, 0.99)),
        );
        print!("{line}");
        report += &line;
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../perf/results/provision.md");
    std::fs::write(
        &out,
        format!(
            "# Pod provisioning time\n\nFrom the start of `sluice-cni` ADD to the first ping reply \
             from a peer pod on the same worker (ARP answered by the gateway), \
             `scripts/bench-provision.sh`. Includes starting `sluice-cni` and one \
             `nsenter ping` per try. \"ADD alone\" is until `sluice-cni` exits.\n\n{report}"
        ),
    )
    .expect("writing perf/results/provision.md");
    for (i, ns) in background.iter().enumerate() {
        w.cni("DEL", &format!("bg{i}"), &ns.path(), &conf).ok();
    }
}
