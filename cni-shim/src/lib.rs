//! sluice-cni: the CNI shim (`sluice-cni`, executed by the container runtime) and the node
//! agent (`sluice-node`, long-running on each worker, owner of the XDP stubs).
//!
//! Both binaries arrive with the worker-side issue; the crate is here so the workspace has
//! its final shape. The shim must stay thin: it speaks CNI and forwards to the agent.
#![forbid(unsafe_code)]

pub use sluice_api as api;
