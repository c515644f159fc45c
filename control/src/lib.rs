//! sluice-control: the controller (`sluice-controller`) and the operator CLI (`sluicectl`).
//!
//! The controller holds VPCs, subnets, services and endpoint allocations, allocates VNIs
//! and addresses, places bouncer and divider roles on gateways and programs them through
//! `Gateway.Apply`. Neither binary exists yet: they arrive with the control-service and
//! controller issues. The crate is here so the workspace has its final shape.
#![forbid(unsafe_code)]

pub use sluice_api as api;
