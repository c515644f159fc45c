//! The real `sluice-node` in a worker namespace and the real `sluice-cni` run as a
//! runtime would (the direct harness): ADD, CHECK, DEL, STATUS (50 and 51), GC scoped to
//! its network and VERSION on good and bad input, allocation failures (102), a failure
//! injected midway through ADD, a crash midway through ADD then a restart, a panic on
//! the agent's node thread, an agent socket that never answers, 200 ADD/DEL cycles
//! checked for leaks in every map, and an agent restart while pods keep pinging.
//!
//! Needs root. Namespaces `sl-node-<pid>-<n>-*`, pins under /sys/fs/bpf/<worker ns>;
//! all removed by guards even when a test fails.

mod common;

use std::time::{Duration, Instant};

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

    // Without the transit program the attached pod receives nothing from other hosts:
    // not available, and existing pods have limited connectivity (51).
    ip(&["-n", &w.ns.name, "link", "set", "eth0", "xdp", "off"]);
    let out = cni("STATUS", "", "", "", &conf11);
    assert_eq!(out.code(), 51, "{out:?}");
    assert!(
        out.stdout
            .contains("transit program is not attached to eth0"),
        "{out:?}"
    );
    // With no pod attached, nothing is limited: only new ADDs are at stake (50).
    w.cni("DEL", "c1", &pods[1].path(), &conf11).ok();
    let out = cni("STATUS", "", "", "", &conf11);
    assert_eq!(out.code(), 50, "{out:?}");
    assert!(out.stdout.contains("transit program"), "{out:?}");
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
    // STATUS: the plugin is not available (the spec's 50), saying why.
    let status = cni("STATUS", "", "", "", &conf.replace("1.0.0", "1.1.0"));
    assert_eq!(status.code(), 50, "{status:?}");
    assert_eq!(status.json()["msg"], "node agent not running");
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
    for step in [
        "after_veth",
        "after_pod_netns",
        "after_pod_setup",
        "after_maps",
    ] {
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
        // The gateway's underlay neighbour entry taken away: the ADD writes it again
        // (the pod's bouncer) and, failing, must take back what it created.
        remove_gateway_neighbour(&w);
        let before = w.map_snapshot();
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
        assert_eq!((w.leases(), w.records()), (0, 0), "{step}");
        assert_eq!(w.map_snapshot(), before, "{step}: a map kept an entry");
    }
}

/// Deletes the gateway's entry (198.18.0.1) from the worker's underlay neighbour map.
fn remove_gateway_neighbour(w: &Worker) {
    let out = std::process::Command::new("bpftool")
        .args(["map", "delete", "pinned"])
        .arg(w.pin_dir.join("neighbors"))
        .args(["key", "198", "18", "0", "1"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");
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
    // A neighbour entry an ADD (re)creates is node-wide: it stays after the DEL.
    let maps = w.map_snapshot();
    remove_gateway_neighbour(&w);
    w.cni("ADD", "warm", &p.path(), &conf).ok();
    w.cni("DEL", "warm", &p.path(), &conf).ok();
    assert_eq!(w.map_snapshot(), maps, "the ADD wrote the neighbour back");
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
    assert_eq!((w.leases(), w.records()), (0, 0));
    // Every map the agent writes (pods, endpoints, neighbours, node config) and those
    // the stubs fill (host cache, reverse NAT), counted.
    assert_eq!(w.map_snapshot(), maps);
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

/// A network config for network `name` (the conflist's `name`), optionally naming the
/// Sluice network "VPC/SUBNET".
fn named_conf(w: &Worker, name: &str, network: &str) -> String {
    let network = if network.is_empty() {
        String::new()
    } else {
        format!(",\"network\":\"{network}\"")
    };
    w.netconf("1.1.0", &network)
        .replace("\"name\":\"sluice\"", &format!("\"name\":\"{name}\""))
}

fn gc_conf(w: &Worker, name: &str, valid: &[&str]) -> String {
    let list: Vec<String> = valid
        .iter()
        .map(|c| format!("{{\"containerID\":\"{c}\",\"ifname\":\"eth0\"}}"))
        .collect();
    named_conf(w, name, "").replace(
        "\"type\"",
        &format!(
            "\"cni.dev/valid-attachments\":[{}],\"type\"",
            list.join(",")
        ),
    )
}

/// Removes the network name from an attachment record, as agents wrote them before.
fn make_legacy(w: &Worker, container: &str) {
    let path = w
        .state_dir()
        .join(format!("attachments/{container}:eth0.json"));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(v.as_object_mut().unwrap().remove("network_name").is_some());
    std::fs::write(&path, v.to_string()).unwrap();
}

fn network_of(w: &Worker, container: &str) -> Option<String> {
    let path = w
        .state_dir()
        .join(format!("attachments/{container}:eth0.json"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(v["network_name"].as_str().unwrap_or("").to_owned())
}

/// Two Sluice networks on one node (conflists `net-a` and `net-b`, the latter for subnet
/// b/db): GC of one collects only its own attachments. Records from older agents (no
/// network name) are left alone by every GC while their pod's veth exists, claimed by
/// the network whose GC lists them, and collected once their veth is gone.
#[test]
fn gc_collects_only_its_own_networks_attachments() {
    let base = unique("sl-node");
    assert_root("node agent");
    let underlay = Underlay::new(&base);
    let two_subnets = allocation(GW, &[], ("10.1.0.10", "10.1.0.250"))
        + "\n[[subnets]]\nvpc = \"b\"\nname = \"db\"\nvni = 200\ncidr = \"10.2.0.0/24\"\n\
           router_mac = \"02:00:5e:00:02:01\"\nbouncers = [\"198.18.0.1\"]\n";
    let mut w = Worker::new(&base, "w1", &underlay, W1.0, W1.1, &two_subnets);
    w.start(&[]);
    let pods: Vec<Netns> = (1..=6).map(|n| pod(&base, n)).collect();
    let (net_a, net_b) = (named_conf(&w, "net-a", ""), named_conf(&w, "net-b", "b/db"));
    for (id, p, conf) in [
        ("a1", &pods[0], &net_a),
        ("a2", &pods[1], &net_a),
        ("b1", &pods[2], &net_b),
        ("b2", &pods[3], &net_b),
    ] {
        w.cni("ADD", id, &p.path(), conf).ok();
    }
    assert_eq!(network_of(&w, "b1").as_deref(), Some("net-b"));
    assert_eq!(w.map_entries("pods"), 4);

    // GC of net-a keeping a1: a2 goes, net-b's pods stay, with their kernel state.
    cni("GC", "", "", "", &gc_conf(&w, "net-a", &["a1"])).ok();
    assert_eq!(w.records(), 3);
    assert_eq!(network_of(&w, "a2"), None);
    assert!(network_of(&w, "b1").is_some() && network_of(&w, "b2").is_some());
    assert_eq!(
        (w.pod_veths().len(), w.map_entries("pods"), w.leases()),
        (3, 3, 3)
    );
    for p in &pods[2..4] {
        assert!(ip(&["-n", &p.name, "addr", "show", "eth0"]).contains("10.2.0."));
    }
    // GC of net-b keeping nothing: both its pods go, a1 stays.
    cni("GC", "", "", "", &gc_conf(&w, "net-b", &[])).ok();
    assert_eq!(w.records(), 1);
    assert_eq!(network_of(&w, "a1").as_deref(), Some("net-a"));

    // Older records: l1's pod lives on, l2's vanishes.
    w.cni("ADD", "l1", &pods[4].path(), &net_a).ok();
    w.cni("ADD", "l2", &pods[5].path(), &net_a).ok();
    make_legacy(&w, "l1");
    make_legacy(&w, "l2");
    ip(&["-n", &pods[5].name, "link", "del", "eth0"]);
    cni("GC", "", "", "", &gc_conf(&w, "net-b", &[])).ok();
    assert_eq!(
        network_of(&w, "l1").as_deref(),
        Some(""),
        "l1 is left alone"
    );
    assert_eq!(network_of(&w, "l2"), None, "l2's veth is gone: collected");
    assert_eq!((w.records(), w.leases(), w.map_entries("pods")), (2, 2, 2));
    // net-a's GC lists l1: claimed for net-a, kept; the next one without it collects it.
    cni("GC", "", "", "", &gc_conf(&w, "net-a", &["a1", "l1"])).ok();
    assert_eq!(network_of(&w, "l1").as_deref(), Some("net-a"));
    cni("GC", "", "", "", &gc_conf(&w, "net-a", &["a1"])).ok();
    assert_eq!(network_of(&w, "l1"), None);
    // CHECK claims an older record too.
    let r = w.cni("ADD", "l3", &pods[4].path(), &net_a).ok().json();
    make_legacy(&w, "l3");
    let check = net_a.replace("\"type\"", &format!("\"prevResult\":{r},\"type\""));
    w.cni("CHECK", "l3", &pods[4].path(), &check).ok();
    assert_eq!(network_of(&w, "l3").as_deref(), Some("net-a"));

    w.cni("DEL", "a1", &pods[0].path(), &net_a).ok();
    w.cni("DEL", "l3", &pods[4].path(), &net_a).ok();
    assert_eq!((w.records(), w.leases(), w.map_entries("pods")), (0, 0, 0));
    assert!(w.pod_veths().is_empty());
}

/// Allocation failures through the shim binary: an unknown network and a full subnet are
/// code 102, and leave nothing behind.
#[test]
fn allocation_failures_are_code_102() {
    let base = unique("sl-node");
    assert_root("node agent");
    let underlay = Underlay::new(&base);
    let mut w = Worker::new(
        &base,
        "w1",
        &underlay,
        W1.0,
        W1.1,
        &allocation(GW, &[], ("10.1.0.10", "10.1.0.10")),
    );
    w.start(&[]);
    let (p1, p2) = (pod(&base, 1), pod(&base, 2));
    let out = w.cni(
        "ADD",
        "c0",
        &p1.path(),
        &w.netconf("1.0.0", ",\"network\":\"a/nope\""),
    );
    assert_eq!(out.code(), 102, "{out:?}");
    assert!(out.stdout.contains("a/nope"), "{out:?}");
    let conf = w.netconf("1.0.0", "");
    w.cni("ADD", "c1", &p1.path(), &conf).ok();
    let out = w.cni("ADD", "c2", &p2.path(), &conf);
    assert_eq!(out.code(), 102, "{out:?}");
    assert!(out.stdout.contains("no free address"), "{out:?}");
    assert_eq!((w.pod_veths().len(), w.records(), w.leases()), (1, 1, 1));
    assert_eq!(ip(&["-n", &p2.name, "-o", "link"]).lines().count(), 1);
    w.cni("DEL", "c1", &p1.path(), &conf).ok();
}

/// The agent is killed (SIGKILL) while an ADD is stopped at a step (`hang:STEP`), and
/// started again: it removes what the ADD left half made (a veth and lease with no
/// record; a record whose pod side is unfinished), or, when the pod side was complete,
/// finishes it. Either way the same ADD then succeeds and CHECK passes.
#[test]
fn a_crash_midway_through_add_is_cleaned_up_by_the_restart() {
    for (step, adopted) in [
        ("after_veth", false),
        ("after_pod_netns", false),
        ("after_pod_setup", true),
    ] {
        let base = unique("sl-node");
        assert_root("node agent");
        let underlay = Underlay::new(&base);
        let mut w = Worker::new(
            &base,
            "w1",
            &underlay,
            W1.0,
            W1.1,
            &allocation(GW, &[], ("10.1.0.10", "10.1.0.250")),
        );
        let fault = format!("hang:{step}");
        w.start(&[("SLUICE_NODE_FAULT", &fault)]);
        let p = pod(&base, 1);
        let conf = w.netconf("1.0.0", "");
        let add = {
            let (path, conf) = (p.path(), conf.clone());
            std::thread::spawn(move || cni("ADD", "c1", &path, "eth0", &conf))
        };
        assert!(
            wait_until(Duration::from_secs(10), || w
                .stderr()
                .contains(&format!("hanging at {step}"))),
            "{step}: the agent never reached the step: {}",
            w.stderr()
        );
        if step != "after_veth" {
            // The record is written while the kernel work goes on: let it land.
            assert!(
                wait_until(Duration::from_secs(5), || w.records() == 1),
                "{step}"
            );
        }
        assert_eq!(w.pod_veths().len(), 1, "{step}: nothing half made to clean");
        w.kill();
        let out = add.join().expect("shim thread");
        assert!(
            !out.success,
            "{step}: the interrupted ADD succeeded: {out:?}"
        );

        w.start(&[]);
        let expected = usize::from(adopted);
        assert_eq!(
            (
                w.pod_veths().len(),
                w.records(),
                w.leases(),
                w.map_entries("pods"),
                w.map_entries("endpoints")
            ),
            (expected, expected, expected, expected, expected),
            "{step}: after the restart\n{}",
            w.stderr()
        );
        if !adopted {
            assert_eq!(
                ip(&["-n", &p.name, "-o", "link"]).lines().count(),
                1,
                "{step}"
            );
        }
        let r = w.cni("ADD", "c1", &p.path(), &conf).ok().json();
        assert_eq!(r["ips"][0]["address"], "10.1.0.10/24", "{step}");
        let check = w.netconf("1.0.0", &format!(",\"prevResult\":{r}"));
        w.cni("CHECK", "c1", &p.path(), &check).ok();
        assert!(
            ip(&["-n", &p.name, "route"]).contains("default via 10.1.0.1 dev eth0"),
            "{step}"
        );
        w.cni("DEL", "c1", &p.path(), &conf).ok();
        assert_eq!(
            (
                w.pod_veths().len(),
                w.records(),
                w.leases(),
                w.map_entries("pods")
            ),
            (0, 0, 0, 0),
            "{step}"
        );
    }
}

/// A panic on the agent's node thread ends the process (no agent lingering that answers
/// "failed" to everything) with one readable line, no backtrace; the next start cleans
/// up after it.
#[test]
fn a_panic_on_the_node_thread_ends_the_agent_with_one_line() {
    let base = unique("sl-node");
    assert_root("node agent");
    let underlay = Underlay::new(&base);
    let mut w = Worker::new(
        &base,
        "w1",
        &underlay,
        W1.0,
        W1.1,
        &allocation(GW, &[], ("10.1.0.10", "10.1.0.250")),
    );
    w.start(&[("SLUICE_NODE_FAULT", "panic:after_veth")]);
    let p = pod(&base, 1);
    let conf = w.netconf("1.0.0", "");
    let out = w.cni("ADD", "c1", &p.path(), &conf);
    assert!(!out.success, "{out:?}");
    let status = w
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent lingers after a panic: {}", w.stderr()));
    assert_eq!(status.code(), Some(101), "{}", w.stderr());
    let stderr = w.stderr();
    let reports: Vec<&str> = stderr.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(reports.len(), 1, "{stderr}");
    assert!(
        reports[0].starts_with("sluice-node: internal error: thread sluice-node panicked at ")
            && reports[0].contains("failure injected at step after_veth"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    // What the ADD had made is removed by the next start.
    w.start(&[]);
    assert_eq!((w.pod_veths().len(), w.leases(), w.records()), (0, 0, 0));
    w.cni("ADD", "c1", &p.path(), &conf).ok();
    w.cni("DEL", "c1", &p.path(), &conf).ok();
}

/// An agent socket that accepts connections but never answers (a wedged agent): the shim
/// gives up within its deadlines, STATUS as not available (50), ADD as try again later
/// (11) or agent not running (100, if the connection itself never completes).
#[test]
fn a_silent_agent_costs_the_shim_bounded_time() {
    assert_root("node agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let conf = |version: &str| {
        format!(
            "{{\"cniVersion\":\"{version}\",\"name\":\"sluice\",\"type\":\"sluice\",\"socket\":\"{}\"}}",
            socket.display()
        )
    };
    let timed = |command: &'static str, conf: String| {
        std::thread::spawn(move || {
            let start = Instant::now();
            let out = cni(command, "c1", "/run/netns/none", "eth0", &conf);
            (out, start.elapsed())
        })
    };
    let status = timed("STATUS", conf("1.1.0"));
    let add = timed("ADD", conf("1.0.0"));
    let (out, took) = status.join().unwrap();
    assert_eq!(out.code(), 50, "{out:?}");
    assert!(took < Duration::from_secs(13), "STATUS took {took:?}");
    let (out, took) = add.join().unwrap();
    assert!([11, 100].contains(&out.code()), "{out:?}");
    assert!(took < Duration::from_secs(33), "ADD took {took:?}");
    eprintln!("silent agent: ADD answered {} after {took:?}", out.stdout);
}
