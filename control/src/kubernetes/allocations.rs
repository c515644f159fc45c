//! Allocations that survive a leader change. In Kubernetes mode each controller replica
//! keeps its own store, so the API server is the durable record:
//!
//! * a VPC's VNI is in its status (`status.vni`, written by the Vpc reconciler);
//! * a pod interface's allocation is in an annotation on its pod,
//!   [`ALLOCATION_ANNOTATION`] (`sluice.dev/allocation`; `sluice.dev/allocation.IFNAME`
//!   for interfaces other than `eth0`), a JSON [`PodAllocation`] the controller writes
//!   with a merge patch before it answers `AttachEndpoint` and removes on
//!   `DetachEndpoint` (a JSON patch that first tests the value, so a newer sandbox's
//!   record is never removed).
//!
//! A new leader calls [`rebuild`] on an empty store before it programs any gateway:
//! VPCs keep their VNIs, subnets are re-derived, every live pod keeps its address (and
//! its node's underlay host), and an address whose pod is gone is free again.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use sluice_api::{MacAddr, Vni};

use super::crd::{self, Subnet, Vpc};
use super::operator::{OperatorError, MANAGER};
use crate::controller::objects::{ClusterObject, EndpointAlloc, EndpointSpec, NodeSpec, VpcStatus};
use crate::controller::source::{ObjectSource, SourceError};
use crate::controller::Store;

/// The annotation holding a pod's `eth0` allocation.
pub const ALLOCATION_ANNOTATION: &str = "sluice.dev/allocation";

/// The annotation of interface `interface`'s allocation.
pub fn annotation_key(interface: &str) -> String {
    if interface == "eth0" {
        ALLOCATION_ANNOTATION.to_owned()
    } else {
        format!("{ALLOCATION_ANNOTATION}.{interface}")
    }
}

/// One pod interface's allocation as recorded on the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAllocation {
    pub vpc: String,
    pub subnet: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub node: String,
    /// The node's underlay host, so a new leader can program the pod before the node
    /// agent registers again.
    pub node_ip: Ipv4Addr,
    pub node_mac: MacAddr,
    pub container_id: String,
    pub interface: String,
}

impl PodAllocation {
    pub fn of(alloc: &EndpointAlloc, node: &NodeSpec) -> Self {
        let s = &alloc.spec;
        Self {
            vpc: s.vpc.clone(),
            subnet: s.subnet.clone(),
            ip: s.ip,
            mac: s.mac,
            node: s.node.clone(),
            node_ip: node.ip,
            node_mac: node.mac,
            container_id: s.container_id.clone(),
            interface: s.interface.clone(),
        }
    }
}

/// The allocations recorded on `pod`: (annotation, parsed or why not).
pub fn recorded(pod: &Pod) -> Vec<(String, Result<PodAllocation, String>)> {
    pod.annotations()
        .iter()
        .filter(|(k, _)| {
            k.as_str() == ALLOCATION_ANNOTATION
                || k.starts_with(&format!("{ALLOCATION_ANNOTATION}."))
        })
        .map(|(k, v)| {
            let parsed = serde_json::from_str::<PodAllocation>(v).map_err(|e| e.to_string());
            (k.clone(), parsed)
        })
        .collect()
}

fn unrecorded(alloc: &EndpointAlloc, reason: impl std::fmt::Display) -> SourceError {
    SourceError::Unrecorded {
        object: format!("pod {}/{}", alloc.spec.pod_namespace, alloc.spec.pod_name),
        reason: reason.to_string(),
    }
}

/// Writes `alloc` on its pod (one merge patch).
pub async fn record(
    client: &Client,
    store: &Store,
    alloc: &EndpointAlloc,
) -> Result<(), SourceError> {
    let s = &alloc.spec;
    if s.pod_namespace.is_empty() || s.pod_name.is_empty() {
        tracing::warn!(endpoint = %alloc.name(), "no pod named: the allocation is not recorded and a new leader will not know it");
        return Ok(());
    }
    let node = store
        .node(&s.node)?
        .ok_or_else(|| unrecorded(alloc, format!("node {} is not registered", s.node)))?;
    let value = serde_json::to_string(&PodAllocation::of(alloc, &node.spec))
        .map_err(|e| unrecorded(alloc, e))?;
    let body = serde_json::json!({
        "metadata": { "annotations": { annotation_key(&s.interface): value } }
    });
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), &s.pod_namespace)
        .patch(&s.pod_name, &params, &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|e| unrecorded(alloc, e))
}

/// Removes `alloc`'s record from its pod when it is still this attachment's (a pod
/// that is gone, or whose annotation names another container, is left alone).
pub async fn unrecord(client: &Client, alloc: &EndpointAlloc) -> Result<(), SourceError> {
    let s = &alloc.spec;
    if s.pod_namespace.is_empty() || s.pod_name.is_empty() {
        return Ok(());
    }
    let api = Api::<Pod>::namespaced(client.clone(), &s.pod_namespace);
    let pod = match api.get_opt(&s.pod_name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => return Ok(()),
        Err(e) => return Err(unrecorded(alloc, e)),
    };
    let key = annotation_key(&s.interface);
    let Some(current) = pod.annotations().get(&key) else {
        return Ok(());
    };
    let ours = serde_json::from_str::<PodAllocation>(current)
        .is_ok_and(|r| r.container_id == s.container_id && r.node == s.node);
    if !ours {
        return Ok(());
    }
    let path = format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    );
    let patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": path, "value": current },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| unrecorded(alloc, e))?;
    match api
        .patch(
            &s.pod_name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or changed since it was read: no longer this attachment's record.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 422 => Ok(()),
        Err(e) => Err(unrecorded(alloc, e)),
    }
}

/// What [`rebuild`] restored, and what it could not (with why).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub vpcs: usize,
    pub subnets: usize,
    pub nodes: usize,
    pub endpoints: usize,
    pub skipped: Vec<String>,
}

/// Fills `store` (a new leader's, empty) from the cluster: Vpcs with the VNIs in their
/// status (those without one get a VNI none of them holds), Subnets, and every
/// allocation recorded on a pod that still runs, with the nodes they are on. Entries
/// that do not fit (an invalid object, an address held twice) are skipped and reported;
/// only a failed API call or store fails the rebuild.
pub async fn rebuild(client: &Client, store: &Store) -> Result<Rebuilt, OperatorError> {
    let all = ListParams::default();
    let vpcs = Api::<Vpc>::all(client.clone()).list(&all).await?;
    let subnets = Api::<Subnet>::all(client.clone()).list(&all).await?;
    let pods = Api::<Pod>::all(client.clone()).list(&all).await?;
    let mut out = Rebuilt::default();
    let mut skip = |what: String, why: &dyn std::fmt::Display| {
        tracing::warn!(%what, %why, "not rebuilt");
        out.skipped.push(format!("{what}: {why}"));
    };
    let refused = |e: SourceError| match e {
        e @ SourceError::Rejected { .. } => Ok(e),
        e => Err(e),
    };

    // VPCs holding a VNI first, so the others get one none of them holds.
    let mut vpcs = vpcs.items;
    vpcs.sort_by_key(|v| v.status.as_ref().and_then(|s| s.vni).is_none());
    let mut restored_vpcs = 0;
    for vpc in &vpcs {
        let what = format!("Vpc {}", vpc.name_any());
        let mut object = match crd::vpc_object(vpc) {
            Ok(o) => o,
            Err(e) => {
                skip(what, &e);
                continue;
            }
        };
        let vni = vpc.status.as_ref().and_then(|s| s.vni);
        let result = match vni.map(Vni::new) {
            Some(Ok(vni)) => {
                object.status = Some(VpcStatus {
                    vni: Some(vni),
                    divider_gateways: Vec::new(),
                });
                store.restore_vpc(object).map(|_| ())
            }
            Some(Err(e)) => {
                skip(what, &format!("status.vni: {e}"));
                continue;
            }
            None => store.apply(vec![ClusterObject::Vpc(object)]).map(|_| ()),
        };
        match result.map_err(refused) {
            Ok(()) => restored_vpcs += 1,
            Err(Ok(e)) => skip(what, &e),
            Err(Err(e)) => return Err(e.into()),
        }
    }
    let mut restored_subnets = 0;
    for subnet in &subnets.items {
        let what = format!("Subnet {}", subnet.name_any());
        let result = match crd::subnet_object(subnet) {
            Ok(o) => store.apply(vec![ClusterObject::Subnet(o)]).map(|_| ()),
            Err(e) => {
                skip(what, &e);
                continue;
            }
        };
        match result.map_err(refused) {
            Ok(()) => restored_subnets += 1,
            Err(Ok(e)) => skip(what, &e),
            Err(Err(e)) => return Err(e.into()),
        }
    }
    let (mut nodes, mut endpoints) = (0, 0);
    for pod in &pods.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        // A finished pod's sandbox is torn down: its address is free.
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        for (key, parsed) in recorded(pod) {
            let what = format!("pod {namespace}/{name} {key}");
            let r = match parsed {
                Ok(r) => r,
                Err(e) => {
                    skip(what, &e);
                    continue;
                }
            };
            if store.node(&r.node)?.is_none() {
                let spec = NodeSpec {
                    ip: r.node_ip,
                    mac: r.node_mac,
                };
                match store.register_node(&r.node, spec).map_err(refused) {
                    Ok(_) => nodes += 1,
                    Err(Ok(e)) => {
                        skip(what, &e);
                        continue;
                    }
                    Err(Err(e)) => return Err(e.into()),
                }
            }
            let spec = EndpointSpec {
                node: r.node,
                container_id: r.container_id,
                interface: r.interface,
                pod_namespace: namespace.clone(),
                pod_name: name.clone(),
                vpc: r.vpc,
                subnet: r.subnet,
                // Replaced by the subnet's.
                vni: Vni::new(1).expect("nonzero"),
                ip: r.ip,
                mac: r.mac,
            };
            match store.restore_endpoint(spec).map_err(refused) {
                Ok(_) => endpoints += 1,
                Err(Ok(e)) => skip(what, &e),
                Err(Err(e)) => return Err(e.into()),
            }
        }
    }
    out.vpcs = restored_vpcs;
    out.subnets = restored_subnets;
    out.nodes = nodes;
    out.endpoints = endpoints;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_per_interface_and_parse_back() {
        assert_eq!(annotation_key("eth0"), "sluice.dev/allocation");
        assert_eq!(annotation_key("net1"), "sluice.dev/allocation.net1");
        let record = PodAllocation {
            vpc: "blue".into(),
            subnet: "blue-a".into(),
            ip: "10.0.1.2".parse().unwrap(),
            mac: MacAddr([0x0a, 0x58, 10, 0, 1, 2]),
            node: "node-1".into(),
            node_ip: "198.18.1.1".parse().unwrap(),
            node_mac: MacAddr([2, 0, 0, 0, 1, 1]),
            container_id: "c1".into(),
            interface: "eth0".into(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"containerId\":\"c1\""), "{json}");
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            [
                (ALLOCATION_ANNOTATION.to_string(), json),
                ("sluice.dev/allocation.net1".into(), "{not json".into()),
                ("sluice.dev/network".into(), "blue/blue-a".into()),
            ]
            .into(),
        );
        let found = recorded(&pod);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].1.as_ref().unwrap(), &record);
        assert!(
            found[1].1.is_err(),
            "a bad record is reported, not dropped silently"
        );
    }
}
