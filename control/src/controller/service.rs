//! `sluice.v1.Controller` over gRPC: node agents register and attach pods; operators
//! apply, delete and list objects; gateways register.
//!
//! Handlers translate and delegate: messages to the object model (naming the field on
//! error), changes to the [`ObjectSource`](super::source::ObjectSource), then one
//! reconcile that pushes the gateways what changed. Refusals carry precise codes
//! (`InvalidArgument`, `NotFound`, `FailedPrecondition`, `ResourceExhausted`); only a
//! failing store is `Internal`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use sluice_api::proto::v1 as pb;
use sluice_api::MacAddr;
use tonic::{Request, Response, Status};

use super::objects::{
    ClusterObject, GatewaySpec, Kind, Metadata, NodeSpec, ObjectError, ObjectRef, Resource,
    DEFAULT_NAMESPACE,
};
use super::reconciler::Controller;
use super::source::{AttachRequest, Code, SourceError};

/// Bytes a pod's MTU is below the underlay MTU: the wire contract's
/// `ENCAP_MTU_OVERHEAD` (sluice-dataplane; a test checks that the two agree).
pub const ENCAP_MTU_OVERHEAD: u32 = 100;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    controller: Arc<Controller>,
    underlay_mtu: u32,
}

impl ControllerService {
    pub fn new(controller: Arc<Controller>, underlay_mtu: u32) -> Self {
        Self {
            controller,
            underlay_mtu,
        }
    }
}

/// A refusal or store failure in gRPC terms.
pub fn status(error: &SourceError) -> Status {
    match error {
        SourceError::Rejected { code, .. } => {
            let message = error.to_string();
            match code {
                Code::InvalidArgument => Status::invalid_argument(message),
                Code::NotFound => Status::not_found(message),
                Code::FailedPrecondition => Status::failed_precondition(message),
                Code::ResourceExhausted => Status::resource_exhausted(message),
            }
        }
        SourceError::Unrecorded { .. } => Status::unavailable(error.to_string()),
        SourceError::Storage { .. } | SourceError::Corrupt { .. } => {
            tracing::error!(error = %error, "store failure");
            Status::internal(error.to_string())
        }
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

fn underlay(field: &str, host: Option<&pb::UnderlayHost>) -> Result<(Ipv4Addr, MacAddr), Status> {
    let host = host.ok_or_else(|| invalid(field, "missing"))?;
    let ip = host.ip.parse().map_err(|_| {
        invalid(
            &format!("{field}.ip"),
            format!("{:?} is not an IPv4 address", host.ip),
        )
    })?;
    let mac = host
        .mac
        .parse()
        .map_err(|e: sluice_api::FieldError| invalid(&format!("{field}.mac"), e.reason))?;
    Ok((ip, mac))
}

fn to_message(object: &ClusterObject) -> Result<pb::ClusterObject, Status> {
    serde_json::to_string(object)
        .map(|json| pb::ClusterObject { json })
        .map_err(|e| Status::internal(format!("encoding {}: {e}", object.reference())))
}

fn host_message(host: &sluice_api::Host) -> pb::UnderlayHost {
    pb::UnderlayHost {
        ip: host.ip.to_string(),
        mac: host.mac.to_string(),
    }
}

impl ControllerService {
    async fn reconcile(&self) -> Result<u64, Status> {
        let done = self.controller.reconcile().await.map_err(|e| status(&e))?;
        Ok(done.apply_calls)
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node))]
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeReply>, Status> {
        let req = request.into_inner();
        let (ip, mac) = underlay("underlay", req.underlay.as_ref())?;
        self.controller
            .source()
            .register_node(&req.node, NodeSpec { ip, mac })
            .map_err(|e| status(&e))?;
        self.reconcile().await?;
        let gateways = self
            .controller
            .list(Kind::Gateway)
            .await
            .map_err(|e| status(&e))?
            .into_iter()
            .filter_map(|o| match o {
                ClusterObject::Gateway(g) => Some(pb::UnderlayHost {
                    ip: g.spec.ip.to_string(),
                    mac: g.spec.mac.to_string(),
                }),
                _ => None,
            })
            .collect();
        tracing::info!(%ip, "node registered");
        Ok(Response::new(pb::RegisterNodeReply { gateways }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, container = %request.get_ref().container_id))]
    async fn attach_endpoint(
        &self,
        request: Request<pb::AttachEndpointRequest>,
    ) -> Result<Response<pb::AttachEndpointReply>, Status> {
        let req = request.into_inner();
        let attach = AttachRequest {
            node: req.node,
            container_id: req.container_id,
            interface: if req.interface.is_empty() {
                "eth0".into()
            } else {
                req.interface
            },
            pod_namespace: if req.pod_namespace.is_empty() {
                DEFAULT_NAMESPACE.into()
            } else {
                req.pod_namespace
            },
            pod_name: req.pod_name,
            network: req.network,
        };
        let (alloc, _existed, done) = self
            .controller
            .attach(&attach)
            .await
            .map_err(|e| status(&e))?;
        let apply_calls = done.apply_calls;
        let subnet = self
            .controller
            .subnet(&alloc.spec.subnet)
            .await
            .map_err(|e| status(&e))?
            .ok_or_else(|| {
                Status::not_found(format!("network: subnet {} is gone", alloc.spec.subnet))
            })?;
        let sub_status = subnet.status.clone().unwrap_or_default();
        let bouncers = self.controller.bouncers(&alloc.spec.subnet).await;
        tracing::info!(ip = %alloc.spec.ip, subnet = %alloc.spec.subnet, apply_calls, "endpoint attached");
        Ok(Response::new(pb::AttachEndpointReply {
            vni: alloc.spec.vni.get(),
            ip: alloc.spec.ip.to_string(),
            prefix_len: u32::from(subnet.spec.cidr.prefix_len()),
            mac: alloc.spec.mac.to_string(),
            router_ip: sub_status
                .router_ip
                .map(|i| i.to_string())
                .unwrap_or_default(),
            router_mac: sub_status
                .router_mac
                .map(|m| m.to_string())
                .unwrap_or_default(),
            bouncers: bouncers.iter().map(host_message).collect(),
            mtu: self.underlay_mtu.saturating_sub(ENCAP_MTU_OVERHEAD),
            vpc: alloc.spec.vpc,
            subnet: alloc.spec.subnet,
            apply_calls,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node, container = %request.get_ref().container_id))]
    async fn detach_endpoint(
        &self,
        request: Request<pb::DetachEndpointRequest>,
    ) -> Result<Response<pb::DetachEndpointReply>, Status> {
        let req = request.into_inner();
        let interface = if req.interface.is_empty() {
            "eth0"
        } else {
            req.interface.as_str()
        };
        let released = self
            .controller
            .detach(&req.node, &req.container_id, interface)
            .await
            .map_err(|e| status(&e))?;
        let apply_calls = match &released {
            Some((alloc, done)) => {
                tracing::info!(ip = %alloc.spec.ip, apply_calls = done.apply_calls, "endpoint released");
                done.apply_calls
            }
            None => 0,
        };
        Ok(Response::new(pb::DetachEndpointReply {
            released: released.is_some(),
            apply_calls,
        }))
    }

    #[tracing::instrument(skip_all, fields(gateway = %request.get_ref().name))]
    async fn register_gateway(
        &self,
        request: Request<pb::RegisterGatewayRequest>,
    ) -> Result<Response<pb::RegisterGatewayReply>, Status> {
        let req = request.into_inner();
        let (ip, mac) = underlay("underlay", req.underlay.as_ref())?;
        let gateway = ClusterObject::Gateway(Resource::new(
            Metadata::named(&req.name),
            GatewaySpec {
                ip,
                mac,
                control: req.control,
            },
        ));
        self.controller
            .source()
            .apply(vec![gateway])
            .map_err(|e| status(&e))?;
        // A gateway registers after it starts: whatever it held before is gone.
        self.controller.resync(&req.name).await;
        let apply_calls = self.reconcile().await?;
        tracing::info!(%ip, boot_id = %req.boot_id, apply_calls, "gateway registered");
        Ok(Response::new(pb::RegisterGatewayReply { apply_calls }))
    }

    #[tracing::instrument(skip_all, fields(objects = request.get_ref().objects.len()))]
    async fn apply_objects(
        &self,
        request: Request<pb::ApplyObjectsRequest>,
    ) -> Result<Response<pb::ApplyObjectsReply>, Status> {
        let objects = request
            .into_inner()
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| {
                serde_json::from_str::<ClusterObject>(&o.json)
                    .map_err(|e| invalid(&format!("objects[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stored = self
            .controller
            .source()
            .apply(objects)
            .map_err(|e| status(&e))?;
        let apply_calls = self.reconcile().await?;
        Ok(Response::new(pb::ApplyObjectsReply {
            objects: stored.iter().map(to_message).collect::<Result<_, _>>()?,
            apply_calls,
        }))
    }

    #[tracing::instrument(skip_all, fields(objects = request.get_ref().objects.len()))]
    async fn delete_objects(
        &self,
        request: Request<pb::DeleteObjectsRequest>,
    ) -> Result<Response<pb::DeleteObjectsReply>, Status> {
        let refs = request
            .into_inner()
            .objects
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let kind: Kind = r
                    .kind
                    .parse()
                    .map_err(|e: ObjectError| invalid(&format!("objects[{i}].kind"), e.reason))?;
                let name = match kind {
                    Kind::Service => format!(
                        "{}/{}",
                        if r.namespace.is_empty() {
                            DEFAULT_NAMESPACE
                        } else {
                            &r.namespace
                        },
                        r.name
                    ),
                    _ => r.name.clone(),
                };
                Ok(ObjectRef { kind, name })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let deleted = self
            .controller
            .source()
            .delete(&refs)
            .map_err(|e| status(&e))?;
        let apply_calls = self.reconcile().await?;
        Ok(Response::new(pb::DeleteObjectsReply {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
            apply_calls,
        }))
    }

    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsReply>, Status> {
        let kind: Kind = request
            .get_ref()
            .kind
            .parse()
            .map_err(|e: ObjectError| invalid("kind", e.reason))?;
        let objects = self.controller.list(kind).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListObjectsReply {
            objects: objects.iter().map(to_message).collect::<Result<_, _>>()?,
        }))
    }
}
