//! Dense ids and instance stamps for services, so that workers can count hits per
//! service and per backend in plain arrays indexed by id.
//!
//! The writer hands them out when it prepares a transaction, before the service entry is
//! shared by both copies of the tables, so both copies agree by construction. An id is
//! reused (smallest free first) once its service is deleted; the stamp never is. A
//! service keeps its id and stamp while it exists and its backend list (addresses and
//! ports, in order) is unchanged; changing the backends keeps the id and takes a new
//! stamp, because per-backend counts are indexed by position in that list. Counters are
//! keyed by (id, stamp), so a re-created or re-shaped service never inherits old counts.

use std::collections::BTreeSet;

use sluice_api::Service;

use super::entries::{ServiceEntry, ServiceId};

/// What identifies one lifetime of a service's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInstance {
    pub id: ServiceId,
    /// Unique for the writer's lifetime; never zero.
    pub stamp: u64,
}

#[derive(Debug)]
pub(crate) struct ServiceIds {
    free: BTreeSet<ServiceId>,
    next_id: ServiceId,
    next_stamp: u64,
    /// Ids handed to new services by the transaction in progress.
    pending: Vec<ServiceId>,
}

impl Default for ServiceIds {
    fn default() -> Self {
        Self {
            free: BTreeSet::new(),
            next_id: 0,
            next_stamp: 1,
            pending: Vec::new(),
        }
    }
}

impl ServiceIds {
    /// The id and stamp for `service`, given the published entry under the same key.
    pub(crate) fn assign(
        &mut self,
        service: &Service,
        current: Option<&ServiceEntry>,
    ) -> ServiceInstance {
        match current {
            Some(old) if same_backends(&old.service, service) => old.instance,
            Some(old) => ServiceInstance {
                id: old.instance.id,
                stamp: self.stamp(),
            },
            None => {
                let id = self.free.pop_first().unwrap_or_else(|| {
                    self.next_id += 1;
                    self.next_id - 1
                });
                self.pending.push(id);
                ServiceInstance {
                    id,
                    stamp: self.stamp(),
                }
            }
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp - 1
    }

    /// The transaction was rejected: the ids it took are free again.
    pub(crate) fn abort(&mut self) {
        self.free.extend(self.pending.drain(..));
    }

    /// The transaction was published; `deleted` are the ids of the services it removed.
    pub(crate) fn commit(&mut self, deleted: impl IntoIterator<Item = ServiceId>) {
        self.pending.clear();
        self.free.extend(deleted);
    }
}

fn same_backends(a: &Service, b: &Service) -> bool {
    a.backends.len() == b.backends.len()
        && a.backends
            .iter()
            .zip(&b.backends)
            .all(|(x, y)| x.ip == y.ip && x.port == y.port)
}
