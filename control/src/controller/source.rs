//! Where the controller's objects come from: the one interface a Kubernetes mode
//! replaces. Standalone, [`Store`](super::store::Store) implements it over redb; in a
//! cluster an implementation over CRDs, Services, EndpointSlices and Pods will, and
//! everything downstream (placement, desired tables, gateway syncing) stays the same.

use std::collections::BTreeMap;

use super::objects::{
    ClusterObject, EndpointAlloc, Gateway, Node, NodeSpec, ObjectRef, Service, Subnet, Vpc,
};

/// Every object the desired gateway tables are computed from, with allocations filled in
/// (`status.vni`, `status.vip`, `status.routerIp`). Keys are stored names (services:
/// `namespace/name`; endpoints: `node/container/interface`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub vpcs: BTreeMap<String, Vpc>,
    pub subnets: BTreeMap<String, Subnet>,
    pub services: BTreeMap<String, Service>,
    pub gateways: BTreeMap<String, Gateway>,
    pub nodes: BTreeMap<String, Node>,
    pub endpoints: BTreeMap<String, EndpointAlloc>,
}

/// One pod interface asking for an address (`AttachEndpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub node: String,
    pub container_id: String,
    pub interface: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// `VPC/SUBNET`, `SUBNET`, or empty for the default.
    pub network: String,
}

/// Why a request was refused, in gRPC's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
}

/// A refused request, or a store that failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The request is wrong or conflicts with what exists; nothing was changed.
    #[error("{object}: {field}: {reason}")]
    Rejected {
        code: Code,
        object: String,
        field: String,
        reason: String,
    },
    #[error("the store {path}: {source}")]
    Storage {
        path: String,
        source: Box<redb::Error>,
    },
    #[error("the store {path}: {what}: {source}")]
    Corrupt {
        path: String,
        what: String,
        source: serde_json::Error,
    },
    /// An allocation could not be recorded where it must survive this process (in
    /// Kubernetes mode, on its pod); it was released again.
    #[error("{object}: recording the allocation: {reason}")]
    Unrecorded { object: String, reason: String },
}

/// What [`ObjectSource::record_attach`] and [`ObjectSource::record_detach`] return.
pub type Recording<'a> = futures_util::future::BoxFuture<'a, Result<(), SourceError>>;

/// The controller's objects and allocations. Every mutating call is atomic: it changes
/// everything it was asked to or nothing.
pub trait ObjectSource: Send + Sync + std::fmt::Debug {
    /// Everything, consistently.
    fn snapshot(&self) -> Result<Snapshot, SourceError>;
    /// Creates or updates VPCs, subnets, services and gateways; returns them as stored.
    fn apply(&self, objects: Vec<ClusterObject>) -> Result<Vec<ClusterObject>, SourceError>;
    /// Deletes objects (dependents first); returns how many.
    fn delete(&self, refs: &[ObjectRef]) -> Result<usize, SourceError>;
    /// Records (or updates) a worker node.
    fn register_node(&self, name: &str, spec: NodeSpec) -> Result<Node, SourceError>;
    /// Allocates the endpoint of one pod interface, or returns the existing one.
    fn attach(&self, request: &AttachRequest) -> Result<EndpointAlloc, SourceError>;
    /// Releases the endpoint of one pod interface; `None` when nothing was attached.
    fn detach(
        &self,
        node: &str,
        container_id: &str,
        interface: &str,
    ) -> Result<Option<EndpointAlloc>, SourceError>;
    /// Records a new allocation outside this process before it is handed out, so
    /// another controller can rebuild it (Kubernetes mode: an annotation on the pod).
    /// The default (standalone: the store is the record) does nothing.
    fn record_attach<'a>(&'a self, _alloc: &'a EndpointAlloc) -> Recording<'a> {
        Box::pin(async { Ok(()) })
    }
    /// Removes what [`Self::record_attach`] recorded.
    fn record_detach<'a>(&'a self, _alloc: &'a EndpointAlloc) -> Recording<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// A gateway's registration is applied like any object.
pub fn gateway_object(gateway: Gateway) -> ClusterObject {
    ClusterObject::Gateway(gateway)
}

/// A service's namespace, `default` when it names none.
pub fn service_namespace(service: &Service) -> &str {
    service
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(super::objects::DEFAULT_NAMESPACE)
}
