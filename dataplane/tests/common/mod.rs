//! Network-namespace scaffolding shared by the kernel tests (`nic.rs`, `engine.rs`,
//! `gateway_binary.rs`): running code and commands inside a namespace, `ip`, an L2 segment
//! of sender, gateway and receiver around a bridge, and an AF_PACKET capture.
//!
//! Everything a test creates is named `<prefix>-<pid>-<n>-*` and deleted by a guard,
//! even when the test fails. Addresses come from 198.18.0.0/15 only.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use nix::sys::time::{TimeVal, TimeValLike};
use sluice_dataplane::testkit::{GW, GW_MAC, H1, H1_MAC, H2, H2_MAC};

/// Fails the test with a clear message unless it runs as root.
pub fn assert_root(what: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(
        euid, "0",
        "the {what} tests need root (network namespaces, XDP); run them as root"
    );
}

/// Runs `ip` and returns its stdout, failing the test on error.
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

/// Moves the calling thread into namespace `ns` (for threads that live there).
pub fn enter(ns: &str) {
    let handle = File::open(format!("/run/netns/{ns}")).expect("opening the netns");
    setns(&handle, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it creates stay in that
/// namespace wherever they are used afterwards.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs a command in namespace `ns` through nsenter (which, unlike `ip netns exec`,
/// leaves /sys and bpffs alone; PLATFORM.md pitfall 2).
pub fn nsenter(ns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running nsenter")
}

/// A fresh, unique name base: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `f` until it returns true or `timeout` passes.
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

/// Every namespace's interface onto the segment.
pub const IF: &str = "eth0";

/// One L2 segment: a bridge namespace and three hosts on it, the sender (H1), the gateway
/// (GW) and the receiver (H2), each with one `eth0` of one queue. Deleted on drop.
pub struct Segment {
    pub bridge: String,
    pub sender: String,
    pub gateway: String,
    pub receiver: String,
}

impl Segment {
    pub fn new(prefix: &str) -> Self {
        assert_root(prefix);
        let base = unique(prefix);
        // The guard exists before anything is created, so a failure halfway cleans up.
        let segment = Segment {
            bridge: format!("{base}-br"),
            sender: format!("{base}-s"),
            gateway: format!("{base}-g"),
            receiver: format!("{base}-r"),
        };
        for ns in segment.all() {
            ip(&["netns", "add", ns]);
            in_ns(ns, || {
                // No IPv6 chatter on the segment.
                std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
                    .expect("disabling IPv6");
            });
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let br = &segment.bridge;
        // A plain L2 segment: br_netfilter (loaded on these machines) checks IPv4 headers
        // on bridges and drops the malformed frames the tests send. The per-netns sysctls
        // and the bridge's own options are OR-ed: both must be off.
        in_ns(br, || {
            for table in ["iptables", "ip6tables", "arptables"] {
                let path = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
                if Path::new(&path).exists() {
                    std::fs::write(&path, "0").expect("turning br_netfilter off");
                }
            }
        });
        ip(&[
            "-n",
            br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ]);
        ip(&["-n", br, "link", "set", "br0", "up"]);
        for (ns, port, mac, addr) in [
            (&segment.sender, "s", H1_MAC, H1),
            (&segment.gateway, "g", GW_MAC, GW),
            (&segment.receiver, "r", H2_MAC, H2),
        ] {
            // One queue each (PLATFORM.md pitfall 4).
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                IF,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                br,
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
            ]);
            ip(&["-n", ns, "link", "set", IF, "address", &mac.to_string()]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", IF]);
            ip(&["-n", ns, "link", "set", IF, "up"]);
            ip(&["-n", br, "link", "set", port, "master", "br0"]);
            ip(&["-n", br, "link", "set", port, "up"]);
        }
        segment
    }

    pub fn all(&self) -> [&String; 4] {
        [&self.bridge, &self.sender, &self.gateway, &self.receiver]
    }

    /// Sends raw Ethernet frames from the sender's interface (scapy's `sendp`).
    pub fn send_frames(&self, frames: &[Vec<u8>]) {
        let hex: Vec<String> = frames.iter().map(|f| hex(f)).collect();
        let script = format!(
            "import sys\n\
             from scapy.all import Raw, sendp\n\
             sendp([Raw(bytes.fromhex(h)) for h in sys.argv[1:]], iface={IF:?}, verbose=False)\n"
        );
        let mut args = vec!["python3", "-c", &script];
        args.extend(hex.iter().map(String::as_str));
        let out = nsenter(&self.sender, &args);
        assert!(
            out.status.success(),
            "scapy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether an XDP program is attached to the gateway's interface.
    pub fn gateway_has_xdp(&self) -> bool {
        ip(&["-n", &self.gateway, "-j", "-d", "link", "show", "dev", IF]).contains("\"xdp\"")
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths, their peers and any XDP program. Errors
        // are ignored: this may run after a failed, partial setup.
        for ns in self.all() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An AF_PACKET socket seeing every frame of namespace `ns`, with a 100 ms receive
/// timeout and room for a burst (the default buffer holds about 200 small frames).
pub fn capture(ns: &str) -> OwnedFd {
    in_ns(ns, || {
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::EthAll,
        )
        .expect("AF_PACKET socket");
        socket::setsockopt(
            &fd,
            socket::sockopt::ReceiveTimeout,
            &TimeVal::milliseconds(100),
        )
        .expect("SO_RCVTIMEO");
        socket::setsockopt(&fd, socket::sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
        fd
    })
}

/// The first frame captured on `fd` within `timeout` that `wanted` accepts.
pub fn receive_matching(
    fd: &OwnedFd,
    timeout: Duration,
    wanted: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok(n) = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            if wanted(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Every frame captured on `fd` within `window`.
pub fn receive_all(fd: &OwnedFd, window: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + window;
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok(n) = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            frames.push(buf[..n].to_vec());
        }
    }
    frames
}
