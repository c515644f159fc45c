//! Forwarding one CNI invocation to the node agent over its Unix socket, and turning the
//! agent's reply into the spec's result JSON. This module holds no state and touches no
//! kernel object: what the agent cannot do, the shim does not try.
//!
//! Every wait is bounded: the connection by [`AGENT_CONNECT_TIMEOUT`], the command by
//! [`STATUS_TIMEOUT`] or [`COMMAND_TIMEOUT`], so a stuck agent costs the runtime an
//! error, never a hung plugin process.

use serde_json::Value;
use sluice_api::client::{connect, Target};
use sluice_api::proto::v1::node_agent_client::NodeAgentClient;
use sluice_api::proto::v1::{
    AddRequest, Attachment as ProtoAttachment, CheckRequest, DelRequest, GcRequest, StatusRequest,
    ValidAttachment,
};
use std::time::Duration;

use sluice_api::proto::v1::StatusReply;
use tonic::transport::Channel;

use crate::cni::{self, code, Attachment, CniError, Command, Invocation, NetConf};

/// The trailing metadata key in which the agent names the CNI error code.
pub const CODE_METADATA: &str = "sluice-cni-code";

/// How long the shim waits for a connection to the node agent's socket.
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the shim waits for the agent's answer to STATUS (the runtime asks every few
/// seconds; the agent's own probe of the controller is bounded well below this).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shim waits for ADD, DEL, CHECK and GC. The agent does one command at a
/// time and bounds each controller call (connect 2 s, answer 4 s), so this leaves room
/// for an ADD whose later step fails and is undone, and for a few commands queued
/// ahead; the agent skips a command whose shim stopped waiting.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `invocation` against the agent; the JSON to print on success (None: print
/// nothing, as for DEL and CHECK).
///
/// STATUS answers success, 50 (not available: new ADDs would fail; also when the agent is
/// not running or does not answer) or 51 (not available, and existing pods have limited
/// connectivity), as the spec defines them; a config error keeps its code.
pub async fn run(invocation: &Invocation) -> Result<Option<Value>, CniError> {
    let conf = match invocation.conf() {
        None => return Ok(Some(cni::version_json())),
        Some(conf) => conf,
    };
    let command = invocation.command();
    let deadline = if command == Command::Status {
        STATUS_TIMEOUT
    } else {
        COMMAND_TIMEOUT
    };
    let outcome = match tokio::time::timeout(deadline, forward(invocation, conf)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("the node agent did not answer {command} within {deadline:?}"),
        )
        .with_details(format!("socket {}", conf.socket.display()))),
    };
    match outcome {
        Err(e) if command == Command::Status && unavailable(e.code) => Err(CniError {
            code: code::PLUGIN_NOT_AVAILABLE,
            ..e
        }),
        other => other,
    }
}

/// Codes that, for STATUS, mean the plugin is not available (the agent is not running,
/// does not answer, or failed).
fn unavailable(c: u32) -> bool {
    c == code::TRY_AGAIN_LATER || c >= code::AGENT_NOT_RUNNING
}

async fn forward(invocation: &Invocation, conf: &NetConf) -> Result<Option<Value>, CniError> {
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
            status_outcome(&reply).map(|()| None)
        }
        Invocation::Gc(conf) => {
            agent
                .gc(GcRequest {
                    network_name: conf.name.clone(),
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

/// STATUS's reply as the CNI outcome.
pub fn status_outcome(reply: &StatusReply) -> Result<(), CniError> {
    if reply.ready {
        return Ok(());
    }
    let (c, what) = if reply.limited {
        (
            code::PLUGIN_NOT_AVAILABLE_LIMITED,
            format!(
                "the node agent is not ready and its {} pods have limited connectivity",
                reply.attachments
            ),
        )
    } else {
        (
            code::PLUGIN_NOT_AVAILABLE,
            "the node agent is not ready".to_owned(),
        )
    };
    Err(CniError::new(c, format!("{what}: {}", reply.reason)))
}

async fn connect_agent(conf: &NetConf) -> Result<NodeAgentClient<Channel>, CniError> {
    let target = Target::Unix(conf.socket.clone());
    let not_running = |why: String| {
        CniError::new(code::AGENT_NOT_RUNNING, "node agent not running")
            .with_details(format!("connecting to {}: {why}", conf.socket.display()))
    };
    let channel = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, connect(&target, None))
        .await
        .map_err(|_| not_running(format!("no connection within {AGENT_CONNECT_TIMEOUT:?}")))?
        .map_err(|e| {
            not_running(
                std::error::Error::source(&e)
                    .and_then(std::error::Error::source)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| e.to_string()),
            )
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

/// Runs `work`, turning a panic (a bug) into a CNI error, code 101, so the runtime still
/// reads error JSON on stdout; the panic hook has put one line on stderr.
pub fn catching<T>(work: impl FnOnce() -> Result<T, CniError>) -> Result<T, CniError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(CniError::new(
            code::AGENT_FAILED,
            format!(
                "sluice-cni internal error: {}",
                sluice_api::process::panic_message(&*payload)
            ),
        ))
    })
}

/// The JSON printed for an error, in the config's version when it was readable.
pub fn error_json(err: &CniError, invocation: Option<&Invocation>) -> Value {
    let version = invocation
        .and_then(Invocation::conf)
        .map(|c| c.cni_version.as_str())
        .unwrap_or(cni::PLUGIN_VERSION);
    err.to_json(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_error_101_with_its_message() {
        let e = catching::<()>(|| panic!("index {} out of range", 3)).unwrap_err();
        assert_eq!(e.code, code::AGENT_FAILED);
        assert_eq!(e.msg, "sluice-cni internal error: index 3 out of range");
        assert_eq!(
            error_json(&e, None)["code"],
            101,
            "printed as the spec's error JSON"
        );
        assert_eq!(catching(|| Ok(7)), Ok(7));
        let refused = CniError::new(code::INVALID_ENVIRONMENT, "x");
        assert_eq!(catching::<()>(|| Err(refused.clone())), Err(refused));
    }

    #[test]
    fn status_replies_map_to_ready_50_and_51() {
        let reply = |ready, limited| StatusReply {
            ready,
            reason: "why".into(),
            attachments: 3,
            limited,
        };
        assert_eq!(status_outcome(&reply(true, false)), Ok(()));
        let e = status_outcome(&reply(false, false)).unwrap_err();
        assert_eq!(e.code, code::PLUGIN_NOT_AVAILABLE);
        let e = status_outcome(&reply(false, true)).unwrap_err();
        assert_eq!(e.code, code::PLUGIN_NOT_AVAILABLE_LIMITED);
        assert!(
            e.msg.contains("3 pods have limited connectivity: why"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn for_status_an_absent_or_failing_agent_is_not_available() {
        for c in [
            code::TRY_AGAIN_LATER,
            code::AGENT_NOT_RUNNING,
            code::AGENT_FAILED,
            code::KERNEL_SETUP_FAILED,
        ] {
            assert!(unavailable(c), "{c}");
        }
        for c in [code::INCOMPATIBLE_VERSION, code::INVALID_NETWORK_CONFIG] {
            assert!(!unavailable(c), "{c}");
        }
    }
}
