//! sluice-api: what every Sluice crate shares about the control plane.
//!
//! * [`model`]: the validated domain types (hosts, VPCs, subnets, endpoints, services and
//!   transactions over them), with serde names as YAML and the CRDs use them.
//! * [`proto`]: the gRPC API generated from `proto/sluice/v1/*.proto`.
//! * [`convert`]: protobuf messages to domain types (validated, naming the field path on
//!   error) and back.
//! * [`client`]: connecting to a gateway's control service over a Unix socket or TCP with
//!   mutual TLS.
//! * [`process`]: one-line panic reports, for every binary.
//!
//! The names are one set: a proto field `service_cidr` is `serviceCidr` in YAML and in
//! error messages, `service_cidr` in Rust.
#![forbid(unsafe_code)]

pub mod client;
pub mod convert;
pub mod manifest;
pub mod model;
pub mod process;
pub mod proto;

pub use convert::ConvertError;
pub use model::{
    Backend, Endpoint, FieldError, Host, Ipv4Cidr, MacAddr, Object, ObjectKey, ObjectKind,
    Protocol, Service, Subnet, Transaction, Vni, Vpc,
};

/// The largest gRPC message either side accepts (a 10,000-endpoint transaction is about
/// 700 KiB). Larger table loads are split into several transactions.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
