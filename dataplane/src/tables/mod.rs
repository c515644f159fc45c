//! The gateway's tables: underlay hosts, VPCs, subnets, endpoints and services.
//!
//! Workers read a [`Tables`] through a [`TableReader`]: one atomic load per batch picks up
//! the newest published copy, and nothing a worker does ever waits for the control thread.
//! The control thread changes tables through a [`TableWriter`], one [`Transaction`] at a
//! time: validated whole against the current state, applied whole, or rejected with a
//! [`Rejected`] naming the item and field. Two copies of the tables exist (left-right
//! style): a transaction is applied to the spare copy, the spare is published, and the
//! same operations are replayed onto the copy the workers just left. An update costs in
//! proportion to what it changes, never to the size of the tables.
//!
//! Every lookup on the packet path is a hash probe (subnets: one probe per prefix length
//! present in the VPC, longest first), so its cost does not grow with table size.
//!
//! [`Transaction`]: sluice_api::Transaction

mod apply;
mod endpoints;
mod entries;
mod keys;
pub mod maglev;
mod service_ids;
mod slab;
mod writer;

pub use entries::{
    EndpointEntry, HostEntry, HostId, ServiceEntry, ServiceId, SubnetEntry, SubnetId, Tables,
    VpcEntry,
};
pub use service_ids::ServiceInstance;
pub use writer::{RejectKind, Rejected, TableReader, TableView, TableWriter};
