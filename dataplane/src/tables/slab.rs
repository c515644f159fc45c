//! Stable small ids for hosts and subnets, so that an endpoint can name its host and
//! subnet with an index instead of a hash lookup on the packet path.
//!
//! Both copies of the tables must hand out the same id for the same op, and a rolled
//! back transaction must leave no trace. So the slab's state is canonical: it depends
//! only on which ids are live (the smallest free id is reused first, and free slots at
//! the end are trimmed), never on the order of past inserts and removals.

use std::collections::BTreeSet;

#[derive(Clone, Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: BTreeSet<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: BTreeSet::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, value: T) -> u32 {
        match self.free.pop_first() {
            Some(id) => {
                self.slots[id as usize] = Some(value);
                id
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<T> {
        let value = self.slots.get_mut(id as usize)?.take()?;
        self.free.insert(id);
        while let Some(None) = self.slots.last() {
            self.slots.pop();
            self.free.remove(&(self.slots.len() as u32));
        }
        Some(value)
    }

    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<&T> {
        self.slots.get(id as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.slots.get_mut(id as usize)?.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of inserts and removals, undone in reverse, leaves the slab as it
        /// was; and two slabs with the same live ids allocate alike.
        #[test]
        fn state_depends_only_on_live_ids(ops in prop::collection::vec((any::<bool>(), 0..16u32), 0..64)) {
            let mut slab: Slab<u32> = Slab::default();
            let mut live = Vec::new();
            for (insert, pick) in ops {
                if insert || live.is_empty() {
                    live.push(slab.insert(pick));
                } else {
                    let id = live.swap_remove(pick as usize % live.len());
                    prop_assert!(slab.remove(id).is_some());
                }
            }
            // A fresh slab given the same live ids in id order ends in the same state.
            let mut fresh: Slab<u32> = Slab::default();
            let max = live.iter().max().copied();
            if let Some(max) = max {
                let ids: Vec<u32> = (0..=max).map(|_| fresh.insert(0)).collect();
                for id in ids {
                    if !live.contains(&id) {
                        fresh.remove(id);
                    }
                }
            }
            prop_assert_eq!(slab.slots.len(), fresh.slots.len());
            prop_assert_eq!(&slab.free, &fresh.free);
            prop_assert_eq!(slab.insert(7), fresh.insert(7));
        }
    }
}
