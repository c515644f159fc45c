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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GW: (&str, &str) = ("198.18.0.1", "02:00:00:00:00:01");
const W1: (&str, &str) = ("198.18.0.11", "02:00:00:00:00:11");
const W2: (&str, &str) = ("198.18.0.12", "02:00:00:00:00:12");
const METRICS: &str = "127.0.0.1:9471";

fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("sluice-gateway");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice-dataplane --bin sluice-gateway` \
         (same profile) first, or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The tables the gateway starts with: both workers' pods as `endpoints` (ip, host).
fn tables(endpoints: &[(&str, &str)]) -> String {
    let mut s = String::from("upserts:\n");
    for (ip, mac) in [GW, W1, W2] {
        s += &format!("  - kind: Host\n    ip: {ip}\n    mac: \"{mac}\"\n");
    }
    s += "  - kind: Vpc\n    vni: 100\n    cidr: 10.1.0.0/16\n    serviceCidr: 10.96.0.0/16\n    \
          dividers: [198.18.0.1]\n";
    s += "  - kind: Subnet\n    vni: 100\n    cidr: 10.1.0.0/24\n    routerMac: \"02:00:5e:00:01:01\"\n    \
          bouncers: [198.18.0.1]\n";
    for (ip, host) in endpoints {
        let o: Vec<u8> = ip.split('.').map(|p| p.parse().unwrap()).collect();
        s += &format!(
            "  - kind: Endpoint\n    vni: 100\n    ip: {ip}\n    \
             mac: \"0a:58:{:02x}:{:02x}:{:02x}:{:02x}\"\n    host: {host}\n",
            o[0], o[1], o[2], o[3]
        );
    }
    s
}

struct Gateway {
    child: Option<Child>,
    ns: String,
    stderr: PathBuf,
}

impl Gateway {
    fn start(ns: &Netns, dir: &Path, tables_yaml: &str) -> Self {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("cpus");
        let cores = sluice_dataplane::config::cpulist::parse(&online).expect("cpulist");
        let (control, worker) = (*cores.first().unwrap(), *cores.last().unwrap());
        assert_ne!(control, worker, "the gateway test bed needs two cores");
        let tables = dir.join("tables.yaml");
        std::fs::write(&tables, tables_yaml).expect("tables");
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[cores]\ncontrol = \"{control}\"\nworkers = \"{worker}\"\n\n\
                 [[interfaces]]\nname = \"eth0\"\nip = \"{}\"\nmac = \"{}\"\nqueues = \"0\"\n\n\
                 [umem]\nframe_size = 4096\nframe_count = 4096\n\n\
                 [rings]\nrx = 1024\ntx = 1024\nfill = 2048\ncompletion = 2048\n\n\
                 [control]\ngrpc = \"unix://{}\"\nmetrics = \"{METRICS}\"\n\n\
                 [tables]\nfile = \"{}\"\n",
                GW.0,
                GW.1,
                dir.join("gateway.sock").display(),
                tables.display()
            ),
        )
        .expect("gateway.toml");
        let stderr = dir.join("gateway.stderr");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(gateway_bin())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr"))
            .spawn()
            .expect("starting sluice-gateway");
        let mut gw = Gateway {
            child: Some(child),
            ns: ns.name.clone(),
            stderr,
        };
        let sock = dir.join("gateway.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().expect("try_wait") {
                gw.child = None;
                panic!("the gateway exited ({status}): {}", gw.stderr());
            }
            assert!(Instant::now() < deadline, "gateway not up: {}", gw.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Packets the gateway's workers received (sum over workers).
    fn rx_packets(&self) -> u64 {
        let ns = format!("/run/netns/{}", self.ns);
        let text = std::thread::scope(|s| {
            s.spawn(|| {
                let f = File::open(&ns).expect("gateway netns");
                setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
                sluice_dataplane::appliance::metrics::fetch(
                    METRICS.parse().unwrap(),
                    Duration::from_secs(2),
                )
            })
            .join()
            .expect("metrics thread")
        })
        .unwrap_or_else(|e| panic!("metrics: {e}: {}", self.stderr()));
        text.lines()
            .filter(|l| l.starts_with("sluice_rx_packets_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

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
        &tables(&[
            ("10.1.0.10", W1.0),
            ("10.1.0.11", W1.0),
            ("10.1.0.50", W2.0),
        ]),
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
