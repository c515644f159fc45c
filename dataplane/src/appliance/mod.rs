//! The gateway appliance: what `sluice-gateway --config F` runs. It ties the parts
//! together in order and takes them apart in reverse:
//!
//! 1. tables: a [`TableWriter`], with `tables.file` applied before anything forwards;
//! 2. the control thread (pinned to the control core): gRPC, metrics, and the signals
//!    that end the run;
//! 3. per interface, the NIC program; per worker, a thread pinned to its core that binds
//!    its AF_XDP socket, and that socket in the program's XSKMAP;
//! 4. on SIGTERM or SIGINT (or a worker failing): empty the XSKMAP slots, stop and join
//!    the workers, stop the control service (its socket file goes), detach the programs.
//!
//! Any step failing undoes the earlier ones before the error is returned. This module
//! owns no packet path code and must not block workers.
#![forbid(unsafe_code)]

pub mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc as async_mpsc;

use self::metrics::{Published, PublishedWorker};
use crate::config::{ConfigError, GatewayConfig, GrpcListen, Plan};
use crate::engine::{self, CounterSlot, EngineError, EngineSettings, QueueSpec, Worker};
use crate::nic::{NicError, NicProgram, XdpMode};
use crate::pipeline::Local;
use crate::service::{
    bind, serve, ControlTables, GatewayService, Limits, Listen, ServeError, ServerTls,
};
use crate::tables::{Rejected, TableWriter};

/// Why the gateway did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("missing privilege: {missing} (run as root, or grant these capabilities)")]
    Privilege { missing: String },
    #[error("reading this process's capabilities from /proc/self/status: {0}")]
    Capabilities(String),
    #[error("reading the host's online cores: {0}")]
    HostFacts(std::io::Error),
    #[error("tables.file {path}: {problem}")]
    Tables { path: String, problem: String },
    #[error("tables.file {path}: rejected: {rejected}")]
    TablesRejected { path: String, rejected: Rejected },
    #[error("control.tls: reading {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Nic(#[from] NicError),
    #[error("control thread: {0}")]
    ControlCore(EngineError),
    #[error("worker on core {core} ({queues}): {source}")]
    Worker {
        core: u32,
        /// The queues it serves, as "eth1 queue 0, eth1 queue 1".
        queues: String,
        source: EngineError,
    },
    #[error("control service: {0}")]
    Serve(#[from] ServeError),
    #[error("metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("worker on core {core} ({queues}) panicked: {message}")]
    WorkerPanicked {
        core: u32,
        queues: String,
        message: String,
    },
    #[error("cleaning up: {0}")]
    Cleanup(String),
}

/// Fault injection for tests: `SLUICE_GATEWAY_FAULT=worker-panic` makes every worker
/// panic once its sockets are bound, as a bug in the packet path would.
pub const FAULT_ENV: &str = "SLUICE_GATEWAY_FAULT";
pub const FAULT_WORKER_PANIC: &str = "worker-panic";

/// Why the control thread ended the run.
#[derive(Debug)]
enum Stop {
    Signal(&'static str),
    Requested,
    WorkerFailed(RunError),
}

/// Validates the configuration against this host: what `--check-config` does.
pub fn check(text: &str) -> Result<(GatewayConfig, Plan), RunError> {
    let config = GatewayConfig::parse(text)?;
    let plan = config.plan()?;
    plan.check_host(&crate::config::HostFacts::read().map_err(RunError::HostFacts)?)?;
    Ok((config, plan))
}

/// Loads `tables.file`, if the configuration names one, into scratch tables, as a run
/// would: what `--check-config` adds to [`check`], so that a table file the gateway
/// would refuse is caught before a restart. Returns the line to print.
pub fn check_tables(config: &GatewayConfig) -> Result<Option<String>, RunError> {
    let Some(tables) = &config.tables else {
        return Ok(None);
    };
    let txn = load_tables(&mut TableWriter::new(), &tables.file)?;
    Ok(Some(format!(
        "tables.file      {}: accepted ({} objects)",
        tables.file.display(),
        txn
    )))
}

/// Runs the gateway until SIGTERM or SIGINT; returns once everything is taken apart. A
/// worker core serving several queues owns a socket and a UMEM per queue and serves
/// them in turn.
pub fn run(config: &GatewayConfig, plan: &Plan) -> Result<(), RunError> {
    // Before anything is created, so that a refusal leaves nothing behind.
    check_privilege()?;
    let mut writer = TableWriter::new();
    if let Some(tables) = &config.tables {
        load_tables(&mut writer, &tables.file)?;
    }
    let readers: Vec<_> = plan.workers.iter().map(|_| writer.reader()).collect();
    // One slot per (worker, queue), in plan order.
    let published = Published::new(
        plan.workers
            .iter()
            .flat_map(|w| {
                w.queues.iter().map(|q| PublishedWorker {
                    core: w.core,
                    interface: q.interface.clone(),
                    queue: q.queue,
                    slot: Arc::new(CounterSlot::default()),
                })
            })
            .collect(),
    )
    .with_tables(writer.view());

    let mut running = Running::default();
    let (stop_tx, stop_rx) = async_mpsc::unbounded_channel();
    running.stop_requests = Some(stop_tx.clone());
    running.control = Some(start_control(
        config,
        plan,
        writer,
        published.clone(),
        stop_rx,
    )?);

    for iface in &config.interfaces {
        let program = NicProgram::attach(&iface.name, XdpMode::Auto, &[iface.ip])?;
        running.programs.push(program);
    }

    let settings = engine_settings(config);
    let mut slots = published.workers().iter().map(|w| Arc::clone(&w.slot));
    for (plan_worker, reader) in plan.workers.iter().zip(readers) {
        let specs: Vec<QueueSpec> = plan_worker
            .queues
            .iter()
            .map(|q| {
                let iface = config
                    .interfaces
                    .iter()
                    .find(|i| i.name == q.interface)
                    .expect("the plan only names configured interfaces");
                QueueSpec {
                    ifname: iface.name.clone(),
                    queue: q.queue,
                    local: Local::new(iface.ip, iface.mac),
                }
            })
            .collect();
        let queues = specs
            .iter()
            .map(|q| format!("{} queue {}", q.ifname, q.queue))
            .collect::<Vec<_>>()
            .join(", ");
        let core = plan_worker.core;
        let worker_error = |source| RunError::Worker {
            core,
            queues: queues.clone(),
            source,
        };
        let (fd_tx, fd_rx) = mpsc::channel();
        // The worker runs only once its sockets are in the XSKMAP: a worker that failed
        // (or panicked) first would close a socket the map is about to be given.
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let stop = Arc::clone(&running.stop);
        let worker_slots: Vec<Arc<CounterSlot>> = slots.by_ref().take(specs.len()).collect();
        let failed = stop_tx.clone();
        let settings = settings.clone();
        let thread_queues = queues.clone();
        let thread_specs = specs.clone();
        let fault = std::env::var(FAULT_ENV).ok();
        let handle = std::thread::Builder::new()
            .name(format!("worker-{core}"))
            .spawn(move || {
                let started = engine::pin_current_thread(core as usize)
                    .and_then(|()| Worker::serving(&thread_specs, &settings, reader));
                let mut worker = match started {
                    Ok(worker) => worker,
                    Err(e) => {
                        let _ = fd_tx.send(Err(e));
                        return;
                    }
                };
                let fds: Vec<(i32, bool)> = worker.fds().map(|(_, _, fd, zc)| (fd, zc)).collect();
                let _ = fd_tx.send(Ok(fds));
                if go_rx.recv().is_err() {
                    return; // the start failed after binding: nothing to serve
                }
                let slots: Vec<&CounterSlot> = worker_slots.iter().map(|s| &**s).collect();
                // A worker that panics (a bug) must not leave its queues silently
                // unserved while the gateway goes on answering gRPC: it stops the run,
                // and the gateway exits 1 naming the worker, so a supervisor restarts it.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if fault.as_deref() == Some(FAULT_WORKER_PANIC) {
                        panic!("injected fault ({FAULT_ENV}={FAULT_WORKER_PANIC})");
                    }
                    worker.run_published(&stop, &slots)
                }));
                let failure = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(source)) => RunError::Worker {
                        core,
                        queues: thread_queues,
                        source,
                    },
                    Err(payload) => RunError::WorkerPanicked {
                        core,
                        queues: thread_queues,
                        message: sluice_api::process::panic_message(&*payload),
                    },
                };
                let _ = failed.send(Stop::WorkerFailed(failure));
            })
            .map_err(|source| RunError::Thread {
                what: "starting a worker thread",
                source,
            })?;
        running.workers.push(handle);
        let fds = match fd_rx.recv() {
            Ok(fds) => fds.map_err(worker_error)?,
            // The thread ended before saying how its bind went: it panicked.
            Err(_) => {
                let handle = running.workers.pop().expect("pushed above");
                let message = handle
                    .join()
                    .err()
                    .map(|payload| sluice_api::process::panic_message(&*payload))
                    .unwrap_or_else(|| "(no message)".into());
                return Err(RunError::WorkerPanicked {
                    core,
                    queues,
                    message,
                });
            }
        };
        for (spec, (fd, zero_copy)) in specs.iter().zip(fds) {
            tracing::info!(
                core,
                interface = spec.ifname,
                queue = spec.queue,
                mode = if zero_copy { "zero-copy" } else { "copy" },
                "worker bound"
            );
            let program = running
                .programs
                .iter_mut()
                .find(|p| p.ifname() == spec.ifname)
                .expect("attached above");
            program.set_socket(spec.queue, fd)?;
            running.sockets.push((spec.ifname.clone(), spec.queue));
        }
        let _ = go_tx.send(());
    }
    tracing::info!(workers = plan.workers.len(), "forwarding");

    let stopped = running
        .control
        .take()
        .expect("started above")
        .join()
        .map_err(|_| RunError::Panicked("control"))?;
    let cleanup = running.shut_down();
    match stopped {
        Ok(Stop::Signal(name)) => tracing::info!(signal = name, "stopped"),
        Ok(Stop::Requested) => {}
        Ok(Stop::WorkerFailed(e)) | Err(e) => return Err(e),
    }
    cleanup
}

/// Capabilities a run needs: attaching XDP and changing links (CAP_NET_ADMIN), AF_XDP
/// sockets (CAP_NET_RAW), loading BPF (CAP_BPF, or CAP_SYS_ADMIN on older kernels).
const NEEDED: [(&str, u32); 2] = [("CAP_NET_ADMIN", 12), ("CAP_NET_RAW", 13)];
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Refuses to start without the capabilities a run needs, naming the missing ones.
fn check_privilege() -> Result<(), RunError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| RunError::Capabilities(e.to_string()))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| RunError::Capabilities("no CapEff line".into()))?;
    missing_capabilities(effective).map_or(Ok(()), |missing| Err(RunError::Privilege { missing }))
}

/// The capabilities missing from the `effective` set, comma-separated, if any.
fn missing_capabilities(effective: u64) -> Option<String> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    let mut missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(_, bit)| !has(*bit))
        .map(|(name, _)| *name)
        .collect();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn engine_settings(config: &GatewayConfig) -> EngineSettings {
    EngineSettings {
        frame_size: config.umem.frame_size,
        frame_count: config.umem.frame_count,
        fill_ring: config.rings.fill,
        completion_ring: config.rings.completion,
        rx_ring: config.rings.rx,
        tx_ring: config.rings.tx,
        batch_size: config.engine.batch_size,
        zero_copy: config.engine.zero_copy,
        need_wakeup: config.engine.need_wakeup,
        busy_poll_usecs: config.engine.busy_poll_usecs,
        busy_poll_budget: config.engine.busy_poll_budget,
        idle_spins: config.engine.idle_spins,
        // Validated to 1..=100.
        idle_poll_ms: config.engine.idle_sleep_ms as i32,
    }
}

/// Applies the file at `path` to `writer`; returns how many objects it upserts.
fn load_tables(writer: &mut TableWriter, path: &std::path::Path) -> Result<usize, RunError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RunError::Tables {
        path: name.clone(),
        problem: e.to_string(),
    })?;
    let txn = sluice_api::manifest::parse(&text).map_err(|e| RunError::Tables {
        path: name.clone(),
        problem: e.to_string(),
    })?;
    let generation = writer
        .apply(&txn)
        .map_err(|rejected| RunError::TablesRejected {
            path: name.clone(),
            rejected,
        })?;
    tracing::info!(file = name, generation, "tables loaded");
    Ok(txn.upserts.len())
}

/// Starts the control thread: binds gRPC and metrics, installs the signal handlers, and
/// returns once all three are in place (or failed).
fn start_control(
    config: &GatewayConfig,
    plan: &Plan,
    writer: TableWriter,
    published: Published,
    mut stop_requests: async_mpsc::UnboundedReceiver<Stop>,
) -> Result<JoinHandle<Result<Stop, RunError>>, RunError> {
    let listen = match &plan.grpc {
        GrpcListen::Unix(path) => {
            // /run/sluice does not exist on a fresh boot (/run is a tmpfs).
            if let Some(parent) = path.parent() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|source| RunError::Thread {
                        what: "creating the gRPC socket's directory",
                        source,
                    })?;
            }
            Listen::Unix(path.clone())
        }
        GrpcListen::Tcp(addr) => {
            let tls = config.control.tls.as_ref().expect("the plan checked TLS");
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| RunError::Tls {
                    path: path.display().to_string(),
                    source,
                })
            };
            Listen::Tcp {
                addr: *addr,
                tls: ServerTls {
                    cert_pem: read(&tls.cert)?,
                    key_pem: read(&tls.key)?,
                    client_ca_pem: read(&tls.ca)?,
                },
            }
        }
    };
    let metrics_addr = plan.metrics;
    let control_core = plan.control_core;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), RunError>>();
    let handle = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || -> Result<Stop, RunError> {
            // The runtime and the table writer thread (spawned from here, so it inherits
            // the affinity) run on the control core. The main thread stays unpinned: the
            // workers it spawns must be free to pin themselves to their own cores.
            if let Err(e) = engine::pin_current_thread(control_core as usize) {
                let _ = ready_tx.send(Err(RunError::ControlCore(e)));
                return Ok(Stop::Requested);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| RunError::Thread {
                    what: "building the control runtime",
                    source,
                })?;
            runtime.block_on(async move {
                let started = async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let signals = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    );
                    let (Ok(term), Ok(int)) = signals else {
                        return Err(RunError::Thread {
                            what: "installing SIGTERM and SIGINT handlers",
                            source: std::io::Error::last_os_error(),
                        });
                    };
                    let bound = bind(&listen).await?;
                    let metrics =
                        tokio::net::TcpListener::bind(metrics_addr)
                            .await
                            .map_err(|source| RunError::Metrics {
                                addr: metrics_addr,
                                source,
                            })?;
                    let tables =
                        ControlTables::spawn(writer, 64).map_err(|source| RunError::Thread {
                            what: "starting the table writer thread",
                            source,
                        })?;
                    Ok((term, int, bound, metrics, tables))
                }
                .await;
                let (mut term, mut int, bound, metrics, tables) = match started {
                    Ok(parts) => {
                        let _ = ready_tx.send(Ok(()));
                        parts
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(Stop::Requested);
                    }
                };
                let gateway = GatewayService::new(tables, Arc::new(published.clone()));
                let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
                let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                };
                let server = tokio::spawn(serve(
                    bound,
                    gateway,
                    Limits::default(),
                    wait(shutdown_rx.clone()),
                ));
                let metrics_server = tokio::spawn(metrics::serve_metrics(
                    metrics,
                    published,
                    wait(shutdown_rx),
                ));
                let stop = tokio::select! {
                    _ = term.recv() => Stop::Signal("SIGTERM"),
                    _ = int.recv() => Stop::Signal("SIGINT"),
                    request = stop_requests.recv() => request.unwrap_or(Stop::Requested),
                };
                let _ = shutdown_tx.send(true);
                let _ = metrics_server.await;
                match server.await {
                    Ok(Ok(())) => Ok(stop),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(RunError::Panicked("control service")),
                }
            })
        })
        .map_err(|source| RunError::Thread {
            what: "starting the control thread",
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => match handle.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(RunError::Panicked("control")),
        },
    }
}

/// What has been started, taken apart in reverse on shutdown or when a start step fails.
#[derive(Default)]
struct Running {
    stop: Arc<AtomicBool>,
    stop_requests: Option<async_mpsc::UnboundedSender<Stop>>,
    control: Option<JoinHandle<Result<Stop, RunError>>>,
    programs: Vec<NicProgram>,
    workers: Vec<JoinHandle<()>>,
    /// (interface, queue) of every socket in an XSKMAP.
    sockets: Vec<(String, u32)>,
}

impl Running {
    /// Empties the XSKMAP slots, stops and joins the workers (closing their sockets),
    /// stops the control thread, detaches the programs. Reports the first problem but
    /// carries on with the rest.
    fn shut_down(&mut self) -> Result<(), RunError> {
        let mut problems = Vec::new();
        for (ifname, queue) in self.sockets.drain(..) {
            if let Some(program) = self.programs.iter_mut().find(|p| p.ifname() == ifname) {
                if let Err(e) = program.clear_socket(queue) {
                    problems.push(e.to_string());
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                problems.push("a worker thread panicked".into());
            }
        }
        if let Some(control) = self.control.take() {
            if let Some(requests) = &self.stop_requests {
                let _ = requests.send(Stop::Requested);
            }
            if control.join().is_err() {
                problems.push("the control thread panicked".into());
            }
        }
        for program in self.programs.drain(..) {
            if let Err(e) = program.detach() {
                problems.push(e.to_string());
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(RunError::Cleanup(problems.join("; "))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("programs", &self.programs.len())
            .field("workers", &self.workers.len())
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        assert_eq!(
            missing_capabilities(0).as_deref(),
            Some("CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF")
        );
        let all = (1 << 12) | (1 << 13) | (1 << CAP_BPF);
        assert_eq!(missing_capabilities(all), None);
        let sys_admin = (1 << 12) | (1 << 13) | (1 << CAP_SYS_ADMIN);
        assert_eq!(
            missing_capabilities(sys_admin),
            None,
            "CAP_SYS_ADMIN will do"
        );
        assert_eq!(
            missing_capabilities(1 << 12).as_deref(),
            Some("CAP_NET_RAW, CAP_BPF")
        );
    }
}
