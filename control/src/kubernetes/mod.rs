//! Kubernetes mode of `sluice-controller`: the same object model, placement, desired
//! tables and gateway programming as standalone mode; only where objects come from
//! differs.
//!
//! * [`allocations`]: allocations recorded on pods (and VNIs in Vpc status), and the
//!   rebuild of a new leader's store from them.
//! * [`crd`]: the `Vpc` and `Subnet` custom resources, their generated CRDs, and their
//!   translation to the object model.
//! * [`model`]: pure functions from Pods, Namespaces, Services and EndpointSlices to the
//!   object model (networks from annotations, ready endpoints, named ports).
//! * [`lease`]: leader election over a `coordination.k8s.io` Lease.
//! * [`rbac`]: what each component may do with the Kubernetes API (the manifests grant
//!   exactly this).
//! * [`operator`]: the watchers and reconcilers (finalizers, status by server-side
//!   apply, requeue with backoff) feeding the controller.
pub mod allocations;
pub mod crd;
pub mod lease;
pub mod model;
pub mod operator;
pub mod rbac;
