//! The CNI protocol (spec 1.0.0, plus 1.1.0's STATUS and GC) as the shim speaks it:
//! parsing the `CNI_*` environment and the network config from stdin into an
//! [`Invocation`], and printing results and errors as the spec's JSON.
//!
//! Nothing here does I/O: the binary reads the environment and stdin, and the tests feed
//! both directly. Every rejection is a [`CniError`] with the spec's code and a message
//! naming the variable or field at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::DEFAULT_SOCKET;

/// CNI versions whose config and result formats this plugin implements.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// The version the plugin reports as its own (VERSION's `cniVersion`).
pub const PLUGIN_VERSION: &str = "1.1.0";
/// The network config's `type`.
pub const PLUGIN_TYPE: &str = "sluice";

/// The spec's error codes (CNI spec "Error") and Sluice's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (existing pods are unaffected).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADD, and existing pods may have limited
    /// connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
    /// The node agent's socket is absent or refuses connections.
    pub const AGENT_NOT_RUNNING: u32 = 100;
    /// An internal error with no better code: the agent failed in a way it could not
    /// classify, or the shim itself panicked (a bug).
    pub const AGENT_FAILED: u32 = 101;
    /// The controller (or static allocation file) could not allocate an address.
    pub const ALLOCATION_FAILED: u32 = 102;
    /// Netlink or the XDP stubs refused a step of the setup.
    pub const KERNEL_SETUP_FAILED: u32 = 103;
    /// CHECK found the attachment differing from what ADD set up.
    pub const CHECK_MISMATCH: u32 = 104;
}

/// A CNI error: printed as `{"cniVersion", "code", "msg", "details"}` on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error JSON, in `version` (the config's, or the plugin's when the config
    /// could not be read).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

/// CNI_COMMAND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        })
    }
}

/// One attachment in GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// The network config, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The node agent's socket (`socket`, default [`DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// Which network: "VPC/SUBNET" (`network`); empty for the default.
    pub network: String,
    /// CHECK's (and optionally DEL's) `prevResult`.
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Vec<ValidAttachment>,
}

/// The attachment's identity and context from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// CNI_ARGS as key-value pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub arg_pairs: BTreeMap<String, String>,
}

impl Attachment {
    pub fn arg(&self, key: &str) -> &str {
        self.arg_pairs.get(key).map(String::as_str).unwrap_or("")
    }
}

/// One parsed CNI invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// VERSION. The runtime's `cniVersion` on stdin is not needed (the reply lists every
    /// version the plugin supports, whatever the runtime speaks), so it is not kept.
    Version,
    Add(NetConf, Attachment),
    Del(NetConf, Attachment),
    Check(NetConf, Attachment),
    Status(NetConf),
    Gc(NetConf),
}

impl Invocation {
    pub fn command(&self) -> Command {
        match self {
            Self::Version => Command::Version,
            Self::Add(..) => Command::Add,
            Self::Del(..) => Command::Del,
            Self::Check(..) => Command::Check,
            Self::Status(_) => Command::Status,
            Self::Gc(_) => Command::Gc,
        }
    }

    pub fn conf(&self) -> Option<&NetConf> {
        match self {
            Self::Version => None,
            Self::Add(c, _) | Self::Del(c, _) | Self::Check(c, _) => Some(c),
            Self::Status(c) | Self::Gc(c) => Some(c),
        }
    }

    /// Parses the environment (through `env`) and stdin.
    pub fn parse(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Self, CniError> {
        let command = match env("CNI_COMMAND") {
            None => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "CNI_COMMAND is not set (ADD, DEL, CHECK, VERSION, STATUS or GC)",
                ))
            }
            Some(c) => Command::parse(&c).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
                )
            })?,
        };
        if command == Command::Version {
            return Ok(Self::Version);
        }
        let conf = parse_conf(stdin, command)?;
        let attachment = |need_netns: bool| parse_attachment(&env, need_netns);
        Ok(match command {
            Command::Add => Self::Add(conf, attachment(true)?),
            Command::Check => Self::Check(conf, attachment(true)?),
            Command::Del => Self::Del(conf, attachment(false)?),
            Command::Status => Self::Status(conf),
            Command::Gc => Self::Gc(conf),
            Command::Version => unreachable!("handled above"),
        })
    }
}

fn invalid_env(msg: String) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, msg)
}

fn parse_attachment(
    env: &impl Fn(&str) -> Option<String>,
    need_netns: bool,
) -> Result<Attachment, CniError> {
    let required = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid_env(format!("{name} is not set")))
    };
    let container_id = required("CNI_CONTAINERID")?;
    if !valid_container_id(&container_id) {
        return Err(invalid_env(format!(
            "CNI_CONTAINERID {container_id:?} is invalid: it must start with a letter or \
             digit and hold only letters, digits, '_', '.' and '-'"
        )));
    }
    let ifname = required("CNI_IFNAME")?;
    if let Err(why) = valid_ifname(&ifname) {
        return Err(invalid_env(format!(
            "CNI_IFNAME {ifname:?} is invalid: {why}"
        )));
    }
    let netns = if need_netns {
        required("CNI_NETNS")?
    } else {
        env("CNI_NETNS").unwrap_or_default()
    };
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(invalid_env(format!(
            "CNI_NETNS {netns:?} is not an absolute path"
        )));
    }
    let args = env("CNI_ARGS").unwrap_or_default();
    let arg_pairs = parse_args(&args)?;
    Ok(Attachment {
        container_id,
        netns,
        ifname,
        args,
        arg_pairs,
    })
}

/// The spec's container id rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface names: 1 to 15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn valid_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("it must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("it must not be . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("it must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// CNI_ARGS: `K=V;K=V`. An empty string is no arguments.
pub fn parse_args(args: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut pairs = BTreeMap::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid_env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(invalid_env(format!("CNI_ARGS: {pair:?} has an empty key")));
        }
        pairs.insert(k.to_owned(), v.to_owned());
    }
    Ok(pairs)
}

fn invalid_conf(msg: String) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg)
}

/// Fields Sluice refuses (code 2): it allocates addresses itself.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[(
    "ipam",
    "Sluice allocates addresses through its controller; remove the ipam section",
)];

fn parse_conf(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("decoding the network config from stdin: {e}"),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        CniError::new(
            code::DECODING_FAILURE,
            "decoding the network config from stdin: it is not a JSON object",
        )
    })?;
    let string = |field: &str| -> Result<Option<String>, CniError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid_conf(format!(
                "network config: {field} must be a string, not {other}"
            ))),
        }
    };
    let cni_version = string("cniVersion")?
        .ok_or_else(|| invalid_conf("network config: cniVersion is missing".into()))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "network config: cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if matches!(command, Command::Status | Command::Gc) && cni_version == "1.0.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command} needs cniVersion 1.1.0 or later; the network config says 1.0.0"),
        ));
    }
    let name =
        string("name")?.ok_or_else(|| invalid_conf("network config: name is missing".into()))?;
    if !valid_container_id(&name) {
        return Err(invalid_conf(format!(
            "network config: name {name:?} is invalid: it must start with a letter or digit \
             and hold only letters, digits, '_', '.' and '-'"
        )));
    }
    match string("type")? {
        None => return Err(invalid_conf("network config: type is missing".into())),
        Some(t) if t != PLUGIN_TYPE => {
            return Err(invalid_conf(format!(
                "network config: type is {t:?}; this plugin is {PLUGIN_TYPE:?}"
            )))
        }
        Some(_) => {}
    }
    for (field, why) in UNSUPPORTED_FIELDS {
        if let Some(v) = obj.get(*field) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("network config: unsupported field {field}: {v}"),
            )
            .with_details(*why));
        }
    }
    let socket = PathBuf::from(string("socket")?.unwrap_or_else(|| DEFAULT_SOCKET.into()));
    if !socket.is_absolute() {
        return Err(invalid_conf(format!(
            "network config: socket {:?} is not an absolute path",
            socket.display()
        )));
    }
    let network = string("network")?.unwrap_or_default();
    if !network.is_empty() && network.split('/').filter(|p| !p.is_empty()).count() != 2 {
        return Err(invalid_conf(format!(
            "network config: network {network:?} is not VPC/SUBNET"
        )));
    }
    let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
    if command == Command::Check && prev_result.is_none() {
        return Err(invalid_conf(
            "network config: CHECK needs prevResult (the result of ADD)".into(),
        ));
    }
    if let Some(prev) = &prev_result {
        if !prev.is_object() {
            return Err(invalid_conf(
                "network config: prevResult must be an object".into(),
            ));
        }
    }
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_valid_attachments(v)?,
    };
    if command == Command::Gc && !obj.contains_key("cni.dev/valid-attachments") {
        return Err(invalid_conf(
            "network config: GC needs cni.dev/valid-attachments".into(),
        ));
    }
    Ok(NetConf {
        cni_version,
        name,
        socket,
        network,
        prev_result,
        valid_attachments,
    })
}

fn parse_valid_attachments(v: &Value) -> Result<Vec<ValidAttachment>, CniError> {
    let bad = |i: usize, what: &str| {
        invalid_conf(format!(
            "network config: cni.dev/valid-attachments[{i}]: {what}"
        ))
    };
    let list = v.as_array().ok_or_else(|| {
        invalid_conf("network config: cni.dev/valid-attachments must be a list".into())
    })?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |f: &str| {
                item.get(f)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| bad(i, &format!("{f} must be a string")))
            };
            Ok(ValidAttachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// The addresses ("10.1.0.5/24") and interface names of a prevResult, for CHECK.
pub fn prev_result_summary(prev: &Value) -> Result<(Vec<String>, Vec<String>), CniError> {
    let bad = |what: &str| invalid_conf(format!("network config: prevResult: {what}"));
    let mut addresses = Vec::new();
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        addresses.push(
            ip.get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("ips[].address must be a string"))?
                .to_owned(),
        );
    }
    let mut interfaces = Vec::new();
    for i in prev
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        interfaces.push(
            i.get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("interfaces[].name must be a string"))?
                .to_owned(),
        );
    }
    Ok((addresses, interfaces))
}

/// VERSION's reply.
pub fn version_json() -> Value {
    json!({ "cniVersion": PLUGIN_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

/// ADD's result from the agent's reply, in the config's version (1.1.0 adds `mtu`).
pub fn add_result_json(version: &str, reply: &crate::api::proto::v1::AddReply) -> Value {
    let interfaces: Vec<Value> = reply
        .interfaces
        .iter()
        .map(|i| {
            let mut o = Map::new();
            o.insert("name".into(), i.name.clone().into());
            o.insert("mac".into(), i.mac.clone().into());
            if !i.sandbox.is_empty() {
                o.insert("sandbox".into(), i.sandbox.clone().into());
            }
            if version != "1.0.0" && i.mtu != 0 {
                o.insert("mtu".into(), i.mtu.into());
            }
            Value::Object(o)
        })
        .collect();
    let ips: Vec<Value> = reply
        .ips
        .iter()
        .map(
            |ip| json!({ "address": ip.address, "gateway": ip.gateway, "interface": ip.interface }),
        )
        .collect();
    let routes: Vec<Value> = reply
        .routes
        .iter()
        .map(|r| {
            if r.gw.is_empty() {
                json!({ "dst": r.dst })
            } else {
                json!({ "dst": r.dst, "gw": r.gw })
            }
        })
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

#[cfg(test)]
mod tests;
