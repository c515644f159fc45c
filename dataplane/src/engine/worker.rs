//! One worker: per queue it serves, a UMEM and an AF_XDP socket; and the
//! run-to-completion loop that serves them round-robin, one batch each per turn.
//!
//! Frame accounting: every UMEM frame is in exactly one place at a time, the stash
//! (free, ours), the fill ring, the RX ring, the worker's current batch, or the TX and
//! completion rings (outstanding). The unsafe xsk-rs calls below rely on that: a frame is
//! touched only while it is in the stash or in the current batch.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use nix::libc;

use super::headroom::process_shifted;
use super::{CounterSlot, EngineError, EngineSettings, WorkerCounters, ZeroCopy};
use crate::pipeline::{self, Local, Verdict, REQUIRED_HEADROOM};
use crate::tables::{TableReader, Tables};

/// Binding a queue right after its previous socket closed fails with EBUSY for about
/// half a second (PLATFORM.md pitfall 8).
const BIND_ATTEMPTS: u32 = 20;
const BIND_BACKOFF: Duration = Duration::from_millis(100);

/// How often [`Worker::run_published`] copies its counters out, at most.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// One queue a worker serves: which interface and queue, and the gateway's identity
/// there.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub ifname: String,
    pub queue: u32,
    pub local: Local,
}

/// What a worker owns for one queue: a UMEM, an AF_XDP socket and their rings, the free
/// frames, and the counters of that queue.
struct Port {
    // Fields drop in declaration order: the rings go before the UMEM they point into.
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    umem: Umem,
    /// Free frames, ours to fill or write. Capacity is the frame count, so pushing never
    /// allocates.
    stash: Vec<FrameDesc>,
    /// Frames on the TX or completion ring.
    outstanding: usize,
    local: Local,
    counters: WorkerCounters,
    ifname: String,
    queue: u32,
    /// Bound with `XDP_ZEROCOPY` (otherwise copy mode).
    zero_copy: bool,
}

/// A worker: one or more queues, each with its own socket and UMEM, served round-robin
/// (one batch each per turn) in one run-to-completion loop.
pub struct Worker {
    ports: Vec<Port>,
    rx_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    reader: TableReader,
    settings: EngineSettings,
    /// One entry per port, for the idle `poll`.
    pollfds: Vec<libc::pollfd>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for port in &self.ports {
            list.entry(&format_args!(
                "{} queue {}: zero_copy {}, fd {}, stash {}, outstanding {}, {:?}",
                port.ifname,
                port.queue,
                port.zero_copy,
                port.rx.fd().as_raw_fd(),
                port.stash.len(),
                port.outstanding,
                port.counters
            ));
        }
        list.finish()
    }
}

impl Worker {
    /// Creates the UMEM and binds an AF_XDP socket to `ifname` queue `queue` in the
    /// calling thread's network namespace, retrying while the queue is busy: zero-copy or
    /// copy mode as `settings.zero_copy` says ([`Self::zero_copy`] tells which). The
    /// socket receives nothing until its fd is in the NIC program's XSKMAP
    /// ([`NicProgram::set_socket`](crate::nic::NicProgram::set_socket) with [`Self::fd`]).
    /// libxdp's own program is never loaded.
    pub fn new(
        ifname: &str,
        queue: u32,
        settings: &EngineSettings,
        reader: TableReader,
        local: Local,
    ) -> Result<Self, EngineError> {
        let spec = QueueSpec {
            ifname: ifname.into(),
            queue,
            local,
        };
        Self::serving(std::slice::from_ref(&spec), settings, reader)
    }

    /// Like [`Self::new`] for every queue of `queues` (at least one): a UMEM and a socket
    /// each, bound in order. Their fds are [`Self::fds`], in the same order.
    pub fn serving(
        queues: &[QueueSpec],
        settings: &EngineSettings,
        reader: TableReader,
    ) -> Result<Self, EngineError> {
        settings.validate()?;
        if queues.is_empty() {
            return Err(EngineError::Settings {
                field: "queues",
                problem: "a worker needs at least one queue".into(),
            });
        }
        let ports = queues
            .iter()
            .map(|q| Port::bind(&q.ifname, q.queue, settings, q.local))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = settings.batch_size as usize;
        let pollfds = ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.rx.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(Worker {
            ports,
            rx_batch: vec![FrameDesc::default(); batch],
            tx_batch: vec![FrameDesc::default(); batch],
            comp_batch: vec![FrameDesc::default(); settings.completion_ring as usize],
            reader,
            settings: settings.clone(),
            pollfds,
        })
    }

    /// The (first) socket's fd, for the NIC program's XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.ports[0].rx.fd().as_raw_fd()
    }

    /// Every socket's fd with its interface and queue and whether it is zero-copy, in
    /// the order the queues were given.
    pub fn fds(&self) -> impl Iterator<Item = (&str, u32, RawFd, bool)> + '_ {
        self.ports.iter().map(|p| {
            (
                p.ifname.as_str(),
                p.queue,
                p.rx.fd().as_raw_fd(),
                p.zero_copy,
            )
        })
    }

    /// Whether the (first) socket is bound in zero-copy mode (otherwise copy mode).
    pub fn zero_copy(&self) -> bool {
        self.ports[0].zero_copy
    }

    /// The counters of the (first) queue.
    pub fn counters(&self) -> &WorkerCounters {
        &self.ports[0].counters
    }

    /// The counters of each queue, in the order the queues were given.
    pub fn queue_counters(&self) -> impl Iterator<Item = &WorkerCounters> + '_ {
        self.ports.iter().map(|p| &p.counters)
    }

    /// The kernel's own counters for the (first) socket (drops for lack of fill frames,
    /// invalid descriptors, ...).
    pub fn kernel_statistics(&self) -> Result<xsk_rs::socket::XdpStatistics, EngineError> {
        self.ports[0]
            .rx
            .fd()
            .xdp_statistics()
            .map_err(|source| EngineError::Socket {
                syscall: "getsockopt(XDP_STATISTICS)",
                source,
            })
    }

    /// Runs until `stop` is set. Before dropping the worker, clear its XSKMAP slots.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), EngineError> {
        self.run_loop(stop, &[])
    }

    /// Like [`Self::run`], and copies each queue's counters into its slot (`slots[i]`
    /// for the i-th queue) about every [`PUBLISH_INTERVAL`], and once more when stopping
    /// (or failing).
    pub fn run_published(
        &mut self,
        stop: &AtomicBool,
        slots: &[&CounterSlot],
    ) -> Result<(), EngineError> {
        let result = self.run_loop(stop, slots);
        self.publish(slots);
        result
    }

    fn publish(&self, slots: &[&CounterSlot]) {
        for (port, slot) in self.ports.iter().zip(slots) {
            slot.publish(&port.counters);
        }
    }

    fn run_loop(&mut self, stop: &AtomicBool, slots: &[&CounterSlot]) -> Result<(), EngineError> {
        let mut idle: u32 = 0;
        let mut iterations: u32 = 0;
        let mut published = Instant::now();
        let batch = self.settings.batch_size as usize;
        while !stop.load(Ordering::Relaxed) {
            iterations = iterations.wrapping_add(1);
            // Reading the clock (vDSO, no syscall) every iteration would still cost;
            // every 64th is enough for a 100 ms cadence both busy and idle.
            if !slots.is_empty() && iterations % 64 == 0 {
                let now = Instant::now();
                if now.duration_since(published) >= PUBLISH_INTERVAL {
                    self.publish(slots);
                    published = now;
                }
            }
            let mut busy = false;
            let Worker {
                ports,
                rx_batch,
                tx_batch,
                comp_batch,
                reader,
                settings,
                ..
            } = self;
            // Every turn, busy or idle: a worker that kept an old copy while idle would
            // hold the table writer back (it copies the tables after a grace period
            // rather than wait), so an update would cost a whole copy instead of its
            // own size. One atomic load when nothing changed.
            let tables = reader.load();
            for port in ports.iter_mut() {
                // Frames coming back is progress; frames only waiting to come back is not
                // (see below).
                if port.complete(comp_batch) > 0 {
                    busy = true;
                }
                port.refill();
                // SAFETY: the descriptors written into `rx_batch` are frames the kernel
                // hands back to this port; `rx_batch` holds no frame at this point (the
                // previous batch went to a TX ring or a stash).
                let received = unsafe { port.rx.consume(&mut rx_batch[..batch]) };
                if received > 0 {
                    busy = true;
                    port.counters
                        .services
                        .reserve_ids(tables.service_id_bound());
                    let to_send = port.process(tables, &mut rx_batch[..received], tx_batch);
                    port.transmit(&tx_batch[..to_send], stop, settings, comp_batch);
                }
                // Outstanding frames alone do not make the turn busy: in copy mode on veth
                // they complete when the peer's NAPI frees them, and that NAPI may run on
                // this very core, so spinning for them would starve it (for milliseconds,
                // until the scheduler preempts the worker). Idle turns yield instead.
                if port.outstanding > 0 {
                    if port.tx_needs_kick(settings) {
                        port.kick()?;
                    }
                } else if received == 0
                    && port.zero_copy
                    && settings.need_wakeup
                    && port.fill.needs_wakeup()
                {
                    // The driver stopped pulling from the fill ring until woken.
                    port.rx.poll(0).map_err(|source| EngineError::Socket {
                        syscall: "poll (fill wakeup)",
                        source,
                    })?;
                }
            }
            if busy {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if self.settings.idle_spins > 0 && idle >= self.settings.idle_spins {
                self.sleep_until_readable()?;
            } else {
                // On a core of its own this returns at once (a syscall, well under a
                // microsecond); on a core shared with the NIC's NAPI thread or softirqs
                // it lets them deliver the packets this worker is waiting for.
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// Waits up to `idle_poll_ms` for any socket to have something to receive.
    fn sleep_until_readable(&mut self) -> Result<(), EngineError> {
        for entry in &mut self.pollfds {
            entry.revents = 0;
        }
        // SAFETY: `pollfds` is a live array of `pollfds.len()` initialized entries whose
        // fds are this worker's open sockets; poll only writes their `revents`.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                self.settings.idle_poll_ms,
            )
        };
        if rc < 0 {
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(EngineError::Socket {
                    syscall: "poll",
                    source,
                });
            }
        }
        Ok(())
    }
}

impl Port {
    fn bind(
        ifname: &str,
        queue: u32,
        settings: &EngineSettings,
        local: Local,
    ) -> Result<Self, EngineError> {
        let s = settings;
        let umem_error = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Umem {
            frame_count: s.frame_count,
            frame_size: s.frame_size,
            source,
        };
        let queue_size = |n: u32| QueueSize::new(n).map_err(|e| umem_error(e.to_string().into()));
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(s.frame_size).map_err(|e| umem_error(e.to_string().into()))?)
            .fill_queue_size(queue_size(s.fill_ring)?)
            .comp_queue_size(queue_size(s.completion_ring)?)
            .frame_headroom(0)
            .build()
            .map_err(|e| umem_error(e.to_string().into()))?;
        let frame_count = s
            .frame_count
            .try_into()
            .map_err(|_| umem_error("frame_count is zero".into()))?;
        let (umem, descs) =
            Umem::new(umem_config, frame_count, false).map_err(|e| umem_error(Box::new(e)))?;

        let mode_flags = if s.need_wakeup {
            BindFlags::XDP_USE_NEED_WAKEUP
        } else {
            BindFlags::empty()
        };
        let socket_config = |zero_copy: bool| {
            let mode = if zero_copy {
                BindFlags::XDP_ZEROCOPY
            } else {
                BindFlags::XDP_COPY
            };
            SocketConfig::builder()
                .rx_queue_size(QueueSize::new(s.rx_ring).expect("validated above"))
                .tx_queue_size(QueueSize::new(s.tx_ring).expect("validated above"))
                // Our NIC program is attached already (PLATFORM.md pitfall 9).
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(mode_flags | mode)
                .build()
        };
        queue_size(s.rx_ring)?;
        queue_size(s.tx_ring)?;
        let name = CString::new(ifname).map_err(|_| EngineError::InterfaceName(ifname.into()))?;
        let interface = Interface::new(name);
        let bind = |zero_copy: bool| {
            bind_retrying(socket_config(zero_copy), &umem, &interface, ifname, queue)
        };
        let bind_error = |failure: BindFailure| EngineError::Bind {
            ifname: ifname.into(),
            queue,
            attempts: failure.attempts,
            reason: failure.reason,
            source: failure.source,
        };
        let ((tx, rx, fill_and_comp), zero_copy) = match s.zero_copy {
            ZeroCopy::Off => (bind(false).map_err(bind_error)?, false),
            ZeroCopy::On | ZeroCopy::Auto => match bind(true) {
                Ok(queues) => (queues, true),
                Err(failure) if failure.errno() == Some(EOPNOTSUPP) => {
                    // strerror's text ("Operation not supported"), without "(os error 95)".
                    let text = io::Error::from_raw_os_error(EOPNOTSUPP).to_string();
                    let reason = text.split(" (os error").next().unwrap_or(&text);
                    if s.zero_copy == ZeroCopy::On {
                        return Err(EngineError::ZeroCopyUnavailable {
                            ifname: ifname.into(),
                            queue,
                            reason: reason.into(),
                        });
                    }
                    tracing::warn!(
                        interface = ifname,
                        queue,
                        errno = EOPNOTSUPP,
                        "zero-copy unavailable ({reason}); using copy mode"
                    );
                    (bind(false).map_err(bind_error)?, false)
                }
                Err(failure) => return Err(bind_error(failure)),
            },
        };
        if s.busy_poll_usecs > 0 && s.busy_poll_budget > 0 {
            set_busy_poll(rx.fd().as_raw_fd(), s.busy_poll_usecs, s.busy_poll_budget)?;
        }
        let (fill, comp) = fill_and_comp.ok_or_else(|| EngineError::NoFillRing {
            ifname: ifname.into(),
            queue,
        })?;

        let mut stash = Vec::with_capacity(descs.len());
        stash.extend_from_slice(&descs);
        let mut port = Port {
            tx,
            rx,
            fill,
            comp,
            umem,
            stash,
            outstanding: 0,
            local,
            counters: WorkerCounters::default(),
            ifname: ifname.into(),
            queue,
            zero_copy,
        };
        port.refill();
        Ok(port)
    }

    /// Runs the pipeline over `received` (just consumed from this port's RX ring).
    /// Frames to transmit go to `tx_batch` (their count is returned), dropped frames to
    /// the stash.
    fn process(
        &mut self,
        tables: &Tables,
        received: &mut [FrameDesc],
        tx_batch: &mut [FrameDesc],
    ) -> usize {
        let Port {
            umem,
            stash,
            local,
            counters,
            ..
        } = self;
        let mut to_send = 0;
        for desc in received {
            let len = desc.lengths().data();
            counters.rx_packets += 1;
            counters.rx_bytes += len as u64;
            let mut hit = None;
            let verdict = {
                // SAFETY: `desc` was just consumed from this port's RX ring, so its frame
                // belongs to this UMEM and to nobody else until we hand it on below.
                let mut data = unsafe { umem.data_mut(desc) };
                let mut cursor = data.cursor();
                // Extend the segment over the room after the packet (its contents are
                // left alone), process, then cut it to the output length.
                cursor.set_pos(len + REQUIRED_HEADROOM);
                let (verdict, out_len) = process_shifted(data.contents_mut(), len, |frame| {
                    pipeline::process_counted(tables, local, frame, &mut hit)
                });
                data.cursor().set_pos(out_len);
                verdict
            };
            counters.outcomes.record(verdict);
            if let Some(hit) = hit {
                counters.services.record(hit);
            }
            match verdict {
                Verdict::Forward | Verdict::Reply => {
                    tx_batch[to_send] = *desc;
                    to_send += 1;
                }
                Verdict::Drop(_) => stash.push(*desc),
            }
        }
        to_send
    }

    /// Puts `descs` on the TX ring, kicking and draining completions while it is full.
    /// If `stop` is set meanwhile, what did not fit goes back to the stash.
    fn transmit(
        &mut self,
        descs: &[FrameDesc],
        stop: &AtomicBool,
        settings: &EngineSettings,
        comp_batch: &mut [FrameDesc],
    ) {
        let count = descs.len();
        let mut sent = 0;
        while sent < count {
            let want = count - sent;
            let free = (self.tx.nb_free(want as u32) as usize).min(want);
            if free > 0 {
                let batch = &descs[sent..sent + free];
                // SAFETY: these frames came from this port's RX ring this iteration and
                // have been processed; from here the kernel owns them until they complete.
                let produced = unsafe { self.tx.produce(batch) };
                for desc in &batch[..produced] {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += desc.lengths().data() as u64;
                }
                sent += produced;
                self.outstanding += produced;
            }
            if sent < count {
                self.counters.tx_ring_full += 1;
                if stop.load(Ordering::Relaxed)
                    || (self.tx_needs_kick(settings) && self.kick().is_err())
                {
                    // Forwarded by the pipeline but never sent: counted, not hidden.
                    self.counters.tx_abandoned += (count - sent) as u64;
                    self.stash.extend_from_slice(&descs[sent..count]);
                    return;
                }
                self.complete(comp_batch);
            }
        }
    }

    /// Copy mode sends at most 32 frames per kick and only when kicked, so it is kicked
    /// whenever anything is outstanding (PLATFORM.md pitfall 6). Zero-copy drivers send
    /// on their own and set the need-wakeup flag when they want a kick.
    fn tx_needs_kick(&self, settings: &EngineSettings) -> bool {
        !self.zero_copy || !settings.need_wakeup || self.tx.needs_wakeup()
    }

    fn kick(&mut self) -> Result<(), EngineError> {
        self.counters.kicks += 1;
        self.tx.wakeup().map_err(|source| EngineError::Socket {
            syscall: "sendto (TX wakeup)",
            source,
        })
    }

    /// Moves completed TX frames to the stash; returns how many.
    fn complete(&mut self, comp_batch: &mut [FrameDesc]) -> usize {
        if self.outstanding == 0 {
            return 0;
        }
        // SAFETY: the completion ring hands back frames of this port's UMEM whose
        // transmission finished; they go straight to the stash.
        let done = unsafe { self.comp.consume(comp_batch) };
        self.stash.extend_from_slice(&comp_batch[..done]);
        self.outstanding -= done;
        done
    }

    /// Gives the kernel as many free frames as the fill ring takes.
    fn refill(&mut self) {
        let room = self.fill.nb_free(self.stash.len().max(1) as u32) as usize;
        if room == 0 {
            return;
        }
        if self.stash.is_empty() {
            self.counters.fill_ring_empty += 1;
            return;
        }
        let give = room.min(self.stash.len());
        let from = self.stash.len() - give;
        // SAFETY: frames in the stash are free and belong to this port's UMEM; once
        // produced they are the kernel's until they come back on the RX ring.
        let given = unsafe { self.fill.produce(&self.stash[from..]) };
        // `produce` puts all of them or none.
        if given == give {
            self.stash.truncate(from);
        }
    }
}

const EBUSY: i32 = libc::EBUSY;
const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

/// What a bind gives: the socket's rings, and the UMEM's if this is its first socket.
type Bound = (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>);

/// A bind that failed for good.
struct BindFailure {
    attempts: u32,
    reason: String,
    source: Option<io::Error>,
}

impl BindFailure {
    fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }
}

/// Binds a socket on `queue`, retrying while the queue is busy (PLATFORM.md pitfall 8).
fn bind_retrying(
    config: SocketConfig,
    umem: &Umem,
    interface: &Interface,
    ifname: &str,
    queue: u32,
) -> Result<Bound, BindFailure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // SAFETY: the UMEM was just created and is used by this one socket only; the
        // worker keeps the UMEM after the rings (field order), so it outlives them.
        match unsafe { Socket::new(config, umem, interface, queue) } {
            Ok(queues) => return Ok(queues),
            Err(e) => {
                let source = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .map(|io| io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(0)));
                let busy = source
                    .as_ref()
                    .is_some_and(|io| io.raw_os_error() == Some(EBUSY));
                if busy && attempt < BIND_ATTEMPTS {
                    std::thread::sleep(BIND_BACKOFF);
                    continue;
                }
                let invalid = source
                    .as_ref()
                    .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL));
                let reason = if busy {
                    "the queue is busy (another AF_XDP socket is bound to it)".into()
                } else if invalid {
                    // The kernel's one check that is about the configuration rather than
                    // the socket: the queue id against the device's real queue count.
                    let name = ifname;
                    format!(
                        "the kernel refused queue {queue}: {name} may have fewer queues \
                         (`ethtool -l {name}` lists them; fix interfaces.queues)"
                    )
                } else {
                    e.to_string()
                };
                return Err(BindFailure {
                    attempts: attempt,
                    reason,
                    source,
                });
            }
        }
    }
}

/// Turns on busy polling for the socket: `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and
/// `SO_BUSY_POLL_BUDGET` (raising the budget needs CAP_NET_ADMIN).
fn set_busy_poll(fd: RawFd, usecs: u32, budget: u32) -> Result<(), EngineError> {
    let options: [(libc::c_int, &'static str, u32); 3] = [
        (
            libc::SO_PREFER_BUSY_POLL,
            "setsockopt(SO_PREFER_BUSY_POLL)",
            1,
        ),
        (libc::SO_BUSY_POLL, "setsockopt(SO_BUSY_POLL)", usecs),
        (
            libc::SO_BUSY_POLL_BUDGET,
            "setsockopt(SO_BUSY_POLL_BUDGET)",
            budget,
        ),
    ];
    for (option, syscall, value) in options {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is this worker's open socket; the value is a c_int that lives
        // across the call and its size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(EngineError::Socket {
                syscall,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
