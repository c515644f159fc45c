//! The node agent with the real `sluice-controller` as its allocator, when the controller
//! goes away: an agent restarted while the controller is down starts anyway, serves its
//! pods and owes (on disk) the release of a pod that vanished meanwhile, which it pays
//! once the controller is back; a controller that accepts connections but never answers
//! costs each command a bounded wait and code 11, and STATUS code 50.
//!
//! Needs root and the `sluice-controller` binary of the same profile (`cargo build -p
//! sluice-control --bin sluice-controller`). Namespaces `sl-ctl-<pid>-<n>-*`, removed by
//! guards.

mod common;

use std::time::{Duration, Instant};

use common::controller::{apply, Controller, OBJECTS};
use common::*;

/// The network config for the controller's subnet blue/blue-a.
fn conf(w: &Worker, version: &str) -> String {
    w.netconf(version, ",\"network\":\"blue/blue-a\"")
}

fn address(out: &CniOutcome) -> String {
    out.json()["ips"][0]["address"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_controller_is_down_serves_pods_and_owes_the_release() {
    assert_root("controller outage");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut controller = Controller::start(dir.path());
    apply(&controller, &OBJECTS).await;
    let base = unique("sl-ctl");
    let underlay = Underlay::new(&base);
    let mut w = Worker::with_controller(&base, "w1", &underlay, W1.0, W1.1, &controller.url());
    w.start(&[]);
    let (p1, p2, p3) = (
        Netns::new(format!("{base}-p1")),
        Netns::new(format!("{base}-p2")),
        Netns::new(format!("{base}-p3")),
    );
    let r1 = w.cni("ADD", "c1", &p1.path(), &conf(&w, "1.0.0")).ok();
    assert_eq!(address(&r1), "10.0.1.2/29");
    let r2 = w.cni("ADD", "c2", &p2.path(), &conf(&w, "1.0.0")).ok();
    assert_eq!(address(&r2), "10.0.1.3/29");

    // The agent stops, the controller dies, pod 2 goes away meanwhile.
    w.stop();
    controller.kill();
    drop(p2);
    assert!(wait_until(Duration::from_secs(5), || w.pod_veths().len() == 1));
    w.start(&[]);

    // The agent serves its remaining pod and owes pod 2's release.
    assert_eq!(
        (w.records(), w.map_entries("pods"), w.owed_releases()),
        (1, 1, 1)
    );
    let check = w.netconf(
        "1.0.0",
        &format!(",\"network\":\"blue/blue-a\",\"prevResult\":{}", r1.json()),
    );
    w.cni("CHECK", "c1", &p1.path(), &check).ok();
    let status = cni("STATUS", "", "", "", &conf(&w, "1.1.0"));
    assert_eq!(status.code(), 50, "{status:?}");
    assert!(
        status.stdout.contains("allocator is not reachable"),
        "{status:?}"
    );
    assert_eq!(
        w.cni("ADD", "c3", &p3.path(), &conf(&w, "1.0.0")).code(),
        11
    );

    // The controller returns (same store): the owed release is paid, so the next pod
    // gets pod 2's address, the lowest free one.
    controller.spawn();
    assert!(
        wait_until(Duration::from_secs(40), || w.owed_releases() == 0),
        "the release is still owed: {}",
        w.stderr()
    );
    let r3 = w.cni("ADD", "c3", &p3.path(), &conf(&w, "1.0.0")).ok();
    assert_eq!(address(&r3), "10.0.1.3/29");
    cni("STATUS", "", "", "", &conf(&w, "1.1.0")).ok();
    w.cni("DEL", "c1", &p1.path(), &conf(&w, "1.0.0")).ok();
    w.cni("DEL", "c3", &p3.path(), &conf(&w, "1.0.0")).ok();
    assert_eq!((w.records(), w.map_entries("pods")), (0, 0));
}

#[test]
fn a_controller_that_never_answers_costs_bounded_time() {
    assert_root("controller outage");
    let dir = tempfile::tempdir().expect("tempdir");
    // Accepts connections into its backlog, never reads them: a black hole.
    let socket = dir.path().join("blackhole.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let base = unique("sl-ctl");
    let underlay = Underlay::new(&base);
    let url = format!("unix://{}", socket.display());
    let mut w = Worker::with_controller(&base, "w1", &underlay, W1.0, W1.1, &url);
    let start = Instant::now();
    w.start(&[]);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the agent took {took:?} to start"
    );
    let p = Netns::new(format!("{base}-p1"));

    let timed = |command: &str, stdin: &str| {
        let start = Instant::now();
        let out = w.cni(command, "c1", &p.path(), stdin);
        (out, start.elapsed())
    };
    let (out, took) = timed("ADD", &conf(&w, "1.0.0"));
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(out.stdout.contains("unreachable"), "{out:?}");
    assert!(took < Duration::from_secs(12), "ADD took {took:?}");
    assert!(w.pod_veths().is_empty());
    let (out, took) = timed("STATUS", &conf(&w, "1.1.0"));
    assert_eq!(out.code(), 50, "{out:?}");
    assert!(took < Duration::from_secs(12), "STATUS took {took:?}");
    // DEL must tell the controller (a crashed ADD may have left it holding an address).
    let (out, took) = timed("DEL", &conf(&w, "1.0.0"));
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(took < Duration::from_secs(12), "DEL took {took:?}");
    eprintln!("black-holed controller: {}", out.stdout);
}
