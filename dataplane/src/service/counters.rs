//! Where the control service reads packet counters from.
//!
//! The engine keeps counters per worker, in plain integers on the worker's own cache
//! lines, and sums them when asked; this module only says what a sum looks like and how
//! the service asks for one. It must not make workers wait or share counters between them.

use std::net::Ipv4Addr;

use sluice_api::Protocol;

use crate::pipeline::DropCounters;

/// Counters summed over every worker at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Forwarded and replied packets and drops by reason.
    pub outcomes: DropCounters,
    /// Forwarded packets per service that exists now, and per backend.
    pub services: Vec<ServiceCount>,
}

/// Packets forwarded to one service's backends, summed over every worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCount {
    pub vni: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub packets: u64,
    /// Every backend of the service, in its order, with its packets.
    pub backends: Vec<BackendCount>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendCount {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub packets: u64,
}

/// Something that can sum the workers' counters: the engine, or a test.
pub trait CounterSource: Send + Sync + 'static {
    /// The current totals. Called on the control thread; must not block on workers.
    fn read(&self) -> PacketCounters;
}

impl<F> CounterSource for F
where
    F: Fn() -> PacketCounters + Send + Sync + 'static,
{
    fn read(&self) -> PacketCounters {
        self()
    }
}
