//! The parts of `sluicectl` worth testing on their own: reading transactions from YAML
//! ([`manifest`]) and printing objects, counters and results ([`output`]). Talking to the
//! gateway or controller and parsing arguments stay in the binary.

pub mod manifest;
pub mod output;

use sluice_api::proto::v1::Kind;

use crate::controller::objects::Kind as ObjectKind;

/// What `sluicectl get` lists: a gateway table, or (with `--controller`) a kind of the
/// controller's objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableName {
    Hosts,
    Vpcs,
    Subnets,
    Endpoints,
    Services,
    Gateways,
    Nodes,
}

impl TableName {
    /// The gateway table, if a gateway has one by this name.
    pub fn kind(self) -> Option<Kind> {
        Some(match self {
            Self::Hosts => Kind::Host,
            Self::Vpcs => Kind::Vpc,
            Self::Subnets => Kind::Subnet,
            Self::Endpoints => Kind::Endpoint,
            Self::Services => Kind::Service,
            Self::Gateways | Self::Nodes => return None,
        })
    }

    /// The controller's kind, if the controller has one by this name.
    pub fn object_kind(self) -> Option<ObjectKind> {
        Some(match self {
            Self::Vpcs => ObjectKind::Vpc,
            Self::Subnets => ObjectKind::Subnet,
            Self::Endpoints => ObjectKind::Endpoint,
            Self::Services => ObjectKind::Service,
            Self::Gateways => ObjectKind::Gateway,
            Self::Nodes => ObjectKind::Node,
            Self::Hosts => return None,
        })
    }
}
