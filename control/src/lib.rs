//! sluice-control: the controller (`sluice-controller`) and the operator CLI (`sluicectl`).
//!
//! The controller ([`controller`]) holds VPCs, subnets, services and endpoint
//! allocations, allocates VNIs and addresses, places bouncer and divider roles on
//! gateways and programs them through `Gateway.Apply`. `sluicectl`'s YAML reading and
//! output formats live in [`cli`], its argument parsing in the binary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod kubernetes;

pub use sluice_api as api;
