//! An independent CNI client for the tests: Debian's libcni (golang-github-appc-cni-dev,
//! spec 1.0.0) through the small Go driver in `tests/libcni-driver`, built once per test
//! binary with Debian's Go, offline (scripts/setup.sh installs both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{Worker, CNI_BIN};

/// The driver binary, built on first use.
pub fn driver() -> &'static Path {
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

/// A runtime's view of one worker through libcni: a plugin directory holding `sluice`
/// (the real shim), a result cache, and the worker's conflist (the shipped one, see
/// [`super::shipped_conflist`]).
pub struct Runtime {
    dir: tempfile::TempDir,
    conflist: PathBuf,
}

impl Runtime {
    pub fn new(w: &Worker) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        std::os::unix::fs::symlink(CNI_BIN, dir.path().join("bin/sluice")).expect("symlink");
        Runtime {
            dir,
            conflist: w.conflist.clone(),
        }
    }

    /// Runs `command` (add, check, del, validate) through libcni; ADD's result JSON, or
    /// libcni's error.
    pub fn run(&self, command: &str, id: &str, netns: &str) -> Result<String, String> {
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

    /// ADD through libcni; the pod's address without its prefix.
    pub fn add(&self, id: &str, netns: &str) -> String {
        let out = self
            .run("add", id, netns)
            .unwrap_or_else(|e| panic!("libcni ADD {id}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("ADD result JSON");
        let address = v["ips"][0]["address"].as_str().expect("an address");
        address.split('/').next().unwrap().to_owned()
    }
}
