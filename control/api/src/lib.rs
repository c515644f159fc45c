//! sluice-api: the domain types every Sluice crate shares (hosts, VPCs, subnets,
//! endpoints, services and transactions over them). The gRPC API generated from
//! `proto/sluice/v1/*.proto` joins them with the control-service issue.
#![forbid(unsafe_code)]

pub mod model;

pub use model::{
    Backend, Endpoint, FieldError, Host, Ipv4Cidr, MacAddr, Object, ObjectKey, Protocol, Service,
    Subnet, Transaction, Vni, Vpc,
};
