//! The real `sluice-gateway` binary in network namespaces: a sender, a gateway and a
//! receiver on one L2 segment (a bridge in a fourth namespace), as in `tests/engine.rs`.
//! The gateway runs inside its namespace through `nsenter`, with a configuration and a
//! tables file (the testkit world as YAML) written to a temporary directory.
//!
//! Needs root. Namespaces are named `sl-gwb-<pid>-<n>-{br,s,g,r}` and deleted by a guard
//! even when a test fails; the gateway process is killed by its PID if a test fails
//! while it runs. Other processes started (`ip`, `nsenter` running `python3`, `promtool`)
//! are waited for.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_dataplane::appliance::metrics;
use sluice_dataplane::pipeline::{process, Frame, Verdict};
use sluice_dataplane::testkit::*;

mod common;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-gateway");
/// Each gateway namespace has its own loopback, so every test can use this address.
const METRICS: &str = "127.0.0.1:9471";

/// The gateway process; killed (by its PID) and reaped if the test ends while it runs.
struct GatewayProcess {
    child: Option<Child>,
    stderr: PathBuf,
}

impl GatewayProcess {
    /// Starts `sluice-gateway --config CONFIG` in namespace `ns`. nsenter execs the
    /// binary, so the child's PID is the gateway's.
    fn start(ns: &str, config: &Path, dir: &Path) -> Self {
        Self::start_with_env(ns, config, dir, &[])
    }

    /// Like [`Self::start`], with extra environment variables.
    fn start_with_env(ns: &str, config: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let stderr = dir.join("gateway.stderr");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(BIN)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("starting sluice-gateway");
        GatewayProcess {
            child: Some(child),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Waits for `path` to exist; panics with the gateway's stderr if it exits first.
    fn wait_for(&mut self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                panic!("the gateway exited ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not appear: {}",
                path.display(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, signal: Signal) {
        let pid = Pid::from_raw(self.child().id() as i32);
        kill(pid, signal).expect("kill");
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn geneve_to_h2(fd: &std::os::fd::OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    geneve_from_gateway_to(fd, H2, timeout)
}

/// The first captured Geneve frame from the gateway to `host`, waiting up to `timeout`.
fn geneve_from_gateway_to(
    fd: &std::os::fd::OwnedFd,
    host: std::net::Ipv4Addr,
    timeout: Duration,
) -> Option<Vec<u8>> {
    receive_matching(fd, timeout, |frame| {
        decode(frame).is_ok_and(|d| {
            d.outer_dst == host && d.outer_src == GW && d.udp_dst_port == GENEVE_PORT
        })
    })
}

/// What the pipeline makes of `packet` (with ample headroom) in the standard world: the
/// bytes the gateway must put on the wire, and the verdict.
fn expected_output(packet: &[u8]) -> (Verdict, Vec<u8>) {
    let writer = world_tables();
    let tables = writer.snapshot();
    let mut buf = with_headroom(packet);
    let mut frame = Frame::new(&mut buf, HEADROOM, packet.len()).expect("fits");
    let verdict = process(&tables, &local(), &mut frame);
    (verdict, frame.data().to_vec())
}

/// `packet` (built by the testkit) with the outer headers the wire contract asks for
/// and etherparse's builder does not write: DF set, header checksum recomputed, UDP
/// checksum 0.
fn contract_outer(mut packet: Vec<u8>) -> Vec<u8> {
    let ip = 14;
    let ihl = usize::from(packet[ip] & 0x0f) * 4;
    packet[ip + 6] |= 0x40;
    packet[ip + 10..ip + 12].fill(0);
    let sum = packet[ip..ip + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    packet[ip + 10..ip + 12].copy_from_slice(&checksum.to_be_bytes());
    packet[ip + ihl + 6..ip + ihl + 8].fill(0);
    packet
}

/// The Geneve option of `kind` in `d` as (first address, second address).
fn option_addresses(d: &Decoded, kind: u8) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    d.option(kind).map(|o| {
        let b = &o.body;
        (
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        )
    })
}

/// The worker core and the control core: the last online core works, the first controls.
fn cores() -> (u32, u32) {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("cpu list");
    let cores = sluice_dataplane::config::cpulist::parse(&online).expect("cpu list");
    let first = *cores.first().expect("a core");
    let last = *cores.last().expect("a core");
    assert!(first != last, "the gateway test needs two online cores");
    (first, last)
}

fn write_config(dir: &Path, interface: &str) -> (PathBuf, PathBuf) {
    write_config_with(dir, interface, "")
}

/// Like [`write_config`], with `extra` (whole TOML sections) appended.
fn write_config_with(dir: &Path, interface: &str, extra: &str) -> (PathBuf, PathBuf) {
    write_config_queues(dir, interface, "0", extra)
}

/// Like [`write_config_with`], serving `queues` (cpulist syntax) of `interface`, all by
/// the one worker core.
fn write_config_queues(
    dir: &Path,
    interface: &str,
    queues: &str,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let (control, worker) = cores();
    let tables = dir.join("tables.yaml");
    std::fs::write(
        &tables,
        serde_norway::to_string(&world()).expect("the world as YAML"),
    )
    .expect("writing the tables");
    let socket = dir.join("gateway.sock");
    let config = dir.join("gateway.toml");
    let mut file = File::create(&config).expect("config file");
    write!(
        file,
        "[cores]\ncontrol = \"{control}\"\nworkers = \"{worker}\"\n\n\
         [[interfaces]]\nname = \"{interface}\"\nip = \"{GW}\"\nmac = \"{}\"\nqueues = \"{queues}\"\n\n\
         [umem]\nframe_size = 4096\nframe_count = 4096\n\n\
         [rings]\nrx = 1024\ntx = 1024\nfill = 2048\ncompletion = 2048\n\n\
         [control]\ngrpc = \"unix://{}\"\nmetrics = \"{METRICS}\"\n\n\
         [tables]\nfile = \"{}\"\n\n{extra}",
        GW_MAC,
        socket.display(),
        tables.display()
    )
    .expect("writing the config");
    (config, socket)
}

/// `GET /metrics` from inside the gateway's namespace until `ready` holds for the text.
fn metrics_when(ns: &str, ready: impl Fn(&str) -> bool + Send + Sync, timeout: Duration) -> String {
    in_ns(ns, || {
        let deadline = Instant::now() + timeout;
        let addr = METRICS.parse().expect("address");
        loop {
            let last = metrics::fetch(addr, Duration::from_secs(2));
            match &last {
                Ok(text) if ready(text) => return text.clone(),
                _ if Instant::now() >= deadline => panic!("metrics never ready: {last:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// The value of the first sample of `name` (the test runs one worker).
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Starts the gateway with the standard configuration and waits until its worker runs.
fn start_forwarding(topo: &Segment, dir: &Path) -> (GatewayProcess, PathBuf) {
    let (config, socket) = write_config(dir, IF);
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir);
    wait_until_forwarding(topo, &mut gateway, &socket);
    (gateway, socket)
}

fn wait_until_forwarding(topo: &Segment, gateway: &mut GatewayProcess, socket: &Path) {
    gateway.wait_for(socket, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo.gateway_has_xdp() {
        assert!(
            Instant::now() < deadline,
            "no XDP program: {}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    metrics_when(&topo.gateway, |_| true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
}

/// Stops the gateway with SIGTERM and checks it exits 0 leaving nothing attached.
fn stop_cleanly(topo: &Segment, gateway: GatewayProcess) {
    stop_cleanly_with(topo, gateway, Signal::SIGTERM);
}

/// Stops the gateway with `signal` and checks it exits 0 leaving nothing attached.
fn stop_cleanly_with(topo: &Segment, mut gateway: GatewayProcess, signal: Signal) {
    gateway.signal(signal);
    let status = gateway.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", gateway.stderr());
    assert!(!topo.gateway_has_xdp(), "a program is still attached");
}

#[test]
fn the_binary_forwards_serves_metrics_and_shuts_down_cleanly() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, socket) = write_config(dir.path(), IF);
    let capture = capture(&topo.receiver);
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    gateway.wait_for(&socket, Duration::from_secs(20));
    // The socket appears before the workers bind; wait for the NIC program too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo.gateway_has_xdp() {
        assert!(
            Instant::now() < deadline,
            "no XDP program: {}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And for the worker: its counters are published once it runs.
    metrics_when(&topo.gateway, |_| true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));

    // A stale neighbour entry in the pod: the bouncer sets the inner destination MAC.
    let inner = inner_udp(
        POD_A1_MAC,
        sluice_api::MacAddr([0x02, 9, 9, 9, 9, 9]),
        POD_A1,
        POD_A1B,
        (1000, 2000),
        b"hello",
    );
    let packet = geneve_packet(&OuterSpec::from_host(H1, H1_MAC, VNI_A), &inner);
    topo.send_frames(std::slice::from_ref(&packet));
    let out = geneve_to_h2(&capture, Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "the bounced packet did not reach the receiver: {}",
            gateway.stderr()
        )
    });
    let d = decode(&out).expect("decodes");
    assert_eq!(d.outer_src, GW);
    assert_eq!(d.outer_dst_mac, H2_MAC.0);
    assert_eq!(d.vni, VNI_A);
    // Byte for byte against the wire contract, built without the pipeline: outer
    // headers from the gateway to A1B's host, the sender's flow entropy kept, a
    // HOST_HINT saying where A1 lives, and only the inner destination MAC changed.
    let mut want_inner = inner.clone();
    want_inner[0..6].copy_from_slice(&POD_A1B_MAC.0);
    let want = contract_outer(geneve_packet(
        &OuterSpec {
            src_mac: GW_MAC,
            dst_mac: H2_MAC,
            src_ip: GW,
            dst_ip: H2,
            src_port: 50_000,
            vni: VNI_A,
            options: vec![RawOption::host_hint(POD_A1, H1)],
        },
        &want_inner,
    ));
    assert_eq!(hex(&out), hex(&want), "the bounce, byte for byte");

    let text = metrics_when(
        &topo.gateway,
        |t| sample(t, "sluice_tx_packets_total").is_some_and(|n| n >= 1),
        Duration::from_secs(5),
    );
    assert!(
        sample(&text, "sluice_rx_packets_total").unwrap() >= 1,
        "{text}"
    );
    for label in metrics::drop_labels() {
        assert!(text.contains(&format!("reason=\"{label}\"")), "{label}");
    }
    promtool_check(&text);
    let stats = nsenter(&topo.gateway, &[BIN, "stats", "--metrics", METRICS]);
    let table = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    assert!(
        table.lines().any(|l| l.starts_with("rx_packets")),
        "{table}"
    );

    gateway.signal(Signal::SIGTERM);
    let status = gateway.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", gateway.stderr());
    assert!(!topo.gateway_has_xdp(), "a program is still attached");
    assert!(!socket.exists(), "the socket file is still there");

    // engine.zero_copy = "auto" (the default) on veth: one warning, then copy mode.
    let stderr = gateway.stderr();
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("zero-copy"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains(IF) && warnings[0].contains("95"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("worker bound") && l.contains("copy")),
        "{stderr}"
    );
}

#[test]
fn zero_copy_on_is_refused_on_veth_in_one_line() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, socket) = write_config_with(
        dir.path(),
        IF,
        "[engine]\nbatch_size = 64\nzero_copy = \"on\"\nneed_wakeup = true\n\
         busy_poll_budget = 64\nbusy_poll_usecs = 20\n",
    );
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    let status = gateway.wait(Duration::from_secs(20));
    let stderr = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("sluice-gateway: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "zero-copy unavailable on {IF} queue 0: Operation not supported; \
             set engine.zero_copy = \"auto\" or \"off\""
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!topo.gateway_has_xdp(), "a program is still attached");
    assert!(!socket.exists(), "the socket file is still there");
}

#[test]
fn the_binary_answers_arp_for_a_peer_with_a_host_hint() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    // The reply goes back to the asking host, the sender.
    let capture = capture(&topo.sender);
    let (gateway, _socket) = start_forwarding(&topo, dir.path());

    let packet = geneve_packet(
        &OuterSpec::from_host(H1, H1_MAC, VNI_A),
        &inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B),
    );
    let (verdict, want) = expected_output(&packet);
    assert_eq!(verdict, Verdict::Reply);
    topo.send_frames(std::slice::from_ref(&packet));
    let out = geneve_from_gateway_to(&capture, H1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no ARP reply reached the sender: {}", gateway.stderr()));
    let d = decode(&out).expect("decodes");
    assert_eq!(d.outer_dst_mac, H1_MAC.0);
    assert_eq!(d.outer_src_mac, GW_MAC.0);
    assert_eq!(d.vni, VNI_A);
    assert_eq!(option_addresses(&d, 0x01), Some((POD_A1B, H2)), "HOST_HINT");
    assert_eq!(&d.inner[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&d.inner[20..22], &[0, 2], "a reply");
    assert_eq!(&d.inner[22..28], &POD_A1B_MAC.0, "A1B's MAC");
    assert_eq!(&d.inner[28..32], &POD_A1B.octets());
    assert_eq!(out, want, "byte for byte");
    stop_cleanly(&topo, gateway);
}

#[test]
fn the_binary_routes_across_subnets() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let capture = capture(&topo.receiver);
    let (gateway, _socket) = start_forwarding(&topo, dir.path());

    // A2 (subnet 10.0.2.0/24, on H3) to A1B (subnet 10.0.1.0/24, on H2, the receiver).
    let inner = inner_udp(
        POD_A2_MAC,
        ROUTER_A2_MAC,
        POD_A2,
        POD_A1B,
        (1000, 2000),
        b"across",
    );
    let packet = geneve_packet(&OuterSpec::from_host(H3, H3_MAC, VNI_A), &inner);
    let (verdict, want) = expected_output(&packet);
    assert_eq!(verdict, Verdict::Forward);
    topo.send_frames(std::slice::from_ref(&packet));
    let out = geneve_to_h2(&capture, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the routed packet did not arrive: {}", gateway.stderr()));
    let d = decode(&out).expect("decodes");
    assert_eq!(d.outer_dst_mac, H2_MAC.0);
    assert_eq!(d.vni, VNI_A);
    assert_eq!(&d.inner[0..6], &POD_A1B_MAC.0, "the destination's MAC");
    assert_eq!(
        &d.inner[6..12],
        &ROUTER_A1_MAC.0,
        "the router's MAC as source"
    );
    assert_eq!(d.inner[14 + 8], 63, "inner TTL decremented once");
    assert_eq!(
        &d.inner[14 + 12..],
        &inner[14 + 12..],
        "addresses and payload"
    );
    check_inner_checksums(&d.inner).expect("inner checksums");
    assert_eq!(out, want, "byte for byte");
    // Ctrl-C in a terminal: the same clean stop as SIGTERM.
    stop_cleanly_with(&topo, gateway, Signal::SIGINT);
}

#[test]
fn the_binary_dnats_a_service_vip_to_a_backend_on_the_receiver() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let capture = capture(&topo.receiver);
    let (gateway, _socket) = start_forwarding(&topo, dir.path());

    // A flow Maglev sends to A1B, the backend on H2 (the receiver).
    let (packet, want) = (20_000..21_000u16)
        .map(|port| {
            geneve_packet(
                &OuterSpec::from_host(H1, H1_MAC, VNI_A),
                &inner_tcp(
                    POD_A1_MAC,
                    ROUTER_A1_MAC,
                    POD_A1,
                    VIP_TCP,
                    (port, VIP_TCP_PORT),
                    b"GET /",
                ),
            )
        })
        .find_map(|packet| {
            let (verdict, out) = expected_output(&packet);
            let to_h2 = decode(&out).is_ok_and(|d| d.outer_dst == H2);
            (verdict == Verdict::Forward && to_h2).then_some((packet, out))
        })
        .expect("some flow goes to A1B");
    topo.send_frames(std::slice::from_ref(&packet));
    let out = geneve_to_h2(&capture, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the DNAT packet did not arrive: {}", gateway.stderr()));
    let d = decode(&out).expect("decodes");
    assert_eq!(&d.inner[30..34], &POD_A1B.octets(), "inner destination");
    assert_eq!(u16::from_be_bytes([d.inner[36], d.inner[37]]), 8080);
    let orig = d.option(0x03).expect("SERVICE_ORIG");
    assert_eq!(orig.body, [10, 96, 0, 10, 0, 80, 6, 0]);
    check_inner_checksums(&d.inner).expect("inner checksums");
    assert_eq!(out, want, "byte for byte");
    stop_cleanly(&topo, gateway);
}

#[test]
fn non_geneve_traffic_reaches_the_gateways_kernel() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, _socket) = start_forwarding(&topo, dir.path());
    let gw = GW.to_string();
    let out = nsenter(
        &topo.sender,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &gw],
    );
    assert!(
        out.status.success(),
        "ping {gw}: {}{}; gateway: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gateway.stderr()
    );
    stop_cleanly(&topo, gateway);
}

#[test]
fn a_missing_interface_is_refused_in_one_line_leaving_nothing_behind() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, socket) = write_config(dir.path(), "nosuch0");
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    let status = gateway.wait(Duration::from_secs(20));
    let stderr = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("sluice-gateway: "), "{stderr}");
    assert!(last.contains("nosuch0"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!socket.exists(), "the socket file is still there");
}

#[test]
fn check_config_prints_the_plan_or_one_line_naming_the_field() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gateway.toml");
    let out = Command::new(BIN)
        .args(["--config", example, "--check-config"])
        .output()
        .expect("running sluice-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("worker           core 1  queues eth1:0"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(example).expect("example");
    std::fs::write(
        &broken,
        text.replace("frame_size = 4096", "frame_size = 1000"),
    )
    .expect("writing");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&broken)
        .arg("--check-config")
        .output()
        .expect("running sluice-gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sluice-gateway: ") && stderr.contains("umem.frame_size"),
        "{stderr}"
    );
}

/// `promtool check metrics` on `text` (scripts/setup.sh installs promtool with the
/// `prometheus` package; without it the test fails rather than check nothing).
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (scripts/setup.sh installs the prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every sample of `name` whose labels contain all of `labels`, summed.
fn sum_samples(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_binary_counts_dnat_hits_per_service_and_per_backend() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, _socket) = start_forwarding(&topo, dir.path());

    // 90 TCP flows to the VIP and 7 UDP ones; the pipeline says which backend each takes.
    let outer = OuterSpec::from_host(H1, H1_MAC, VNI_A);
    let mut packets = Vec::new();
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    let tcp = (21_000..21_090u16).map(|port| {
        inner_tcp(
            POD_A1_MAC,
            ROUTER_A1_MAC,
            POD_A1,
            VIP_TCP,
            (port, VIP_TCP_PORT),
            b"GET /",
        )
    });
    let udp = (5000..5007u16).map(|port| {
        inner_udp(
            POD_A1_MAC,
            ROUTER_A1_MAC,
            POD_A1,
            VIP_UDP,
            (port, VIP_UDP_PORT),
            b"q",
        )
    });
    for inner in tcp.chain(udp) {
        let packet = geneve_packet(&outer, &inner);
        let (verdict, out) = expected_output(&packet);
        assert_eq!(verdict, Verdict::Forward);
        let d = decode(&out).expect("decodes");
        let ip = std::net::Ipv4Addr::new(d.inner[30], d.inner[31], d.inner[32], d.inner[33]);
        let port = u16::from_be_bytes([d.inner[36], d.inner[37]]);
        *want.entry(format!("backend=\"{ip}:{port}\"")).or_default() += 1;
        packets.push(packet);
    }
    assert!(want.len() >= 3, "the flows spread over backends: {want:?}");
    topo.send_frames(&packets);

    let tcp_labels = "vip=\"10.96.0.10\",port=\"80\",protocol=\"tcp\"";
    let udp_labels = "vip=\"10.96.0.53\",port=\"53\",protocol=\"udp\"";
    let text = metrics_when(
        &topo.gateway,
        |t| {
            sum_samples(t, "sluice_service_packets_total", &[tcp_labels]) >= 90
                && sum_samples(t, "sluice_service_packets_total", &[udp_labels]) >= 7
        },
        Duration::from_secs(10),
    );
    assert_eq!(
        sum_samples(&text, "sluice_service_packets_total", &[tcp_labels]),
        90,
        "{text}"
    );
    assert_eq!(
        sum_samples(&text, "sluice_service_packets_total", &[udp_labels]),
        7,
        "{text}"
    );
    assert_eq!(sum_samples(&text, "sluice_service_packets_total", &[]), 97);
    for (backend, count) in &want {
        assert_eq!(
            sum_samples(&text, "sluice_backend_packets_total", &[backend]),
            *count,
            "{backend}: {text}"
        );
    }
    assert_eq!(sum_samples(&text, "sluice_backend_packets_total", &[]), 97);
    // Every service of the tables has its series, hit or not.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("sluice_service_packets_total{"))
            .count(),
        world()
            .upserts
            .iter()
            .filter(|o| matches!(o, sluice_api::Object::Service(_)))
            .count(),
        "{text}"
    );
    promtool_check(&text);
    let stats = nsenter(&topo.gateway, &[BIN, "stats", "--metrics", METRICS]);
    let table = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("vni 100 10.96.0.10:80/tcp"))
        .unwrap_or_else(|| panic!("no service row: {table}"));
    assert!(row.ends_with(" 90"), "{table}");
    stop_cleanly(&topo, gateway);
}

/// Replaces the gateway's interface with one of `queues` RX and TX queues (its peer on
/// the bridge too, so that the bridge spreads flows over them by hash).
fn give_gateway_queues(topo: &Segment, queues: u32) {
    let n = queues.to_string();
    ip(&["-n", &topo.gateway, "link", "del", IF]);
    ip(&[
        "-n",
        &topo.gateway,
        "link",
        "add",
        IF,
        "numtxqueues",
        &n,
        "numrxqueues",
        &n,
        "type",
        "veth",
        "peer",
        "name",
        "g",
        "netns",
        &topo.bridge,
        "numtxqueues",
        &n,
        "numrxqueues",
        &n,
    ]);
    ip(&[
        "-n",
        &topo.gateway,
        "link",
        "set",
        IF,
        "address",
        &GW_MAC.to_string(),
    ]);
    ip(&[
        "-n",
        &topo.gateway,
        "addr",
        "add",
        &format!("{GW}/24"),
        "dev",
        IF,
    ]);
    ip(&["-n", &topo.gateway, "link", "set", IF, "up"]);
    ip(&["-n", &topo.bridge, "link", "set", "g", "master", "br0"]);
    ip(&["-n", &topo.bridge, "link", "set", "g", "up"]);
}

#[test]
fn one_worker_core_serves_two_queues() {
    let topo = Segment::new("sl-gwb");
    give_gateway_queues(&topo, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let capture = capture(&topo.receiver);
    let (config, socket) = write_config_queues(dir.path(), IF, "0-1", "");
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    wait_until_forwarding(&topo, &mut gateway, &socket);

    // 200 bounces to A1B on H2, each with its own outer UDP source port: the bridge
    // hashes them over the gateway's two queues.
    let inner = inner_udp(
        POD_A1_MAC,
        POD_A1B_MAC,
        POD_A1,
        POD_A1B,
        (1000, 2000),
        b"hi",
    );
    let packets: Vec<Vec<u8>> = (0..200u16)
        .map(|i| {
            let outer = OuterSpec {
                src_port: 40_000 + i * 7,
                ..OuterSpec::from_host(H1, H1_MAC, VNI_A)
            };
            geneve_packet(&outer, &inner)
        })
        .collect();
    topo.send_frames(&packets);

    let text = metrics_when(
        &topo.gateway,
        |t| sum_samples(t, "sluice_tx_packets_total", &[]) >= 200,
        Duration::from_secs(10),
    );
    let (_, worker) = cores();
    let queue_rx = |queue: u32| {
        sum_samples(
            &text,
            "sluice_rx_packets_total",
            &[&format!(
                "worker=\"{worker}\",interface=\"{IF}\",queue=\"{queue}\""
            )],
        )
    };
    assert!(
        queue_rx(0) > 0 && queue_rx(1) > 0,
        "both queues receive: {text}"
    );
    assert_eq!(queue_rx(0) + queue_rx(1), 200, "{text}");
    assert_eq!(
        sum_samples(&text, "sluice_forwarded_total", &[]),
        200,
        "{text}"
    );
    assert_eq!(sum_samples(&text, "sluice_drops_total", &[]), 0, "{text}");
    promtool_check(&text);
    let arrived = receive_all(&capture, Duration::from_secs(2))
        .iter()
        .filter(|f| decode(f).is_ok_and(|d| d.outer_src == GW && d.outer_dst == H2))
        .count();
    assert_eq!(arrived, 200, "every bounce reached the receiver");
    let stderr = gateway.stderr();
    for queue in 0..2 {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("worker bound") && l.contains(&format!("queue={queue}"))),
            "{stderr}"
        );
    }
    stop_cleanly(&topo, gateway);
    assert!(!socket.exists(), "the socket file is still there");
}

/// The last line of a refused start: one `sluice-gateway: ` line, no backtrace.
fn one_error_line(stderr: &str) -> &str {
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("sluice-gateway: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    errors[0]
}

#[test]
fn an_unprivileged_start_is_refused_naming_the_privilege() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, socket) = write_config(dir.path(), IF);
    // Readable by nobody, so that the refusal is about privilege, not about the files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in [&config, &dir.path().join("tables.yaml")] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.gateway))
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
        ])
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("running sluice-gateway as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("missing privilege: CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF"),
        "{stderr}"
    );
    assert!(!topo.gateway_has_xdp(), "nothing attached");
    assert!(!socket.exists(), "no socket file");
}

#[test]
fn a_busy_queue_is_refused_after_retries_naming_interface_and_queue() {
    use sluice_dataplane::engine::{EngineSettings, Worker};
    use sluice_dataplane::tables::TableWriter;

    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    // The test holds an AF_XDP socket on the gateway's queue 0.
    let writer = TableWriter::new();
    let settings = EngineSettings {
        frame_count: 128,
        fill_ring: 64,
        completion_ring: 64,
        rx_ring: 64,
        tx_ring: 64,
        ..EngineSettings::default()
    };
    let holder = in_ns(&topo.gateway, || {
        Worker::new(IF, 0, &settings, writer.reader(), local()).expect("the test's socket")
    });
    let (config, socket) = write_config(dir.path(), IF);
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    let started = Instant::now();
    let status = gateway.wait(Duration::from_secs(30));
    let stderr = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains(&format!(
            "binding an AF_XDP socket to {IF} queue 0 (after 20 attempts)"
        )) && line.contains("the queue is busy"),
        "{stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it retried before giving up"
    );
    assert!(!topo.gateway_has_xdp(), "nothing attached");
    assert!(!socket.exists(), "no socket file");
    drop(holder);
}

#[test]
fn malformed_and_unroutable_frames_are_dropped_and_counted_by_reason() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = capture(&topo.receiver);
    let sender = capture(&topo.sender);
    let (gateway, _socket) = start_forwarding(&topo, dir.path());

    let outer = || OuterSpec::from_host(H1, H1_MAC, VNI_A);
    let good_inner = || inner_udp(POD_A1_MAC, POD_A1B_MAC, POD_A1, POD_A1B, (1000, 2000), b"x");
    let mut bad_checksum = geneve_packet(&outer(), &good_inner());
    bad_checksum[14 + 10] ^= 0xff;
    let mut bad_version = geneve_packet(&outer(), &good_inner());
    bad_version[14 + 20 + 8] |= 0x40;
    let critical = RawOption {
        class: OPTION_CLASS,
        kind: 0x80 | 0x7f,
        body: vec![],
    };
    let mut ipv6_inner = good_inner();
    ipv6_inner[12..14].copy_from_slice(&[0x86, 0xdd]);
    let arp_reply = {
        let mut arp = inner_arp_request(POD_A1_MAC, POD_A1, POD_A1B);
        arp[20..22].copy_from_slice(&[0, 2]);
        arp
    };
    let no_endpoint = inner_udp(
        POD_A1_MAC,
        POD_A1B_MAC,
        POD_A1,
        std::net::Ipv4Addr::new(10, 0, 1, 200),
        (1000, 2000),
        b"x",
    );
    // Each reason is sent a different number of times, so a mix-up cannot add up.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("outer_ipv4_checksum", bad_checksum),
        ("geneve_malformed", bad_version),
        (
            "unknown_critical_option",
            geneve_packet(&outer().with_option(critical), &good_inner()),
        ),
        (
            "unknown_vni",
            geneve_packet(&OuterSpec::from_host(H1, H1_MAC, 999), &good_inner()),
        ),
        ("inner_unsupported", geneve_packet(&outer(), &ipv6_inner)),
        ("arp_not_request", geneve_packet(&outer(), &arp_reply)),
        ("unknown_endpoint", geneve_packet(&outer(), &no_endpoint)),
    ];
    let mut frames = Vec::new();
    for (i, (_, packet)) in cases.iter().enumerate() {
        frames.extend(std::iter::repeat_n(packet.clone(), i + 1));
    }
    topo.send_frames(&frames);
    let total = frames.len() as u64;
    let text = metrics_when(
        &topo.gateway,
        |t| sample(t, "sluice_rx_packets_total").is_some_and(|n| n >= total),
        Duration::from_secs(10),
    );
    assert_eq!(
        sample(&text, "sluice_rx_packets_total"),
        Some(total),
        "{text}"
    );
    for (i, (label, _)) in cases.iter().enumerate() {
        assert_eq!(
            sum_samples(
                &text,
                "sluice_drops_total",
                &[&format!("reason=\"{label}\"")]
            ),
            i as u64 + 1,
            "{label}: {text}"
        );
    }
    assert_eq!(
        sum_samples(&text, "sluice_drops_total", &[]),
        total,
        "{text}"
    );
    assert_eq!(sample(&text, "sluice_forwarded_total"), Some(0), "{text}");
    assert_eq!(sample(&text, "sluice_replied_total"), Some(0), "{text}");
    assert_eq!(sample(&text, "sluice_tx_packets_total"), Some(0), "{text}");
    let from_gateway = |frame: &[u8]| decode(frame).is_ok_and(|d| d.outer_src == GW);
    assert!(
        receive_matching(&receiver, Duration::from_millis(300), from_gateway).is_none()
            && receive_matching(&sender, Duration::from_millis(100), from_gateway).is_none(),
        "a dropped frame left the gateway"
    );
    stop_cleanly(&topo, gateway);
}

#[test]
fn a_panicking_worker_stops_the_gateway_in_one_line_leaving_nothing_attached() {
    use sluice_dataplane::appliance::{FAULT_ENV, FAULT_WORKER_PANIC};

    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, socket) = write_config(dir.path(), IF);
    let mut gateway = GatewayProcess::start_with_env(
        &topo.gateway,
        &config,
        dir.path(),
        &[(FAULT_ENV, FAULT_WORKER_PANIC)],
    );
    let status = gateway.wait(Duration::from_secs(30));
    let stderr = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let (_, worker) = cores();
    assert!(
        last.starts_with(&format!(
            "sluice-gateway: worker on core {worker} ({IF} queue 0) panicked: injected fault"
        )),
        "{stderr}"
    );
    // The panic hook's own line (where it happened) comes before it, also on one line.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("sluice-gateway: internal error: thread")
                && l.contains("panicked at")),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!topo.gateway_has_xdp(), "a program is still attached");
    assert!(!socket.exists(), "the socket file is still there");
}

#[test]
fn a_queue_the_interface_lacks_is_refused_in_one_line_naming_it() {
    let topo = Segment::new("sl-gwb");
    let dir = tempfile::tempdir().expect("temp dir");
    // The segment's eth0 has one queue: queue 1 does not exist.
    let (config, socket) = write_config_queues(dir.path(), IF, "0-1", "");
    let mut gateway = GatewayProcess::start(&topo.gateway, &config, dir.path());
    let status = gateway.wait(Duration::from_secs(30));
    let stderr = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains(&format!("binding an AF_XDP socket to {IF} queue 1"))
            && line.contains(&format!("`ethtool -l {IF}`"))
            && line.contains("interfaces.queues"),
        "{stderr}"
    );
    assert!(!topo.gateway_has_xdp(), "nothing attached");
    assert!(!socket.exists(), "no socket file");
}

#[test]
fn check_config_loads_the_tables_file_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, _socket) = write_config(dir.path(), IF);
    let check = || {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .output()
            .expect("running sluice-gateway")
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = world().upserts.len();
    assert!(
        stdout.lines().any(|l| l.starts_with("tables.file")
            && l.ends_with(&format!("accepted ({objects} objects)"))),
        "{stdout}"
    );

    // An endpoint outside every subnet: refused by --check-config, as at start-up.
    let tables = dir.path().join("tables.yaml");
    let text = std::fs::read_to_string(&tables).expect("tables");
    std::fs::write(&tables, text.replacen("10.0.1.11", "10.0.200.11", 1)).expect("writing");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("tables.file") && line.contains("10.0.200.11") && line.contains("ip"),
        "{stderr}"
    );
}
