//! The end-to-end namespace test bed: an underlay bridge, a gateway namespace running the
//! real `sluice-gateway` (its tables from a file: hosts, the VPC, the subnet with the
//! gateway as bouncer, and the endpoints of the pods attached below), and two workers
//! each running the real `sluice-node` with a static allocation file. Pods are attached
//! by the real `sluice-cni` and reach each other through the stubs and the gateway: the
//! gateway answers their ARP (with HOST_HINT), after which traffic between the workers
//! goes direct and the gateway's counters stop moving.
//!
//! Needs root, two cores and the `sluice-gateway` binary of the same profile (built by
//! `cargo test --workspace`; otherwise `cargo build -p sluice-dataplane --bin
//! sluice-gateway` first). Namespaces `sl-bed-<pid>-<n>-*`, removed by guards.

mod common;

use common::*;

fn ping(from: &Netns, to: &str, count: &str) -> String {
    let out = nsenter(
        &from.name,
        &["ping", "-c", count, "-i", "0.05", "-W", "1", to],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ping {to} from {}: {text}", from.name);
    text
}

#[test]
fn pods_reach_each_other_through_the_stubs_and_the_gateway() {
    assert_root("gateway test bed");
    let base = unique("sl-bed");
    let underlay = Underlay::new(&base);
    let gw_ns = Netns::new(format!("{base}-gw"));
    underlay.plug(&gw_ns, GW.0, GW.1);
    let dir = tempfile::tempdir().expect("tempdir");
    // Static allocation: w1 hands out .10 and up, w2 .50 and up (deterministic, so the
    // gateway's endpoint table can be written first).
    let mut w1 = Worker::new(
        &base,
        "w1",
        &underlay,
        W1.0,
        W1.1,
        &allocation(GW, &[W2], ("10.1.0.10", "10.1.0.49")),
    );
    let mut w2 = Worker::new(
        &base,
        "w2",
        &underlay,
        W2.0,
        W2.1,
        &allocation(GW, &[W1], ("10.1.0.50", "10.1.0.99")),
    );
    let gw = Gateway::start(
        &gw_ns,
        dir.path(),
        &tables(
            "10.1.0.0/24",
            &[
                ("10.1.0.10", W1.0),
                ("10.1.0.11", W1.0),
                ("10.1.0.50", W2.0),
            ],
        ),
    );
    w1.start(&[]);
    w2.start(&[]);

    let (a, b, c) = (
        Netns::new(format!("{base}-a")),
        Netns::new(format!("{base}-b")),
        Netns::new(format!("{base}-c")),
    );
    let ip_of = |r: &CniOutcome| r.json()["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(
        ip_of(
            &w1.cni("ADD", "pod-a", &a.path(), &w1.netconf("1.0.0", ""))
                .ok()
        ),
        "10.1.0.10/24"
    );
    assert_eq!(
        ip_of(
            &w1.cni("ADD", "pod-b", &b.path(), &w1.netconf("1.0.0", ""))
                .ok()
        ),
        "10.1.0.11/24"
    );
    assert_eq!(
        ip_of(
            &w2.cni("ADD", "pod-c", &c.path(), &w2.netconf("1.0.0", ""))
                .ok()
        ),
        "10.1.0.50/24"
    );

    // Same host: the gateway answers the ARP, the agent stub redirects the packets.
    ping(&a, "10.1.0.11", "3");

    // Across hosts: the first exchange goes through the gateway (its counters move)...
    let before = gw.rx_packets();
    ping(&a, "10.1.0.50", "3");
    let after_first = gw.rx_packets();
    assert!(
        after_first > before,
        "the gateway saw nothing of the first exchange"
    );
    // ...and the transit stubs cached each other's host, so later packets go direct.
    assert!(w1.map_entries("host_cache") >= 1, "w1 cached no host");
    assert!(w2.map_entries("host_cache") >= 1, "w2 cached no host");
    let text = ping(&a, "10.1.0.50", "20");
    assert!(text.contains("20 received"), "{text}");
    let after_direct = gw.rx_packets();
    assert_eq!(
        after_direct, after_first,
        "later packets still went through the gateway"
    );

    for (w, id, ns) in [(&w1, "pod-a", &a), (&w1, "pod-b", &b), (&w2, "pod-c", &c)] {
        w.cni("DEL", id, &ns.path(), &w.netconf("1.0.0", "")).ok();
    }
    assert_eq!((w1.map_entries("pods"), w2.map_entries("pods")), (0, 0));
}
