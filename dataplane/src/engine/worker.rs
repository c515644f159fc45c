//! One worker: a UMEM and an AF_XDP socket on one queue, and the run-to-completion loop.
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
use crate::tables::TableReader;

/// Binding a queue right after its previous socket closed fails with EBUSY for about
/// half a second (PLATFORM.md pitfall 8).
const BIND_ATTEMPTS: u32 = 20;
const BIND_BACKOFF: Duration = Duration::from_millis(100);

/// How often [`Worker::run_published`] copies its counters out, at most.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// A worker's socket, UMEM and rings, and what it needs to run the pipeline.
pub struct Worker {
    // Fields drop in declaration order: the rings go before the UMEM they point into.
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    umem: Umem,
    /// Free frames, ours to fill or write. Capacity is the frame count, so pushing never
    /// allocates.
    stash: Vec<FrameDesc>,
    rx_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    /// Frames on the TX or completion ring.
    outstanding: usize,
    reader: TableReader,
    local: Local,
    settings: EngineSettings,
    counters: WorkerCounters,
    ifname: String,
    queue: u32,
    /// Bound with `XDP_ZEROCOPY` (otherwise copy mode).
    zero_copy: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("zero_copy", &self.zero_copy)
            .field("fd", &self.fd())
            .field("stash", &self.stash.len())
            .field("outstanding", &self.outstanding)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
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
        settings.validate()?;
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
        let bind =
            |zero_copy: bool| bind_retrying(socket_config(zero_copy), &umem, &interface, queue);
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

        let batch = s.batch_size as usize;
        let mut stash = Vec::with_capacity(descs.len());
        stash.extend_from_slice(&descs);
        let mut worker = Worker {
            tx,
            rx,
            fill,
            comp,
            umem,
            stash,
            rx_batch: vec![FrameDesc::default(); batch],
            tx_batch: vec![FrameDesc::default(); batch],
            comp_batch: vec![FrameDesc::default(); s.completion_ring as usize],
            outstanding: 0,
            reader,
            local,
            settings: s.clone(),
            counters: WorkerCounters::default(),
            ifname: ifname.into(),
            queue,
            zero_copy,
        };
        worker.refill();
        Ok(worker)
    }

    /// The socket's fd, for the NIC program's XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Whether the socket is bound in zero-copy mode (otherwise copy mode).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// The kernel's own counters for this socket (drops for lack of fill frames, invalid
    /// descriptors, ...).
    pub fn kernel_statistics(&self) -> Result<xsk_rs::socket::XdpStatistics, EngineError> {
        self.rx
            .fd()
            .xdp_statistics()
            .map_err(|source| EngineError::Socket {
                syscall: "getsockopt(XDP_STATISTICS)",
                source,
            })
    }

    /// Runs until `stop` is set. Before dropping the worker, clear its XSKMAP slot.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), EngineError> {
        self.run_loop(stop, None)
    }

    /// Like [`Self::run`], and copies the counters into `slot` about every
    /// [`PUBLISH_INTERVAL`], and once more when stopping (or failing).
    pub fn run_published(
        &mut self,
        stop: &AtomicBool,
        slot: &CounterSlot,
    ) -> Result<(), EngineError> {
        let result = self.run_loop(stop, Some(slot));
        slot.publish(&self.counters);
        result
    }

    fn run_loop(
        &mut self,
        stop: &AtomicBool,
        slot: Option<&CounterSlot>,
    ) -> Result<(), EngineError> {
        let mut idle: u32 = 0;
        let mut iterations: u32 = 0;
        let mut published = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            iterations = iterations.wrapping_add(1);
            // Reading the clock (vDSO, no syscall) every iteration would still cost;
            // every 64th is enough for a 100 ms cadence both busy and idle.
            if let Some(slot) = slot.filter(|_| iterations % 64 == 0) {
                let now = Instant::now();
                if now.duration_since(published) >= PUBLISH_INTERVAL {
                    slot.publish(&self.counters);
                    published = now;
                }
            }
            self.complete();
            self.refill();
            let batch = self.settings.batch_size as usize;
            // SAFETY: the descriptors written into `rx_batch` are frames the kernel hands
            // back to us; `rx_batch` holds no frame of ours at this point (the previous
            // batch went to the TX ring or the stash).
            let received = unsafe { self.rx.consume(&mut self.rx_batch[..batch]) };
            if received > 0 {
                idle = 0;
                let to_send = self.process(received);
                self.transmit(to_send, stop);
            }
            if self.outstanding > 0 {
                if self.tx_needs_kick() {
                    self.kick()?;
                }
            } else if received == 0 {
                if self.zero_copy && self.settings.need_wakeup && self.fill.needs_wakeup() {
                    // The driver stopped pulling from the fill ring until woken.
                    self.rx.poll(0).map_err(|source| EngineError::Socket {
                        syscall: "poll (fill wakeup)",
                        source,
                    })?;
                }
                idle = idle.saturating_add(1);
                if self.settings.idle_spins > 0 && idle >= self.settings.idle_spins {
                    self.rx.poll(self.settings.idle_poll_ms).map_err(|source| {
                        EngineError::Socket {
                            syscall: "poll",
                            source,
                        }
                    })?;
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        Ok(())
    }

    /// Runs the pipeline over the first `received` descriptors of `rx_batch`. Frames to
    /// transmit go to `tx_batch` (their count is returned), dropped frames to the stash.
    fn process(&mut self, received: usize) -> usize {
        let Worker {
            umem,
            stash,
            rx_batch,
            tx_batch,
            reader,
            local,
            counters,
            ..
        } = self;
        let tables = reader.load();
        let mut to_send = 0;
        for desc in &mut rx_batch[..received] {
            let len = desc.lengths().data();
            counters.rx_packets += 1;
            counters.rx_bytes += len as u64;
            let verdict = {
                // SAFETY: `desc` was just consumed from this socket's RX ring, so its frame
                // belongs to this UMEM and to nobody else until we hand it on below.
                let mut data = unsafe { umem.data_mut(desc) };
                let mut cursor = data.cursor();
                // Extend the segment over the room after the packet (its contents are
                // left alone), process, then cut it to the output length.
                cursor.set_pos(len + REQUIRED_HEADROOM);
                let (verdict, out_len) = process_shifted(data.contents_mut(), len, |frame| {
                    pipeline::process(tables, local, frame)
                });
                data.cursor().set_pos(out_len);
                verdict
            };
            counters.outcomes.record(verdict);
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

    /// Puts `tx_batch[..count]` on the TX ring, kicking and draining completions while it
    /// is full. If `stop` is set meanwhile, what did not fit goes back to the stash.
    fn transmit(&mut self, count: usize, stop: &AtomicBool) {
        let mut sent = 0;
        while sent < count {
            let want = count - sent;
            let free = (self.tx.nb_free(want as u32) as usize).min(want);
            if free > 0 {
                let descs = &self.tx_batch[sent..sent + free];
                // SAFETY: these frames came from our RX ring this iteration and have been
                // processed; from here the kernel owns them until they complete.
                let produced = unsafe { self.tx.produce(descs) };
                for desc in &descs[..produced] {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += desc.lengths().data() as u64;
                }
                sent += produced;
                self.outstanding += produced;
            }
            if sent < count {
                self.counters.tx_ring_full += 1;
                if stop.load(Ordering::Relaxed) || (self.tx_needs_kick() && self.kick().is_err()) {
                    self.stash.extend_from_slice(&self.tx_batch[sent..count]);
                    return;
                }
                self.complete();
            }
        }
    }

    /// Copy mode sends at most 32 frames per kick and only when kicked, so it is kicked
    /// whenever anything is outstanding (PLATFORM.md pitfall 6). Zero-copy drivers send
    /// on their own and set the need-wakeup flag when they want a kick.
    fn tx_needs_kick(&self) -> bool {
        !self.zero_copy || !self.settings.need_wakeup || self.tx.needs_wakeup()
    }

    fn kick(&mut self) -> Result<(), EngineError> {
        self.counters.kicks += 1;
        self.tx.wakeup().map_err(|source| EngineError::Socket {
            syscall: "sendto (TX wakeup)",
            source,
        })
    }

    /// Moves completed TX frames to the stash.
    fn complete(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        // SAFETY: the completion ring hands back frames of this UMEM whose transmission
        // finished; they go straight to the stash.
        let done = unsafe { self.comp.consume(&mut self.comp_batch) };
        self.stash.extend_from_slice(&self.comp_batch[..done]);
        self.outstanding -= done;
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
        // SAFETY: frames in the stash are free and belong to this UMEM; once produced they
        // are the kernel's until they come back on the RX ring.
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
                return Err(BindFailure {
                    attempts: attempt,
                    reason: e.to_string(),
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
