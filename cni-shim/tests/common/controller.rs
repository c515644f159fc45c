//! The real `sluice-controller` for tests: started on a Unix socket (or TCP with mutual
//! TLS) over its own store, killed by its PID when dropped.
//!
//! Needs the `sluice-controller` binary of the same profile (built by `cargo test
//! --workspace`; otherwise `cargo build -p sluice-control --bin sluice-controller`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_cni::api::client::{connect, ClientTls, Target};
use sluice_cni::api::proto::v1::controller_client::ControllerClient;
use sluice_cni::api::proto::v1::{ApplyObjectsRequest, ClusterObject};

/// A VPC `blue` (10.0.0.0/16), its subnet `blue-a` (10.0.1.0/29) and a gateway at
/// 198.18.0.1 whose control socket nobody serves (the controller re-syncs it later; what
/// these tests need is the allocation).
pub const OBJECTS: [&str; 3] = [
    r#"{"apiVersion":"sluice.dev/v1alpha1","kind":"Vpc","metadata":{"name":"blue"},
        "spec":{"cidr":"10.0.0.0/16","serviceCidr":"10.96.0.0/16"}}"#,
    r#"{"apiVersion":"sluice.dev/v1alpha1","kind":"Subnet","metadata":{"name":"blue-a"},
        "spec":{"vpc":"blue","cidr":"10.0.1.0/29"}}"#,
    r#"{"apiVersion":"sluice.dev/v1alpha1","kind":"Gateway","metadata":{"name":"gw1"},
        "spec":{"ip":"198.18.0.1","mac":"02:00:00:00:00:01","control":"unix:///nonexistent/sluice-gw.sock"}}"#,
];

pub fn controller_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("sluice-controller");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice-control --bin sluice-controller` \
         (same profile) first, or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The controller process, killed by its PID on drop.
pub struct Controller {
    child: Option<Child>,
    pub socket: PathBuf,
    pub store: PathBuf,
    stderr: PathBuf,
    /// Serving on TCP with mutual TLS: (server cert, server key, client CA) and the
    /// address bound (port 0 until started).
    tls: Option<([PathBuf; 3], String)>,
}

impl Controller {
    pub fn start(dir: &Path) -> Self {
        let mut c = Controller {
            child: None,
            socket: dir.join("controller.sock"),
            store: dir.join("controller.redb"),
            stderr: dir.join("controller.stderr"),
            tls: None,
        };
        c.spawn();
        c
    }

    /// Serves `https://127.0.0.1:PORT` (a free port the controller picks) with mutual
    /// TLS: `files` are its certificate, its key and the CA of client certificates.
    pub fn start_tls(dir: &Path, files: [PathBuf; 3]) -> Self {
        let mut c = Controller {
            child: None,
            socket: dir.join("unused.sock"),
            store: dir.join("controller.redb"),
            stderr: dir.join("controller.stderr"),
            tls: Some((files, "127.0.0.1:0".into())),
        };
        c.spawn();
        c
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .expect("stderr file");
        let mut command = Command::new(controller_bin());
        command.arg("--store").arg(&self.store);
        match &self.tls {
            None => command.arg("--listen").arg(self.url()),
            Some(([cert, key, ca], _)) => command
                .args(["--listen", "https://127.0.0.1:0", "--tls-cert"])
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--client-ca")
                .arg(ca),
        };
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting sluice-controller");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("wait") {
                self.child = None;
                panic!("sluice-controller exited ({status}): {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "not serving: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it serves; for TCP, records the bound address it logs.
    pub fn ready(&mut self) -> bool {
        let Some((_, bound)) = &mut self.tls else {
            return self.socket.exists();
        };
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("serving sluice.v1.Controller"))
        else {
            return false;
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="));
        *bound = addr.expect("the bound address is logged").to_owned();
        true
    }

    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("unix://{}", self.socket.display()),
            Some((_, bound)) => format!("https://{bound}"),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn apply(controller: &Controller, docs: &[&str]) {
    apply_with(controller, None, docs).await
}

pub async fn apply_with(controller: &Controller, tls: Option<&ClientTls>, docs: &[&str]) {
    let target: Target = controller.url().parse().expect("target");
    let channel = connect(&target, tls).await.expect("connect");
    ControllerClient::new(channel)
        .apply_objects(ApplyObjectsRequest {
            objects: docs
                .iter()
                .map(|d| ClusterObject {
                    json: (*d).to_owned(),
                })
                .collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("apply: {e}: {}", controller.stderr()));
}
