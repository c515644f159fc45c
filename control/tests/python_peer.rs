//! The Python grpcio peer (`tests/python/peer.py`) against a real control service: an
//! independent implementation of the client, with stubs generated from the same protos.
//!
//! Needs python3 with grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection
//! (`scripts/setup.sh` installs them), so it is ignored by a plain `cargo test`;
//! `scripts/test.sh` runs it with `--ignored`.

use std::process::Command;

use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen};
use sluice_dataplane::tables::TableWriter;

#[test]
#[ignore = "needs python3 with grpcio; scripts/test.sh runs it"]
fn python_grpcio_peer_configures_and_reads_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gw.sock");
    let _server = GatewayHarness::start(
        Listen::Unix(socket.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg(format!("{manifest}/tests/python/peer.py"))
        .arg("--socket")
        .arg(&socket)
        .arg("--proto-dir")
        .arg(format!("{manifest}/api/proto"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python peer failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    println!("{stdout}");
}
