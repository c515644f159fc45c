//! An independent CNI client: Debian's libcni (golang-github-appc-cni-dev, spec 1.0.0),
//! through the small Go driver in tests/libcni-driver, runs VALIDATE (VERSION), ADD,
//! CHECK and DEL on real namespaces against the real `sluice-cni` and `sluice-node`.
//! The driver is built here with Debian's Go, offline (scripts/setup.sh installs both).
//!
//! Needs root. Namespaces `sl-cni-<pid>-<n>-*`, removed by guards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use serde_json::json;

/// Builds the driver once per test binary.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin = out_dir.join("libcni-driver");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libcni-driver");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", out_dir.join("libcni-driver-gocache"))
            .output()
            .expect(
                "running go (scripts/setup.sh installs golang-go and golang-github-appc-cni-dev)",
            );
        assert!(
            out.status.success(),
            "building the libcni driver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// libcni's view: a plugin directory holding `sluice` (the real shim) and a cache.
struct Runtime {
    dir: tempfile::TempDir,
    conflist: PathBuf,
}

impl Runtime {
    fn new(w: &Worker) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        std::os::unix::fs::symlink(CNI_BIN, dir.path().join("bin/sluice")).expect("symlink");
        Runtime {
            dir,
            conflist: w.conflist.clone(),
        }
    }

    fn run(&self, command: &str, id: &str, netns: &str) -> Result<String, String> {
        let out = Command::new(driver())
            .arg("-conflist")
            .arg(&self.conflist)
            .arg("-bin")
            .arg(self.dir.path().join("bin"))
            .arg("-cache")
            .arg(self.dir.path().join("cache"))
            .args(["-id", id, "-netns", netns, command])
            .output()
            .expect("running the libcni driver");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

#[test]
fn libcni_adds_checks_and_deletes_pods() {
    assert_root("libcni");
    let base = unique("sl-cni");
    let underlay = Underlay::new(&base);
    let mut w = Worker::new(
        &base,
        "w1",
        &underlay,
        "198.18.0.11",
        "02:00:00:00:00:11",
        &allocation(
            ("198.18.0.1", "02:00:00:00:00:01"),
            &[],
            ("10.1.0.10", "10.1.0.99"),
        ),
    );
    w.start(&[]);
    let rt = Runtime::new(&w);
    // VALIDATE asks the plugin for VERSION and checks the config's version against it.
    rt.run("validate", "", "")
        .expect("libcni validates the conflist");

    let (a, b) = (
        Netns::new(format!("{base}-a")),
        Netns::new(format!("{base}-b")),
    );
    let ra: serde_json::Value =
        serde_json::from_str(&rt.run("add", "pod-a", &a.path()).expect("ADD a")).expect("JSON");
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["ips"][0]["address"], "10.1.0.10/24");
    assert_eq!(ra["ips"][0]["gateway"], "10.1.0.1");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["interfaces"][1]["sandbox"], a.path());
    assert_eq!(ra["routes"], json!([{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]));
    rt.run("add", "pod-b", &b.path()).expect("ADD b");
    // CHECK sends libcni's cached ADD result as prevResult.
    rt.run("check", "pod-a", &a.path()).expect("CHECK a");
    rt.run("check", "pod-b", &b.path()).expect("CHECK b");
    assert_eq!(w.map_entries("pods"), 2);

    // The pods reach each other through the agent stub (the peer's MAC given by hand:
    // no gateway answers ARP here; tests/gateway_bed.rs has one).
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
    let out = nsenter(
        &a.name,
        &["ping", "-c", "3", "-i", "0.1", "-W", "1", "10.1.0.11"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Breaking the pod: CHECK reports it through libcni.
    ip(&["-n", &b.name, "link", "del", "eth0"]);
    let err = rt
        .run("check", "pod-b", &b.path())
        .expect_err("CHECK must fail");
    assert!(err.contains("gone"), "{err}");

    rt.run("del", "pod-a", &a.path()).expect("DEL a");
    rt.run("del", "pod-b", &b.path()).expect("DEL b");
    rt.run("del", "pod-b", &b.path())
        .expect("DEL is idempotent");
    assert!(w.pod_veths().is_empty());
    assert_eq!((w.map_entries("pods"), w.leases(), w.records()), (0, 0, 0));
}
