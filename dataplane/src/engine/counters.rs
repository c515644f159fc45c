//! A worker's counters: plain integers owned by the worker thread, and the slot it
//! publishes copies into for the control thread.
//!
//! The hot loop only ever touches its own [`WorkerCounters`]. Every so often (about every
//! 100 ms, see `Worker::run_published`) it copies them into its [`CounterSlot`], which
//! sits on cache lines of its own, so readers never contend with a worker's hot data nor
//! workers with each other. Readers may see one field of a copy newer than another; every
//! field on its own only grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::pipeline::{DropCounters, DropReason, ServiceHit};
use crate::service::PacketCounters;
use crate::tables::ServiceInstance;

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
    /// Packets the pipeline forwarded that never reached the TX ring: the ring stayed
    /// full while the gateway was stopping, or a TX wakeup failed.
    pub tx_abandoned: u64,
    /// Forwarded packets per service and backend.
    pub services: ServiceCounters,
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
            services: Vec::new(),
        }
    }

    /// Adds `other` into `self` (summing workers). Per-service counts are left out: only
    /// the tables can say which of them still belong to a live service.
    pub fn merge(&mut self, other: &WorkerCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.outcomes.merge(&other.outcomes);
        self.fill_ring_empty += other.fill_ring_empty;
        self.tx_ring_full += other.tx_ring_full;
        self.kicks += other.kicks;
        self.tx_abandoned += other.tx_abandoned;
    }
}

/// One worker's forwarded packets per service and per backend: plain integers in a
/// vector indexed by service id, touched only by that worker.
///
/// A slot counts for one service instance (id and stamp, see [`ServiceInstance`]); the
/// first hit of a different stamp on the same id starts the slot over, so a re-created
/// service or a changed backend list never inherits old counts. The vector is sized
/// between batches ([`Self::reserve_ids`]) from the tables' id bound; a slot's backend
/// counts grow on the first hit of a backend beyond them (once per new service
/// instance with more backends than the slot held, never in the steady state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    slots: Vec<ServiceSlot>,
}

/// The counts of one service instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    /// Which instance the counts belong to; zero: none yet.
    pub stamp: u64,
    pub packets: u64,
    /// Packets per backend, by position in the service's backend list (may be shorter
    /// than the list: missing entries are zero).
    pub backends: Vec<u64>,
}

impl ServiceCounters {
    /// Makes room for every id below `bound`. Call between batches, never per packet.
    pub fn reserve_ids(&mut self, bound: u32) {
        let bound = bound as usize;
        if bound > self.slots.len() {
            self.slots.resize_with(bound, ServiceSlot::default);
        }
    }

    /// Counts one forwarded packet of `hit`. An id beyond the reserved ones is not
    /// counted (the worker reserves from the same tables the pipeline read).
    #[inline]
    pub fn record(&mut self, hit: ServiceHit) {
        let Some(slot) = self.slots.get_mut(hit.instance.id as usize) else {
            return;
        };
        if slot.stamp != hit.instance.stamp {
            slot.stamp = hit.instance.stamp;
            slot.packets = 0;
            slot.backends.iter_mut().for_each(|b| *b = 0);
        }
        slot.packets += 1;
        let backend = usize::from(hit.backend);
        if backend >= slot.backends.len() {
            slot.backends.resize(backend + 1, 0);
        }
        slot.backends[backend] += 1;
    }

    /// The counts of `instance`, if this worker counted any for it.
    pub fn get(&self, instance: ServiceInstance) -> Option<&ServiceSlot> {
        self.slots
            .get(instance.id as usize)
            .filter(|slot| slot.stamp == instance.stamp)
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
    tx_abandoned: AtomicU64,
    /// Taken by the worker once per publish (about every 100 ms), never per packet.
    services: Mutex<ServiceCounters>,
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
        store(&self.tx_abandoned, counters.tx_abandoned);
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.clone_from(&counters.services);
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
            tx_abandoned: load(&self.tx_abandoned),
            services: self
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
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
            tx_abandoned: 8,
            ..Default::default()
        };
        counters.outcomes.record(Verdict::Forward);
        counters.outcomes.record(Verdict::Reply);
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                counters.outcomes.record(Verdict::Drop(*reason));
            }
        }
        let instance = |id, stamp| ServiceInstance { id, stamp };
        counters.services.reserve_ids(3);
        for backend in [0, 2, 2] {
            counters.services.record(ServiceHit {
                instance: instance(1, 7),
                backend,
            });
        }
        let slot = CounterSlot::default();
        slot.publish(&counters);
        assert_eq!(slot.read(), counters);
        assert_eq!(std::mem::align_of::<CounterSlot>(), 128);
        assert_eq!(std::mem::size_of::<CounterSlot>() % 128, 0);
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;

    fn hit(id: u32, stamp: u64, backend: u16) -> ServiceHit {
        ServiceHit {
            instance: ServiceInstance { id, stamp },
            backend,
        }
    }

    #[test]
    fn hits_count_per_service_and_backend_and_restart_with_a_new_stamp() {
        let mut services = ServiceCounters::default();
        services.reserve_ids(2);
        for backend in [0, 1, 1, 3] {
            services.record(hit(1, 5, backend));
        }
        services.record(hit(0, 6, 0));
        let slot = services.get(ServiceInstance { id: 1, stamp: 5 }).unwrap();
        assert_eq!(slot.packets, 4);
        assert_eq!(slot.backends, [1, 2, 0, 1]);
        assert_eq!(
            services
                .get(ServiceInstance { id: 0, stamp: 6 })
                .unwrap()
                .packets,
            1
        );

        // Id 1 now belongs to another service instance: old counts are not inherited.
        services.record(hit(1, 9, 2));
        assert!(services.get(ServiceInstance { id: 1, stamp: 5 }).is_none());
        let slot = services.get(ServiceInstance { id: 1, stamp: 9 }).unwrap();
        assert_eq!(
            (slot.packets, slot.backends.as_slice()),
            (1, &[0, 0, 1, 0][..])
        );

        // Ids beyond the reserved bound are ignored, not a panic.
        services.record(hit(7, 1, 0));
        assert!(services.get(ServiceInstance { id: 7, stamp: 1 }).is_none());
    }
}
