//! The worker stubs (bpf/stubs.bpf.c) on the real kernel.

use std::path::PathBuf;

use sluice_dataplane::stubs::NodeStubs;

#[test]
fn loads() {
    let dir = PathBuf::from(format!("/sys/fs/bpf/sl-stubs-smoke-{}", std::process::id()));
    let stubs = NodeStubs::load(&dir);
    let _ = NodeStubs::unpin_all(&dir);
    stubs.unwrap();
}
