//! The `sluice.v1.NodeAgent` gRPC service the shim calls, on a Unix socket (mode 0600).
//! Handlers only hand commands to the node thread and map its errors to statuses that
//! carry the CNI error code.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sluice_api::proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use sluice_api::proto::v1::{
    AddReply, AddRequest, CheckReply, CheckRequest, DelReply, DelRequest, GcReply, GcRequest,
    StatusReply, StatusRequest,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::node::{AgentError, AttachmentMsg, Job, NodeHandle};
use crate::shim::CODE_METADATA;

#[derive(Debug)]
pub struct NodeAgentService {
    node: NodeHandle,
}

fn status_of(e: AgentError) -> Status {
    let mut status = Status::new(e.grpc_code(), e.to_string());
    if let Ok(v) = e.cni_code().to_string().parse() {
        status.metadata_mut().insert(CODE_METADATA, v);
    }
    status
}

fn attachment(a: Option<AttachmentMsg>) -> Result<AttachmentMsg, Status> {
    let a = a.ok_or_else(|| Status::invalid_argument("attachment: missing"))?;
    if a.container_id.is_empty() || a.ifname.is_empty() {
        return Err(Status::invalid_argument(
            "attachment: container_id and ifname are required",
        ));
    }
    if a.container_id.contains('/') || a.ifname.contains('/') || a.ifname.contains(':') {
        return Err(Status::invalid_argument(
            "attachment: container_id and ifname must not contain '/' (nor ifname ':')",
        ));
    }
    Ok(a)
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    async fn add(&self, req: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let att = attachment(req.into_inner().attachment)?;
        if att.netns.is_empty() {
            return Err(Status::invalid_argument(
                "attachment: netns is required for ADD",
            ));
        }
        let reply = self
            .node
            .call(|tx| Job::Add(att, tx))
            .await
            .and_then(|r| r)
            .map_err(status_of)?;
        Ok(Response::new(reply))
    }

    async fn del(&self, req: Request<DelRequest>) -> Result<Response<DelReply>, Status> {
        let att = attachment(req.into_inner().attachment)?;
        let removed = self
            .node
            .call(|tx| Job::Del(att, tx))
            .await
            .and_then(|r| r)
            .map_err(status_of)?;
        Ok(Response::new(DelReply { removed }))
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let req = req.into_inner();
        let att = attachment(req.attachment)?;
        self.node
            .call(|reply| Job::Check {
                attachment: att,
                prev_addresses: req.prev_addresses,
                prev_interfaces: req.prev_interfaces,
                reply,
            })
            .await
            .and_then(|r| r)
            .map_err(status_of)?;
        Ok(Response::new(CheckReply {}))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let reply = self.node.call(Job::Status).await.map_err(status_of)?;
        Ok(Response::new(reply))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let req = req.into_inner();
        let valid = req
            .valid_attachments
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let removed = self
            .node
            .call(|tx| Job::Gc((req.network_name, valid), tx))
            .await
            .and_then(|r| r)
            .map_err(status_of)?;
        Ok(Response::new(GcReply { removed }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves on `socket` until `shutdown` completes, then removes the socket file.
pub async fn serve(
    node: NodeHandle,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let err = |source| ServeError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    tracing::info!(socket = %socket.display(), "serving the CNI shim");
    let served = tonic::transport::Server::builder()
        .add_service(NodeAgentServer::new(NodeAgentService { node }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    served.map_err(Into::into)
}
