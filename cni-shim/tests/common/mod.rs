//! Namespace scaffolding for the node agent and shim tests (patterns copied from
//! dataplane/tests/common, which another crate cannot import): an underlay bridge
//! namespace, worker namespaces each running the real `sluice-node`, pod namespaces, and
//! the real `sluice-cni` binary run as a runtime would.
//!
//! Everything is named `<prefix>-<pid>-<n>-*` and removed by guards even when a test
//! fails: namespaces, the agent process (killed by its PID), its bpffs pins. Underlay
//! addresses come from 198.18.0.0/15 only.
#![allow(dead_code)]

pub mod controller;
pub mod libcni;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_sluice-node");
pub const CNI_BIN: &str = env!("CARGO_BIN_EXE_sluice-cni");

pub fn assert_root(what: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(euid, "0", "the {what} tests need root (namespaces, XDP)");
}

pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a command in namespace `ns` through nsenter (keeps bpffs visible; PLATFORM.md
/// pitfall 2).
pub fn nsenter(ns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running nsenter")
}

pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        // No IPv6 chatter (router solicitations would go to the bouncers).
        let out = nsenter(
            &ns.name,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        );
        assert!(out.status.success(), "sysctl: {out:?}");
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The underlay: a bridge namespace that worker and gateway namespaces plug into.
pub struct Underlay {
    pub bridge: Netns,
    ports: AtomicU32,
}

impl Underlay {
    pub fn new(base: &str) -> Self {
        let bridge = Netns::new(format!("{base}-br"));
        for table in ["iptables", "ip6tables", "arptables"] {
            let _ = nsenter(
                &bridge.name,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.bridge.bridge-nf-call-{table}=0"),
                ],
            );
        }
        ip(&[
            "-n",
            &bridge.name,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_arptables",
            "0",
        ]);
        ip(&["-n", &bridge.name, "link", "set", "br0", "up"]);
        Underlay {
            bridge,
            ports: AtomicU32::new(0),
        }
    }

    /// Plugs namespace `ns` in with `eth0` at `addr`/24 and `mac` (one queue each).
    /// The bridge-side port gets GRO so that frames XDP-redirected into `eth0` arrive
    /// (PLATFORM.md pitfall 5).
    pub fn plug(&self, ns: &Netns, addr: &str, mac: &str) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        ip(&[
            "-n",
            &ns.name,
            "link",
            "add",
            "eth0",
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge.name,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "address", mac]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &self.bridge.name,
            "link",
            "set",
            &port,
            "master",
            "br0",
        ]);
        ip(&["-n", &self.bridge.name, "link", "set", &port, "up"]);
        let out = nsenter(&self.bridge.name, &["ethtool", "-K", &port, "gro", "on"]);
        assert!(out.status.success(), "ethtool: {out:?}");
    }
}

/// One worker: its namespace, a state directory, and its running `sluice-node`.
pub struct Worker {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub conflist: PathBuf,
    node: Option<Child>,
    stderr: PathBuf,
}

impl Worker {
    /// A worker namespace `<base>-<name>` plugged into `underlay` at `addr`, with a
    /// static allocation file `allocation` (TOML). The agent is not started yet.
    pub fn new(
        base: &str,
        name: &str,
        underlay: &Underlay,
        addr: &str,
        mac: &str,
        allocation: &str,
    ) -> Self {
        Self::with_source(base, name, underlay, addr, mac, |dir| {
            let file = dir.join("allocation.toml");
            std::fs::write(&file, allocation).expect("allocation");
            format!("static_allocation = \"{}\"\n", file.display())
        })
    }

    /// The same with addresses from the controller at `url` (`unix:///...`).
    pub fn with_controller(
        base: &str,
        name: &str,
        underlay: &Underlay,
        addr: &str,
        mac: &str,
        url: &str,
    ) -> Self {
        Self::with_source(base, name, underlay, addr, mac, |_| {
            format!("controller = \"{url}\"\n")
        })
    }

    fn with_source(
        base: &str,
        name: &str,
        underlay: &Underlay,
        addr: &str,
        mac: &str,
        source: impl FnOnce(&Path) -> String,
    ) -> Self {
        let ns = Netns::new(format!("{base}-{name}"));
        underlay.plug(&ns, addr, mac);
        let dir = tempfile::tempdir().expect("tempdir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name));
        let socket = dir.path().join("node.sock");
        let source = source(dir.path());
        std::fs::write(
            dir.path().join("node.toml"),
            format!(
                "node = \"{}\"\nunderlay_interface = \"eth0\"\npin_dir = \"{}\"\n\
                 socket = \"{}\"\nstate_dir = \"{}\"\n{source}",
                ns.name,
                pin_dir.display(),
                socket.display(),
                dir.path().join("state").display(),
            ),
        )
        .expect("node.toml");
        let conflist = dir.path().join("10-sluice.conflist");
        std::fs::write(&conflist, shipped_conflist(&socket)).expect("conflist");
        Worker {
            ns,
            pin_dir,
            socket,
            conflist,
            stderr: dir.path().join("node.stderr"),
            dir,
            node: None,
        }
    }

    /// Starts `sluice-node` in the worker namespace (with `env` added) and waits for its
    /// socket.
    pub fn start(&mut self, env: &[(&str, &str)]) {
        assert!(self.node.is_none(), "already running");
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg("--")
            .arg(NODE_BIN)
            .arg("--config")
            .arg(self.dir.path().join("node.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.stderr)
                    .expect("stderr file"),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.node = Some(cmd.spawn().expect("starting sluice-node"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(status) = self.node.as_mut().unwrap().try_wait().expect("try_wait") {
                self.node = None;
                panic!("sluice-node exited ({status}): {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no socket: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.node.as_ref().expect("running").id()
    }

    /// Kills the agent with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.node.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("SIGKILL");
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself; its status, or None.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.node.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.node = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's state directory (records, leases, owed releases).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.node.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "sluice-node exited {status}: {}",
                self.stderr()
            );
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Entries in the pinned map `name` (bpftool).
    pub fn map_entries(&self, name: &str) -> usize {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(self.pin_dir.join(name))
            .output()
            .expect("running bpftool");
        assert!(out.status.success(), "bpftool: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        v.as_array().expect("a list").len()
    }

    /// The stubs' non-zero counters (bpftool), for failure messages.
    pub fn counters(&self) -> String {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(self.pin_dir.join("counters"))
            .output()
            .expect("running bpftool");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut found = Vec::new();
        for (slot, entry) in v.as_array().into_iter().flatten().enumerate() {
            let total: u64 = entry["formatted"]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["value"].as_u64())
                .sum();
            if total > 0 {
                let name = sluice_dataplane::stubs::layout::COUNTERS
                    .get(slot)
                    .map(|c| c.label())
                    .unwrap_or("?");
                found.push(format!("{name}={total}"));
            }
        }
        if found.is_empty() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        found.join(" ")
    }

    /// Host-side pod veths (`sl` + 11 hex) in the worker namespace.
    pub fn pod_veths(&self) -> Vec<String> {
        let out = ip(&["-n", &self.ns.name, "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.len() == 13 && n.starts_with("sl"))
            .collect()
    }

    pub fn leases(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/leases"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Attachment records (complete ones: `*.json`, not a write in progress).
    pub fn records(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/attachments"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count()
            })
            .unwrap_or(0)
    }

    /// Releases the agent owes the allocator (`pending-releases`).
    pub fn owed_releases(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/pending-releases"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Entries of every map pinned under the worker's pin directory, by name (programs
    /// skipped): what a leak check compares.
    pub fn map_snapshot(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.pin_dir).expect("pin dir") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            // Programs are pinned as prog_<name>.
            if name.starts_with("prog_") {
                continue;
            }
            out.insert(name.clone(), self.map_entries(&name));
        }
        assert!(out.len() >= 7, "maps pinned: {out:?}");
        out
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Runs the real `sluice-cni` as a runtime would.
    pub fn cni(&self, command: &str, container: &str, netns: &str, stdin: &str) -> CniOutcome {
        cni(command, container, netns, "eth0", stdin)
    }

    /// The network config the runtime would pass (the conflist's plugin, flattened).
    pub fn netconf(&self, version: &str, extra: &str) -> String {
        format!(
            "{{\"cniVersion\":\"{version}\",\"name\":\"sluice\",\"type\":\"sluice\",\"socket\":\"{}\"{extra}}}",
            self.socket.display()
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        let _ = sluice_dataplane::stubs::NodeStubs::unpin_all(&self.pin_dir);
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

/// The repository's `config/10-sluice.conflist` as a test bed installs it: unchanged but
/// for every plugin's `socket`, which names the worker's own agent (each test runs its
/// own). The test bed's one substitution; anything else in the shipped file is what the
/// tests run with.
pub fn shipped_conflist(socket: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/10-sluice.conflist");
    let text = std::fs::read_to_string(&path).expect("config/10-sluice.conflist");
    let mut v: Value = serde_json::from_str(&text).expect("the shipped conflist is JSON");
    for plugin in v["plugins"].as_array_mut().expect("plugins") {
        assert!(
            plugin.get("socket").is_some(),
            "{}: a plugin without socket",
            path.display()
        );
        plugin["socket"] = Value::String(socket.display().to_string());
    }
    v.to_string()
}

/// What `sluice-cni` did.
#[derive(Debug)]
pub struct CniOutcome {
    pub success: bool,
    pub stdout: String,
}

impl CniOutcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }

    /// The error code, asserting failure.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "expected a failure, got {:?}", self.stdout);
        self.json()["code"].as_u64().expect("code")
    }

    pub fn ok(self) -> Self {
        assert!(self.success, "sluice-cni failed: {}", self.stdout);
        self
    }
}

pub fn cni(command: &str, container: &str, netns: &str, ifname: &str, stdin: &str) -> CniOutcome {
    use std::io::Write;
    let mut child = Command::new(CNI_BIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sluice-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("sluice-cni");
    CniOutcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    }
}

/// A static allocation file with one gateway and one subnet (VNI 100, 10.1.0.0/24),
/// handing out `range`.
pub fn allocation(gateway: (&str, &str), workers: &[(&str, &str)], range: (&str, &str)) -> String {
    let mut s = format!(
        "[[gateways]]\nip = \"{}\"\nmac = \"{}\"\n\n",
        gateway.0, gateway.1
    );
    for (ip, mac) in workers {
        s += &format!("[[workers]]\nip = \"{ip}\"\nmac = \"{mac}\"\n\n");
    }
    s += &format!(
        "[[subnets]]\nvpc = \"a\"\nname = \"web\"\nvni = 100\ncidr = \"10.1.0.0/24\"\n\
         router_mac = \"02:00:5e:00:01:01\"\nbouncers = [\"{}\"]\n\
         range_start = \"{}\"\nrange_end = \"{}\"\n",
        gateway.0, range.0, range.1
    );
    s
}

// The gateway side of the test bed: the real `sluice-gateway` in its namespace.

/// The underlay addresses of the gateway and the two workers of the test bed.
pub const GW: (&str, &str) = ("198.18.0.1", "02:00:00:00:00:01");
pub const W1: (&str, &str) = ("198.18.0.11", "02:00:00:00:00:11");
pub const W2: (&str, &str) = ("198.18.0.12", "02:00:00:00:00:12");
const METRICS: &str = "127.0.0.1:9471";

pub fn gateway_bin() -> PathBuf {
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
pub fn tables(subnet: &str, endpoints: &[(&str, &str)]) -> String {
    let mut s = String::from("upserts:\n");
    for (ip, mac) in [GW, W1, W2] {
        s += &format!("  - kind: Host\n    ip: {ip}\n    mac: \"{mac}\"\n");
    }
    s += "  - kind: Vpc\n    vni: 100\n    cidr: 10.1.0.0/16\n    serviceCidr: 10.96.0.0/16\n    \
          dividers: [198.18.0.1]\n";
    s += &format!("  - kind: Subnet\n    vni: 100\n    cidr: {subnet}\n    routerMac: \"02:00:5e:00:01:01\"\n    \
          bouncers: [198.18.0.1]\n");
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

pub struct Gateway {
    child: Option<Child>,
    ns: String,
    stderr: PathBuf,
}

impl Gateway {
    pub fn start(ns: &Netns, dir: &Path, tables_yaml: &str) -> Self {
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

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The gateway's Prometheus text, fetched from inside its namespace.
    pub fn metrics(&self) -> String {
        let ns = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
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
        .unwrap_or_else(|e| panic!("metrics: {e}: {}", self.stderr()))
    }

    /// Packets the gateway's workers received (sum over workers).
    pub fn rx_packets(&self) -> u64 {
        self.metrics()
            .lines()
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
