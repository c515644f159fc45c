//! The control thread's hold on the tables: one thread owns the [`TableWriter`] and runs
//! transactions one at a time; gRPC handlers talk to it through a bounded queue.
//!
//! A transaction is CPU work of microseconds to milliseconds, and the writer may briefly
//! wait for workers to leave the spare copy, so it runs on its own thread rather than on
//! the async runtime. Reads take a snapshot of the published tables from the same thread
//! and must drop it promptly: a snapshot still held two transactions later makes the
//! writer wait for it (and, after its grace period, copy the tables).

use std::sync::Arc;

use sluice_api::Transaction;
use tokio::sync::{mpsc, oneshot};

use crate::tables::{Rejected, TableWriter, Tables};

/// Why the table writer could not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriterUnavailable {
    #[error("{0} transactions are already queued; retry later")]
    Busy(usize),
    #[error("the table writer thread has stopped")]
    Stopped,
}

enum Request {
    Apply(Transaction, oneshot::Sender<Result<u64, Rejected>>),
    Snapshot(oneshot::Sender<Arc<Tables>>),
}

/// A cloneable handle on the table writer thread. The thread ends when every handle is
/// dropped.
#[derive(Clone, Debug)]
pub struct ControlTables {
    queue: mpsc::Sender<Request>,
    depth: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apply(..) => "Apply",
            Self::Snapshot(_) => "Snapshot",
        })
    }
}

impl ControlTables {
    /// Moves `writer` onto a new thread named `table-writer`. Take the workers' readers
    /// from the writer before handing it over. At most `depth` requests wait in the queue;
    /// beyond that requests are refused with [`WriterUnavailable::Busy`].
    pub fn spawn(mut writer: TableWriter, depth: usize) -> std::io::Result<Self> {
        let depth = depth.max(1);
        let (queue, mut requests) = mpsc::channel::<Request>(depth);
        std::thread::Builder::new()
            .name("table-writer".into())
            .spawn(move || {
                while let Some(request) = requests.blocking_recv() {
                    match request {
                        Request::Apply(txn, reply) => {
                            let result = writer.apply(&txn);
                            // The caller may have given up (deadline, disconnect); the
                            // transaction stands either way.
                            let _ = reply.send(result);
                        }
                        Request::Snapshot(reply) => {
                            let _ = reply.send(writer.snapshot());
                        }
                    }
                }
            })?;
        Ok(Self { queue, depth })
    }

    fn enqueue(&self, request: Request) -> Result<(), WriterUnavailable> {
        self.queue.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriterUnavailable::Busy(self.depth),
            mpsc::error::TrySendError::Closed(_) => WriterUnavailable::Stopped,
        })
    }

    /// Applies `txn` whole or not at all; returns the published generation.
    pub async fn apply(
        &self,
        txn: Transaction,
    ) -> Result<Result<u64, Rejected>, WriterUnavailable> {
        let (reply, result) = oneshot::channel();
        self.enqueue(Request::Apply(txn, reply))?;
        result.await.map_err(|_| WriterUnavailable::Stopped)
    }

    /// The published tables. Drop the snapshot as soon as the read is done.
    pub async fn snapshot(&self) -> Result<Arc<Tables>, WriterUnavailable> {
        let (reply, result) = oneshot::channel();
        self.enqueue(Request::Snapshot(reply))?;
        result.await.map_err(|_| WriterUnavailable::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sluice_api::{Host, MacAddr, Object};

    use super::*;

    fn host(last: u8) -> Transaction {
        Transaction {
            upserts: vec![Object::Host(Host {
                ip: Ipv4Addr::new(198, 18, 0, last),
                mac: MacAddr([2, 0, 0, 0, 0, last]),
            })],
            deletes: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let tables = ControlTables::spawn(TableWriter::new(), 1).unwrap();
        assert_eq!(tables.apply(host(1)).await.unwrap(), Ok(1));
        // A snapshot held across two transactions makes the writer wait for it (up to its
        // 200 ms grace period): the third transaction blocks the writer thread.
        let held = tables.snapshot().await.unwrap();
        assert_eq!(tables.apply(host(2)).await.unwrap(), Ok(2));
        let enqueue = |last| {
            let (reply, result) = oneshot::channel();
            tables
                .enqueue(Request::Apply(host(last), reply))
                .map(|()| result)
        };
        let third = enqueue(3).expect("the queue was empty");
        // The writer takes at most the third before it blocks, so of three more at least
        // one finds the queue of one full, and is refused at once.
        let more: Vec<_> = (4..=6).map(enqueue).collect();
        assert!(
            more.iter()
                .any(|r| matches!(r, Err(WriterUnavailable::Busy(1)))),
            "{more:?}"
        );
        drop(held);
        assert_eq!(third.await.unwrap(), Ok(3));
        let mut last = 3;
        for accepted in more.into_iter().flatten() {
            last += 1;
            assert_eq!(accepted.await.unwrap(), Ok(last));
        }
        assert_eq!(tables.snapshot().await.unwrap().generation(), last);
    }
}
