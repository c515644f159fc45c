//! The gateway's configuration file (`config/gateway.toml`), its validation, and the
//! resolved plan: which worker core serves which NIC queue.
//!
//! Validation is whole and happens before anything touches the system: every error names
//! the field, says what is wrong and how to fix it. Facts about the host (which cores are
//! online) are checked separately by [`Plan::check_host`], so the rules can be tested
//! anywhere.

pub mod allowed;
pub mod cpulist;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_api::MacAddr;

/// A configuration problem: the field (as spelled in the file), what is wrong, the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}; {fix}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

fn error(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub cores: Cores,
    pub interfaces: Vec<Interface>,
    /// Explicit queue assignment; without it, queues are dealt to worker cores in turn.
    #[serde(default)]
    pub workers: Vec<WorkerAssignment>,
    #[serde(default)]
    pub umem: Umem,
    #[serde(default)]
    pub rings: Rings,
    #[serde(default)]
    pub engine: Engine,
    pub control: Control,
    #[serde(default)]
    pub tables: Option<Tables>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cores {
    /// One core for the control thread (gRPC, metrics), not a worker core; `"auto"`:
    /// the lowest allowed core (see [`allowed`]) that is not a worker.
    pub control: String,
    /// Worker cores, cpulist syntax (`"2-5"`); `"auto"`: the allowed cores (the cgroup's
    /// `cpuset.cpus.effective`, else the affinity mask) minus the control core.
    pub workers: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    /// The gateway's underlay address on this interface: Geneve to it is forwarded.
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// RX queues to serve, cpulist syntax (`"0-3"`).
    pub queues: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAssignment {
    pub core: u32,
    pub queues: Vec<QueueRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRef {
    pub interface: String,
    pub queue: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Umem {
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Frames per worker socket.
    pub frame_count: u32,
}

impl Default for Umem {
    fn default() -> Self {
        Self {
            frame_size: 4096,
            frame_count: 8192,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rings {
    pub rx: u32,
    pub tx: u32,
    pub fill: u32,
    pub completion: u32,
}

impl Default for Rings {
    fn default() -> Self {
        Self {
            rx: 2048,
            tx: 2048,
            fill: 4096,
            completion: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Try zero-copy; fall back to copy mode with one log line.
    Auto,
    /// Zero-copy or refuse to start.
    On,
    /// Copy mode.
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// Descriptors per RX/TX batch.
    pub batch_size: u32,
    pub zero_copy: ZeroCopy,
    /// Ask the kernel to flag when a wakeup syscall is needed (XDP_USE_NEED_WAKEUP).
    pub need_wakeup: bool,
    /// Busy-poll budget per poll (SO_BUSY_POLL_BUDGET); 0 disables busy polling.
    pub busy_poll_budget: u32,
    /// Busy-poll time in microseconds (SO_BUSY_POLL).
    pub busy_poll_usecs: u32,
    /// Turns of the loop with nothing received on any queue before the worker sleeps in
    /// `poll(2)`; 0 never sleeps (pure busy polling: the core stays at 100 %).
    #[serde(default = "default_idle_spins")]
    pub idle_spins: u32,
    /// The longest such sleep, in milliseconds (1..=100): also the most a packet arriving
    /// on an idle worker can wait beyond its wakeup.
    #[serde(default = "default_idle_sleep_ms")]
    pub idle_sleep_ms: u32,
}

fn default_idle_spins() -> u32 {
    1024
}

fn default_idle_sleep_ms() -> u32 {
    1
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            batch_size: 64,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            busy_poll_budget: 64,
            busy_poll_usecs: 20,
            idle_spins: default_idle_spins(),
            idle_sleep_ms: default_idle_sleep_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// `unix:///run/sluice/gateway.sock` (mode 0600) or `tcp://ADDR:PORT` (needs `tls`).
    pub grpc: String,
    /// `ADDR:PORT` for Prometheus text metrics.
    pub metrics: String,
    #[serde(default)]
    pub tls: Option<Tls>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    /// A transaction (YAML, the sluice-api schema) applied at start-up.
    pub file: PathBuf,
}

/// The word that asks for cores to be read from the cgroup or affinity mask.
pub const AUTO: &str = "auto";

/// Where the control service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcListen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// The validated configuration, resolved: what each core does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub control_core: u32,
    pub workers: Vec<WorkerPlan>,
    /// How `"auto"` cores were resolved; `None` when the file names every core.
    pub auto_cores: Option<AutoCores>,
    pub grpc: GrpcListen,
    pub metrics: std::net::SocketAddr,
}

/// What `"auto"` resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoCores {
    /// The cores the process may run on.
    pub allowed: BTreeSet<u32>,
    pub source: allowed::CoreSource,
    /// Allowed cores left idle because there are fewer queues than cores.
    pub unused: BTreeSet<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPlan {
    pub core: u32,
    pub queues: Vec<QueueRef>,
}

impl GatewayConfig {
    /// Parses a configuration file's text. Syntax and unknown-field errors name the field
    /// and line (the TOML parser's message).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            error(
                at,
                message,
                "see config/gateway.toml for every field with an example",
            )
        })
    }

    /// Checks everything that does not depend on the host and resolves the plan; `"auto"`
    /// cores are read from this process's cgroup (or affinity mask).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        self.plan_with(&allowed::CgroupPaths::default())
    }

    /// [`Self::plan`], with `"auto"` cores read from the cgroup files at `paths`.
    pub fn plan_with(&self, paths: &allowed::CgroupPaths) -> Result<Plan, ConfigError> {
        let (control_core, mut worker_cores, mut auto_cores) = self.cores(paths)?;
        self.check_umem_and_rings()?;
        let queues = self.interface_queues()?;
        if let Some(auto) = auto_cores.as_mut().filter(|_| self.cores.workers == AUTO) {
            // More allowed cores than queues: the extra cores stay idle rather than fail.
            while worker_cores.len() > queues.len() {
                let idle = worker_cores.pop_last().expect("more cores than queues");
                auto.unused.insert(idle);
            }
        }
        let workers = self.assign(&worker_cores, &queues)?;
        Ok(Plan {
            control_core,
            workers,
            auto_cores,
            grpc: self.grpc_listen()?,
            metrics: self.control.metrics.parse().map_err(|_| {
                error(
                    "control.metrics",
                    format!("{:?} is not an address and port", self.control.metrics),
                    "write e.g. \"127.0.0.1:9471\"",
                )
            })?,
        })
    }

    /// The control core and the worker cores, resolving `"auto"`.
    fn cores(
        &self,
        paths: &allowed::CgroupPaths,
    ) -> Result<(u32, BTreeSet<u32>, Option<AutoCores>), ConfigError> {
        let control_auto = self.cores.control == AUTO;
        let workers_auto = self.cores.workers == AUTO;
        let explicit_control = if control_auto {
            None
        } else {
            let cores = cpulist::parse(&self.cores.control).map_err(|e| {
                error(
                    "cores.control",
                    e,
                    "write one core number, e.g. \"0\", or \"auto\"",
                )
            })?;
            match cores.iter().collect::<Vec<_>>()[..] {
                [core] => Some(*core),
                _ => {
                    return Err(error(
                        "cores.control",
                        format!("names {} cores", cores.len()),
                        "name exactly one core for the control thread",
                    ))
                }
            }
        };
        let explicit_workers = if workers_auto {
            None
        } else {
            Some(cpulist::parse(&self.cores.workers).map_err(|e| {
                error(
                    "cores.workers",
                    e,
                    "write a cpulist such as \"2-5\", or \"auto\"",
                )
            })?)
        };
        if let (Some(control), Some(workers)) = (explicit_control, explicit_workers.clone()) {
            if workers.contains(&control) {
                return Err(error(
                    "cores.workers",
                    format!("includes the control core {control}"),
                    "keep the control core out of the worker cores",
                ));
            }
            return Ok((control, workers, None));
        }
        let field = if workers_auto {
            "cores.workers"
        } else {
            "cores.control"
        };
        let found = allowed::resolve(paths).map_err(|e| {
            error(
                field,
                format!("\"auto\" could not read the allowed cores: {e}"),
                "name the cores explicitly",
            )
        })?;
        let shown = cpulist::format(&found.cores);
        let control = match explicit_control {
            Some(core) if !found.cores.contains(&core) => {
                return Err(error(
                    "cores.control",
                    format!(
                        "core {core} is outside the allowed cores {shown} (from {})",
                        found.source
                    ),
                    "use control = \"auto\" or one of the allowed cores",
                ))
            }
            Some(core) => core,
            None => {
                let workers = explicit_workers.clone().unwrap_or_default();
                *found.cores.difference(&workers).next().ok_or_else(|| {
                    error(
                        "cores.control",
                        format!(
                            "\"auto\" found no allowed core left for it (allowed {shown} from {})",
                            found.source
                        ),
                        "leave one allowed core out of cores.workers",
                    )
                })?
            }
        };
        let workers = match explicit_workers {
            Some(workers) if workers.contains(&control) => {
                return Err(error(
                    "cores.workers",
                    format!("includes the control core {control}"),
                    "keep the control core out of the worker cores",
                ))
            }
            Some(workers) => workers,
            None => {
                let mut workers = found.cores.clone();
                workers.remove(&control);
                if workers.is_empty() {
                    return Err(error(
                        "cores.workers",
                        format!(
                            "\"auto\" found only core {shown} (from {}), which the control thread takes",
                            found.source
                        ),
                        "give the gateway at least two cores (in Kubernetes: an integer CPU request of 2 or more, equal to its limit)",
                    ));
                }
                workers
            }
        };
        Ok((
            control,
            workers,
            Some(AutoCores {
                allowed: found.cores,
                source: found.source,
                unused: BTreeSet::new(),
            }),
        ))
    }

    fn check_umem_and_rings(&self) -> Result<(), ConfigError> {
        if !matches!(self.umem.frame_size, 2048 | 4096) {
            return Err(error(
                "umem.frame_size",
                format!("{} is not supported", self.umem.frame_size),
                "use 2048 or 4096 (AF_XDP frames are at most a page)",
            ));
        }
        let rings = [
            ("rings.rx", self.rings.rx),
            ("rings.tx", self.rings.tx),
            ("rings.fill", self.rings.fill),
            ("rings.completion", self.rings.completion),
        ];
        for (field, size) in rings {
            if !size.is_power_of_two() || !(64..=65536).contains(&size) {
                return Err(error(
                    field,
                    format!("{size} is not a power of two between 64 and 65536"),
                    "AF_XDP rings are power-of-two sized; e.g. 2048",
                ));
            }
        }
        let in_flight = u64::from(self.rings.fill) + u64::from(self.rings.tx);
        if u64::from(self.umem.frame_count) < in_flight {
            return Err(error(
                "umem.frame_count",
                format!(
                    "{} frames cannot fill the fill ring ({}) while a TX ring ({}) is in flight",
                    self.umem.frame_count, self.rings.fill, self.rings.tx
                ),
                format!("raise it to at least {in_flight}"),
            ));
        }
        let batch = self.engine.batch_size;
        if batch == 0 || batch > 256 || batch > self.rings.rx || batch > self.rings.tx {
            return Err(error(
                "engine.batch_size",
                format!("{batch} is outside 1..=256 or larger than a ring"),
                "32 or 64 is usual",
            ));
        }
        let sleep = self.engine.idle_sleep_ms;
        if !(1..=100).contains(&sleep) {
            return Err(error(
                "engine.idle_sleep_ms",
                format!("{sleep} is outside 1..=100"),
                "1 is usual; set engine.idle_spins = 0 to never sleep",
            ));
        }
        Ok(())
    }

    /// Every (interface, queue) to serve, in order.
    fn interface_queues(&self) -> Result<Vec<QueueRef>, ConfigError> {
        if self.interfaces.is_empty() {
            return Err(error(
                "interfaces",
                "is empty",
                "add an [[interfaces]] table",
            ));
        }
        let mut names = BTreeSet::new();
        let mut queues = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let field = |f: &str| format!("interfaces[{i}].{f}");
            if iface.name.is_empty() || iface.name.len() > 15 {
                return Err(error(
                    field("name"),
                    format!("{:?} is not an interface name", iface.name),
                    "Linux names have 1 to 15 characters",
                ));
            }
            if !names.insert(iface.name.clone()) {
                return Err(error(
                    field("name"),
                    format!("{} is listed twice", iface.name),
                    "list each interface once",
                ));
            }
            iface.mac.check_station("mac").map_err(|e| {
                error(
                    field("mac"),
                    e.reason,
                    "use the interface's own unicast MAC",
                )
            })?;
            if iface.ip.is_unspecified() || iface.ip.is_multicast() || iface.ip.is_broadcast() {
                return Err(error(
                    field("ip"),
                    format!("{} is not a unicast address", iface.ip),
                    "use the interface's underlay address",
                ));
            }
            let ids = cpulist::parse(&iface.queues)
                .map_err(|e| error(field("queues"), e, "write queue ids like \"0-3\""))?;
            queues.extend(ids.into_iter().map(|queue| QueueRef {
                interface: iface.name.clone(),
                queue,
            }));
        }
        Ok(queues)
    }

    fn assign(
        &self,
        cores: &BTreeSet<u32>,
        queues: &[QueueRef],
    ) -> Result<Vec<WorkerPlan>, ConfigError> {
        if self.workers.is_empty() {
            // Deal queues to cores in turn; a core without a queue is a mistake.
            if queues.len() < cores.len() {
                return Err(error(
                    "cores.workers",
                    format!("{} worker cores for {} queues", cores.len(), queues.len()),
                    "use at most one worker core per queue, or add queues",
                ));
            }
            let mut plan: Vec<WorkerPlan> = cores
                .iter()
                .map(|&core| WorkerPlan {
                    core,
                    queues: Vec::new(),
                })
                .collect();
            for (i, queue) in queues.iter().enumerate() {
                plan[i % cores.len()].queues.push(queue.clone());
            }
            return Ok(plan);
        }
        let wanted: BTreeSet<&QueueRef> = queues.iter().collect();
        let mut served: BTreeMap<&QueueRef, u32> = BTreeMap::new();
        let mut plan = Vec::new();
        let mut assigned_cores = BTreeSet::new();
        for (i, worker) in self.workers.iter().enumerate() {
            if !cores.contains(&worker.core) {
                return Err(error(
                    format!("workers[{i}].core"),
                    format!(
                        "{} is not in cores.workers ({})",
                        worker.core, self.cores.workers
                    ),
                    "assign queues only to worker cores",
                ));
            }
            if !assigned_cores.insert(worker.core) {
                return Err(error(
                    format!("workers[{i}].core"),
                    format!("core {} is assigned twice", worker.core),
                    "merge its queue lists",
                ));
            }
            for (j, queue) in worker.queues.iter().enumerate() {
                let field = format!("workers[{i}].queues[{j}]");
                if !wanted.contains(queue) {
                    return Err(error(
                        field,
                        format!(
                            "{} queue {} is not among the interfaces' queues",
                            queue.interface, queue.queue
                        ),
                        "add it to the interface's queues or remove it here",
                    ));
                }
                if let Some(other) = served.insert(queue, worker.core) {
                    return Err(error(
                        field,
                        format!(
                            "{} queue {} is already served by core {other}",
                            queue.interface, queue.queue
                        ),
                        "give each queue to exactly one core",
                    ));
                }
            }
            plan.push(WorkerPlan {
                core: worker.core,
                queues: worker.queues.clone(),
            });
        }
        if let Some(missing) = queues.iter().find(|q| !served.contains_key(q)) {
            return Err(error(
                "workers",
                format!(
                    "{} queue {} is served by no core",
                    missing.interface, missing.queue
                ),
                "assign it to a worker core",
            ));
        }
        if let Some(idle) = cores.iter().find(|c| !assigned_cores.contains(c)) {
            return Err(error(
                "workers",
                format!("worker core {idle} serves no queue"),
                "remove it from cores.workers or give it queues",
            ));
        }
        Ok(plan)
    }

    fn grpc_listen(&self) -> Result<GrpcListen, ConfigError> {
        let grpc = &self.control.grpc;
        if let Some(path) = grpc.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(error(
                    "control.grpc",
                    format!("{grpc:?} has a relative socket path"),
                    "write unix:///absolute/path.sock",
                ));
            }
            return Ok(GrpcListen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = grpc.strip_prefix("tcp://") {
            let addr = addr.parse().map_err(|_| {
                error(
                    "control.grpc",
                    format!("{addr:?} is not an address and port"),
                    "write tcp://ADDR:PORT",
                )
            })?;
            if self.control.tls.is_none() {
                return Err(error("control.grpc", "TCP without TLS would let anyone on the network program the gateway", "add [control.tls] with ca, cert and key (clients need certificates from that CA), or listen on unix://"));
            }
            return Ok(GrpcListen::Tcp(addr));
        }
        Err(error(
            "control.grpc",
            format!("{grpc:?} is neither unix:// nor tcp://"),
            "write unix:///run/sluice/gateway.sock",
        ))
    }
}

/// What the plan needs to know about the host.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub online_cores: BTreeSet<u32>,
}

impl HostFacts {
    /// Reads `/sys/devices/system/cpu/online`.
    pub fn read() -> std::io::Result<Self> {
        let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
        let online_cores = cpulist::parse(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Self { online_cores })
    }
}

impl Plan {
    /// Checks the plan against the host: every core it names is online.
    pub fn check_host(&self, host: &HostFacts) -> Result<(), ConfigError> {
        let online = cpulist::format(&host.online_cores);
        if !host.online_cores.contains(&self.control_core) {
            return Err(error(
                "cores.control",
                format!(
                    "core {} is not online (online: {online})",
                    self.control_core
                ),
                "pick an online core",
            ));
        }
        for worker in &self.workers {
            if !host.online_cores.contains(&worker.core) {
                return Err(error(
                    "cores.workers",
                    format!("core {} is not online (online: {online})", worker.core),
                    "pick online cores",
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(auto) = &self.auto_cores {
            writeln!(
                f,
                "allowed cores    {} from {}",
                cpulist::format(&auto.allowed),
                auto.source
            )?;
            if !auto.unused.is_empty() {
                writeln!(
                    f,
                    "unused cores     {} (fewer queues than cores)",
                    cpulist::format(&auto.unused)
                )?;
            }
        }
        writeln!(f, "control thread   core {}", self.control_core)?;
        for worker in &self.workers {
            let queues: Vec<String> = worker
                .queues
                .iter()
                .map(|q| format!("{}:{}", q.interface, q.queue))
                .collect();
            writeln!(
                f,
                "worker           core {}  queues {}",
                worker.core,
                queues.join(" ")
            )?;
        }
        match &self.grpc {
            GrpcListen::Unix(path) => {
                writeln!(f, "gRPC             unix socket {}", path.display())?
            }
            GrpcListen::Tcp(addr) => writeln!(f, "gRPC             tcp {addr} (mTLS)")?,
        }
        write!(f, "metrics          http://{}/metrics", self.metrics)
    }
}

#[cfg(test)]
mod tests;
