//! The end-to-end namespace test bed: an underlay bridge, a gateway namespace running the
//! real `sluice-gateway` (its tables from a file: hosts, the VPC, the subnet with the
//! gateway as bouncer, and the endpoints of the pods attached below), and two workers
//! each running the real `sluice-node` with a static allocation file. Pods are attached
//! by the real `sluice-cni` (run directly, or by Debian's libcni through the test driver
//! with the shipped conflist, as a container runtime would) and reach each other through
//! the stubs and the gateway: the gateway answers their ARP (with HOST_HINT), after which
//! traffic between the workers goes direct and the gateway's counters stop moving.
//!
//! Needs root, two cores and the `sluice-gateway` binary of the same profile (built by
//! `cargo test --workspace`; otherwise `cargo build -p sluice-dataplane --bin
//! sluice-gateway` first). Namespaces `sl-bed-<pid>-<n>-*`, removed by guards.

mod common;

use common::libcni::Runtime;
use common::*;
use std::time::Duration;

/// The tests of this file each run a gateway that polls a core: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    // (The gateway publishes its counters every ~100 ms: read them once they settle.)
    let before = settled_rx_packets(&gw);
    ping(&a, "10.1.0.50", "3");
    assert!(
        wait_until(Duration::from_secs(5), || gw.rx_packets() > before),
        "the gateway saw nothing of the first exchange"
    );
    let after_first = settled_rx_packets(&gw);
    // ...and the transit stubs cached each other's host, so later packets go direct.
    assert!(w1.map_entries("host_cache") >= 1, "w1 cached no host");
    assert!(w2.map_entries("host_cache") >= 1, "w2 cached no host");
    let text = ping(&a, "10.1.0.50", "20");
    assert!(text.contains("20 received"), "{text}");
    let after_direct = settled_rx_packets(&gw);
    assert_eq!(
        after_direct, after_first,
        "later packets still went through the gateway"
    );

    for (w, id, ns) in [(&w1, "pod-a", &a), (&w1, "pod-b", &b), (&w2, "pod-c", &c)] {
        w.cni("DEL", id, &ns.path(), &w.netconf("1.0.0", "")).ok();
    }
    assert_eq!((w1.map_entries("pods"), w2.map_entries("pods")), (0, 0));
}

/// The whole path as a runtime drives it: pods attached by Debian's libcni (the Go
/// driver, the shipped conflist) to two workers exchange ping and TCP across hosts through
/// the stubs and the real gateway, which answers their ARP and carries the first
/// exchange; CHECK and DEL go through libcni too.
#[test]
fn pods_attached_over_libcni_exchange_traffic_across_hosts_through_the_gateway() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_root("gateway test bed");
    let base = unique("sl-lcg");
    let underlay = Underlay::new(&base);
    let gw_ns = Netns::new(format!("{base}-gw"));
    underlay.plug(&gw_ns, GW.0, GW.1);
    let dir = tempfile::tempdir().expect("tempdir");
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
        &tables("10.1.0.0/24", &[("10.1.0.10", W1.0), ("10.1.0.50", W2.0)]),
    );
    w1.start(&[]);
    w2.start(&[]);
    let (rt1, rt2) = (Runtime::new(&w1), Runtime::new(&w2));
    let (a, c) = (
        Netns::new(format!("{base}-a")),
        Netns::new(format!("{base}-c")),
    );
    assert_eq!(rt1.add("pod-a", &a.path()), "10.1.0.10");
    assert_eq!(rt2.add("pod-c", &c.path()), "10.1.0.50");
    rt1.run("check", "pod-a", &a.path()).expect("CHECK a");
    rt2.run("check", "pod-c", &c.path()).expect("CHECK c");

    // The first exchange across hosts goes through the gateway (ARP, then the packets).
    let before = settled_rx_packets(&gw);
    let text = ping(&a, "10.1.0.50", "3");
    assert!(text.contains("3 received"), "{text}");
    assert!(
        wait_until(Duration::from_secs(5), || gw.rx_packets() > before),
        "the gateway saw nothing of the first exchange"
    );
    // TCP across hosts, both ways of the connection through the stubs.
    let _server = start_backend(&c, "c");
    let out = nsenter(
        &a.name,
        &[
            "python3",
            "-c",
            "import socket; s = socket.create_connection(('10.1.0.50', 8080), timeout=5);              s.sendall(b'hello'); print(s.recv(64).decode())",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "c:hello",
        "TCP across hosts: {}\nw1: {}\nw2: {}",
        String::from_utf8_lossy(&out.stderr),
        w1.counters(),
        w2.counters()
    );
    ping(&c, "10.1.0.10", "3");

    rt1.run("del", "pod-a", &a.path()).expect("DEL a");
    rt2.run("del", "pod-c", &c.path()).expect("DEL c");
    assert_eq!((w1.map_entries("pods"), w2.map_entries("pods")), (0, 0));
    assert!(w1.pod_veths().is_empty() && w2.pod_veths().is_empty());
}

/// The gateway's received-packet counter once it has stopped moving: the same over 300 ms,
/// three of its ~100 ms publishing periods.
fn settled_rx_packets(gw: &Gateway) -> u64 {
    let mut last = gw.rx_packets();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(300));
        let now = gw.rx_packets();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the gateway's rx counter never settled (last {last})");
}

/// A process started in a namespace (nsenter execs it, so the PID is its own), killed by
/// its PID when dropped.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// A backend: UDP and TCP on 0.0.0.0:8080 in the pod, answering `<name>:<what it got>`.
/// Returns once both sockets listen.
const BACKEND: &str = r#"
import socket, sys, threading
name = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 8080))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(16)
def udp():
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(name.encode() + b":" + data, peer)
def tcp():
    while True:
        c, _ = t.accept()
        data = c.recv(2048)
        c.sendall(name.encode() + b":" + data)
        c.close()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
tcp()
"#;

/// The client: UDP from `flows` source ports to VIP:80, then one TCP connection; prints
/// one JSON line: every UDP reply with the address it came from, and the TCP reply.
const CLIENT: &str = r#"
import json, socket, sys
vip, flows = sys.argv[1], int(sys.argv[2])
udp = []
for i in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 40000 + i))
    s.settimeout(0.5)
    reply = None
    for _ in range(4):
        s.sendto(b"flow%d" % i, (vip, 80))
        try:
            data, peer = s.recvfrom(2048)
            reply = [peer[0], peer[1], data.decode()]
            break
        except socket.timeout:
            pass
    udp.append(reply)
    s.close()
    if reply is None:
        print(json.dumps({"udp": udp, "tcp": None}))
        sys.exit(0)
try:
    c = socket.create_connection((vip, 80), timeout=3)
    c.sendall(b"hello")
    tcp = c.recv(2048).decode()
    c.close()
except OSError:
    tcp = None
print(json.dumps({"udp": udp, "tcp": tcp}))
"#;

fn start_backend(ns: &Netns, name: &str) -> Spawned {
    use std::io::BufRead;
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg("--")
        .args(["python3", "-c", BACKEND, name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting a backend");
    let mut backend = Spawned(child);
    let mut line = String::new();
    std::io::BufReader::new(backend.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("backend stdout");
    assert_eq!(line.trim(), "ready", "backend {name} did not start");
    backend
}

/// Service VIP end to end: a client pod sends UDP and opens TCP to a VIP of the VPC's
/// service CIDR; the real gateway picks a backend (one on the client's worker, two on the
/// other), DNATs and attaches SERVICE_ORIG; the backend's transit stub records the flow
/// and its agent stub rewrites the reply back to the VIP. The client's sockets see every
/// reply come from VIP:80 (the kernel drops bad checksums, so they are valid too), the
/// TCP handshake completes, and the flows spread over more than one backend (their own
/// answers and the gateway's per-backend counters say so).
/// (This passes only because the node agent turns TX checksum offload off on each pod's
/// eth0: otherwise the client's checksums stay partial through the agent stub.)
#[test]
fn a_service_vip_answers_from_the_vip_and_spreads_over_backends() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_root("gateway test bed");
    const VIP: &str = "10.96.0.10";
    let base = unique("sl-svc");
    let underlay = Underlay::new(&base);
    let gw_ns = Netns::new(format!("{base}-gw"));
    underlay.plug(&gw_ns, GW.0, GW.1);
    let dir = tempfile::tempdir().expect("tempdir");
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
    // Client 10.1.0.10 and backend b1 10.1.0.11 on w1; backends b2, b3 (.50, .51) on w2.
    let mut yaml = tables(
        "10.1.0.0/24",
        &[
            ("10.1.0.10", W1.0),
            ("10.1.0.11", W1.0),
            ("10.1.0.50", W2.0),
            ("10.1.0.51", W2.0),
        ],
    );
    for protocol in ["UDP", "TCP"] {
        yaml += &format!(
            "  - kind: Service\n    vni: 100\n    vip: {VIP}\n    port: 80\n    protocol: {protocol}\n    \
             backends:\n      - {{ip: 10.1.0.11, port: 8080}}\n      - {{ip: 10.1.0.50, port: 8080}}\n      \
             - {{ip: 10.1.0.51, port: 8080}}\n"
        );
    }
    let gw = Gateway::start(&gw_ns, dir.path(), &yaml);
    w1.start(&[]);
    w2.start(&[]);

    let pods: Vec<(&Worker, &str, Netns)> = vec![
        (&w1, "client", Netns::new(format!("{base}-client"))),
        (&w1, "b1", Netns::new(format!("{base}-b1"))),
        (&w2, "b2", Netns::new(format!("{base}-b2"))),
        (&w2, "b3", Netns::new(format!("{base}-b3"))),
    ];
    for (w, id, ns) in &pods {
        w.cni("ADD", id, &ns.path(), &w.netconf("1.0.0", "")).ok();
    }
    let _backends: Vec<Spawned> = pods[1..]
        .iter()
        .map(|(_, id, ns)| start_backend(ns, id))
        .collect();

    let flows = 12;
    let out = nsenter(
        &pods[0].2.name,
        &["python3", "-c", CLIENT, VIP, &flows.to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("client JSON");
    let diagnose = || {
        let nonzero: Vec<String> = gw
            .metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        format!(
            "gateway: {nonzero:#?}\nw1 counters: {}\nw2 counters: {}\nw1: {}\nw2: {}\n{}",
            w1.counters(),
            w2.counters(),
            ip(&["-n", &pods[0].2.name, "route"]),
            ip(&["-n", &pods[0].2.name, "neigh"]),
            pods[1..]
                .iter()
                .map(|(_, id, ns)| {
                    let out = nsenter(&ns.name, &["nstat", "-az", "Udp*", "Ip*", "Tcp*"]);
                    format!("{id}: {}", String::from_utf8_lossy(&out.stdout))
                })
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let mut answered_by = std::collections::BTreeSet::new();
    for (i, reply) in v["udp"].as_array().unwrap().iter().enumerate() {
        let r = reply
            .as_array()
            .unwrap_or_else(|| panic!("flow {i}: no reply\n{}", diagnose()));
        assert_eq!(
            (r[0].as_str().unwrap(), r[1].as_u64().unwrap()),
            (VIP, 80),
            "flow {i}: the reply's source is not the VIP"
        );
        let (backend, echoed) = r[2].as_str().unwrap().split_once(':').unwrap();
        assert_eq!(echoed, format!("flow{i}"));
        answered_by.insert(backend.to_owned());
    }
    assert!(
        answered_by.len() >= 2,
        "{flows} flows all went to {answered_by:?}"
    );
    let tcp = v["tcp"]
        .as_str()
        .unwrap_or_else(|| panic!("no TCP reply\n{}", diagnose()));
    assert!(
        ["b1:hello", "b2:hello", "b3:hello"].contains(&tcp),
        "TCP reply {tcp:?}"
    );

    // The gateway counted the packets of the service per backend, on more than one.
    // (Counters are published periodically: wait for them.)
    let busy_backends = || {
        gw.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("sluice_backend_packets_total")
                    && l.contains(&format!("vip=\"{VIP}\""))
                    && l.contains("protocol=\"udp\"")
            })
            .filter(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) > Some(0))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || busy_backends() >= 2),
        "the gateway counted packets for fewer than two backends\n{}",
        diagnose()
    );
    // The backends' workers recorded the flows for the reverse NAT.
    if answered_by.contains("b1") {
        assert!(w1.map_entries("rev_nat") >= 1, "w1 recorded no flow");
    }
    if answered_by.contains("b2") || answered_by.contains("b3") {
        assert!(w2.map_entries("rev_nat") >= 1, "w2 recorded no flow");
    }
    eprintln!("UDP flows answered by {answered_by:?}, TCP by {tcp}");

    for (w, id, ns) in &pods {
        w.cni("DEL", id, &ns.path(), &w.netconf("1.0.0", "")).ok();
    }
}
