//! A worker's counters: plain integers owned by the worker thread, and the slot it
//! publishes copies into for the control thread.
//!
//! The hot loop only ever touches its own [`WorkerCounters`]. Every so often (about every
//! 100 ms, see `Worker::run_published`) it copies them into its [`CounterSlot`], which
//! sits on cache lines of its own, so readers never contend with a worker's hot data nor
//! workers with each other. Readers may see one field of a copy newer than another; every
//! field on its own only grows.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::{DropCounters, DropReason};
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

    /// Adds `other` into `self` (summing workers).
    pub fn merge(&mut self, other: &WorkerCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.outcomes.merge(&other.outcomes);
        self.fill_ring_empty += other.fill_ring_empty;
        self.tx_ring_full += other.tx_ring_full;
        self.kicks += other.kicks;
    }
}

/// Where one worker publishes its counters: one writer (the worker), any number of
/// readers. Aligned to 128 bytes (two cache lines, for the adjacent-line prefetcher) so
/// that two workers' slots never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CounterSlot {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    forwarded: AtomicU64,
    replied: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    fill_ring_empty: AtomicU64,
    tx_ring_full: AtomicU64,
    kicks: AtomicU64,
}

impl CounterSlot {
    /// Copies `counters` into the slot (relaxed stores: counters order nothing).
    pub fn publish(&self, counters: &WorkerCounters) {
        let store = |slot: &AtomicU64, value: u64| slot.store(value, Ordering::Relaxed);
        store(&self.rx_packets, counters.rx_packets);
        store(&self.rx_bytes, counters.rx_bytes);
        store(&self.tx_packets, counters.tx_packets);
        store(&self.tx_bytes, counters.tx_bytes);
        store(&self.forwarded, counters.outcomes.forwarded);
        store(&self.replied, counters.outcomes.replied);
        for (reason, count) in counters.outcomes.iter() {
            store(&self.drops[reason as usize], count);
        }
        store(&self.fill_ring_empty, counters.fill_ring_empty);
        store(&self.tx_ring_full, counters.tx_ring_full);
        store(&self.kicks, counters.kicks);
    }

    /// The last published copy.
    pub fn read(&self) -> WorkerCounters {
        let load = |slot: &AtomicU64| slot.load(Ordering::Relaxed);
        let mut drops = [0; DropReason::COUNT];
        for (value, slot) in drops.iter_mut().zip(&self.drops) {
            *value = load(slot);
        }
        WorkerCounters {
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
            outcomes: DropCounters::from_parts(load(&self.forwarded), load(&self.replied), drops),
            fill_ring_empty: load(&self.fill_ring_empty),
            tx_ring_full: load(&self.tx_ring_full),
            kicks: load(&self.kicks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Verdict;

    #[test]
    fn a_published_copy_reads_back_whole_and_slots_do_not_share_lines() {
        let mut counters = WorkerCounters {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            fill_ring_empty: 5,
            tx_ring_full: 6,
            kicks: 7,
            ..Default::default()
        };
        counters.outcomes.record(Verdict::Forward);
        counters.outcomes.record(Verdict::Reply);
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                counters.outcomes.record(Verdict::Drop(*reason));
            }
        }
        let slot = CounterSlot::default();
        slot.publish(&counters);
        assert_eq!(slot.read(), counters);
        assert_eq!(std::mem::align_of::<CounterSlot>(), 128);
        assert_eq!(std::mem::size_of::<CounterSlot>() % 128, 0);
    }
}
