//! Compiles `proto/sluice/v1/*.proto` with protox (a protobuf compiler written in Rust, so
//! no system `protoc` is needed) and generates the messages and the gRPC client and
//! server with tonic-prost-build. The encoded descriptor set is written next to the
//! generated code for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "sluice/v1/objects.proto",
    "sluice/v1/gateway.proto",
    "sluice/v1/controller.proto",
    "sluice/v1/node.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out.join("sluice_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
