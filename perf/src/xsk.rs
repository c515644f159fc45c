//! The AF_XDP generator: one socket on one queue (copy mode on veth), a UMEM whose frames
//! all hold the run's template from the start, and a loop that takes free frames, patches
//! the flow fields (and the stamp), produces a batch on the TX ring and kicks the kernel
//! whenever descriptors are outstanding (copy mode sends at most 32 frames per kick and
//! only when kicked: PLATFORM.md pitfall 6). Completed frames return to a stash.
//!
//! What the generator counts is what the kernel took from its TX ring, not what arrived:
//! the sink counts deliveries (PLATFORM.md pitfall 13).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FrameDesc, Socket, TxQueue, Umem};

use crate::packets::Template;

const FRAMES: u32 = 4096;
const FRAME_SIZE: u32 = 2048;
const RING: u32 = 2048;

/// What failed while setting up or running the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("creating the UMEM: {0}")]
    Umem(String),
    #[error("binding an AF_XDP socket to {ifname} queue 0: {message}")]
    Bind { ifname: String, message: String },
    #[error("the socket did not get the UMEM's completion ring")]
    NoCompletionRing,
    #[error("TX kick (sendto): {0}")]
    Kick(io::Error),
}

/// How to send.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Packets per second; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Write a CLOCK_MONOTONIC stamp into each frame's last 16 bytes.
    pub stamps: bool,
    /// Descriptors per TX batch; with a rate, frames sent back to back per time slot.
    pub batch: usize,
}

/// Frames the kernel took from the TX ring during each whole second, and in total.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    pub windows: Vec<u64>,
    pub total: u64,
    pub seconds: f64,
}

/// A bound generator socket.
pub struct Generator {
    tx: TxQueue,
    comp: CompQueue,
    stash: Vec<FrameDesc>,
    outstanding: usize,
    // Last: the rings above must be dropped before the UMEM they point into.
    umem: Umem,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("stash", &self.stash.len())
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Generator {
    /// Binds queue 0 of `ifname` (copy mode, libxdp's own program inhibited: the
    /// generator only transmits) and writes `template` into every frame.
    pub fn new(ifname: &str, template: &Template) -> Result<Self, GenError> {
        let umem_err = |e: &dyn std::fmt::Display| GenError::Umem(e.to_string());
        let config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| umem_err(&e))?)
            .fill_queue_size(QueueSize::new(RING).map_err(|e| umem_err(&e))?)
            .comp_queue_size(QueueSize::new(RING).map_err(|e| umem_err(&e))?)
            .frame_headroom(0)
            .build()
            .map_err(|e| umem_err(&e))?;
        let count = FRAMES.try_into().map_err(|e| umem_err(&e))?;
        let (umem, mut descs) = Umem::new(config, count, false).map_err(|e| umem_err(&e))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(RING).map_err(|e| umem_err(&e))?)
            .tx_queue_size(QueueSize::new(RING).map_err(|e| umem_err(&e))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name = CString::new(ifname).map_err(|_| GenError::Bind {
            ifname: ifname.into(),
            message: "not a valid interface name".into(),
        })?;
        let interface = Interface::new(name);
        let mut attempt = 0;
        let (tx, _rx, rings) = loop {
            attempt += 1;
            // SAFETY: the UMEM was just created and serves this one socket; `Generator`
            // drops the rings before the UMEM (field order).
            match unsafe { Socket::new(socket_config, &umem, &interface, 0) } {
                Ok(queues) => break queues,
                // A queue is busy for ~0.5 s after its last socket closed (pitfall 8).
                Err(_) if attempt < 10 => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => {
                    return Err(GenError::Bind {
                        ifname: ifname.into(),
                        message: e.to_string(),
                    })
                }
            }
        };
        let (_fill, comp) = rings.ok_or(GenError::NoCompletionRing)?;
        for desc in &mut descs {
            // SAFETY: every frame is free (nothing was produced to any ring yet) and
            // this is the only view of it.
            let mut data = unsafe { umem.data_mut(desc) };
            let mut cursor = data.cursor();
            let _ = io::Write::write_all(&mut cursor, &template.frame);
        }
        Ok(Self {
            tx,
            comp,
            stash: descs,
            outstanding: 0,
            umem,
        })
    }

    /// Sends flows `0..flows` in turn for `duration`.
    pub fn run(
        &mut self,
        template: &Template,
        flows: u32,
        duration: Duration,
        pace: Pace,
    ) -> Result<Sent, GenError> {
        let flows = flows.max(1);
        let batch_size = pace.batch.clamp(1, 256);
        let mut batch: Vec<FrameDesc> = Vec::with_capacity(batch_size);
        let mut comp_batch = vec![FrameDesc::default(); RING as usize];
        let mut sent = Sent::default();
        let mut flow = 0u32;
        let start = Instant::now();
        let deadline = start + duration;
        let mut window_end = start + Duration::from_secs(1);
        let mut window_count = 0u64;
        // Paced: `batch_size` frames per slot of batch_size / rate seconds. Between slots the
        // generator sleeps, so that it leaves its core to the kernel threads sharing it.
        let interval = pace
            .rate
            .map(|r| Duration::from_secs_f64(batch_size as f64 / r.max(1.0)));
        let mut next_send = start;
        let mut loops = 0u32;
        loop {
            loops = loops.wrapping_add(1);
            if loops % 64 == 0 || interval.is_some() {
                let now = Instant::now();
                if now >= window_end {
                    sent.windows.push(window_count);
                    window_count = 0;
                    window_end += Duration::from_secs(1);
                }
                if now >= deadline {
                    break;
                }
            }
            self.complete(&mut comp_batch);
            let want = match interval {
                Some(step) => {
                    let now = Instant::now();
                    if now < next_send {
                        if self.outstanding > 0 {
                            self.kick()?;
                        }
                        let wait = next_send - now;
                        if wait > Duration::from_micros(80) {
                            std::thread::sleep(wait - Duration::from_micros(60));
                        } else {
                            std::hint::spin_loop();
                        }
                        continue;
                    }
                    next_send += step;
                    if next_send + step * 64 < now {
                        next_send = now; // fell behind: do not catch up in one burst
                    }
                    batch_size
                }
                None => batch_size,
            };
            let want = want.min(self.stash.len());
            let free = (self.tx.nb_free(want as u32) as usize).min(want);
            batch.clear();
            for _ in 0..free {
                let Some(mut desc) = self.stash.pop() else {
                    break;
                };
                {
                    // SAFETY: a stashed frame is free: not on any ring, and this is the
                    // only view of it while it is patched.
                    let mut data = unsafe { self.umem.data_mut(&mut desc) };
                    // The frame holds the template from `new`; only the length is set
                    // here (a completed descriptor's length is what was sent).
                    data.cursor().set_pos(template.frame.len());
                    let bytes = data.contents_mut();
                    template.patch(bytes, flow);
                    if pace.stamps {
                        Template::stamp(bytes, now_ns());
                    }
                }
                flow = if flow + 1 >= flows { 0 } else { flow + 1 };
                batch.push(desc);
            }
            if !batch.is_empty() {
                // SAFETY: these frames were taken from the stash and are ours; once
                // produced they are the kernel's until they come back on the completion
                // ring.
                let produced = unsafe { self.tx.produce(&batch) };
                self.stash.extend_from_slice(&batch[produced..]);
                self.outstanding += produced;
                window_count += produced as u64;
                sent.total += produced as u64;
            }
            if self.outstanding > 0 {
                self.kick()?;
            }
        }
        sent.seconds = start.elapsed().as_secs_f64();
        Ok(sent)
    }

    fn kick(&mut self) -> Result<(), GenError> {
        match self.tx.wakeup() {
            Ok(()) => Ok(()),
            // The TX path is full for a moment: the next round kicks again.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EAGAIN) | Some(nix::libc::ENOBUFS) | Some(nix::libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(GenError::Kick(e)),
        }
    }

    fn complete(&mut self, comp_batch: &mut [FrameDesc]) {
        if self.outstanding == 0 {
            return;
        }
        // SAFETY: the completion ring hands back frames of this UMEM whose transmission
        // finished; they go straight to the stash.
        let done = unsafe { self.comp.consume(comp_batch) };
        self.stash.extend_from_slice(&comp_batch[..done]);
        self.outstanding -= done;
    }
}
