//! The real `sluice-node` in a worker namespace and the real `sluice-cni` run as a
//! runtime would (the direct harness): ADD, CHECK, DEL, STATUS, GC and VERSION on good
//! and bad input, a failure injected midway through ADD, 200 ADD/DEL cycles checked for
//! leaks, and an agent restart while pods keep pinging.
//!
//! Needs root. Namespaces `sl-node-<pid>-<n>-*`, pins under /sys/fs/bpf/<worker ns>;
//! all removed by guards even when a test fails.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn worker(base: &str) -> (Underlay, Worker) {
    assert_root("node agent");
    let underlay = Underlay::new(base);
    let mut w = Worker::new(
        base,
        "w1",
        &underlay,
        "198.18.0.11",
        "02:00:00:00:00:11",
        &allocation(GW, &[], ("10.1.0.10", "10.1.0.250")),
    );
    w.start(&[]);
    (underlay, w)
}

fn pod(base: &str, n: u32) -> Netns {
    Netns::new(format!("{base}-pod{n}"))
}

#[test]
fn add_check_del_over_the_shim() {
    let base = unique("sl-node");
    let (_u, w) = worker(&base);
    let p = pod(&base, 1);
    let conf = w.netconf("1.0.0", "");

    let result = w.cni("ADD", "c1", &p.path(), &conf).ok().json();
    assert_eq!(result["cniVersion"], "1.0.0");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("host if")
        .to_owned();
    assert!(
        host_if.starts_with("sl") && host_if.len() == 13,
        "{host_if}"
    );
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], p.path());
    assert_eq!(result["interfaces"][1]["mac"], "0a:58:0a:01:00:0a");
    assert_eq!(
        result["ips"],
        json!([{"address":"10.1.0.10/24","gateway":"10.1.0.1","interface":1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst":"0.0.0.0/0","gw":"10.1.0.1"}])
    );

    // What the kernel holds: the pod side configured, both sides with their XDP program.
    let pod_link = ip(&["-n", &p.name, "-d", "link", "show", "eth0"]);
    assert!(pod_link.contains("0a:58:0a:01:00:0a"), "{pod_link}");
    assert!(pod_link.contains("mtu 1400"), "{pod_link}");
    assert!(
        pod_link.contains("xdp"),
        "pod side has no XDP program: {pod_link}"
    );
    assert!(ip(&["-n", &p.name, "addr", "show", "eth0"]).contains("10.1.0.10/24"));
    let routes = ip(&["-n", &p.name, "route"]);
    assert!(routes.contains("default via 10.1.0.1 dev eth0"), "{routes}");
    let neigh = ip(&["-n", &p.name, "neigh"]);
    assert!(
        neigh.contains("10.1.0.1 dev eth0 lladdr 02:00:5e:00:01:01 PERMANENT"),
        "{neigh}"
    );
    let host_link = ip(&["-n", &w.ns.name, "-d", "link", "show", &host_if]);
    assert!(
        host_link.contains("xdp") && host_link.contains("mtu 1400"),
        "{host_link}"
    );
    assert_eq!(w.map_entries("pods"), 1);
    assert_eq!(w.map_entries("endpoints"), 1);
    // TX checksum offload is off on the pod side (the agent stub redirects in XDP, where
    // a partial checksum would never be completed); read by the ethtool binary.
    let features = nsenter(&p.name, &["ethtool", "-k", "eth0"]);
    assert!(features.status.success(), "{features:?}");
    let features = String::from_utf8_lossy(&features.stdout);
    assert!(
        features.contains("tx-checksumming: off"),
        "pod eth0 still offloads TX checksums:\n{features}"
    );
    for f in ["tx-checksum-ip-generic", "tx-checksum-sctp"] {
        assert!(features.contains(&format!("{f}: off")), "{f}:\n{features}");
    }

    // ADD again: same result (idempotent), nothing new.
    let again = w.cni("ADD", "c1", &p.path(), &conf).ok().json();
    assert_eq!(again, result);
    assert_eq!(w.pod_veths().len(), 1);

    // CHECK with the result as prevResult passes; with another address it fails (104).
    let with_prev =
        |prev: &serde_json::Value| w.netconf("1.0.0", &format!(",\"prevResult\":{prev}"));
    w.cni("CHECK", "c1", &p.path(), &with_prev(&result)).ok();
    let mut wrong = result.clone();
    wrong["ips"][0]["address"] = json!("10.1.0.99/24");
    assert_eq!(
        w.cni("CHECK", "c1", &p.path(), &with_prev(&wrong)).code(),
        104
    );
    // CHECK of an unknown container: code 3.
    assert_eq!(
        w.cni("CHECK", "c9", &p.path(), &with_prev(&result)).code(),
        3
    );
    // CHECK notices an address removed behind the agent's back.
    ip(&["-n", &p.name, "addr", "del", "10.1.0.10/24", "dev", "eth0"]);
    let out = w.cni("CHECK", "c1", &p.path(), &with_prev(&result));
    assert_eq!(out.code(), 104);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("lost its address"),
        "{out:?}"
    );

    // DEL removes everything; DEL again and DEL of something never added succeed.
    w.cni("DEL", "c1", &p.path(), &conf).ok();
    assert!(w.pod_veths().is_empty());
    assert!(!ip(&["-n", &p.name, "link"]).contains("eth0"));
    assert_eq!((w.map_entries("pods"), w.map_entries("endpoints")), (0, 0));
    assert_eq!((w.leases(), w.records()), (0, 0));
    w.cni("DEL", "c1", &p.path(), &conf).ok();
    w.cni("DEL", "never", "", &conf).ok();
}

#[test]
fn status_gc_and_version() {
    let base = unique("sl-node");
    let (_u, w) = worker(&base);
    let conf11 = w.netconf("1.1.0", "");
    let out = cni("STATUS", "", "", "", &conf11);
    assert!(out.success && out.stdout.is_empty(), "{out:?}");

    let version = cni("VERSION", "", "", "", "{\"cniVersion\":\"1.0.0\"}")
        .ok()
        .json();
    assert_eq!(version["supportedVersions"], json!(["1.0.0", "1.1.0"]));

    let pods: Vec<Netns> = (1..=3).map(|n| pod(&base, n)).collect();
    for (i, p) in pods.iter().enumerate() {
        let r = w
            .cni("ADD", &format!("c{i}"), &p.path(), &conf11)
            .ok()
            .json();
        assert_eq!(
            r["interfaces"][1]["mtu"], 1400,
            "1.1.0 results carry the MTU"
        );
    }
    assert_eq!(w.pod_veths().len(), 3);
    let gc = w.netconf(
        "1.1.0",
        ",\"cni.dev/valid-attachments\":[{\"containerID\":\"c1\",\"ifname\":\"eth0\"}]",
    );
    cni("GC", "", "", "", &gc).ok();
    assert_eq!(w.pod_veths().len(), 1);
    assert_eq!(w.map_entries("pods"), 1);
    assert_eq!((w.leases(), w.records()), (1, 1));
    // The survivor is c1 in pod 2's namespace.
    assert!(ip(&["-n", &pods[1].name, "link"]).contains("eth0"));

    // STATUS and GC need a 1.1.0 config.
    assert_eq!(cni("STATUS", "", "", "", &w.netconf("1.0.0", "")).code(), 1);

    // Without the transit program the node cannot serve pods: not available (50).
    ip(&["-n", &w.ns.name, "link", "set", "eth0", "xdp", "off"]);
    let out = cni("STATUS", "", "", "", &conf11);
    assert_eq!(out.code(), 50);
    assert!(
        out.stdout
            .contains("transit program is not attached to eth0"),
        "{out:?}"
    );
}

#[test]
fn agent_not_running_is_code_100() {
    assert_root("node agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        "{{\"cniVersion\":\"1.0.0\",\"name\":\"sluice\",\"type\":\"sluice\",\"socket\":\"{}\"}}",
        dir.path().join("absent.sock").display()
    );
    let out = cni("ADD", "c1", "/run/netns/none", "eth0", &conf);
    assert_eq!(out.code(), 100);
    let v = out.json();
    assert_eq!(v["msg"], "node agent not running");
    assert!(
        v["details"].as_str().unwrap().contains("absent.sock"),
        "{v}"
    );
    // A socket file nobody listens on: refused, same code.
    std::os::unix::net::UnixListener::bind(dir.path().join("absent.sock"))
        .map(drop)
        .expect("bind");
    assert_eq!(cni("DEL", "c1", "", "eth0", &conf).code(), 100);
}

#[test]
fn bad_input_gets_the_spec_codes_from_the_binary() {
    assert_root("node agent");
    let out = cni("ADD", "c1", "/run/netns/x", "eth0", "{not json");
    assert_eq!(out.code(), 6);
    let out = cni(
        "ADD",
        "c1",
        "/run/netns/x",
        "eth0",
        r#"{"cniVersion":"0.3.1","name":"n","type":"sluice"}"#,
    );
    assert_eq!(out.code(), 1);
    let out = cni(
        "ADD",
        "",
        "/run/netns/x",
        "eth0",
        r#"{"cniVersion":"1.0.0","name":"n","type":"sluice"}"#,
    );
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("CNI_CONTAINERID"), "{out:?}");
}

#[test]
fn a_netns_that_does_not_exist_is_rejected_cleanly() {
    let base = unique("sl-node");
    let (_u, w) = worker(&base);
    let conf = w.netconf("1.0.0", "");
    let out = w.cni("ADD", "c1", "/run/netns/does-not-exist-sluice", &conf);
    assert_eq!(out.code(), 4, "{out:?}");
    assert!(w.pod_veths().is_empty());
    assert_eq!((w.leases(), w.records(), w.map_entries("pods")), (0, 0, 0));
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    for step in ["after_veth", "after_pod_setup", "after_maps"] {
        let base = unique("sl-node");
        assert_root("node agent");
        let underlay = Underlay::new(&base);
        let mut w = Worker::new(
            &base,
            "w1",
            &underlay,
            "198.18.0.11",
            "02:00:00:00:00:11",
            &allocation(GW, &[], ("10.1.0.10", "10.1.0.250")),
        );
        w.start(&[("SLUICE_NODE_FAULT", step)]);
        let p = pod(&base, 1);
        let out = w.cni("ADD", "c1", &p.path(), &w.netconf("1.0.0", ""));
        assert_eq!(out.code(), 103, "{step}: {out:?}");
        assert!(out.stdout.contains(step), "{out:?}");
        assert!(w.pod_veths().is_empty(), "{step}: veth left");
        let pod_links = ip(&["-n", &p.name, "-o", "link"]);
        assert_eq!(
            pod_links.lines().count(),
            1,
            "{step}: only lo may remain: {pod_links}"
        );
        assert_eq!(
            (
                w.leases(),
                w.records(),
                w.map_entries("pods"),
                w.map_entries("endpoints")
            ),
            (0, 0, 0, 0),
            "{step}"
        );
    }
}

#[test]
fn two_hundred_cycles_leak_nothing() {
    let base = unique("sl-node");
    let (_u, w) = worker(&base);
    let p = pod(&base, 1);
    let conf = w.netconf("1.0.0", "");
    // Warm up once so lazily opened descriptors are counted in the baseline.
    w.cni("ADD", "warm", &p.path(), &conf).ok();
    w.cni("DEL", "warm", &p.path(), &conf).ok();
    let fds = w.fd_count();
    for i in 0..200 {
        let id = format!("cycle{i}");
        w.cni("ADD", &id, &p.path(), &conf).ok();
        w.cni("DEL", &id, &p.path(), &conf).ok();
    }
    assert!(w.pod_veths().is_empty());
    assert_eq!(ip(&["-n", &p.name, "-o", "link"]).lines().count(), 1);
    assert_eq!(
        ip(&["-n", &p.name, "-o", "addr"]).lines().count(),
        1,
        "only lo's"
    );
    assert_eq!(
        (
            w.leases(),
            w.records(),
            w.map_entries("pods"),
            w.map_entries("endpoints")
        ),
        (0, 0, 0, 0)
    );
    let after = w.fd_count();
    assert!(after <= fds, "descriptors grew from {fds} to {after}");
}

/// Pods on one host reach each other through the agent stub's same-host redirect. No
/// gateway runs here, so the test gives each pod its peer's MAC (the gateway would
/// answer the ARP).
#[test]
fn pods_keep_pinging_while_the_agent_restarts() {
    let base = unique("sl-node");
    let (_u, mut w) = worker(&base);
    let (a, b) = (pod(&base, 1), pod(&base, 2));
    let conf = w.netconf("1.0.0", "");
    w.cni("ADD", "ca", &a.path(), &conf).ok();
    w.cni("ADD", "cb", &b.path(), &conf).ok();
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
    let out = nsenter(&a.name, &["ping", "-c", "2", "-W", "1", "10.1.0.11"]);
    assert!(
        out.status.success(),
        "same-host ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Ping every 20 ms for 4 s while the agent stops and starts again.
    let pinger = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", a.name))
        .args([
            "--",
            "ping",
            "-q",
            "-i",
            "0.02",
            "-c",
            "200",
            "-W",
            "1",
            "10.1.0.11",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    w.stop();
    std::thread::sleep(Duration::from_millis(300));
    w.start(&[]);
    let out = pinger.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 packets transmitted, 200 received"),
        "{text}"
    );

    // The restarted agent knows both pods: CHECK passes, DEL cleans.
    assert_eq!(w.map_entries("pods"), 2);
    w.cni("DEL", "ca", &a.path(), &conf).ok();
    w.cni("DEL", "cb", &b.path(), &conf).ok();
    assert_eq!((w.map_entries("pods"), w.leases(), w.records()), (0, 0, 0));
}

#[test]
fn a_restart_cleans_up_pods_that_vanished_meanwhile() {
    let base = unique("sl-node");
    let (_u, mut w) = worker(&base);
    let a = pod(&base, 1);
    let b = pod(&base, 2);
    let conf = w.netconf("1.0.0", "");
    w.cni("ADD", "ca", &a.path(), &conf).ok();
    w.cni("ADD", "cb", &b.path(), &conf).ok();
    w.stop();
    drop(a); // the pod's namespace goes, and its veth pair with it
    assert!(wait_until(Duration::from_secs(5), || w.pod_veths().len() == 1));
    w.start(&[]);
    assert_eq!((w.map_entries("pods"), w.leases(), w.records()), (1, 1, 1));
}
