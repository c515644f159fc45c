//! Test support (feature `testkit`): a control service running on its own thread and
//! runtime, over a given [`TableWriter`], with counters a test fills by hand.
//!
//! The server's runtime is separate from the test's, so the same harness serves async
//! tests, plain tests that run `sluicectl` as a process, and benchmarks. Dropping the
//! harness shuts the server down and removes its socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{
    bind, serve, ControlTables, GatewayService, Limits, Listen, PacketCounters, ServeError,
};
use crate::tables::TableWriter;

/// A running control service.
#[derive(Debug)]
pub struct GatewayHarness {
    counters: Arc<Mutex<PacketCounters>>,
    tcp_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl GatewayHarness {
    /// Binds `listen` and serves the tables of `writer` until stopped. Returns once the
    /// socket accepts connections.
    pub fn start(listen: Listen, writer: TableWriter, limits: Limits) -> Result<Self, ServeError> {
        let counters = Arc::new(Mutex::new(PacketCounters::default()));
        let source = Arc::clone(&counters);
        let (shutdown, stop) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("control-service".into())
            .spawn(move || -> Result<(), ServeError> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|source| ServeError::Bind {
                        what: "a tokio runtime".into(),
                        source,
                    })?;
                runtime.block_on(async move {
                    let bound = match bind(&listen).await {
                        Ok(bound) => bound,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let tables =
                        ControlTables::spawn(writer, 64).map_err(|source| ServeError::Bind {
                            what: "the table writer thread".into(),
                            source,
                        })?;
                    let counters = move || {
                        source
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone()
                    };
                    let gateway = GatewayService::new(tables, Arc::new(counters));
                    let _ = ready_tx.send(Ok(bound.tcp_addr()));
                    serve(bound, gateway, limits, async {
                        let _ = stop.await;
                    })
                    .await
                })
            })
            .map_err(|source| ServeError::Bind {
                what: "the control service thread".into(),
                source,
            })?;
        let tcp_addr = match ready.recv() {
            Ok(result) => result?,
            Err(_) => {
                // The thread ended before binding; its result says why.
                return match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(ServeError::Bind {
                        what: "the control service".into(),
                        source: std::io::Error::other("the server thread ended early"),
                    }),
                };
            }
        };
        Ok(Self {
            counters,
            tcp_addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The counters the service reports; fill them to test `GetCounters`.
    pub fn counters(&self) -> &Arc<Mutex<PacketCounters>> {
        &self.counters
    }

    /// The bound TCP address, for `Listen::Tcp` with port 0.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Shuts the server down and returns how serving ended.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), ServeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }
}

impl Drop for GatewayHarness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Ask the server to stop, but do not wait on it while unwinding.
            if let Some(shutdown) = self.shutdown.take() {
                let _ = shutdown.send(());
            }
        } else {
            let _ = self.stop_inner();
        }
    }
}
