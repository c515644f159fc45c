//! sluice-perf: whole-system benchmarks (generator -> device under test -> sink in network
//! namespaces, contenders measured in one run by `scripts/bench.sh`). Per-packet cost
//! without I/O is measured by the criterion benches of `sluice-dataplane`
//! (`cargo bench -p sluice-dataplane`, perf/results/pipeline.md).
//!
//! * [`packets`]: 64-byte frame templates (plain UDP or Geneve-wrapped) and the per-flow
//!   patch the generator applies to a prebuilt frame;
//! * [`xsk`]: the AF_XDP generator (copy mode on veth, batched TX with a kick whenever
//!   descriptors are outstanding, PLATFORM.md pitfall 6);
//! * [`xdp`]: the XDP sink (counts, a one-way delay histogram) and the in-kernel XDP
//!   forwarder contender, from `bpf/bench.bpf.c`;
//! * [`world`]: the gateway tables of a benchmark run (endpoints, services, backends);
//! * [`churn`]: the controller that applies table updates during the loss test.
//!
//! `unsafe` is denied, not forbidden: xsk-rs hands out UMEM frames and ring slots through
//! unsafe functions, so [`xsk`] alone allows it, with a `SAFETY:` comment on every block.
#![deny(unsafe_code)]

pub use sluice_dataplane as dataplane;

pub mod churn;
pub mod packets;
pub mod stats;
pub mod world;
pub mod xdp;
pub mod xsk;
