//! sluice-cni: the CNI shim (`sluice-cni`, executed by the container runtime) and the node
//! agent (`sluice-node`, long-running on each worker, owner of the XDP stubs).
//!
//! * [`cni`]: the CNI protocol as the shim speaks it: environment and network config
//!   parsing with the spec's error codes, result and error JSON. Pure, no I/O.
//! * [`shim`]: forwarding one CNI invocation to the node agent over its Unix socket.
//! * [`agent`]: the node agent: configuration, address allocation (controller or static
//!   file), veths and routes over netlink, the stubs' maps, attachment records on disk,
//!   and the `sluice.v1.NodeAgent` gRPC service.
//!
//! The shim must stay thin: it speaks CNI and forwards to the agent; everything that
//! touches the kernel happens in the agent.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cni;
pub mod shim;

pub use sluice_api as api;

/// Where the node agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sluice/node.sock";
