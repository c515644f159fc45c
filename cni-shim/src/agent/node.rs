//! The node agent's kernel work: one dedicated thread owns the XDP stubs, the netlink
//! socket of the agent's namespace and the attachment records, and carries out one CNI
//! command at a time (the gRPC service sends them here as [`Job`]s). Pod namespaces are
//! entered from this thread only for the calls that must run there.
//!
//! Every ADD step that creates something pushes its undo; a failure runs the undos in
//! reverse, so a failed ADD leaves no veth, map entry, lease or record behind. DEL is
//! idempotent. On start the agent re-adopts its pinned maps and recorded pods (they keep
//! forwarding while it is down) and removes what a crash may have left half made.
//!
//! The thread must not die on its own: a panic here ends the process (with the one-line
//! report of the panic hook), so the runtime and the DaemonSet see an agent that is not
//! running, never one that answers "failed" to everything.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_api::proto::v1::{AddReply, CniInterface, CniIp, CniRoute, StatusReply};
use sluice_api::MacAddr;
use sluice_dataplane::stubs::{NodeIdentity, NodeStubs, PodEntry, StubError};
use tokio::sync::{mpsc, oneshot};

use super::allocator::{AllocError, Allocation, Allocator, AttachRequest};
use super::config::NodeConfig;
use super::ethtool::{Ethtool, EthtoolError};
use super::link::{LinkError, Netlink};
use super::netns::{Netns, NetnsError};
use super::records::{PendingReleases, Record, RecordError, Records};
use crate::cni::code;

/// Environment variable naming a step of ADD where a fault is injected (tests only):
/// `STEP` fails the ADD there (a failed ADD must leave nothing behind), `hang:STEP` stops
/// the node thread there for good (a test then kills the agent: a crash mid-ADD), and
/// `panic:STEP` panics there (the agent must end, not linger). Steps, in order:
/// [`FAULT_STEPS`].
pub const FAULT_ENV: &str = "SLUICE_NODE_FAULT";

/// The steps of ADD where [`FAULT_ENV`] can inject a fault, in the order ADD reaches them.
pub const FAULT_STEPS: [&str; 4] = [
    "after_veth",
    "after_pod_netns",
    "after_pod_setup",
    "after_maps",
];

/// What [`FAULT_ENV`] asks for at its step.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    Fail(String),
    Hang(String),
    Panic(String),
}

impl Fault {
    fn parse(text: &str) -> Result<Self, String> {
        let (make, step): (fn(String) -> Fault, &str) = match text.split_once(':') {
            None => (Fault::Fail, text),
            Some(("hang", step)) => (Fault::Hang, step),
            Some(("panic", step)) => (Fault::Panic, step),
            Some((how, _)) => {
                return Err(format!("{FAULT_ENV}={text}: {how:?} is not hang or panic"))
            }
        };
        if !FAULT_STEPS.contains(&step) {
            return Err(format!(
                "{FAULT_ENV}={text}: the step is one of {FAULT_STEPS:?}"
            ));
        }
        Ok(make(step.to_owned()))
    }
}

/// How soon a release the allocator could not take is tried again, doubling up to
/// [`RETRY_MAX`] while it keeps failing.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Prefix of host-side veth names: `sl` and 11 hex digits of a hash of the attachment.
pub const HOST_IF_PREFIX: &str = "sl";

/// What can go wrong on the agent's side, each with its CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("CNI_NETNS: {0}")]
    Netns(#[from] NetnsError),
    #[error("address allocation: {0}")]
    Alloc(#[from] AllocError),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("XDP stubs: {0}")]
    Stubs(#[from] StubError),
    #[error("{0}")]
    Ethtool(#[from] EthtoolError),
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("failure injected after step {0} ({FAULT_ENV})")]
    Injected(String),
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("the node agent's worker thread stopped")]
    Stopped,
}

impl AgentError {
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::Netns(_) => code::INVALID_ENVIRONMENT,
            Self::Alloc(AllocError::Unreachable { .. }) => code::TRY_AGAIN_LATER,
            Self::Alloc(_) => code::ALLOCATION_FAILED,
            Self::Link(_)
            | Self::Stubs(_)
            | Self::Ethtool(_)
            | Self::Injected(_)
            | Self::Socket(_) => code::KERNEL_SETUP_FAILED,
            Self::Record(_) => code::IO_FAILURE,
            Self::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            Self::Mismatch(_) => code::CHECK_MISMATCH,
            Self::Invalid(_) => code::INVALID_NETWORK_CONFIG,
            Self::Stopped => code::AGENT_FAILED,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Netns(_) | Self::Invalid(_) => tonic::Code::InvalidArgument,
            Self::Alloc(AllocError::Unreachable { .. }) => tonic::Code::Unavailable,
            Self::Alloc(AllocError::Exhausted(_)) => tonic::Code::ResourceExhausted,
            Self::Alloc(AllocError::UnknownNetwork(_)) => tonic::Code::NotFound,
            Self::UnknownContainer(_) => tonic::Code::NotFound,
            Self::Mismatch(_) => tonic::Code::FailedPrecondition,
            _ => tonic::Code::Internal,
        }
    }
}

/// The attachment as the agent gets it from the shim.
pub type AttachmentMsg = sluice_api::proto::v1::Attachment;

/// One command for the node thread, with where to send its outcome.
#[derive(Debug)]
pub enum Job {
    Add(AttachmentMsg, oneshot::Sender<Result<AddReply, AgentError>>),
    Del(AttachmentMsg, oneshot::Sender<Result<bool, AgentError>>),
    Check {
        attachment: AttachmentMsg,
        prev_addresses: Vec<String>,
        prev_interfaces: Vec<String>,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Status(oneshot::Sender<StatusReply>),
    /// GC of network `.0` (the config's `name`), keeping the attachments in `.1`.
    Gc(
        (String, Vec<(String, String)>),
        oneshot::Sender<Result<Vec<String>, AgentError>>,
    ),
}

impl Job {
    /// Whether whoever asked has stopped waiting (the shim gave up, its connection
    /// closed): such a job is skipped rather than done for nobody, so a backlog behind a
    /// slow controller drains instead of growing.
    fn abandoned(&self) -> bool {
        match self {
            Job::Add(_, r) => r.is_closed(),
            Job::Del(_, r) => r.is_closed(),
            Job::Check { reply, .. } => reply.is_closed(),
            Job::Status(r) => r.is_closed(),
            Job::Gc(_, r) => r.is_closed(),
        }
    }
}

/// The host-side interface name of an attachment: `sl` + 11 hex digits of FNV-1a over
/// "container_id/ifname". Deterministic, so DEL finds it without a record.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IF_PREFIX}{:011x}", h >> 20)
}

/// Wall time of each step of one ADD, logged with its "attached" event (`steps="alloc:0.41
/// veth:1.20 ..."`, milliseconds) so the provisioning benchmark can say where the time
/// goes.
#[derive(Debug)]
struct Laps {
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Self {
        let now = Instant::now();
        Laps {
            start: now,
            last: now,
            steps: Vec::with_capacity(16),
        }
    }

    /// Ends step `name` now.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    /// Records `name`, measured elsewhere (it overlapped other steps).
    fn note(&mut self, name: &'static str, took: Duration) {
        self.steps.push((name, took));
    }

    fn total(&self) -> Duration {
        self.last - self.start
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|(n, d)| format!("{n}:{:.3}", d.as_secs_f64() * 1e3))
            .collect();
        parts.join(" ")
    }
}

fn is_host_ifname(name: &str) -> bool {
    name.len() == 13
        && name.starts_with(HOST_IF_PREFIX)
        && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Mounts bpffs where the pin directory needs it, unless already there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), String> {
    let mount_point = if pin_dir.starts_with("/sys/fs/bpf") {
        Path::new("/sys/fs/bpf")
    } else {
        pin_dir
    };
    std::fs::create_dir_all(mount_point)
        .map_err(|e| format!("creating {}: {e}", mount_point.display()))?;
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if is_bpffs(mount_point) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting bpffs on {}: {e}", mount_point.display()))?;
    tracing::info!(at = %mount_point.display(), "mounted bpffs");
    Ok(())
}

/// A handle on the node thread.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl NodeHandle {
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }
}

/// Starts the node thread: mounts bpffs, loads the stubs, attaches transit, registers
/// with the allocator and re-adopts recorded pods. Returns once it is serving, or the
/// reason it could not start.
pub fn start<A: Allocator>(config: NodeConfig, allocator: Arc<A>) -> Result<NodeHandle, String> {
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sluice-node".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting the node thread: {e}")));
                    return;
                }
            };
            let serve = async move {
                let mut node = match Node::start(config, allocator).await {
                    Ok(node) => {
                        let _ = ready_tx.send(Ok(()));
                        node
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let retry = node.retry_at;
                    let due = async move {
                        match retry {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        job = jobs_rx.recv() => match job {
                            Some(job) => node.run(job).await,
                            None => break,
                        },
                        () = due => node.retry_owed().await,
                    }
                }
            };
            // A panic has already been reported by the hook (one line); the process
            // ends rather than leave a service whose every answer is "stopped".
            let run = std::panic::AssertUnwindSafe(|| rt.block_on(serve));
            if std::panic::catch_unwind(run).is_err() {
                std::process::exit(101);
            }
        })
        .map_err(|e| format!("spawning the node thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the node thread stopped while starting".to_string())??;
    Ok(NodeHandle { jobs: jobs_tx })
}

struct Node<A> {
    config: NodeConfig,
    allocator: Arc<A>,
    stubs: NodeStubs,
    host: Netlink,
    home: Netns,
    records: Records,
    identity: NodeIdentity,
    pod_mtu: u32,
    fault: Option<Fault>,
    /// The ethtool generic netlink family's id, once resolved.
    ethtool_family: Option<u16>,
    /// Releases the allocator has not taken yet (on disk).
    owed: PendingReleases,
    /// Whether the allocator has taken this node's registration since the agent started.
    registered: bool,
    /// When to try owed releases (and the registration) again, and the wait after that.
    retry_at: Option<tokio::time::Instant>,
    retry_wait: Duration,
}

/// A step of ADD to take back.
enum Undo {
    Release,
    /// An underlay neighbour entry this ADD created (none was there), with whether the
    /// allocator announced it as a new host (then it must announce it again).
    RemoveNeighbor(Ipv4Addr, Option<[u8; 6]>),
    DeleteVeth(String),
    RemovePod(u32),
    RemoveRecord,
}

/// The loopback interface's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

impl<A: Allocator> Node<A> {
    async fn start(config: NodeConfig, allocator: Arc<A>) -> Result<Self, String> {
        ensure_bpffs(&config.pin_dir)?;
        let stubs = NodeStubs::load(&config.pin_dir).map_err(|e| e.to_string())?;
        let home = Netns::current().map_err(|e| e.to_string())?;
        let host = Netlink::open().map_err(|e| format!("opening a netlink socket: {e}"))?;
        let underlay = host
            .link_by_name(&config.underlay_interface)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "underlay_interface {:?}: no such interface",
                    config.underlay_interface
                )
            })?;
        let (ip, _) = host
            .first_ipv4(underlay.index)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "underlay_interface {:?} has no IPv4 address",
                    config.underlay_interface
                )
            })?;
        let identity = NodeIdentity {
            ip,
            mac: underlay.mac,
            ifindex: underlay.index,
        };
        stubs.set_node(&identity).map_err(|e| e.to_string())?;
        stubs
            .attach_transit(underlay.index)
            .map_err(|e| e.to_string())?;
        let registered = match allocator.register(&config.node, ip, underlay.mac).await {
            Ok(neighbors) => {
                for (nip, mac) in neighbors {
                    stubs
                        .set_underlay_neighbor(nip, mac)
                        .map_err(|e| e.to_string())?;
                }
                true
            }
            // The controller may come later (the neighbours pinned by the last run keep
            // existing pods going): STATUS says not ready meanwhile, and the registration
            // is retried.
            Err(e) => {
                tracing::warn!("registering the node (will retry): {e}");
                false
            }
        };
        let records = Records::open(&config.state_dir).map_err(|e| e.to_string())?;
        let owed = PendingReleases::open(&config.state_dir).map_err(|e| e.to_string())?;
        let fault = match std::env::var(FAULT_ENV) {
            Ok(f) if !f.is_empty() => Some(Fault::parse(&f)?),
            _ => None,
        };
        if let Some(f) = &fault {
            tracing::warn!("{FAULT_ENV}: every ADD meets {f:?} (tests only)");
        }
        let pod_mtu = config.pod_mtu(underlay.mtu);
        tracing::info!(
            node = %config.node, underlay = %config.underlay_interface, %ip,
            ifindex = underlay.index, pod_mtu, "stubs loaded, transit attached"
        );
        let mut node = Node {
            config,
            allocator,
            stubs,
            host,
            home,
            records,
            identity,
            pod_mtu,
            fault,
            ethtool_family: None,
            owed,
            registered,
            retry_at: None,
            retry_wait: RETRY_FIRST,
        };
        node.adopt()
            .await
            .map_err(|e| format!("re-adopting pods: {e}"))?;
        let owed_now = node.owed.all().map(|o| !o.is_empty()).unwrap_or(true);
        if !node.registered || owed_now {
            node.retry_at = Some(tokio::time::Instant::now() + RETRY_FIRST);
        }
        Ok(node)
    }

    async fn run(&mut self, job: Job) {
        if job.abandoned() {
            tracing::info!("skipping a command whose caller stopped waiting");
            return;
        }
        match job {
            Job::Add(att, reply) => {
                let span =
                    tracing::info_span!("add", container = %att.container_id, ifname = %att.ifname);
                let _g = span.enter();
                let r = self.add(&att).await;
                if let Err(e) = &r {
                    tracing::warn!("ADD failed: {e}");
                }
                let _ = reply.send(r);
            }
            Job::Del(att, reply) => {
                let _ = reply.send(self.del(&att.container_id, &att.ifname).await);
            }
            Job::Check {
                attachment,
                prev_addresses,
                prev_interfaces,
                reply,
            } => {
                let _ = reply.send(
                    self.check(&attachment, &prev_addresses, &prev_interfaces)
                        .await,
                );
            }
            Job::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            Job::Gc((network, valid), reply) => {
                let _ = reply.send(self.gc(&network, valid).await);
            }
        }
    }

    fn injected(&self, step: &str) -> Result<(), AgentError> {
        match &self.fault {
            Some(Fault::Fail(f)) if f == step => Err(AgentError::Injected(step.to_owned())),
            Some(Fault::Hang(f)) if f == step => {
                tracing::warn!("{FAULT_ENV}: hanging at {step}");
                loop {
                    std::thread::park();
                }
            }
            Some(Fault::Panic(f)) if f == step => {
                panic!("failure injected at step {step} ({FAULT_ENV})")
            }
            _ => Ok(()),
        }
    }

    fn reply_of(&self, r: &Record) -> AddReply {
        let a = &r.allocation;
        AddReply {
            interfaces: vec![
                CniInterface {
                    name: r.host_ifname.clone(),
                    mac: MacAddr(r.host_mac).to_string(),
                    sandbox: String::new(),
                    mtu: r.mtu,
                },
                CniInterface {
                    name: r.ifname.clone(),
                    mac: MacAddr(a.mac).to_string(),
                    sandbox: r.netns.clone(),
                    mtu: r.mtu,
                },
            ],
            ips: vec![CniIp {
                address: format!("{}/{}", a.ip, a.prefix_len),
                gateway: a.router_ip.to_string(),
                interface: 1,
            }],
            routes: vec![CniRoute {
                dst: "0.0.0.0/0".into(),
                gw: a.router_ip.to_string(),
            }],
            vni: a.vni,
            vpc: a.vpc.clone(),
            subnet: a.subnet.clone(),
        }
    }

    fn pod_entry(a: &Allocation) -> PodEntry {
        PodEntry {
            vni: a.vni,
            ip: a.ip,
            mac: a.mac,
            router_mac: a.router_mac,
            bouncers: a.bouncers.iter().map(|(ip, _)| *ip).collect(),
        }
    }

    async fn add(&mut self, att: &AttachmentMsg) -> Result<AddReply, AgentError> {
        if let Some(existing) = self.records.read(&att.container_id, &att.ifname)? {
            if existing.netns == att.netns {
                let existing = self.claim(existing, &att.network_name)?;
                return Ok(self.reply_of(&existing));
            }
            return Err(AgentError::Invalid(format!(
                "{}/{} is already attached in {}",
                att.container_id, att.ifname, existing.netns
            )));
        }
        let netns = Netns::open(Path::new(&att.netns))?;
        // A release still owed for this identity (its pod vanished while the allocator
        // was unreachable) is superseded: the allocator hands the identity back what it
        // holds, and releasing it later would pull the address from under the new pod.
        self.owed.remove(&att.container_id, &att.ifname)?;
        let mut undo = Vec::new();
        let mut laps = Laps::new();
        let result = self.add_steps(att, &netns, &mut undo, &mut laps).await;
        if result.is_err() {
            for step in undo.into_iter().rev() {
                self.undo(step, att).await;
            }
        }
        result
    }

    async fn add_steps(
        &mut self,
        att: &AttachmentMsg,
        netns: &Netns,
        undo: &mut Vec<Undo>,
        laps: &mut Laps,
    ) -> Result<AddReply, AgentError> {
        let alloc = self
            .allocator
            .attach(&AttachRequest {
                node: self.config.node.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                pod_namespace: att.k8s_pod_namespace.clone(),
                pod_name: att.k8s_pod_name.clone(),
                network: att.network.clone(),
            })
            .await?;
        undo.push(Undo::Release);
        laps.lap("alloc");
        // Underlay neighbours are shared by every pod of the node: a failed ADD takes back
        // only the entries it created.
        for (ip, mac) in alloc.bouncers.iter().chain(&alloc.new_neighbors) {
            let before = self.stubs.underlay_neighbor(*ip)?;
            if before == Some(*mac) {
                continue;
            }
            self.stubs.set_underlay_neighbor(*ip, *mac)?;
            if before.is_none() {
                let announced = alloc.new_neighbors.contains(&(*ip, *mac)).then_some(*mac);
                undo.push(Undo::RemoveNeighbor(*ip, announced));
            }
        }
        laps.lap("neighbours");

        let mtu = alloc.mtu.unwrap_or(self.pod_mtu);
        let host_name = host_ifname(&att.container_id, &att.ifname);
        let create = || {
            self.host.add_pod_veth(
                &host_name,
                &att.ifname,
                alloc.mac,
                mtu,
                netns.file().as_fd(),
            )
        };
        match create().await {
            Ok(()) => {}
            // No record but a veth of that name: a crashed ADD's leftover; replace it.
            // (If the host name is free, the pod's interface name is taken: an error.)
            Err(e) if e.is_exists() => match self.host.link_by_name(&host_name).await? {
                Some(stale) => {
                    tracing::info!(name = %host_name, "replacing a leftover pod veth");
                    self.host.delete(stale.index).await?;
                    create().await?;
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
        undo.push(Undo::DeleteVeth(host_name.clone()));
        laps.lap("veth");
        self.injected("after_veth")?;
        let missing = |n: &str| AgentError::Mismatch(format!("{n} vanished while being set up"));
        let host_link = self
            .host
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| missing(&host_name))?;
        laps.lap("host_lookup");

        // The record goes to disk (a durable write: two flushes) while the kernel work
        // goes on; ADD answers only once both are done.
        let record = Record {
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            network_name: att.network_name.clone(),
            netns: att.netns.clone(),
            host_ifname: host_name,
            host_ifindex: host_link.index,
            host_mac: host_link.mac,
            mtu,
            allocation: alloc,
        };
        let records = self.records.clone();
        let written = {
            let record = record.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                records.write(&record).map(|()| started.elapsed())
            })
        };
        undo.push(Undo::RemoveRecord);
        let kernel = self
            .plumb_pod(att, netns, &record, host_link.index, undo, laps)
            .await;
        let written = written.await.map_err(|e| {
            AgentError::Record(RecordError {
                path: record.host_ifname.clone().into(),
                source: std::io::Error::other(e),
            })
        });
        kernel?;
        let write_time = written??;
        laps.lap("record_wait");
        laps.note("record_write", write_time);
        tracing::info!(
            ip = %record.pod_ip(), host_if = %record.host_ifname,
            total_ms = laps.total().as_secs_f64() * 1e3, steps = ?laps.summary(), "attached"
        );
        Ok(self.reply_of(&record))
    }

    /// The pod's side of ADD and the stubs: the pod-side XDP program, address, routes,
    /// the agent program and the maps. Deleting the veth (already an undo) takes the
    /// addresses and programs with it; the maps get their own undo.
    async fn plumb_pod(
        &mut self,
        att: &AttachmentMsg,
        netns: &Netns,
        record: &Record,
        host_index: u32,
        undo: &mut Vec<Undo>,
        laps: &mut Laps,
    ) -> Result<(), AgentError> {
        let alloc = &record.allocation;
        // One visit to the pod's namespace: its interface index (an ioctl, answered from
        // a hash), the pod-side program, and the netlink sockets (route and ethtool),
        // which keep talking to that namespace after the thread steps back out.
        let (pod, mut ethtool, pod_index) = {
            let _inside = netns.enter(&self.home)?;
            let pod_index = nix::net::if_::if_nametoindex(att.ifname.as_str()).map_err(|e| {
                AgentError::Mismatch(format!("{} vanished while being set up ({e})", att.ifname))
            })?;
            self.stubs.attach_pod_side(pod_index)?;
            let pod = Netlink::open().map_err(AgentError::Socket)?;
            (pod, Ethtool::open(self.ethtool_family)?, pod_index)
        };
        self.ethtool_family = Some(ethtool.family());
        laps.lap("pod_netns");
        self.injected("after_pod_netns")?;
        // The pod's stack must write full L4 checksums: the agent stub redirects its
        // frames in XDP, where a checksum left to offload is never completed.
        ethtool.disable_tx_checksums(pod_index)?;
        drop(ethtool);
        laps.lap("tx_csum_off");
        // The interface up first (a route over a down interface is refused), then the
        // rest together: they are independent (the default route is onlink, so it needs
        // no address first).
        pod.up(pod_index).await?;
        futures_util::try_join!(
            pod.up(LOOPBACK_IFINDEX),
            pod.add_address(pod_index, alloc.ip, alloc.prefix_len),
            pod.add_permanent_neighbour(pod_index, alloc.router_ip, alloc.router_mac),
            pod.add_default_route(pod_index, alloc.router_ip),
        )?;
        drop(pod);
        laps.lap("addr_neigh_route");
        self.injected("after_pod_setup")?;

        self.stubs.attach_agent(host_index)?;
        laps.lap("xdp_agent");
        self.stubs.add_pod(host_index, &Self::pod_entry(alloc))?;
        undo.push(Undo::RemovePod(host_index));
        laps.lap("maps");
        self.injected("after_maps")?;
        Ok(())
    }

    async fn undo(&mut self, step: Undo, att: &AttachmentMsg) {
        let outcome: Result<(), AgentError> = match step {
            Undo::Release => self
                .allocator
                .detach(&self.config.node, &att.container_id, &att.ifname)
                .await
                .map(|_| ())
                .map_err(Into::into),
            Undo::DeleteVeth(name) => match self.host.link_by_name(&name).await {
                Ok(Some(l)) => self
                    .host
                    .delete(l.index)
                    .await
                    .map(|_| ())
                    .map_err(Into::into),
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Undo::RemovePod(index) => self.stubs.remove_pod(index).map(|_| ()).map_err(Into::into),
            Undo::RemoveNeighbor(ip, announced) => {
                if let Some(mac) = announced {
                    self.allocator.unlearn(&[(ip, mac)]);
                }
                self.stubs.remove_underlay_neighbor(ip).map_err(Into::into)
            }
            Undo::RemoveRecord => self
                .records
                .remove(&att.container_id, &att.ifname)
                .map(|_| ())
                .map_err(Into::into),
        };
        if let Err(e) = outcome {
            tracing::error!("undoing a failed ADD: {e}");
        }
    }

    async fn del(&mut self, container_id: &str, ifname: &str) -> Result<bool, AgentError> {
        let record = self.records.read(container_id, ifname)?;
        let host_name = host_ifname(container_id, ifname);
        let link = self.host.link_by_name(&host_name).await?;
        if let Some(r) = &record {
            self.forget_pod(r, link.as_ref().map(|l| l.index))?;
        }
        if let Some(l) = &link {
            self.host.delete(l.index).await?;
        }
        let released = self
            .allocator
            .detach(&self.config.node, container_id, ifname)
            .await?;
        self.owed.remove(container_id, ifname)?;
        let removed = self.records.remove(container_id, ifname)?;
        Ok(removed || released || link.is_some())
    }

    /// A legacy record (written before records kept the network name) claimed for
    /// `network_name` by a request that names the attachment with its network; other
    /// records unchanged.
    fn claim(&self, mut r: Record, network_name: &str) -> Result<Record, AgentError> {
        if r.network_name.is_empty() && !network_name.is_empty() {
            tracing::info!(
                container = %r.container_id, ifname = %r.ifname, network = network_name,
                "recording the network of an attachment made by an older agent"
            );
            r.network_name = network_name.to_owned();
            self.records.write(&r)?;
        }
        Ok(r)
    }

    /// Removes the pod's map entries, making sure they are its own: if its veth is gone
    /// the recorded index may have been reused.
    fn forget_pod(&self, r: &Record, live_index: Option<u32>) -> Result<(), AgentError> {
        if live_index == Some(r.host_ifindex) {
            self.stubs.remove_pod(r.host_ifindex)?;
            return Ok(());
        }
        let owned =
            self.stubs.pods()?.into_iter().any(|(i, p)| {
                i == r.host_ifindex && p.ip == r.pod_ip() && p.vni == r.allocation.vni
            });
        if owned {
            self.stubs.remove_pod(r.host_ifindex)?;
        }
        Ok(())
    }

    async fn check(
        &mut self,
        att: &AttachmentMsg,
        prev_addresses: &[String],
        prev_interfaces: &[String],
    ) -> Result<(), AgentError> {
        let r = self
            .records
            .read(&att.container_id, &att.ifname)?
            .ok_or_else(|| {
                AgentError::UnknownContainer(format!(
                    "{}/{} is not attached on this node",
                    att.container_id, att.ifname
                ))
            })?;
        let r = self.claim(r, &att.network_name)?;
        let mismatch = |m: String| Err(AgentError::Mismatch(m));
        let address = format!("{}/{}", r.allocation.ip, r.allocation.prefix_len);
        if !prev_addresses.contains(&address) {
            return mismatch(format!(
                "prevResult addresses {prev_addresses:?} do not include {address}"
            ));
        }
        if !prev_interfaces.contains(&r.ifname) {
            return mismatch(format!(
                "prevResult interfaces {prev_interfaces:?} do not include {}",
                r.ifname
            ));
        }
        match self.host.link_by_name(&r.host_ifname).await? {
            Some(l) if l.index == r.host_ifindex => {}
            _ => return mismatch(format!("host interface {} is gone", r.host_ifname)),
        }
        let entry = self
            .stubs
            .pods()?
            .into_iter()
            .find(|(i, _)| *i == r.host_ifindex);
        if entry.map(|(_, p)| p) != Some(Self::pod_entry(&r.allocation)) {
            return mismatch(format!(
                "the stubs' pod entry of {} is missing or differs",
                r.host_ifname
            ));
        }
        let netns = Netns::open(Path::new(&att.netns))?;
        let pod = {
            let _inside = netns.enter(&self.home)?;
            Netlink::open().map_err(AgentError::Socket)?
        };
        let Some(link) = pod.link_by_name(&r.ifname).await? else {
            return mismatch(format!("{} is gone from {}", r.ifname, att.netns));
        };
        if link.mac != r.allocation.mac {
            return mismatch(format!("{} has another MAC", r.ifname));
        }
        if !pod
            .has_address(link.index, r.allocation.ip, r.allocation.prefix_len)
            .await?
        {
            return mismatch(format!("{} lost its address {address}", r.ifname));
        }
        Ok(())
    }

    /// STATUS. Existing pods depend on the transit program (their inbound traffic from
    /// other hosts) and on the stubs, not on the allocator; new pods need the allocator
    /// too. So: the transit program off the underlay interface (or the interface gone)
    /// with pods attached is not ready *and* limited (CNI 51: "existing containers may
    /// have limited connectivity"); an allocator that does not answer, or a transit
    /// problem with no pod attached, is not ready (CNI 50: cannot serve ADD).
    async fn status(&mut self) -> StatusReply {
        let attachments = self.records.all().map(|r| r.len() as u32).unwrap_or(0);
        let transit = self.transit_problem().await;
        let allocator = match self.allocator.reachable().await {
            Ok(()) => None,
            Err(e) => Some(format!("the allocator is not reachable: {e}")),
        };
        let limited = transit.is_some() && attachments > 0;
        let reason: Vec<String> = transit.into_iter().chain(allocator).collect();
        StatusReply {
            ready: reason.is_empty(),
            reason: reason.join("; "),
            attachments,
            limited,
        }
    }

    /// Why the transit program is not in place on the underlay interface, if it is not:
    /// the interface must be the one the agent started with and carry an XDP program.
    async fn transit_problem(&self) -> Option<String> {
        let name = &self.config.underlay_interface;
        match self.host.link_by_name(name).await {
            Err(e) => Some(e.to_string()),
            Ok(None) => Some(format!("the underlay interface {name} is gone")),
            Ok(Some(l)) if l.index != self.identity.ifindex => {
                Some(format!("the underlay interface {name} was replaced"))
            }
            Ok(Some(l)) if l.xdp_prog.is_none() => {
                Some(format!("the transit program is not attached to {name}"))
            }
            Ok(Some(_)) => None,
        }
    }

    /// GC of network `network_name`: removes its attachments not in `valid`. Another
    /// network's attachments are never touched. A legacy record (no network name) named in
    /// `valid` is claimed for this network; one not named is left alone while its pod's
    /// veth exists (it may belong to another network), and removed once the veth is gone
    /// (then the pod is gone, whatever its network).
    async fn gc(
        &mut self,
        network_name: &str,
        valid: Vec<(String, String)>,
    ) -> Result<Vec<String>, AgentError> {
        if network_name.is_empty() {
            return Err(AgentError::Invalid(
                "GC names no network (network_name): refusing to collect every network's \
                 attachments; is sluice-cni older than the node agent?"
                    .into(),
            ));
        }
        let valid: HashSet<(String, String)> = valid.into_iter().collect();
        let mut removed = Vec::new();
        for r in self.records.all()? {
            let key = (r.container_id.clone(), r.ifname.clone());
            let collect = if r.network_name == network_name {
                !valid.contains(&key)
            } else if r.network_name.is_empty() {
                if valid.contains(&key) {
                    self.claim(r.clone(), network_name)?;
                    false
                } else {
                    let veth = self.host.link_by_name(&r.host_ifname).await?;
                    let gone = veth.is_none_or(|l| l.index != r.host_ifindex);
                    if !gone {
                        tracing::info!(
                            container = %r.container_id, ifname = %r.ifname,
                            "GC: leaving an attachment of unknown network (older record)"
                        );
                    }
                    gone
                }
            } else {
                false
            };
            if collect {
                self.del(&r.container_id, &r.ifname).await?;
                removed.push(format!("{}/{}", r.container_id, r.ifname));
            }
        }
        Ok(removed)
    }

    /// After a restart: keep recorded pods whose veth still exists and whose pod side is
    /// complete (re-attaching the freshly loaded agent program and rewriting their
    /// entries); clean up the ones that vanished meanwhile, and the ones a crash left
    /// half made (the record is written while the kernel work runs, so it may precede an
    /// unfinished pod side); remove unrecorded veths, entries and leases. Releases the
    /// allocator cannot take now (an unreachable controller) are owed and retried: the
    /// agent starts and serves its pods regardless.
    async fn adopt(&mut self) -> Result<(), AgentError> {
        let mut kept_indexes = HashSet::new();
        let mut kept_owners = HashSet::new();
        let mut unreachable = false;
        for r in self.records.all()? {
            let live = match self.host.link_by_name(&r.host_ifname).await? {
                Some(l) if l.index == r.host_ifindex => Some(l),
                _ => None,
            };
            let problem = match &live {
                None => Some("its pod vanished while the agent was down".to_owned()),
                Some(_) => self.pod_side_problem(&r).await,
            };
            match (live, problem) {
                (Some(l), None) => {
                    self.stubs.attach_agent(l.index)?;
                    self.stubs
                        .add_pod(l.index, &Self::pod_entry(&r.allocation))?;
                    kept_indexes.insert(l.index);
                    kept_owners.insert((r.container_id.clone(), r.ifname.clone()));
                }
                (live, why) => {
                    let why = why.unwrap_or_default();
                    tracing::info!(container = %r.container_id, ifname = %r.ifname, "removing an attachment: {why}");
                    self.forget_pod(&r, live.as_ref().map(|l| l.index))?;
                    if let Some(l) = live {
                        self.host.delete(l.index).await?;
                    }
                    self.release_or_owe(&r.container_id, &r.ifname, &mut unreachable)
                        .await?;
                    self.records.remove(&r.container_id, &r.ifname)?;
                }
            }
        }
        for (index, pod) in self.stubs.pods()? {
            if !kept_indexes.contains(&index) {
                tracing::info!(index, ip = %pod.ip, "removing an unrecorded pod entry");
                self.stubs.remove_pod(index)?;
            }
        }
        let recorded: HashSet<String> = self
            .records
            .all()?
            .into_iter()
            .map(|r| r.host_ifname)
            .collect();
        for l in self.host.links_with_prefix(HOST_IF_PREFIX).await? {
            if is_host_ifname(&l.name) && !recorded.contains(&l.name) {
                tracing::info!(name = %l.name, "removing an unrecorded pod veth");
                self.host.delete(l.index).await?;
            }
        }
        for (cid, ifname) in self.allocator.held() {
            if !kept_owners.contains(&(cid.clone(), ifname.clone())) {
                tracing::info!(container = %cid, %ifname, "releasing an unrecorded lease");
                self.release_or_owe(&cid, &ifname, &mut unreachable).await?;
            }
        }
        Ok(())
    }

    /// What is missing from a recorded pod's side (its namespace, interface, MAC,
    /// address or default route), if anything. A lookup that fails for another reason
    /// keeps the pod: only what is certainly missing condemns it.
    async fn pod_side_problem(&self, r: &Record) -> Option<String> {
        let netns = match Netns::open(Path::new(&r.netns)) {
            Ok(n) => n,
            Err(NetnsError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Some(format!("its namespace {} is gone", r.netns));
            }
            Err(e) => {
                tracing::warn!("keeping {}/{}: {e}", r.container_id, r.ifname);
                return None;
            }
        };
        let checked: Result<Option<String>, AgentError> = async {
            let pod = {
                let _inside = netns.enter(&self.home)?;
                Netlink::open().map_err(AgentError::Socket)?
            };
            let a = &r.allocation;
            let Some(link) = pod.link_by_name(&r.ifname).await? else {
                return Ok(Some(format!("{} is missing from its namespace", r.ifname)));
            };
            if link.mac != a.mac {
                return Ok(Some(format!("{} has another MAC", r.ifname)));
            }
            if !pod.has_address(link.index, a.ip, a.prefix_len).await? {
                return Ok(Some(format!(
                    "{} has no address {}/{}",
                    r.ifname, a.ip, a.prefix_len
                )));
            }
            if !pod.has_default_route(link.index, a.router_ip).await? {
                return Ok(Some(format!(
                    "{} has no default route via {}",
                    r.ifname, a.router_ip
                )));
            }
            Ok(None)
        }
        .await;
        checked.unwrap_or_else(|e| {
            tracing::warn!(
                "keeping {}/{}: checking its pod side: {e}",
                r.container_id,
                r.ifname
            );
            None
        })
    }

    /// Releases (container_id, ifname), or records the release as owed when the
    /// allocator does not take it (and, once it was unreachable, stops asking it during
    /// this pass: each try would cost a timeout).
    async fn release_or_owe(
        &mut self,
        container_id: &str,
        ifname: &str,
        unreachable: &mut bool,
    ) -> Result<(), AgentError> {
        if !*unreachable {
            match self
                .allocator
                .detach(&self.config.node, container_id, ifname)
                .await
            {
                Ok(_) => {
                    self.owed.remove(container_id, ifname)?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(
                        container = container_id,
                        ifname,
                        "releasing the address (owed, will retry): {e}"
                    );
                    *unreachable = matches!(e, AllocError::Unreachable { .. });
                }
            }
        }
        self.owed.add(container_id, ifname)?;
        Ok(())
    }

    /// Tries again what the allocator could not take: the node's registration, then
    /// every owed release. Reschedules itself, backing off, while something fails.
    async fn retry_owed(&mut self) {
        let mut failed = false;
        if !self.registered {
            let NodeIdentity { ip, mac, .. } = self.identity;
            match self.allocator.register(&self.config.node, ip, mac).await {
                Ok(neighbors) => {
                    for (nip, nmac) in neighbors {
                        if let Err(e) = self.stubs.set_underlay_neighbor(nip, nmac) {
                            tracing::error!("{e}");
                        }
                    }
                    tracing::info!("registered the node");
                    self.registered = true;
                }
                Err(e) => {
                    tracing::warn!("registering the node (will retry): {e}");
                    failed = true;
                }
            }
        }
        if !failed {
            match self.owed.all() {
                Err(e) => {
                    tracing::error!("{e}");
                    failed = true;
                }
                Ok(owed) => {
                    for (cid, ifname) in owed {
                        match self
                            .allocator
                            .detach(&self.config.node, &cid, &ifname)
                            .await
                        {
                            Ok(_) => {
                                tracing::info!(container = %cid, %ifname, "released an owed address");
                                if let Err(e) = self.owed.remove(&cid, &ifname) {
                                    tracing::error!("{e}");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(container = %cid, %ifname, "releasing an owed address (will retry): {e}");
                                failed = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
        if failed {
            self.retry_at = Some(tokio::time::Instant::now() + self.retry_wait);
            self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
        } else {
            self.retry_at = None;
            self.retry_wait = RETRY_FIRST;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_deterministic_and_short() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_eq!(a.len(), 13);
        assert!(is_host_ifname(&a));
        assert!(!is_host_ifname("slow0"));
    }

    /// Every agent error, the CNI code the shim prints for it and the gRPC code it
    /// travels with (the shim falls back on the latter when the metadata is lost).
    #[test]
    fn every_agent_error_maps_to_its_cni_and_grpc_codes() {
        use tonic::Code;
        let io = || std::io::Error::other("x");
        let unreachable = AllocError::Unreachable {
            target: "unix:///c.sock".into(),
            message: "no answer to attach_endpoint within 4s".into(),
        };
        let cases: Vec<(AgentError, u32, Code)> = vec![
            (
                NetnsError::Open {
                    path: "/run/netns/x".into(),
                    source: io(),
                }
                .into(),
                code::INVALID_ENVIRONMENT,
                Code::InvalidArgument,
            ),
            (unreachable.into(), code::TRY_AGAIN_LATER, Code::Unavailable),
            (
                AllocError::Exhausted("a/web".into()).into(),
                code::ALLOCATION_FAILED,
                Code::ResourceExhausted,
            ),
            (
                AllocError::UnknownNetwork("a/nope".into()).into(),
                code::ALLOCATION_FAILED,
                Code::NotFound,
            ),
            (
                AllocError::Refused("no bouncer".into()).into(),
                code::ALLOCATION_FAILED,
                Code::Internal,
            ),
            (
                AllocError::BadReply("ip".into()).into(),
                code::ALLOCATION_FAILED,
                Code::Internal,
            ),
            (
                AllocError::Store {
                    path: "/l".into(),
                    source: io(),
                }
                .into(),
                code::ALLOCATION_FAILED,
                Code::Internal,
            ),
            (
                AllocError::File {
                    path: "/f".into(),
                    message: "m".into(),
                }
                .into(),
                code::ALLOCATION_FAILED,
                Code::Internal,
            ),
            (
                LinkError {
                    what: "creating veth".into(),
                    source: rtnetlink::Error::RequestFailed,
                }
                .into(),
                code::KERNEL_SETUP_FAILED,
                Code::Internal,
            ),
            (
                StubError::InvalidPod("p".into()).into(),
                code::KERNEL_SETUP_FAILED,
                Code::Internal,
            ),
            (
                EthtoolError::StillOn {
                    index: 7,
                    features: vec![],
                }
                .into(),
                code::KERNEL_SETUP_FAILED,
                Code::Internal,
            ),
            (
                AgentError::Injected("after_veth".into()),
                code::KERNEL_SETUP_FAILED,
                Code::Internal,
            ),
            (
                AgentError::Socket(io()),
                code::KERNEL_SETUP_FAILED,
                Code::Internal,
            ),
            (
                RecordError {
                    path: "/r".into(),
                    source: io(),
                }
                .into(),
                code::IO_FAILURE,
                Code::Internal,
            ),
            (
                AgentError::UnknownContainer("c".into()),
                code::UNKNOWN_CONTAINER,
                Code::NotFound,
            ),
            (
                AgentError::Mismatch("m".into()),
                code::CHECK_MISMATCH,
                Code::FailedPrecondition,
            ),
            (
                AgentError::Invalid("i".into()),
                code::INVALID_NETWORK_CONFIG,
                Code::InvalidArgument,
            ),
            (AgentError::Stopped, code::AGENT_FAILED, Code::Internal),
        ];
        for (error, cni, grpc) in cases {
            assert_eq!(
                (error.cni_code(), error.grpc_code()),
                (cni, grpc),
                "{error:?}"
            );
        }
    }

    #[test]
    fn faults_parse_and_name_their_step() {
        assert_eq!(
            Fault::parse("after_veth"),
            Ok(Fault::Fail("after_veth".into()))
        );
        assert_eq!(
            Fault::parse("hang:after_pod_netns"),
            Ok(Fault::Hang("after_pod_netns".into()))
        );
        assert_eq!(
            Fault::parse("panic:after_maps"),
            Ok(Fault::Panic("after_maps".into()))
        );
        assert!(Fault::parse("after_lunch").is_err());
        assert!(Fault::parse("sleep:after_veth").is_err());
    }

    #[test]
    fn a_failed_ethtool_request_is_a_kernel_setup_failure() {
        let e = AgentError::from(EthtoolError::StillOn {
            index: 7,
            features: vec!["tx-checksum-ip-generic".to_owned()],
        });
        assert_eq!(e.cni_code(), code::KERNEL_SETUP_FAILED);
        assert!(e.to_string().contains("tx-checksum-ip-generic"), "{e}");
    }
}
