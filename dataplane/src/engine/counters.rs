//! A worker's counters: plain integers owned by the worker thread, never shared while it
//! runs (exporting them to `service::CounterSource` comes with issue 3).

use crate::pipeline::DropCounters;
use crate::service::PacketCounters;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Forwarded and replied packets, drops by reason.
    pub outcomes: DropCounters,
    /// Refills that found the fill ring with room but no free frame in the stash.
    pub fill_ring_empty: u64,
    /// Times a batch did not fit in the TX ring at once.
    pub tx_ring_full: u64,
    /// TX wakeups (`sendto`).
    pub kicks: u64,
}

impl WorkerCounters {
    /// The subset the control service reports.
    pub fn packet_counters(&self) -> PacketCounters {
        PacketCounters {
            rx_packets: self.rx_packets,
            rx_bytes: self.rx_bytes,
            tx_packets: self.tx_packets,
            tx_bytes: self.tx_bytes,
            outcomes: self.outcomes.clone(),
        }
    }
}
