//! The AF_XDP engine: worker threads that own a UMEM and a socket per NIC queue they serve
//! and run the pipeline to completion over batches of received frames.
//!
//! A [`Worker`] loops: return completed TX frames to its stash, refill the fill ring
//! from the stash, take an RX batch, run [`pipeline::process`](crate::pipeline::process)
//! on each frame in place, transmit the survivors from the same UMEM frames, kick the
//! kernel while TX descriptors are outstanding. Nothing in the loop allocates, locks or
//! makes a syscall per packet; the only syscalls are TX kicks and, when a turn finds no
//! work, `sched_yield` (then `poll` once the worker has been idle for a while).
//!
//! Scope: one socket (and UMEM) per queue; a worker serving several queues takes one
//! batch from each in turn. Zero-copy is bound when asked for (`ZeroCopy::On`) or
//! tried first (`ZeroCopy::Auto`, falling back to copy mode with one warning). In copy
//! mode TX is kicked whenever descriptors are outstanding; in zero-copy mode only when the
//! kernel asks for it (need-wakeup).
//!
//! This module must not know about tables' internals or the control plane: it reads the
//! tables through a [`TableReader`](crate::tables::TableReader) once per batch.

// The one module of the crate allowed `unsafe`: xsk-rs exposes the rings and the UMEM
// frames through unsafe functions whose contract (a descriptor belongs to this UMEM and
// to nobody else at the moment) only the engine's frame accounting can uphold. Every
// block says why its contract holds.
#![allow(unsafe_code)]

mod counters;
pub mod headroom;
mod settings;
mod worker;

pub use counters::{CounterSlot, ServiceCounters, ServiceSlot, WorkerCounters};
pub use settings::{EngineSettings, ZeroCopy};
pub use worker::{QueueSpec, Worker};

use std::io;

/// What failed while setting up or running a worker.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine settings: {field}: {problem}")]
    Settings {
        field: &'static str,
        problem: String,
    },
    #[error("creating the UMEM ({frame_count} frames of {frame_size} bytes): {source}")]
    Umem {
        frame_count: u32,
        frame_size: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("binding an AF_XDP socket to {ifname} queue {queue} (after {attempts} attempts): {reason}{}", .source.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Bind {
        ifname: String,
        queue: u32,
        attempts: u32,
        reason: String,
        source: Option<io::Error>,
    },
    #[error("zero-copy unavailable on {ifname} queue {queue}: {reason}; set engine.zero_copy = \"auto\" or \"off\"")]
    ZeroCopyUnavailable {
        ifname: String,
        queue: u32,
        reason: String,
    },
    #[error("the AF_XDP socket on {ifname} queue {queue} did not get the UMEM's fill and completion rings (the UMEM is shared with another socket)")]
    NoFillRing { ifname: String, queue: u32 },
    #[error("interface name {0:?} is not a valid C string")]
    InterfaceName(String),
    #[error("pinning the worker thread to core {core}: {problem}")]
    Pin { core: usize, problem: String },
    #[error("{syscall} on the AF_XDP socket: {source}")]
    Socket {
        syscall: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Pins the calling thread to `core`. Fails when the core does not exist or is not in
/// this process's allowed set (cgroup cpuset, `taskset`).
pub fn pin_current_thread(core: usize) -> Result<(), EngineError> {
    let cores = core_affinity::get_core_ids().ok_or_else(|| EngineError::Pin {
        core,
        problem: "cannot read this process's CPU affinity (sched_getaffinity)".into(),
    })?;
    let Some(id) = cores.iter().copied().find(|c| c.id == core) else {
        let allowed: Vec<String> = cores.iter().map(|c| c.id.to_string()).collect();
        return Err(EngineError::Pin {
            core,
            problem: format!(
                "not among the cores this process may run on ({})",
                allowed.join(",")
            ),
        });
    };
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(EngineError::Pin {
            core,
            problem: format!("sched_setaffinity failed: {}", io::Error::last_os_error()),
        })
    }
}
