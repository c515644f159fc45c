//! The gRPC API generated from `proto/sluice/v1/*.proto` by `build.rs` (protox and
//! tonic-prost-build): messages, the `Gateway` client and server, and the encoded
//! descriptor set that server reflection publishes. Nothing here is written by hand;
//! conversions to the validated domain types live in [`crate::convert`].

/// Package `sluice.v1`.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rustdoc::invalid_html_tags
)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");

    /// The encoded `FileDescriptorSet` of every file of the package, for server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
}
