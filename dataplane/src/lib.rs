//! sluice-dataplane: the gateway's packet path.
//!
//! * [`wire`]: zero-copy views over the protocols Sluice parses and rewrites, the Geneve
//!   wire contract, and incremental checksums.
//! * [`tables`]: the gateway's routing, endpoint and service tables, updated by
//!   transactions that workers observe whole and without waiting.
//! * [`pipeline`]: `process(tables, local, frame) -> Verdict`, the bouncer, divider and
//!   service DNAT logic as a pure function, unit-tested and benchmarked without sockets.
//! * [`engine`]: AF_XDP workers that run the pipeline on pinned cores (the one module
//!   allowed `unsafe`); [`nic`]: the XDP program that steers Geneve to their sockets.
//! * [`stubs`]: the worker node's XDP stubs (pod egress, underlay ingress) and their
//!   loader, used by the node agent.
//! * [`service`]: the gRPC control service over the tables; [`config`]: the gateway's
//!   configuration file; [`appliance`]: the `sluice-gateway` process that ties them up.
//!
//! Nothing on the packet path allocates, locks or makes a syscall per packet.
#![deny(unsafe_code)]

pub mod appliance;
pub mod config;
pub mod engine;
pub mod nic;
pub mod pipeline;
pub mod service;
pub mod stubs;
pub mod tables;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod testkit;
