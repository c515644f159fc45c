//! Forwarding one CNI invocation to the node agent over its Unix socket, and turning the
//! agent's reply into the spec's result JSON. This module holds no state and touches no
//! kernel object: what the agent cannot do, the shim does not try.

use serde_json::Value;
use sluice_api::client::{connect, Target};
use sluice_api::proto::v1::node_agent_client::NodeAgentClient;
use sluice_api::proto::v1::{
    AddRequest, Attachment as ProtoAttachment, CheckRequest, DelRequest, GcRequest, StatusRequest,
    ValidAttachment,
};
use tonic::transport::Channel;

use crate::cni::{self, code, Attachment, CniError, Invocation, NetConf};

/// The trailing metadata key in which the agent names the CNI error code.
pub const CODE_METADATA: &str = "sluice-cni-code";

/// Runs `invocation` against the agent; the JSON to print on success (None: print
/// nothing, as for DEL and CHECK).
pub async fn run(invocation: &Invocation) -> Result<Option<Value>, CniError> {
    let conf = match invocation.conf() {
        None => return Ok(Some(cni::version_json())),
        Some(conf) => conf,
    };
    let mut agent = connect_agent(conf).await?;
    match invocation {
        Invocation::Version => unreachable!("handled above"),
        Invocation::Add(conf, att) => {
            let reply = agent
                .add(AddRequest {
                    attachment: Some(proto_attachment(conf, att)),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            Ok(Some(cni::add_result_json(&conf.cni_version, &reply)))
        }
        Invocation::Del(conf, att) => {
            agent
                .del(DelRequest {
                    attachment: Some(proto_attachment(conf, att)),
                })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
        Invocation::Check(conf, att) => {
            let prev = conf
                .prev_result
                .as_ref()
                .expect("parse requires prevResult");
            let (prev_addresses, prev_interfaces) = cni::prev_result_summary(prev)?;
            agent
                .check(CheckRequest {
                    attachment: Some(proto_attachment(conf, att)),
                    prev_addresses,
                    prev_interfaces,
                })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
        Invocation::Status(_) => {
            let reply = agent
                .status(StatusRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            if reply.ready {
                Ok(None)
            } else {
                Err(CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    format!("the node agent is not ready: {}", reply.reason),
                ))
            }
        }
        Invocation::Gc(conf) => {
            agent
                .gc(GcRequest {
                    valid_attachments: conf
                        .valid_attachments
                        .iter()
                        .map(|a| ValidAttachment {
                            container_id: a.container_id.clone(),
                            ifname: a.ifname.clone(),
                        })
                        .collect(),
                })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
    }
}

async fn connect_agent(conf: &NetConf) -> Result<NodeAgentClient<Channel>, CniError> {
    let target = Target::Unix(conf.socket.clone());
    let channel = connect(&target, None).await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .and_then(std::error::Error::source)
            .map(|c| c.to_string())
            .unwrap_or_else(|| e.to_string());
        CniError::new(code::AGENT_NOT_RUNNING, "node agent not running")
            .with_details(format!("connecting to {}: {cause}", conf.socket.display()))
    })?;
    Ok(NodeAgentClient::new(channel))
}

fn proto_attachment(conf: &NetConf, att: &Attachment) -> ProtoAttachment {
    ProtoAttachment {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: att.netns.clone(),
        args: att.args.clone(),
        k8s_pod_namespace: att.arg("K8S_POD_NAMESPACE").to_owned(),
        k8s_pod_name: att.arg("K8S_POD_NAME").to_owned(),
        k8s_pod_uid: att.arg("K8S_POD_UID").to_owned(),
        k8s_pod_infra_container_id: att.arg("K8S_POD_INFRA_CONTAINER_ID").to_owned(),
        network_name: conf.name.clone(),
        network: conf.network.clone(),
    }
}

/// The agent's error as a CNI error: the code it named, or one derived from the gRPC code.
pub fn from_status(status: tonic::Status) -> CniError {
    let named = status
        .metadata()
        .get(CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let code = named.unwrap_or(match status.code() {
        tonic::Code::Unavailable => code::AGENT_NOT_RUNNING,
        tonic::Code::InvalidArgument => code::INVALID_NETWORK_CONFIG,
        tonic::Code::NotFound => code::UNKNOWN_CONTAINER,
        tonic::Code::ResourceExhausted => code::ALLOCATION_FAILED,
        _ => code::AGENT_FAILED,
    });
    CniError::new(code, status.message())
}

/// The JSON printed for an error, in the config's version when it was readable.
pub fn error_json(err: &CniError, invocation: Option<&Invocation>) -> Value {
    let version = invocation
        .and_then(Invocation::conf)
        .map(|c| c.cni_version.as_str())
        .unwrap_or(cni::PLUGIN_VERSION);
    err.to_json(version)
}
