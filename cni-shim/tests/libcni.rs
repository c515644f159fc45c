//! An independent CNI client: Debian's libcni (golang-github-appc-cni-dev, spec 1.0.0),
//! through the small Go driver in tests/libcni-driver, runs VALIDATE (VERSION), ADD,
//! CHECK and DEL on real namespaces against the real `sluice-cni` and `sluice-node`.
//! The driver is built here with Debian's Go, offline (scripts/setup.sh installs both).
//!
//! The conflist is the shipped `config/10-sluice.conflist`, with only the plugin's
//! `socket` pointed at the test's own agent (`common::shipped_conflist`).
//!
//! Needs root. Namespaces `sl-cni-<pid>-<n>-*`, removed by guards.

mod common;

use common::libcni::Runtime;
use common::*;
use serde_json::json;

#[test]
fn libcni_adds_checks_and_deletes_pods() {
    assert_root("libcni");
    let base = unique("sl-cni");
    let underlay = Underlay::new(&base);
    let mut w = Worker::new(
        &base,
        "w1",
        &underlay,
        "198.18.0.11",
        "02:00:00:00:00:11",
        &allocation(
            ("198.18.0.1", "02:00:00:00:00:01"),
            &[],
            ("10.1.0.10", "10.1.0.99"),
        ),
    );
    w.start(&[]);
    let rt = Runtime::new(&w);
    // The shipped conflist names 1.0.0, which every libcni reads, and offers 1.1.0 through
    // `cniVersions` to those that understand it (libcni 1.2 and later pick the highest
    // they implement; Debian's 1.1.2 ignores the list).
    let shipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&w.conflist).unwrap()).unwrap();
    assert_eq!(shipped["cniVersion"], "1.0.0");
    assert_eq!(shipped["cniVersions"], json!(["1.0.0", "1.1.0"]));
    // VALIDATE asks the plugin for VERSION and checks the config's version against it.
    rt.run("validate", "", "")
        .expect("libcni validates the conflist");

    let (a, b) = (
        Netns::new(format!("{base}-a")),
        Netns::new(format!("{base}-b")),
    );
    let ra: serde_json::Value =
        serde_json::from_str(&rt.run("add", "pod-a", &a.path()).expect("ADD a")).expect("JSON");
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["ips"][0]["address"], "10.1.0.10/24");
    assert_eq!(ra["ips"][0]["gateway"], "10.1.0.1");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["interfaces"][1]["sandbox"], a.path());
    assert_eq!(ra["routes"], json!([{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]));
    rt.run("add", "pod-b", &b.path()).expect("ADD b");
    // CHECK sends libcni's cached ADD result as prevResult.
    rt.run("check", "pod-a", &a.path()).expect("CHECK a");
    rt.run("check", "pod-b", &b.path()).expect("CHECK b");
    assert_eq!(w.map_entries("pods"), 2);

    // The pods reach each other through the agent stub (the peer's MAC given by hand:
    // no gateway answers ARP here; tests/gateway_bed.rs has one).
    ip(&[
        "-n",
        &a.name,
        "neigh",
        "add",
        "10.1.0.11",
        "lladdr",
        "0a:58:0a:01:00:0b",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &b.name,
        "neigh",
        "add",
        "10.1.0.10",
        "lladdr",
        "0a:58:0a:01:00:0a",
        "dev",
        "eth0",
    ]);
    let out = nsenter(
        &a.name,
        &["ping", "-c", "3", "-i", "0.1", "-W", "1", "10.1.0.11"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Breaking the pod: CHECK reports it through libcni.
    ip(&["-n", &b.name, "link", "del", "eth0"]);
    let err = rt
        .run("check", "pod-b", &b.path())
        .expect_err("CHECK must fail");
    assert!(err.contains("gone"), "{err}");

    rt.run("del", "pod-a", &a.path()).expect("DEL a");
    rt.run("del", "pod-b", &b.path()).expect("DEL b");
    rt.run("del", "pod-b", &b.path())
        .expect("DEL is idempotent");
    assert!(w.pod_veths().is_empty());
    assert_eq!((w.map_entries("pods"), w.leases(), w.records()), (0, 0, 0));
}
