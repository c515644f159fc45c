//! Provisioning time, measured (not asserted): from the start of a CNI ADD (the real
//! `sluice-cni` process) to the first ping reply the new pod gets from a peer pod on the
//! same worker, with the ARP answered by the real gateway. Measured with 10 and with 500
//! pods already attached on the node (two workers in one run, sampled alternately so the
//! machine's fast and slow phases fall on both alike); prints p50 and p99 and where the
//! time goes, and writes perf/results/provision.md.
//!
//! Where the time goes: the agent logs the wall time of each step of every ADD
//! (`steps="alloc:0.41 veth:1.20 ..."` on its "attached" line); the shim's own share
//! (process start, gRPC connection and call) is the ADD's wall time minus the agent's
//! total; "sluice-cni start" is a VERSION call (process start alone, no connection); after
//! ADD, the ping's own round trip (its `time=`, which includes the ARP through the
//! gateway) is told apart from starting `nsenter ping`.
//!
//! Run by scripts/bench-provision.sh (release build, as root). Ignored in the normal
//! test run because it is a benchmark (about a minute), not a check.
//! `SLUICE_PROVISION_SAMPLES` (default 100) sets the samples per pod count.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

fn ip_at(n: u32) -> String {
    // Pods from 10.1.0.10 on, in a /16 (the second worker from 10.1.128.10).
    let v = u32::from(std::net::Ipv4Addr::new(10, 1, 0, 10)) + n;
    std::net::Ipv4Addr::from(v).to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The text without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The agent's total and its steps from its last "attached" line.
fn agent_steps(stderr: &str) -> (f64, Vec<(String, f64)>) {
    let text = plain(stderr);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("attached") && l.contains("steps="))
        .expect("the agent logged no attached line with steps");
    let field = |name: &str| {
        let at = line.find(&format!("{name}=")).expect("field") + name.len() + 1;
        line[at..].to_owned()
    };
    let total: f64 = field("total_ms")
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .expect("total_ms");
    let steps = field("steps");
    let steps = steps.trim_start_matches('"');
    let steps = &steps[..steps.find('"').expect("closing quote")];
    let parsed = steps
        .split_whitespace()
        .filter_map(|s| {
            let (n, v) = s.split_once(':')?;
            Some((n.to_owned(), v.parse().ok()?))
        })
        .collect();
    (total, parsed)
}

/// Samples of named quantities, in the order first seen.
#[derive(Default)]
struct Series {
    order: Vec<String>,
    values: BTreeMap<String, Vec<f64>>,
}

impl Series {
    fn push(&mut self, name: &str, v: f64) {
        if !self.values.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.values.entry(name.to_owned()).or_default().push(v);
    }

    fn stats(&self, name: &str) -> (f64, f64) {
        let mut v = self.values[name].clone();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), percentile(&v, 0.99))
    }
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// One worker of the benchmark: its agent, its peer pod and its background pods.
struct Node {
    w: Worker,
    conf: String,
    peer_ip: String,
    background: Vec<Netns>,
    /// The pods already attached when a sample starts (the peer included).
    pods: usize,
    series: Series,
    times: Vec<f64>,
}

/// One sample on `node`: a fresh pod namespace, ADD, then ping the peer until it answers.
fn sample(base: &str, node: &mut Node, i: usize) {
    let tag = node.pods;
    let ns = Netns::new(format!("{base}-s{tag}-{i}"));
    let id = format!("s{tag}-{i}");
    let conf = node.conf.clone();
    let version_start = Instant::now();
    cni("VERSION", &id, &ns.path(), "eth0", &conf).ok();
    let version = version_start.elapsed();

    let start = Instant::now();
    node.w.cni("ADD", &id, &ns.path(), &conf).ok();
    let add = start.elapsed();
    let mut rtt = None;
    let mut tries = 0;
    while rtt.is_none() {
        tries += 1;
        let out = nsenter(&ns.name, &["ping", "-c", "1", "-W", "1", &node.peer_ip]);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let t = text
                .split("time=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse::<f64>().ok())
                .expect("ping's time=");
            rtt = Some(t);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pod {id} never reached its peer"
        );
    }
    let end_to_end = start.elapsed();
    node.times.push(ms(end_to_end));
    let (agent_total, steps) = agent_steps(&node.w.stderr());
    let series = &mut node.series;
    series.push("end to end", ms(end_to_end));
    series.push("ADD (sluice-cni wall time)", ms(add));
    series.push("· sluice-cni start (VERSION, for comparison)", ms(version));
    series.push(
        "· shim: process, gRPC connect and call (ADD - agent)",
        ms(add) - agent_total,
    );
    series.push("· agent total", agent_total);
    for (name, v) in &steps {
        series.push(&format!("·· {name}"), *v);
    }
    series.push(
        "after ADD: nsenter + ping until the reply",
        ms(end_to_end - add),
    );
    series.push("· ping round trip incl. ARP via the gateway", rtt.unwrap());
    series.push("· ping tries", tries as f64);
    node.w.cni("DEL", &id, &ns.path(), &conf).ok();
}

#[test]
#[ignore = "benchmark: run by scripts/bench-provision.sh"]
fn provisioning_time() {
    assert_root("provisioning benchmark");
    let samples: usize = std::env::var("SLUICE_PROVISION_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let load_at_start = loadavg();
    let base = unique("sl-prov");
    let underlay = Underlay::new(&base);
    let gw_ns = Netns::new(format!("{base}-gw"));
    underlay.plug(&gw_ns, GW.0, GW.1);
    let dir = tempfile::tempdir().expect("tempdir");
    // Two workers, one with 10 pods attached and one with 500, measured alternately
    // (A B B A ...) in one run: the machine drifts between fast and slow phases, and
    // interleaving puts both pod counts through the same phases. Each hands out
    // addresses round robin from its own half of a /16, so every sample gets a fresh one.
    const COUNTS: [usize; 2] = [10, 500];
    const FIRST: [u32; 2] = [0, 32768];
    let mut endpoints = Vec::new();
    let mut nodes = Vec::new();
    for (k, (count, first)) in COUNTS.iter().zip(FIRST).enumerate() {
        let (host, others) = if k == 0 { (W1, W2) } else { (W2, W1) };
        let used = 1 + *count as u32 + samples as u32 + 10;
        let range = (ip_at(first), ip_at(first + 32000));
        let alloc =
            allocation(GW, &[others], (&range.0, &range.1)).replace("10.1.0.0/24", "10.1.0.0/16");
        for n in 0..used {
            endpoints.push((ip_at(first + n), host.0));
        }
        let w = Worker::new(
            &base,
            &format!("w{count}"),
            &underlay,
            host.0,
            host.1,
            &alloc,
        );
        let conf = w.netconf("1.0.0", "");
        nodes.push(Node {
            w,
            conf,
            peer_ip: ip_at(first),
            background: Vec::new(),
            pods: 0,
            series: Series::default(),
            times: Vec::with_capacity(samples),
        });
    }
    let eps: Vec<(&str, &str)> = endpoints.iter().map(|(e, h)| (e.as_str(), *h)).collect();
    let _gw = Gateway::start(&gw_ns, dir.path(), &tables("10.1.0.0/16", &eps));
    for (node, count) in nodes.iter_mut().zip(COUNTS) {
        node.w.start(&[]);
        let peer = Netns::new(format!("{base}-peer{count}"));
        node.w.cni("ADD", "peer", &peer.path(), &node.conf).ok();
        node.background.push(peer);
        while node.background.len() < count + 1 {
            let n = node.background.len();
            let ns = Netns::new(format!("{base}-bg{count}-{n}"));
            node.w
                .cni("ADD", &format!("bg{n}"), &ns.path(), &node.conf)
                .ok();
            node.background.push(ns);
        }
        node.pods = count + 1;
    }

    let load_measuring = loadavg();
    let mut load_min = f64::MAX;
    let mut load_max = 0f64;
    for i in 0..samples {
        // A B B A: neither node always goes first.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            sample(&base, &mut nodes[k], i);
        }
        let one_minute = loadavg()
            .split(',')
            .next()
            .and_then(|l| l.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        load_min = load_min.min(one_minute);
        load_max = load_max.max(one_minute);
    }

    let mut summary = String::from(
        "| pods already attached | samples | p50 ms | p99 ms | max ms | ADD alone p50 ms | ADD alone p99 ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for node in &mut nodes {
        node.times.sort_by(f64::total_cmp);
        let adds = {
            let mut v = node.series.values["ADD (sluice-cni wall time)"].clone();
            v.sort_by(f64::total_cmp);
            v
        };
        let line = format!(
            "| {} | {samples} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            node.pods,
            percentile(&node.times, 0.5),
            percentile(&node.times, 0.99),
            node.times.last().unwrap(),
            percentile(&adds, 0.5),
            percentile(&adds, 0.99),
        );
        print!("{line}");
        summary += &line;
    }
    let mut breakdown = String::from("| step | ");
    for node in &nodes {
        let pods = node.pods;
        breakdown += &format!("p50 ms ({pods} pods) | p99 ms ({pods} pods) | ");
    }
    breakdown += "\n|---|";
    breakdown += &"---|---|".repeat(nodes.len());
    breakdown += "\n";
    for name in &nodes[0].series.order {
        breakdown += &format!("| {name} | ");
        for node in &nodes {
            let (p50, p99) = node.series.stats(name);
            breakdown += &format!("{p50:.2} | {p99:.2} | ");
        }
        breakdown += "\n";
    }
    print!("{breakdown}");
    let load = format!(
        "Machine: {} cores, load average (1, 5, 15 min) {load_at_start} at the start, \
         {load_measuring} when the samples began, {} at the end; the 1-minute figure \
         ranged {load_min:.2} to {load_max:.2} while sampling (other work on the machine \
         shows in the tail).",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("{load}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../perf/results/provision.md");
    std::fs::write(
        &out,
        format!(
            "# Pod provisioning time\n\nFrom the start of `sluice-cni` ADD to the first ping reply \
             from a peer pod on the same worker (ARP answered by the gateway), \
             `scripts/bench-provision.sh`. Includes starting `sluice-cni` and one \
             `nsenter ping` per try. \"ADD alone\" is until `sluice-cni` exits. Two workers \
             in one run, one with 10 pods attached besides the peer and one with 500; \
             samples alternate between them (A B B A ...), so both see the same phases of \
             a shared machine.\n\n{load}\n\n{summary}\n\
             ## Where the time goes\n\nPer step (`·` marks parts of the line above; steps \
             are the agent's own timings, logged on its \"attached\" line). Percentiles are \
             per row, so parts need not add up to the p99 of their whole.\n\n{breakdown}"
        ),
    )
    .expect("writing perf/results/provision.md");
    for node in &nodes {
        for (n, ns) in node.background.iter().enumerate() {
            let id = if n == 0 {
                "peer".to_owned()
            } else {
                format!("bg{n}")
            };
            node.w.cni("DEL", &id, &ns.path(), &node.conf).ok();
        }
    }
}
