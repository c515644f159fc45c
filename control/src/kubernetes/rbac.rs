//! What each Sluice component may do with the Kubernetes API, in one place. The
//! manifests in `config/kubernetes/` grant exactly this (`control/tests/manifests.rs`
//! checks them against it), so a new API call in the operator starts here.
//!
//! Only the controller talks to the API server. The node agent and the gateway get a
//! ServiceAccount without a token and no role: they speak gRPC to the controller only.

/// One rule: `verbs` on `resources` of API `group` (`""` is the core group), limited to
/// `names` when not empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub names: &'static [&'static str],
}

/// The controller, cluster-wide (ClusterRole `sluice-controller`).
pub const CONTROLLER_CLUSTER: &[Access] = &[
    // The Vpc and Subnet reconcilers watch them, add and remove the finalizer
    // (`sluice.dev/cleanup`, a JSON patch) and write status by server-side apply.
    Access {
        group: super::crd::GROUP,
        resources: &["vpcs", "subnets"],
        verbs: &["list", "watch", "patch"],
        names: &[],
    },
    Access {
        group: super::crd::GROUP,
        resources: &["vpcs/status", "subnets/status"],
        verbs: &["patch"],
        names: &[],
    },
    // Clusters that enforce owner-reference permissions (OpenShift) ask for this before
    // finalizers may be set on an object.
    Access {
        group: super::crd::GROUP,
        resources: &["vpcs/finalizers", "subnets/finalizers"],
        verbs: &["update"],
        names: &[],
    },
    // Pods: networks from annotations at attach time, and gateway pods going away.
    // Namespaces: default networks. Services and EndpointSlices: ClusterIP services
    // and their ready endpoints. All read through watches (list + watch).
    Access {
        group: "",
        resources: &["pods", "namespaces", "services"],
        verbs: &["list", "watch"],
        names: &[],
    },
    // Allocations are recorded on their pods (annotation `sluice.dev/allocation`, a
    // merge patch on attach; read and removed by a tested JSON patch on detach), so a
    // new leader rebuilds them (`kubernetes::allocations`).
    Access {
        group: "",
        resources: &["pods"],
        verbs: &["get", "patch"],
        names: &[],
    },
    Access {
        group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
        names: &[],
    },
];

/// The Lease the controller replicas elect a leader with.
pub const LEASE_NAME: &str = "sluice-controller";

/// The controller, in its own namespace (Role `sluice-controller`): leader election.
pub const CONTROLLER_NAMESPACE: &[Access] = &[
    // Created by the first replica (create cannot be limited by name) ...
    Access {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["create"],
        names: &[],
    },
    // ... then read and replaced (with its resourceVersion) by every replica.
    Access {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "update"],
        names: &[LEASE_NAME],
    },
];

/// The node agent: nothing (it asks the controller over gRPC).
pub const NODE_AGENT: &[Access] = &[];

/// The gateway: nothing (the controller programs it over gRPC).
pub const GATEWAY: &[Access] = &[];
