//! Where a pod's address comes from: the controller over gRPC (`controller.proto`), or a
//! static allocation file standing in for it, behind one trait.
//!
//! Both are idempotent per (container id, interface): asking twice returns the same
//! allocation, and releasing what is not held succeeds.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use sluice_api::client::{connect, ClientTls, Target};
use sluice_api::proto::v1::controller_client::ControllerClient;
use sluice_api::proto::v1::{
    AttachEndpointRequest, DetachEndpointRequest, ListObjectsRequest, RegisterNodeRequest,
    UnderlayHost,
};
use sluice_api::{Ipv4Cidr, MacAddr};

/// What the agent asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// "VPC/SUBNET"; empty for the default network.
    pub network: String,
}

/// A pod interface's allocation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Allocation {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: [u8; 6],
    pub router_ip: Ipv4Addr,
    pub router_mac: [u8; 6],
    /// Bouncers' underlay addresses with their MACs, stable order.
    pub bouncers: Vec<(Ipv4Addr, [u8; 6])>,
    /// None: the node's own pod MTU.
    pub mtu: Option<u32>,
    pub vpc: String,
    pub subnet: String,
    /// Underlay hosts the node did not know when it asked (workers that registered since,
    /// with their MACs), so direct traffic to their pods finds a neighbour. Not recorded:
    /// it describes the cluster at the time of the attach, not the pod.
    #[serde(skip)]
    pub new_neighbors: Vec<UnderlayNeighbor>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("network {0:?} is not known to the allocator")]
    UnknownNetwork(String),
    #[error("subnet {0} has no free address")]
    Exhausted(String),
    #[error("allocation store {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("static allocation file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("controller {target} unreachable: {message}")]
    Unreachable { target: String, message: String },
    #[error("controller refused: {0}")]
    Refused(String),
    #[error("controller reply: {0}")]
    BadReply(String),
}

/// An underlay host (gateway or worker) with its MAC.
pub type UnderlayNeighbor = (Ipv4Addr, [u8; 6]);

/// The allocator the node agent uses.
pub trait Allocator: Send + Sync + 'static {
    /// Announces the node; returns the underlay hosts it must reach.
    fn register(
        &self,
        node: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<Vec<UnderlayNeighbor>, AllocError>> + Send;
    fn attach(
        &self,
        req: &AttachRequest,
    ) -> impl Future<Output = Result<Allocation, AllocError>> + Send;
    /// Ok(false) when nothing was held.
    fn detach(
        &self,
        node: &str,
        container_id: &str,
        ifname: &str,
    ) -> impl Future<Output = Result<bool, AllocError>> + Send;
    /// Whether the allocator answers now.
    fn reachable(&self) -> impl Future<Output = Result<(), AllocError>> + Send;
    /// Identities holding an allocation, when the allocator keeps them locally (the
    /// static file does; the controller's are its own business).
    fn held(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Forgets having announced `hosts` (from [`Allocation::new_neighbors`]): the ADD that
    /// learned them failed and took their neighbour entries back, so a later attach must
    /// announce them again.
    fn unlearn(&self, _hosts: &[UnderlayNeighbor]) {}
}

fn mac_of(s: &str, field: &str) -> Result<[u8; 6], String> {
    s.parse::<MacAddr>()
        .map(|m| m.0)
        .map_err(|e| format!("{field}: {e}"))
}

/// The static allocation file (config/static-allocation.toml documents it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    #[serde(default)]
    gateways: Vec<HostEntry>,
    #[serde(default)]
    workers: Vec<HostEntry>,
    subnets: Vec<SubnetEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    ip: Ipv4Addr,
    mac: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetEntry {
    vpc: String,
    name: String,
    vni: u32,
    cidr: String,
    router_mac: String,
    bouncers: Vec<Ipv4Addr>,
    #[serde(default)]
    range_start: Option<Ipv4Addr>,
    #[serde(default)]
    range_end: Option<Ipv4Addr>,
}

#[derive(Clone, Debug)]
struct Subnet {
    vpc: String,
    name: String,
    vni: u32,
    cidr: Ipv4Cidr,
    router_ip: Ipv4Addr,
    router_mac: [u8; 6],
    bouncers: Vec<UnderlayNeighbor>,
    first: u32,
    last: u32,
}

/// The controller's stand-in: subnets from a file, host-local style address leases
/// recorded one file per lease under `<state_dir>/leases`, so a restart loses nothing.
#[derive(Debug)]
pub struct StaticAllocator {
    subnets: Vec<Subnet>,
    neighbors: Vec<UnderlayNeighbor>,
    leases_dir: PathBuf,
    state: Mutex<Leases>,
}

#[derive(Debug, Default)]
struct Leases {
    /// (container id, ifname) -> (subnet index, address)
    by_owner: HashMap<(String, String), (usize, Ipv4Addr)>,
    used: HashSet<(u32, Ipv4Addr)>,
    /// Per subnet: where the next search starts (host-local's round robin).
    cursor: Vec<u32>,
}

impl StaticAllocator {
    pub fn load(file: &Path, state_dir: &Path) -> Result<Self, AllocError> {
        let bad = |message: String| AllocError::File {
            path: file.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
        let parsed: StaticFile = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        let mut macs = HashMap::new();
        let mut neighbors = Vec::new();
        for (i, h) in parsed.gateways.iter().chain(&parsed.workers).enumerate() {
            let mac = mac_of(&h.mac, &format!("host {i} ({})", h.ip)).map_err(bad)?;
            macs.insert(h.ip, mac);
            neighbors.push((h.ip, mac));
        }
        if parsed.subnets.is_empty() {
            return Err(bad("subnets: name at least one".into()));
        }
        let mut subnets = Vec::new();
        for s in &parsed.subnets {
            let at = |field: &str| format!("subnets {}/{}: {field}", s.vpc, s.name);
            let cidr: Ipv4Cidr = s
                .cidr
                .parse()
                .map_err(|e| bad(format!("{}: {e}", at("cidr"))))?;
            let net = cidr.first();
            if cidr.prefix_len() > 30 {
                return Err(bad(format!("{} is too small for pods", at("cidr"))));
            }
            let broadcast = net | (u32::MAX >> cidr.prefix_len());
            let first = s.range_start.map(u32::from).unwrap_or(net + 2);
            let last = s.range_end.map(u32::from).unwrap_or(broadcast - 1);
            if first < net + 2 || last > broadcast - 1 || first > last {
                return Err(bad(format!(
                    "{}: the range must lie inside {} after the router address",
                    at("range_start/range_end"),
                    s.cidr
                )));
            }
            if s.bouncers.is_empty() || s.bouncers.len() > sluice_dataplane::stubs::MAX_BOUNCERS {
                return Err(bad(format!(
                    "{}: name 1 to {} bouncers",
                    at("bouncers"),
                    sluice_dataplane::stubs::MAX_BOUNCERS
                )));
            }
            let bouncers = s
                .bouncers
                .iter()
                .map(|b| {
                    macs.get(b).map(|m| (*b, *m)).ok_or_else(|| {
                        bad(format!("{}: {b} is not among the gateways", at("bouncers")))
                    })
                })
                .collect::<Result<_, _>>()?;
            subnets.push(Subnet {
                vpc: s.vpc.clone(),
                name: s.name.clone(),
                vni: s.vni,
                cidr,
                router_ip: Ipv4Addr::from(net + 1),
                router_mac: mac_of(&s.router_mac, &at("router_mac")).map_err(bad)?,
                bouncers,
                first,
                last,
            });
        }
        let leases_dir = state_dir.join("leases");
        let store = |source| AllocError::Store {
            path: leases_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&leases_dir).map_err(store)?;
        let mut leases = Leases {
            cursor: subnets.iter().map(|s| s.first).collect(),
            ..Leases::default()
        };
        for entry in std::fs::read_dir(&leases_dir).map_err(store)? {
            let entry = entry.map_err(store)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(LEASE_TMP_PREFIX) {
                // A lease being written when the agent stopped: it never existed.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some((vni, ip)) = parse_lease_name(&name) else {
                continue;
            };
            let owner = std::fs::read_to_string(entry.path()).map_err(store)?;
            let Some((cid, ifname)) = owner.trim().split_once('/') else {
                continue;
            };
            let Some(idx) = subnets
                .iter()
                .position(|s| s.vni == vni && s.cidr.contains(ip))
            else {
                continue;
            };
            leases.used.insert((vni, ip));
            leases
                .by_owner
                .insert((cid.to_owned(), ifname.to_owned()), (idx, ip));
        }
        Ok(StaticAllocator {
            subnets,
            neighbors,
            leases_dir,
            state: Mutex::new(leases),
        })
    }

    fn lease_path(&self, vni: u32, ip: Ipv4Addr) -> PathBuf {
        self.leases_dir.join(format!("{vni}-{ip}"))
    }

    fn allocation(&self, idx: usize, ip: Ipv4Addr) -> Allocation {
        let s = &self.subnets[idx];
        let o = ip.octets();
        Allocation {
            vni: s.vni,
            ip,
            prefix_len: s.cidr.prefix_len(),
            // Derived from the address, so gateways know it without asking the node.
            mac: [0x0a, 0x58, o[0], o[1], o[2], o[3]],
            router_ip: s.router_ip,
            router_mac: s.router_mac,
            bouncers: s.bouncers.clone(),
            mtu: None,
            vpc: s.vpc.clone(),
            subnet: s.name.clone(),
            // The file's workers are all announced at register time.
            new_neighbors: Vec::new(),
        }
    }

    fn subnet_for(&self, network: &str) -> Result<usize, AllocError> {
        if network.is_empty() {
            return Ok(0);
        }
        self.subnets
            .iter()
            .position(|s| format!("{}/{}", s.vpc, s.name) == network)
            .ok_or_else(|| AllocError::UnknownNetwork(network.to_owned()))
    }

    fn attach_sync(&self, req: &AttachRequest) -> Result<Allocation, AllocError> {
        let idx = self.subnet_for(&req.network)?;
        let mut st = self.state.lock().expect("lease lock");
        let owner = (req.container_id.clone(), req.ifname.clone());
        if let Some((held_idx, ip)) = st.by_owner.get(&owner) {
            return Ok(self.allocation(*held_idx, *ip));
        }
        let s = &self.subnets[idx];
        let span = s.last - s.first + 1;
        let start = st.cursor[idx];
        for step in 0..span {
            let candidate = s.first + (start - s.first + step) % span;
            let ip = Ipv4Addr::from(candidate);
            if st.used.contains(&(s.vni, ip)) {
                continue;
            }
            match self.write_lease(s.vni, ip, &owner) {
                Ok(true) => {}
                // A lease file left by anyone else is never overwritten.
                Ok(false) => continue,
                Err(e) => return Err(e),
            }
            st.used.insert((s.vni, ip));
            st.by_owner.insert(owner, (idx, ip));
            st.cursor[idx] = if candidate == s.last {
                s.first
            } else {
                candidate + 1
            };
            return Ok(self.allocation(idx, ip));
        }
        Err(AllocError::Exhausted(format!("{}/{}", s.vpc, s.name)))
    }

    /// Creates the lease file of (vni, ip) naming `owner`, whole or not at all: the owner
    /// is written and flushed to a temporary file, which is then hard-linked to the lease
    /// name (refused if that exists) and removed. A failed write or a crash leaves no lease
    /// file (a half-written one would hold its address for ever); at worst a temporary
    /// file, which [`StaticAllocator::load`] removes. Ok(false): the address is taken.
    fn write_lease(
        &self,
        vni: u32,
        ip: Ipv4Addr,
        owner: &(String, String),
    ) -> Result<bool, AllocError> {
        use std::io::Write;
        let path = self.lease_path(vni, ip);
        let tmp = self
            .leases_dir
            .join(format!("{LEASE_TMP_PREFIX}{vni}-{ip}"));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(format!("{}/{}\n", owner.0, owner.1).as_bytes())?;
            f.sync_all()
        });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        // The directory is not flushed here (a disk flush on the ADD path): ADD answers only
        // after the attachment record's durable write, and on a journalling file system
        // (ext4, xfs) that flush commits this link too.
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(AllocError::Store { path, source: e }),
        }
    }

    fn detach_sync(&self, container_id: &str, ifname: &str) -> Result<bool, AllocError> {
        let mut st = self.state.lock().expect("lease lock");
        let owner = (container_id.to_owned(), ifname.to_owned());
        let Some((idx, ip)) = st.by_owner.get(&owner).copied() else {
            return Ok(false);
        };
        let vni = self.subnets[idx].vni;
        let path = self.lease_path(vni, ip);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AllocError::Store { path, source }),
        }
        st.by_owner.remove(&owner);
        st.used.remove(&(vni, ip));
        Ok(true)
    }

    /// Leases held (for leak checks).
    pub fn lease_count(&self) -> usize {
        self.state.lock().expect("lease lock").by_owner.len()
    }
}

/// Lease files being written are `.tmp-<vni>-<ip>` until they are complete.
const LEASE_TMP_PREFIX: &str = ".tmp-";

fn parse_lease_name(name: &str) -> Option<(u32, Ipv4Addr)> {
    let (vni, ip) = name.split_once('-')?;
    Some((vni.parse().ok()?, ip.parse().ok()?))
}

impl Allocator for StaticAllocator {
    async fn register(
        &self,
        _node: &str,
        _ip: Ipv4Addr,
        _mac: [u8; 6],
    ) -> Result<Vec<UnderlayNeighbor>, AllocError> {
        Ok(self.neighbors.clone())
    }

    async fn attach(&self, req: &AttachRequest) -> Result<Allocation, AllocError> {
        self.attach_sync(req)
    }

    async fn detach(
        &self,
        _node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, AllocError> {
        self.detach_sync(container_id, ifname)
    }

    async fn reachable(&self) -> Result<(), AllocError> {
        std::fs::metadata(&self.leases_dir)
            .map(|_| ())
            .map_err(|source| AllocError::Store {
                path: self.leases_dir.clone(),
                source,
            })
    }

    fn held(&self) -> Vec<(String, String)> {
        let st = self.state.lock().expect("lease lock");
        st.by_owner.keys().cloned().collect()
    }
}

/// One controller call: on a broken channel, a reconnect and one more try (every call
/// is idempotent). `$req` is evaluated per try. Each try is bounded by
/// [`CONNECT_TIMEOUT`] and [`CALL_TIMEOUT`]; a call that times out is not tried again (a
/// controller that does not answer will not answer the second try either).
macro_rules! call {
    ($self:ident, $method:ident, $req:expr) => {{
        let method = stringify!($method);
        let mut outcome = $self
            .timed(method, $self.client().await?.$method($req))
            .await?;
        if let Err(status) = &outcome {
            if $self.is_broken(status).await {
                outcome = $self
                    .timed(method, $self.client().await?.$method($req))
                    .await?;
            }
        }
        match outcome {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err($self.failed(status).await),
        }
    }};
}

/// How long the agent waits for a connection to the controller (TCP and TLS handshakes,
/// or the Unix socket).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the agent waits for the answer to one controller call. The node thread does
/// one command at a time, so this bounds what a controller that accepts connections but
/// never answers (overloaded, black-holed) costs every ADD, DEL and STATUS queued behind.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The controller's `sluice.v1.Controller` service.
///
/// Besides addresses, the controller is where a node learns the other workers' underlay
/// MACs (the stubs send direct traffic to them): `RegisterNode` names the gateways, and
/// the registered nodes are listed (`ListObjects` of kind `Node`) at registration and
/// again on the first attach and then at most once per [`PEER_REFRESH`], so a worker that
/// joined later is learned by the next ADD. The channel is opened once and reused; a call
/// that finds it broken (a restarted controller) reconnects and is tried once more, which
/// is safe because every call is idempotent.
#[derive(Debug)]
pub struct ControllerAllocator {
    target: Target,
    /// Client certificate and CA for an `https://` controller.
    tls: Option<ClientTls>,
    text: String,
    channel: tokio::sync::Mutex<Option<tonic::transport::Channel>>,
    peers: Mutex<Peers>,
}

/// How often an attach may list the registered nodes again.
pub const PEER_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
struct Peers {
    /// This node's underlay address (not its own neighbour).
    own: Option<Ipv4Addr>,
    /// The registration, repeated when the controller has forgotten it (a new leader).
    registered: Option<(String, Ipv4Addr, [u8; 6])>,
    known: HashMap<Ipv4Addr, [u8; 6]>,
    listed_at: Option<std::time::Instant>,
}

impl ControllerAllocator {
    /// A client of the controller at `target` (`unix:///path` or `https://host:port`);
    /// an `https://` target needs `tls` (the controller serves TCP only with mutual TLS).
    pub fn new(target: &str, tls: Option<ClientTls>) -> Result<Self, AllocError> {
        let parsed: Target = target.parse().map_err(|e| AllocError::Unreachable {
            target: target.to_owned(),
            message: format!("{e}"),
        })?;
        if matches!(parsed, Target::Https { .. }) && tls.is_none() {
            return Err(AllocError::Unreachable {
                target: target.to_owned(),
                message: "an https:// controller needs [controller_tls] ca, cert and key".into(),
            });
        }
        Ok(ControllerAllocator {
            target: parsed,
            tls,
            text: target.to_owned(),
            channel: tokio::sync::Mutex::new(None),
            peers: Mutex::new(Peers::default()),
        })
    }

    async fn client(&self) -> Result<ControllerClient<tonic::transport::Channel>, AllocError> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref() {
            return Ok(ControllerClient::new(channel.clone()));
        }
        let channel =
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.target, self.tls.as_ref()))
                .await
                .map_err(|_| AllocError::Unreachable {
                    target: self.text.clone(),
                    message: format!("no connection within {CONNECT_TIMEOUT:?}"),
                })?
                .map_err(|e| AllocError::Unreachable {
                    target: self.text.clone(),
                    message: with_causes(&e),
                })?;
        *cached = Some(channel.clone());
        Ok(ControllerClient::new(channel))
    }

    /// `call` bounded by [`CALL_TIMEOUT`]. On a timeout the cached channel is dropped (the
    /// connection may be stuck), so the next call connects afresh.
    async fn timed<T>(&self, method: &str, call: impl Future<Output = T>) -> Result<T, AllocError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(outcome) => Ok(outcome),
            Err(_) => {
                *self.channel.lock().await = None;
                Err(AllocError::Unreachable {
                    target: self.text.clone(),
                    message: format!("no answer to {method} within {CALL_TIMEOUT:?}"),
                })
            }
        }
    }

    /// Whether a call failed for want of a connection; if so, the cached channel is
    /// dropped so the next call reconnects (a restarted controller has a new socket).
    async fn is_broken(&self, status: &tonic::Status) -> bool {
        // A connection the controller closed surfaces as Unknown with a transport error
        // as its source, not always as Unavailable.
        let transport =
            std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>());
        let broken = status.code() == tonic::Code::Unavailable || transport;
        if broken {
            *self.channel.lock().await = None;
        }
        broken
    }

    /// Maps a failed call to the allocator's terms.
    async fn failed(&self, status: tonic::Status) -> AllocError {
        if self.is_broken(&status).await {
            return AllocError::Unreachable {
                target: self.text.clone(),
                message: status.message().to_owned(),
            };
        }
        refused(status)
    }

    /// The registered nodes' underlay hosts this node has not learned yet: all of them
    /// when registering; on an attach, those that are new or changed, when no attach
    /// has listed them in the last [`PEER_REFRESH`].
    async fn new_peers(&self, registering: bool) -> Result<Vec<UnderlayNeighbor>, AllocError> {
        let due = {
            let p = self.peers.lock().expect("peers lock");
            registering || p.listed_at.is_none_or(|t| t.elapsed() >= PEER_REFRESH)
        };
        if !due {
            return Ok(Vec::new());
        }
        let reply = call!(
            self,
            list_objects,
            ListObjectsRequest {
                kind: "Node".into(),
            }
        )?;
        let mut listed = Vec::new();
        for o in &reply.objects {
            listed.push(node_host(&o.json)?);
        }
        let mut p = self.peers.lock().expect("peers lock");
        if !registering {
            p.listed_at = Some(std::time::Instant::now());
        }
        let own = p.own;
        let mut fresh = Vec::new();
        for (ip, mac) in listed {
            if Some(ip) == own {
                continue;
            }
            if registering || p.known.get(&ip) != Some(&mac) {
                p.known.insert(ip, mac);
                fresh.push((ip, mac));
            }
        }
        Ok(fresh)
    }
}

/// A `Node` object's underlay host, from its JSON (`spec.ip`, `spec.mac`).
fn node_host(json: &str) -> Result<UnderlayNeighbor, AllocError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| AllocError::BadReply(format!("a Node object: {e}")))?;
    let field = |f: &str| {
        v["spec"][f]
            .as_str()
            .ok_or_else(|| AllocError::BadReply(format!("a Node object: spec.{f} is missing")))
    };
    host_of(&UnderlayHost {
        ip: field("ip")?.to_owned(),
        mac: field("mac")?.to_owned(),
    })
}

fn host_of(h: &UnderlayHost) -> Result<UnderlayNeighbor, AllocError> {
    let ip =
        h.ip.parse()
            .map_err(|_| AllocError::BadReply(format!("underlay ip {:?}", h.ip)))?;
    let mac = mac_of(&h.mac, "underlay mac").map_err(AllocError::BadReply)?;
    Ok((ip, mac))
}

/// An error with its causes, `: `-separated (a TLS failure says why only in its source:
/// "invalid peer certificate: UnknownIssuer").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text
}

/// What the controller says when it does not know the node (a new leader in Kubernetes
/// mode starts without registrations).
const NOT_REGISTERED: &str = "is not registered; call RegisterNode first";

fn refused(status: tonic::Status) -> AllocError {
    match status.code() {
        tonic::Code::NotFound => AllocError::UnknownNetwork(status.message().to_owned()),
        tonic::Code::ResourceExhausted => AllocError::Exhausted(status.message().to_owned()),
        _ => AllocError::Refused(format!("{}: {}", status.code(), status.message())),
    }
}

impl Allocator for ControllerAllocator {
    async fn register(
        &self,
        node: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<Vec<UnderlayNeighbor>, AllocError> {
        {
            let mut p = self.peers.lock().expect("peers lock");
            p.own = Some(ip);
            p.registered = Some((node.to_owned(), ip, mac));
        }
        let reply = call!(
            self,
            register_node,
            RegisterNodeRequest {
                node: node.to_owned(),
                underlay: Some(UnderlayHost {
                    ip: ip.to_string(),
                    mac: MacAddr(mac).to_string(),
                }),
            }
        )?;
        let mut hosts = reply
            .gateways
            .iter()
            .map(host_of)
            .collect::<Result<Vec<_>, _>>()?;
        hosts.extend(self.new_peers(true).await?);
        Ok(hosts)
    }

    async fn attach(&self, req: &AttachRequest) -> Result<Allocation, AllocError> {
        let request = AttachEndpointRequest {
            node: req.node.clone(),
            container_id: req.container_id.clone(),
            interface: req.ifname.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            network: req.network.clone(),
        };
        let r = match call!(self, attach_endpoint, request.clone()) {
            // A controller that lost the registration (a new leader): register again
            // and retry once.
            Err(AllocError::Refused(why)) if why.contains(NOT_REGISTERED) => {
                let registered = self.peers.lock().expect("peers lock").registered.clone();
                let Some((node, ip, mac)) = registered else {
                    return Err(AllocError::Refused(why));
                };
                tracing::info!(%node, "the controller forgot this node; registering again");
                self.register(&node, ip, mac).await?;
                call!(self, attach_endpoint, request.clone())?
            }
            other => other?,
        };
        let addr = |field: &str, v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| AllocError::BadReply(format!("{field} {v:?}")))
        };
        let bouncers: Vec<UnderlayNeighbor> =
            r.bouncers.iter().map(host_of).collect::<Result<_, _>>()?;
        if bouncers.is_empty() {
            // No gateway holds the subnet's bouncer role (none registered): the pod
            // could not reach anything. Refuse rather than attach a dead interface, and
            // give the address back (the agent only releases what it accepted).
            self.detach(&req.node, &req.container_id, &req.ifname)
                .await?;
            return Err(AllocError::Refused(format!(
                "subnet {}/{} has no bouncer gateway yet (register a gateway first)",
                r.vpc, r.subnet
            )));
        }
        // A failed listing costs only direct paths to nodes that joined meanwhile (the
        // bouncers still reach them), so it does not fail the attach.
        let new_neighbors = self.new_peers(false).await.unwrap_or_else(|e| {
            tracing::warn!("listing the registered nodes: {e}");
            Vec::new()
        });
        Ok(Allocation {
            vni: r.vni,
            ip: addr("ip", &r.ip)?,
            prefix_len: u8::try_from(r.prefix_len)
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| AllocError::BadReply(format!("prefix_len {}", r.prefix_len)))?,
            mac: mac_of(&r.mac, "mac").map_err(AllocError::BadReply)?,
            router_ip: addr("router_ip", &r.router_ip)?,
            router_mac: mac_of(&r.router_mac, "router_mac").map_err(AllocError::BadReply)?,
            bouncers,
            mtu: (r.mtu != 0).then_some(r.mtu),
            vpc: r.vpc,
            subnet: r.subnet,
            new_neighbors,
        })
    }

    async fn detach(
        &self,
        node: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, AllocError> {
        call!(
            self,
            detach_endpoint,
            DetachEndpointRequest {
                node: node.to_owned(),
                container_id: container_id.to_owned(),
                interface: ifname.to_owned(),
            }
        )
        .map(|r| r.released)
    }

    fn unlearn(&self, hosts: &[UnderlayNeighbor]) {
        let mut p = self.peers.lock().expect("peers lock");
        for (ip, mac) in hosts {
            if p.known.get(ip) == Some(mac) {
                p.known.remove(ip);
            }
        }
        p.listed_at = None;
    }

    async fn reachable(&self) -> Result<(), AllocError> {
        // Connecting proves little for a cached channel: ask for something cheap.
        call!(
            self,
            list_objects,
            ListObjectsRequest {
                kind: "Gateway".into(),
            }
        )
        .map(|_| ())
    }
}

/// The agent's allocator, one of the two (a trait object would need boxed futures).
#[derive(Debug)]
pub enum AnyAllocator {
    Static(StaticAllocator),
    Controller(ControllerAllocator),
}

impl Allocator for AnyAllocator {
    async fn register(
        &self,
        node: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<Vec<UnderlayNeighbor>, AllocError> {
        match self {
            Self::Static(a) => a.register(node, ip, mac).await,
            Self::Controller(a) => a.register(node, ip, mac).await,
        }
    }
    async fn attach(&self, req: &AttachRequest) -> Result<Allocation, AllocError> {
        match self {
            Self::Static(a) => a.attach(req).await,
            Self::Controller(a) => a.attach(req).await,
        }
    }
    async fn detach(&self, node: &str, cid: &str, ifname: &str) -> Result<bool, AllocError> {
        match self {
            Self::Static(a) => a.detach(node, cid, ifname).await,
            Self::Controller(a) => a.detach(node, cid, ifname).await,
        }
    }
    async fn reachable(&self) -> Result<(), AllocError> {
        match self {
            Self::Static(a) => a.reachable().await,
            Self::Controller(a) => a.reachable().await,
        }
    }
    fn held(&self) -> Vec<(String, String)> {
        match self {
            Self::Static(a) => a.held(),
            Self::Controller(a) => a.held(),
        }
    }
    fn unlearn(&self, hosts: &[UnderlayNeighbor]) {
        match self {
            Self::Static(a) => a.unlearn(hosts),
            Self::Controller(a) => a.unlearn(hosts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[gateways]]
ip = "198.18.0.1"
mac = "02:00:00:00:00:01"

[[subnets]]
vpc = "a"
name = "web"
vni = 100
cidr = "10.1.0.0/29"
router_mac = "02:00:5e:00:01:01"
bouncers = ["198.18.0.1"]
"#;

    fn req(cid: &str) -> AttachRequest {
        AttachRequest {
            container_id: cid.into(),
            ifname: "eth0".into(),
            ..AttachRequest::default()
        }
    }

    #[test]
    fn leases_are_idempotent_exhaustible_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("alloc.toml");
        std::fs::write(&file, FILE).expect("write");
        let a = StaticAllocator::load(&file, dir.path()).expect("valid");
        let first = a.attach_sync(&req("c1")).expect("allocates");
        assert_eq!(first.ip, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(first.router_ip, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(first.mac, [0x0a, 0x58, 10, 1, 0, 2]);
        assert_eq!(a.attach_sync(&req("c1")).expect("again"), first);
        // /29: .2 to .6 are pods.
        for i in 2..=5 {
            a.attach_sync(&req(&format!("c{i}"))).expect("room");
        }
        assert!(matches!(
            a.attach_sync(&req("c6")),
            Err(AllocError::Exhausted(_))
        ));
        drop(a);
        let b = StaticAllocator::load(&file, dir.path()).expect("reload");
        assert_eq!(b.lease_count(), 5);
        assert_eq!(b.attach_sync(&req("c1")).expect("kept").ip, first.ip);
        assert!(b.detach_sync("c1", "eth0").expect("released"));
        assert!(!b.detach_sync("c1", "eth0").expect("idempotent"));
        assert_eq!(
            b.attach_sync(&req("c7")).expect("reused").ip,
            Ipv4Addr::new(10, 1, 0, 2)
        );
    }

    #[test]
    fn a_lease_that_cannot_be_written_leaves_no_file_and_a_crashed_one_is_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("alloc.toml");
        std::fs::write(&file, FILE).expect("write");
        let a = StaticAllocator::load(&file, dir.path()).expect("valid");
        // The temporary file cannot be created (a directory has its name).
        let blocker = dir.path().join("leases/.tmp-100-10.1.0.2");
        std::fs::create_dir(&blocker).expect("mkdir");
        let e = a.attach_sync(&req("c1")).unwrap_err();
        assert!(matches!(e, AllocError::Store { .. }), "{e}");
        std::fs::remove_dir(&blocker).expect("rmdir");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("leases"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert_eq!(a.lease_count(), 0);
        // The address was not lost: the next attach gets it.
        assert_eq!(
            a.attach_sync(&req("c1")).expect("allocates").ip,
            Ipv4Addr::new(10, 1, 0, 2)
        );
        // A crash while writing leaves at most a temporary file: a restart removes it and
        // its address is free.
        drop(a);
        std::fs::write(dir.path().join("leases/.tmp-100-10.1.0.3"), "c2/eth").unwrap();
        let b = StaticAllocator::load(&file, dir.path()).expect("reload");
        assert!(!dir.path().join("leases/.tmp-100-10.1.0.3").exists());
        assert_eq!(b.lease_count(), 1);
        assert_eq!(
            b.attach_sync(&req("c2")).expect("allocates").ip,
            Ipv4Addr::new(10, 1, 0, 3)
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("alloc.toml");
        std::fs::write(&file, FILE.replace("[\"198.18.0.1\"]", "[\"198.18.0.9\"]")).unwrap();
        let e = StaticAllocator::load(&file, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/web: bouncers: 198.18.0.9"), "{e}");
        std::fs::write(&file, FILE.replace("10.1.0.0/29", "10.1.0.0/33")).unwrap();
        let e = StaticAllocator::load(&file, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cidr"), "{e}");
    }
}
