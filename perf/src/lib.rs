//! sluice-perf: whole-system benchmarks (generator -> device under test -> sink in network
//! namespaces, contenders measured in one run). Per-packet cost without I/O is measured by
//! the criterion benches of `sluice-dataplane` (`cargo bench -p sluice-dataplane`).
//!
//! The topologies and the AF_XDP generator arrive with the gateway and perf issues.
#![forbid(unsafe_code)]

pub use sluice_dataplane as dataplane;
