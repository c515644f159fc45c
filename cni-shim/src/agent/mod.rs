//! The node agent (`sluice-node`): one per worker. It loads and pins the XDP stubs,
//! attaches the transit program to the underlay interface, and serves the CNI shim over a
//! Unix socket (`sluice.v1.NodeAgent`), creating and removing pod veths.
//!
//! * [`config`]: the configuration file, `node.toml`.
//! * [`allocator`]: addresses from the controller or a static allocation file.
//! * [`node`]: the thread that does the kernel work, one command at a time.
//! * [`link`], [`netns`]: netlink and namespace switching.
//! * [`ethtool`]: device features (TX checksum offload off on pod veths).
//! * [`records`]: attachments on disk, for restarts.
//! * [`service`]: the gRPC service and its Unix socket.

pub mod allocator;
pub mod config;
pub mod ethtool;
pub mod link;
pub mod netns;
pub mod node;
pub mod records;
pub mod service;
