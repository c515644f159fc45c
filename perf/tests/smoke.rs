//! A short smoke test of the benchmark's generator and sink (no timing assertions): the
//! AF_XDP generator sends over a veth pair into the XDP sink, which must count what was
//! sent, Geneve or plain, and read the generator's stamps. Needs root; builds its own
//! uniquely named namespaces and deletes them even when it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .args(args);
    cmd
}

fn last_json(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("a JSON line")
}

fn assert_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "the generator smoke test needs root (namespaces, XDP)"
    );
}

fn run(kind: &str, extra: &[&str]) -> (Value, Value) {
    assert_root();
    let base = format!("sl-pf-smoke-{}-{kind}", std::process::id());
    let (a, b) = (format!("{base}-a"), format!("{base}-b"));
    let _guard = Namespaces(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    // No IPv6: its router and listener solicitations would reach the sink too.
    for ns in [&a, &b] {
        let status = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .status()
            .expect("running sysctl");
        assert!(status.success(), "disabling IPv6 in {ns}");
    }
    ip(&[
        "-n",
        &a,
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
        "eth0",
        "netns",
        &b,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
    ]);
    ip(&[
        "-n",
        &a,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:11",
        "up",
    ]);
    ip(&[
        "-n",
        &b,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:01",
        "up",
    ]);
    let gen = env!("CARGO_BIN_EXE_sluice-gen");
    let sink: Child = in_ns(&b, gen, &["sink", "--seconds", "3", "--stamps"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the sink");
    std::thread::sleep(Duration::from_millis(700));
    let mut args = vec![
        "xsk",
        "--kind",
        kind,
        "--flows",
        "100",
        "--seconds",
        "1",
        "--core",
        "0",
    ];
    args.extend_from_slice(extra);
    let sent = in_ns(&a, gen, &args)
        .output()
        .expect("running the generator");
    assert!(
        sent.status.success(),
        "generator: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let delivered = sink.wait_with_output().expect("the sink");
    assert!(delivered.status.success(), "sink failed");
    (last_json(&sent.stdout), last_json(&delivered.stdout))
}

#[test]
fn plain_frames_from_the_generator_reach_the_sink() {
    let (sent, got) = run("plain", &["--rate", "20000", "--stamps"]);
    let sent = sent["sent"].as_u64().expect("sent");
    assert!(sent > 1000, "the generator sent {sent}");
    let frames = got["frames"].as_u64().expect("frames");
    // A veth drops frames only when its receiver falls far behind: nearly all arrive,
    // and nothing arrives that was not sent.
    assert!(
        frames * 10 >= sent * 9 && frames <= sent,
        "sent {sent}, delivered {frames}"
    );
    assert_eq!(
        got["stamped"].as_u64(),
        Some(frames),
        "every frame carries a stamp"
    );
    assert_eq!(
        got["future_stamps"].as_u64(),
        Some(0),
        "one clock on both ends"
    );
    assert!(got["delay_us"]["p99"].is_u64(), "a delay percentile: {got}");
    assert_eq!(got["bytes"].as_u64(), Some(frames * 60), "60-byte frames");
}

#[test]
fn geneve_frames_from_the_generator_reach_the_sink() {
    let (sent, got) = run("geneve", &[]);
    let sent = sent["sent"].as_u64().expect("sent");
    assert!(sent > 1000, "the generator sent {sent}");
    let frames = got["frames"].as_u64().expect("frames");
    // At full speed a veth may drop a few frames; most must arrive.
    assert!(
        frames * 10 >= sent * 9 && frames <= sent,
        "sent {sent}, delivered {frames}"
    );
    assert_eq!(
        got["bytes"].as_u64(),
        Some(frames * 110),
        "110-byte Geneve frames"
    );
}
