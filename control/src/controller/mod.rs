//! `sluice-controller`: holds VPCs, subnets, services, gateway and node registrations and
//! endpoint allocations; places bouncer and divider roles on gateways; pushes each
//! gateway exactly the tables its roles need; serves `sluice.v1.Controller`.
//!
//! * [`objects`]: the object model, as YAML manifests and the CRDs write it.
//! * [`source`]: the one interface objects come through ([`ObjectSource`]); Kubernetes
//!   mode replaces only this.
//! * [`store`]: the standalone source, an embedded redb database with the allocators
//!   (VNI, addresses, MACs, VIPs).
//! * [`placement`] and [`desired`]: pure functions from objects to roles and from roles
//!   to each gateway's tables and the deltas between them.
//! * [`syncer`]: one gateway link (delta pushes, full syncs, restart detection).
//! * [`reconciler`]: the loop tying those together.
//! * [`service`] and [`server`]: the gRPC service and where it listens.

pub mod desired;
pub mod objects;
pub mod placement;
pub mod reconciler;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
pub mod syncer;

pub use reconciler::{Controller, Reconciled};
pub use source::{ObjectSource, Snapshot, SourceError};
pub use store::Store;
