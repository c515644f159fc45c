//! The endpoint table: (VNI, IPv4) -> endpoint, the largest table and the one every
//! forwarded packet probes twice (destination, and source for HOST_HINT).
//!
//! Open addressing with linear probing over a power-of-two array, kept at most half full,
//! and deletion by backward shift (no tombstones, so probe sequences never degrade). A
//! probe is a multiply, a shift and, usually, one slot compare: about a third of what a
//! general-purpose map costs. And because the slot a key starts at is a plain index
//! ([`EndpointTable::home`]), a batch can load the slots of all its packets before
//! looking any of them up, so that their cache misses overlap.
//!
//! Growing doubles the array and reinserts everything (amortised O(1) per insert; one
//! insert in a million-entry table pays a rehash of some tens of milliseconds). Callers
//! that know their size should [`EndpointTable::reserve`] it.

use super::entries::EndpointEntry;

/// Keys are `(vni << 32) | ip` with a 24-bit VNI, so all ones never occurs.
const EMPTY: u64 = u64::MAX;
/// Fibonacci hashing: the golden-ratio multiplier spreads consecutive keys.
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
const MIN_BITS: u32 = 4;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    entry: EndpointEntry,
}

const VACANT: Slot = Slot {
    key: EMPTY,
    entry: EndpointEntry {
        mac: sluice_api::MacAddr::ZERO,
        host: 0,
        subnet: 0,
    },
};

#[derive(Clone, Debug)]
pub(crate) struct EndpointTable {
    slots: Box<[Slot]>,
    /// log2 of the slot count.
    bits: u32,
    len: usize,
}

impl Default for EndpointTable {
    fn default() -> Self {
        Self::with_bits(MIN_BITS)
    }
}

impl EndpointTable {
    fn with_bits(bits: u32) -> Self {
        Self {
            slots: vec![VACANT; 1 << bits].into_boxed_slice(),
            bits,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot a key's probe starts at.
    #[inline(always)]
    pub(crate) fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(MULTIPLIER) >> (64 - self.bits)) as usize
    }

    /// Reads the slot `key` starts at, so that a later [`get`](Self::get) finds it in
    /// cache. The value is meaningless; feed it to `std::hint::black_box`.
    #[inline(always)]
    pub(crate) fn touch(&self, key: u64) -> u64 {
        let mask = self.slots.len() - 1;
        self.slots[self.home(key) & mask].key
    }

    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&EndpointEntry> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key) & mask;
        loop {
            let slot = &self.slots[i];
            if slot.key == key {
                return Some(&slot.entry);
            }
            if slot.key == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Inserts or replaces; returns the previous entry.
    pub(crate) fn insert(&mut self, key: u64, entry: EndpointEntry) -> Option<EndpointEntry> {
        debug_assert_ne!(key, EMPTY);
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow_to(self.bits + 1);
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key) & mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.key == key {
                return Some(std::mem::replace(&mut slot.entry, entry));
            }
            if slot.key == EMPTY {
                *slot = Slot { key, entry };
                self.len += 1;
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<EndpointEntry> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key) & mask;
        loop {
            let slot = self.slots[i];
            if slot.key == EMPTY {
                return None;
            }
            if slot.key == key {
                self.backward_shift(i);
                self.len -= 1;
                return Some(slot.entry);
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties slot `hole` and pulls later members of its probe run back into it, so that
    /// every key stays reachable from its home without tombstones.
    fn backward_shift(&mut self, mut hole: usize) {
        let mask = self.slots.len() - 1;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let slot = self.slots[i];
            if slot.key == EMPTY {
                break;
            }
            // Distance from home to `i` and to `hole`: the slot may move back to the hole
            // only if the hole lies on its probe path.
            let home = self.home(slot.key) & mask;
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = i;
            }
        }
        self.slots[hole] = VACANT;
    }

    /// Makes room for `additional` more entries without growing later.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let needed = (self.len + additional)
            .saturating_mul(2)
            .next_power_of_two();
        let bits = needed.trailing_zeros().max(MIN_BITS);
        if bits > self.bits {
            self.grow_to(bits);
        }
    }

    fn grow_to(&mut self, bits: u32) {
        let old = std::mem::replace(self, Self::with_bits(bits));
        for slot in old.slots.iter().filter(|s| s.key != EMPTY) {
            self.insert(slot.key, slot.entry);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &EndpointEntry)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != EMPTY)
            .map(|s| (s.key, &s.entry))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use sluice_api::MacAddr;

    use super::*;

    fn entry(n: u32) -> EndpointEntry {
        EndpointEntry {
            mac: MacAddr([2, 0, 0, 0, 0, n as u8]),
            host: n,
            subnet: n / 2,
        }
    }

    proptest! {
        /// Matches a std HashMap under any sequence of inserts and removes, including
        /// keys that collide on their home slot (few distinct keys, small tables).
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((any::<bool>(), 0..64u64, any::<u32>()), 0..400)) {
            let mut table = EndpointTable::default();
            let mut model = HashMap::new();
            for (insert, k, v) in ops {
                let key = (k % 3) << 32 | k;
                if insert {
                    prop_assert_eq!(table.insert(key, entry(v)), model.insert(key, entry(v)));
                } else {
                    prop_assert_eq!(table.remove(key), model.remove(&key));
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0..64u64 {
                let key = (k % 3) << 32 | k;
                prop_assert_eq!(table.get(key), model.get(&key));
            }
            let mut listed: Vec<u64> = table.iter().map(|(k, _)| k).collect();
            let mut keys: Vec<u64> = model.keys().copied().collect();
            listed.sort_unstable();
            keys.sort_unstable();
            prop_assert_eq!(listed, keys);
        }
    }

    #[test]
    fn stays_at_most_half_full_and_reserve_prevents_growth() {
        let mut table = EndpointTable::default();
        table.reserve(1000);
        let slots = table.slots.len();
        assert!(slots >= 2000);
        for k in 0..1000u64 {
            table.insert(k << 32 | k, entry(k as u32));
        }
        assert_eq!(table.slots.len(), slots, "no growth after reserve");
        for k in 1000..5000u64 {
            table.insert(k, entry(0));
        }
        assert!(table.len() * 2 <= table.slots.len());
        assert_eq!(table.get(7 << 32 | 7), Some(&entry(7)));
    }
}
