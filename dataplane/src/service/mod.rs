//! The gateway's control service: `sluice.v1.Gateway` over gRPC, with health and
//! reflection, on a Unix socket or TCP with mutual TLS.
//!
//! * [`control`]: the thread that owns the [`TableWriter`](crate::tables::TableWriter)
//!   and runs transactions one at a time.
//! * [`gateway`]: the gRPC handlers.
//! * [`counters`]: how the service reads the workers' counters.
//! * [`server`]: listening, TLS, and the limits that keep a client from exhausting the
//!   gateway.
//! * `harness` (feature `testkit`): the service on its own thread, for tests and benches.
//!
//! This runs on the control thread's runtime; nothing here is on the packet path, and
//! workers never wait for it.
#![forbid(unsafe_code)]

pub mod control;
pub mod counters;
pub mod gateway;
#[cfg(feature = "testkit")]
pub mod harness;
pub mod rate;
pub mod server;

pub use control::{ControlTables, WriterUnavailable};
pub use counters::{BackendCount, CounterSource, PacketCounters, ServiceCount};
pub use gateway::{boot_id, rejected_status, GatewayService};
pub use rate::RateLimiter;
pub use server::{bind, serve, Bound, Limits, Listen, ServeError, ServerTls};
