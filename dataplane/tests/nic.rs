//! The NIC program on the real kernel: each test builds a sender and a gateway network
//! namespace joined by a single-queue veth pair, attaches the program to the gateway's
//! end and sends traffic from the sender's.
//!
//! Needs root (namespaces, XDP). Namespaces are named `sl-nic-<pid>-<n>-{s,g}` and
//! deleted by a guard even when a test fails; the only processes started are `ip`,
//! `nsenter`, `ping`, `python3` (scapy) and this test binary as a helper, all waited for
//! or killed by the test that started them.
//!
//! Redirecting into a bound AF_XDP socket needs the engine's sockets and is tested with
//! the engine; here the XSKMAP stays empty and the `no_socket` counter shows which packets
//! the program would have redirected.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use sluice_dataplane::nic::{NicError, NicProgram, NicStats, XdpMode, PROGRAM_NAME};
use sluice_dataplane::wire::contract::GENEVE_UDP_PORT;

mod common;

use common::{assert_root, in_ns, ip, nsenter, wait_until};

const SENDER_IF: &str = "sl-s";
const GATEWAY_IF: &str = "sl-g";
const SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The gateway's address: Geneve sent here is the program's to redirect.
const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Another address of the gateway's host that is not a gateway address.
const OTHER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// A sender and a gateway namespace joined by a veth pair; deleted on drop.
struct Topology {
    sender: String,
    gateway: String,
}

impl Topology {
    fn new() -> Self {
        assert_root("NIC program");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "sl-nic-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The guard exists before anything is created, so a failure halfway cleans up.
        let topo = Topology {
            sender: format!("{base}-s"),
            gateway: format!("{base}-g"),
        };
        ip(&["netns", "add", &topo.sender]);
        ip(&["netns", "add", &topo.gateway]);
        // One queue each (PLATFORM.md pitfall 4), created straight inside the namespaces
        // so parallel tests never share a name in the root namespace.
        ip(&[
            "-n",
            &topo.sender,
            "link",
            "add",
            SENDER_IF,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            GATEWAY_IF,
            "netns",
            &topo.gateway,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        for (ns, ifname, addrs) in [
            (&topo.sender, SENDER_IF, vec![SENDER_ADDR]),
            (&topo.gateway, GATEWAY_IF, vec![GATEWAY_ADDR, OTHER_ADDR]),
        ] {
            for addr in addrs {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    ifname,
                ]);
            }
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
            // No IPv6 chatter (router solicitations, MLD) in the counters.
            topo.in_ns(ns, || {
                std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
                    .expect("disabling IPv6");
            });
        }
        topo
    }

    /// Runs `f` on a thread that has entered namespace `ns`; sockets it creates stay in
    /// that namespace wherever they are used afterwards.
    fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        in_ns(ns, f)
    }

    fn in_gateway<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.in_ns(&self.gateway, f)
    }

    fn in_sender<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.in_ns(&self.sender, f)
    }

    /// Attaches the program to the gateway's veth end, with GATEWAY_ADDR as its address.
    fn attach(&self, mode: XdpMode) -> NicProgram {
        self.in_gateway(|| NicProgram::attach(GATEWAY_IF, mode, &[GATEWAY_ADDR]))
            .unwrap_or_else(|e| panic!("attach: {e}"))
    }

    /// Runs a command in namespace `ns` through nsenter (which, unlike `ip netns exec`,
    /// leaves /sys and bpffs alone; PLATFORM.md pitfall 2).
    fn nsenter(&self, ns: &str, args: &[&str]) -> Output {
        nsenter(ns, args)
    }

    /// The `xdp` object `ip -j link show` prints for the gateway's veth end, or None when
    /// no program is attached.
    fn gateway_xdp(&self) -> Option<String> {
        let out = ip(&[
            "-n",
            &self.gateway,
            "-j",
            "-d",
            "link",
            "show",
            "dev",
            GATEWAY_IF,
        ]);
        out.find("\"xdp\":").map(|at| out[at..].to_string())
    }

    fn gateway_mac(&self) -> String {
        let out = ip(&["-n", &self.gateway, "-j", "link", "show", "dev", GATEWAY_IF]);
        json_string_field(&out, "address").expect("the veth has an address")
    }

    /// A UDP socket in the sender namespace.
    fn sender_socket(&self) -> UdpSocket {
        self.in_sender(|| UdpSocket::bind((SENDER_ADDR, 0)).expect("binding the sender"))
    }

    /// A UDP socket listening on `port` of every gateway-namespace address.
    fn gateway_listener(&self, port: u16) -> UdpSocket {
        self.in_gateway(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("binding");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            socket
        })
    }

    /// Pings the gateway from the sender: ARP and ICMP must get through.
    fn ping_gateway(&self, count: u32) {
        let out = self.nsenter(
            &self.sender,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &GATEWAY_ADDR.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "ping {GATEWAY_ADDR} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends the frames a Python/scapy expression list builds, from the sender's veth.
    /// The expressions may use `GW_MAC` (the gateway veth's MAC) and scapy's names.
    fn send_with_scapy(&self, frames: &str) {
        let script = format!(
            "import sys\n\
             from scapy.all import *\n\
             from scapy.contrib.geneve import GENEVE\n\
             GW_MAC = sys.argv[1]\n\
             frames = [{frames}]\n\
             sendp(frames, iface={SENDER_IF:?}, verbose=False)\n"
        );
        let mac = self.gateway_mac();
        let out = self.nsenter(&self.sender, &["python3", "-c", &script, &mac]);
        assert!(
            out.status.success(),
            "scapy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth in it, and with it the peer and any XDP
        // program. Errors are ignored: this may run after a failed, partial setup.
        for ns in [&self.sender, &self.gateway] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The first `"field":"value"` string in a JSON text (enough for `ip -j` output).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key)? + key.len();
    let len = json[start..].find('"')?;
    Some(json[start..start + len].to_string())
}

fn stats(program: &NicProgram) -> NicStats {
    program.stats().expect("reading the counters")
}

/// Waits until the counters reach at least `want` in each field and returns them.
fn wait_for_stats(program: &NicProgram, want: NicStats) -> NicStats {
    let mut last = NicStats::default();
    let reached = wait_until(Duration::from_secs(3), || {
        last = stats(program);
        last.redirected >= want.redirected
            && last.passed >= want.passed
            && last.no_socket >= want.no_socket
    });
    assert!(reached, "counters {last:?} never reached {want:?}");
    last
}

/// A Geneve-looking payload: version 0, no options, protocol 0x6558, VNI 7, then an
/// inner Ethernet header. The program looks only at the outer headers.
fn geneve_payload() -> Vec<u8> {
    let mut p = vec![0x00, 0x00, 0x65, 0x58, 0x00, 0x00, 0x07, 0x00];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00]);
    p
}

/// The next datagram on `socket`, failing the test if none arrives within its timeout.
fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 9000];
    let (len, _) = socket.recv_from(&mut buf).expect("nothing arrived");
    buf.truncate(len);
    buf
}

#[test]
fn attach_and_detach_leave_nothing_attached() {
    let topo = Topology::new();
    assert_eq!(topo.gateway_xdp(), None);

    // (requested, attached, `mode` in `ip -j -d link show`: 1 driver, 2 generic)
    for (requested, attached, ip_mode) in [
        (XdpMode::Native, XdpMode::Native, "\"mode\":1"),
        (XdpMode::Generic, XdpMode::Generic, "\"mode\":2"),
        (XdpMode::Auto, XdpMode::Native, "\"mode\":1"),
    ] {
        let program = topo.attach(requested);
        assert_eq!(program.attached_mode(), attached, "requested {requested}");
        assert_eq!(program.fallback_reason(), None, "veth takes native XDP");
        let shown = topo.gateway_xdp().expect("ip shows the program");
        assert!(shown.contains(ip_mode), "{requested}: {shown}");
        assert!(shown.contains(PROGRAM_NAME), "{shown}");
        assert!(
            shown.contains(&format!("\"id\":{}", program.program_id())),
            "{shown}"
        );
        program.detach().expect("detach");
        assert_eq!(topo.gateway_xdp(), None, "{requested}: left attached");
    }

    // Dropping detaches too, even from a thread in another namespace than the attach.
    let program = topo.attach(XdpMode::Auto);
    assert!(topo.gateway_xdp().is_some());
    drop(program);
    assert_eq!(topo.gateway_xdp(), None, "drop left the program attached");
}

/// Native XDP on veth refuses a peer MTU above about a page for a program without
/// multi-buffer support: `Native` fails with a reason, `Auto` falls back to generic.
#[test]
fn auto_falls_back_to_generic_when_native_is_refused() {
    let topo = Topology::new();
    ip(&["-n", &topo.sender, "link", "set", SENDER_IF, "mtu", "9000"]);
    ip(&[
        "-n",
        &topo.gateway,
        "link",
        "set",
        GATEWAY_IF,
        "mtu",
        "9000",
    ]);

    let err = topo
        .in_gateway(|| NicProgram::attach(GATEWAY_IF, XdpMode::Native, &[GATEWAY_ADDR]))
        .expect_err("native XDP with a 9000-byte MTU on veth");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("attaching XDP to {GATEWAY_IF} in native mode: ")),
        "{text}"
    );
    assert_eq!(topo.gateway_xdp(), None);

    let program = topo.attach(XdpMode::Auto);
    assert_eq!(program.attached_mode(), XdpMode::Generic);
    let reason = program.fallback_reason().expect("a reason");
    // The kernel's explanation ("veth: Peer MTU is too large to set XDP") is quoted.
    assert!(
        reason.contains("native mode") && reason.contains("MTU"),
        "{reason}"
    );
    eprintln!("fallback reason: {reason}");
    let shown = topo.gateway_xdp().expect("attached");
    assert!(shown.contains("\"mode\":2"), "{shown}");
    drop(program);
    assert_eq!(topo.gateway_xdp(), None);
}

#[test]
fn refusals_name_the_interface_and_leave_nothing_attached() {
    let topo = Topology::new();
    let missing = topo
        .in_gateway(|| NicProgram::attach("sl-nope0", XdpMode::Auto, &[GATEWAY_ADDR]))
        .expect_err("no such interface");
    assert!(
        matches!(missing, NicError::NoSuchInterface { .. }),
        "{missing:?}"
    );
    assert_eq!(
        missing.to_string(),
        "interface sl-nope0 does not exist (in this network namespace)"
    );

    let no_addrs = topo
        .in_gateway(|| NicProgram::attach(GATEWAY_IF, XdpMode::Auto, &[]))
        .expect_err("no gateway address");
    assert!(no_addrs.to_string().contains(GATEWAY_IF), "{no_addrs}");

    let many: Vec<Ipv4Addr> = (0..17).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect();
    let too_many = topo
        .in_gateway(|| NicProgram::attach(GATEWAY_IF, XdpMode::Auto, &many))
        .expect_err("too many addresses");
    assert!(
        matches!(too_many, NicError::TooManyGatewayAddrs { count: 17, .. }),
        "{too_many:?}"
    );
    assert_eq!(topo.gateway_xdp(), None);

    // Sockets: a queue beyond the map, and a descriptor that is not an AF_XDP socket.
    let mut program = topo.attach(XdpMode::Native);
    let err = program.set_socket(256, 0).expect_err("queue 256");
    assert!(
        matches!(err, NicError::QueueOutOfRange { queue: 256, .. }),
        "{err:?}"
    );
    let udp = topo.sender_socket();
    let err = program
        .set_socket(0, udp.as_raw_fd())
        .expect_err("a UDP socket is not an XSK");
    let text = err.to_string();
    assert!(
        text.contains(GATEWAY_IF) && text.contains("queue 0") && text.contains("AF_XDP"),
        "{text}"
    );
    program.clear_socket(0).expect("clearing an empty slot");
    drop(program);
    assert_eq!(topo.gateway_xdp(), None);
}

#[test]
fn geneve_for_the_gateway_without_a_socket_is_counted_and_arp_and_ping_work() {
    let topo = Topology::new();
    let program = topo.attach(XdpMode::Native);
    let start = stats(&program);

    // ARP and ICMP reach the gateway's kernel through the program.
    topo.ping_gateway(3);
    let neigh = ip(&[
        "-n",
        &topo.sender,
        "-j",
        "neigh",
        "show",
        &GATEWAY_ADDR.to_string(),
    ]);
    assert_eq!(
        json_string_field(&neigh, "lladdr").as_deref(),
        Some(topo.gateway_mac().as_str()),
        "ARP did not resolve the gateway: {neigh}"
    );
    let after_ping = wait_for_stats(
        &program,
        NicStats {
            passed: start.passed + 4, // an ARP request (or reply) and three echo requests
            ..start
        },
    );
    assert_eq!(after_ping.redirected, 0);
    assert_eq!(after_ping.no_socket, 0);

    // Geneve to the gateway address with an empty XSKMAP: counted as no_socket and
    // handed to the kernel (the helper's fallback action is XDP_PASS), so a UDP socket on
    // the Geneve port sees it.
    let geneve_rx = topo.gateway_listener(GENEVE_UDP_PORT);
    let sender = topo.sender_socket();
    let payload = geneve_payload();
    for _ in 0..5 {
        sender
            .send_to(&payload, (GATEWAY_ADDR, GENEVE_UDP_PORT))
            .expect("send");
        let got = receive(&geneve_rx);
        assert_eq!(got, payload);
    }
    let after = wait_for_stats(
        &program,
        NicStats {
            no_socket: 5,
            ..after_ping
        },
    );
    assert_eq!(after.no_socket, 5, "{after:?}");
    assert_eq!(after.redirected, 0, "{after:?}");
    program.detach().expect("detach");
    assert_eq!(topo.gateway_xdp(), None);
}

#[test]
fn everything_but_geneve_for_the_gateway_passes() {
    let topo = Topology::new();
    let program = topo.attach(XdpMode::Native);
    topo.ping_gateway(1);
    let start = wait_for_stats(
        &program,
        NicStats {
            passed: 2,
            ..Default::default()
        },
    );
    let sender = topo.sender_socket();
    let geneve_rx = topo.gateway_listener(GENEVE_UDP_PORT);
    let other_rx = topo.gateway_listener(7000);
    let mut passed = 0;

    // Other UDP to the gateway address.
    for _ in 0..3 {
        sender
            .send_to(b"not geneve", (GATEWAY_ADDR, 7000))
            .expect("send");
        assert_eq!(receive(&other_rx), b"not geneve");
        passed += 1;
    }
    // Geneve to an address of the host that is not a gateway address.
    let payload = geneve_payload();
    for _ in 0..4 {
        sender
            .send_to(&payload, (OTHER_ADDR, GENEVE_UDP_PORT))
            .expect("send");
        assert_eq!(receive(&geneve_rx), payload);
        passed += 1;
    }
    // Geneve to the gateway address, fragmented: only the kernel reassembles.
    let big = vec![0x5a; 3000];
    sender
        .send_to(&big, (GATEWAY_ADDR, GENEVE_UDP_PORT))
        .expect("send");
    assert_eq!(receive(&geneve_rx), big, "fragments were not reassembled");
    // 3000 bytes over a 1500-byte MTU make three fragments.
    passed += 3;

    // TCP (SSH, the gateway's gRPC) to the gateway address.
    let listener = topo.in_gateway(|| TcpListener::bind((GATEWAY_ADDR, 2222)).expect("listen"));
    let mut client = topo
        .in_sender(|| {
            TcpStream::connect_timeout(&(GATEWAY_ADDR, 2222).into(), Duration::from_secs(2))
        })
        .expect("TCP connect through the program");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"SSH-2.0-test\r\n").expect("write");
    let mut line = [0u8; 14];
    server.read_exact(&mut line).expect("read");
    assert_eq!(&line, b"SSH-2.0-test\r\n");
    // SYN, ACK and data: at least two segments reach the gateway.
    passed += 2;

    let end = wait_for_stats(
        &program,
        NicStats {
            passed: start.passed + passed,
            ..start
        },
    );
    assert_eq!(end.no_socket, 0, "{end:?}");
    assert_eq!(end.redirected, 0, "{end:?}");
}

/// Frames the kernel's own stack does not send: IPv4 options (the program must honour
/// IHL), truncated headers, VLAN tags and IPv6, built with scapy.
#[test]
fn the_program_honours_ihl_and_passes_odd_frames() {
    let topo = Topology::new();
    let program = topo.attach(XdpMode::Native);
    let gw = GATEWAY_ADDR;
    let src = SENDER_ADDR;
    let port = GENEVE_UDP_PORT;
    let ip = format!("IP(src='{src}', dst='{gw}'");
    let geneve = format!("UDP(sport=49152, dport={port})/GENEVE(vni=7, proto=0x6558)/Ether()");
    // Two frames for the gateway (IHL 6 and 15), then six that must pass.
    topo.send_with_scapy(&format!(
        "Ether(dst=GW_MAC)/{ip}, options=[IPOption(b'\\x01' * 4)])/{geneve}, \
         Ether(dst=GW_MAC)/{ip}, options=[IPOption(b'\\x01' * 40)])/{geneve}, \
         Ether(dst=GW_MAC, type=0x0800)/Raw(b'\\x45\\x00\\x00'), \
         Ether(raw(Ether(dst=GW_MAC)/{ip}, options=[IPOption(b'\\x01' * 40)])/{geneve})[:14 + 60 + 4]), \
         Ether(dst=GW_MAC)/Dot1Q(vlan=5)/{ip})/{geneve}, \
         Ether(dst=GW_MAC)/IPv6(src='fd00::1', dst='fd00::2')/{geneve}, \
         Ether(dst=GW_MAC)/{ip}, proto=17, flags='MF')/{geneve}, \
         Ether(dst=GW_MAC)/{ip}, ihl=4)/{geneve}"
    ));
    let end = wait_for_stats(
        &program,
        NicStats {
            passed: 6,
            no_socket: 2,
            redirected: 0,
        },
    );
    assert_eq!(end.no_socket, 2, "{end:?}");
    assert_eq!(end.redirected, 0, "{end:?}");
}

/// The program's job end to end: once an AF_XDP socket bound to the gateway's queue 0 is
/// in the XSKMAP, Geneve for the gateway arrives on that socket, byte for byte, and no
/// longer in the kernel; once the slot is cleared, it goes to the kernel again.
#[test]
fn geneve_for_the_gateway_reaches_the_af_xdp_socket_of_its_queue_native() {
    redirects_into_af_xdp(XdpMode::Native);
}

#[test]
fn geneve_for_the_gateway_reaches_the_af_xdp_socket_of_its_queue_generic() {
    redirects_into_af_xdp(XdpMode::Generic);
}

#[allow(unsafe_code)] // xsk-rs's ring and UMEM accessors are unsafe; each use is justified
fn redirects_into_af_xdp(mode: XdpMode) {
    use xsk_rs::config::{LibxdpFlags, SocketConfig, UmemConfig};
    use xsk_rs::{Socket, Umem};

    let topo = Topology::new();
    let mut program = topo.attach(mode);
    topo.ping_gateway(1);
    let sender = topo.sender_socket();
    let geneve_rx = topo.gateway_listener(GENEVE_UDP_PORT);
    geneve_rx
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let payload = geneve_payload();
    let before = stats(&program);

    // The socket lives on a thread in the gateway namespace, where its interface name
    // resolves; the program and the sender's socket work from anywhere.
    topo.in_gateway(|| {
        let (umem, mut descs) = Umem::new(
            UmemConfig::default(),
            64.try_into().expect("non-zero"),
            false,
        )
        .expect("UMEM");
        // Our program is attached already; libxdp must not load its own (pitfall 9).
        let config = SocketConfig::builder()
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .build();
        // SAFETY: the UMEM is used by this one socket only, and it is declared before the
        // socket's queues, so it is dropped after them.
        let (_tx, mut rx, fill_and_comp) =
            unsafe { Socket::new(config, &umem, &GATEWAY_IF.parse().expect("name"), 0) }
                .expect("binding an AF_XDP socket to queue 0");
        let (mut fill, _comp) = fill_and_comp.expect("the first socket gets the fill ring");
        // SAFETY: every descriptor comes from this UMEM and none is in use elsewhere.
        let filled = unsafe { fill.produce(&descs) };
        assert_eq!(filled, descs.len());
        program
            .set_socket(0, rx.fd().as_raw_fd())
            .unwrap_or_else(|e| panic!("{e}"));

        const SENT: usize = 5;
        for _ in 0..SENT {
            sender
                .send_to(&payload, (GATEWAY_ADDR, GENEVE_UDP_PORT))
                .expect("send");
        }
        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while frames.len() < SENT && Instant::now() < deadline {
            // SAFETY: the received descriptors are written into `descs`, whose frames
            // the kernel no longer owns once consumed; we only read them.
            let n = unsafe { rx.poll_and_consume(&mut descs, 100) }.expect("poll");
            for desc in &descs[..n] {
                // SAFETY: `desc` was just consumed from this socket's RX ring, so its
                // frame belongs to us until it goes back to the fill ring.
                frames.push(unsafe { umem.data(desc) }.contents().to_vec());
            }
        }
        assert_eq!(frames.len(), SENT, "frames on the AF_XDP socket ({mode})");
        for frame in &frames {
            // Ethernet, IPv4 without options (the kernel sent it), UDP, then the payload.
            assert_eq!(&frame[12..14], &[0x08, 0x00]);
            assert_eq!(&frame[14 + 16..14 + 20], &GATEWAY_ADDR.octets());
            assert_eq!(&frame[34 + 2..34 + 4], &GENEVE_UDP_PORT.to_be_bytes());
            assert_eq!(&frame[42..], &payload[..], "payload");
        }
        let xsk = rx.fd().xdp_statistics().expect("XDP_STATISTICS");
        assert_eq!(xsk.rx_dropped(), 0, "{xsk:?}");
        let mut buf = [0u8; 64];
        assert!(
            geneve_rx.recv_from(&mut buf).is_err(),
            "a redirected packet also reached the kernel"
        );
        let redirected = stats(&program);
        assert_eq!(redirected.redirected, before.redirected + SENT as u64);
        assert_eq!(redirected.no_socket, before.no_socket);

        // Without the socket, the kernel gets Geneve again.
        program.clear_socket(0).expect("clear");
        sender
            .send_to(&payload, (GATEWAY_ADDR, GENEVE_UDP_PORT))
            .expect("send");
        assert_eq!(receive(&geneve_rx), payload);
        // SAFETY: as above; nothing should arrive.
        let late = unsafe { rx.poll_and_consume(&mut descs, 100) }.expect("poll");
        assert_eq!(
            late, 0,
            "a packet reached the socket after its slot was cleared"
        );
        let cleared = stats(&program);
        assert_eq!(cleared.redirected, redirected.redirected);
        assert_eq!(cleared.no_socket, redirected.no_socket + 1);
    });
    program.detach().expect("detach");
    assert_eq!(topo.gateway_xdp(), None);
}

/// A gateway that dies leaves its program attached (netlink attachments outlive their
/// process). The next start must replace it, but must not take the interface from a
/// gateway that is still running.
#[test]
fn a_program_left_by_a_dead_gateway_is_replaced_but_a_live_one_is_not() {
    let topo = Topology::new();

    // A helper process attaches and waits; while it lives its program is not stale.
    let mut live = Helper::start(&topo);
    let live_id = live.read_attached_line();
    let err = topo
        .in_gateway(|| NicProgram::attach(GATEWAY_IF, XdpMode::Auto, &[GATEWAY_ADDR]))
        .expect_err("the interface belongs to a live gateway");
    assert!(
        matches!(err, NicError::InUse { prog_id, pid, .. } if prog_id == live_id && pid == live.0.id()),
        "{err:?}"
    );
    // Kill it (SIGKILL: no destructor runs), as a crash would.
    live.0.kill().expect("kill the helper");
    live.0.wait().expect("reap the helper");
    let shown = topo
        .gateway_xdp()
        .expect("the dead helper's program stays attached");
    assert!(shown.contains(&format!("\"id\":{live_id}")), "{shown}");

    let program = topo.attach(XdpMode::Auto);
    assert_eq!(program.replaced_stale_program(), Some(live_id));
    drop(program);
    assert_eq!(topo.gateway_xdp(), None);
}

/// This test binary started again as a helper process that attaches the program in the
/// gateway namespace, prints `attached <prog id>` and waits until killed or until its
/// stdin closes (so it never outlives the test). Killed on drop.
struct Helper(std::process::Child);

impl Helper {
    fn start(topo: &Topology) -> Helper {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "helper_attach_and_wait",
                "--ignored",
                "--nocapture",
            ])
            .env("SLUICE_NIC_HELPER", &topo.gateway)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the helper");
        Helper(child)
    }

    fn read_attached_line(&mut self) -> u32 {
        let mut stdout = self.0.stdout.take().expect("piped");
        let mut text = String::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("reading the helper") == 1 {
            text.push(char::from(byte[0]));
            if let Some(line) = text.strip_suffix('\n') {
                if let Some(id) = line
                    .lines()
                    .last()
                    .and_then(|l| l.strip_prefix("attached "))
                {
                    return id.parse().expect("program id");
                }
            }
        }
        panic!("the helper exited without attaching: {text}");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test: the helper process of
/// `a_program_left_by_a_dead_gateway_is_replaced_but_a_live_one_is_not`.
#[test]
#[ignore = "helper process, started by another test"]
fn helper_attach_and_wait() {
    let Ok(ns) = std::env::var("SLUICE_NIC_HELPER") else {
        return;
    };
    let handle = File::open(format!("/run/netns/{ns}")).expect("netns");
    setns(&handle, CloneFlags::CLONE_NEWNET).expect("setns");
    let program = NicProgram::attach(GATEWAY_IF, XdpMode::Auto, &[GATEWAY_ADDR])
        .unwrap_or_else(|e| panic!("helper attach: {e}"));
    println!("attached {}", program.program_id());
    std::io::stdout().flush().expect("flush");
    // Dies without detaching, like a crashed gateway: killed by the test, or on its own
    // when the test's end of stdin closes.
    std::mem::forget(program);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}
