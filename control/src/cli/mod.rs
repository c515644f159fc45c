//! The parts of `sluicectl` worth testing on their own: reading transactions from YAML
//! ([`manifest`]) and printing objects, counters and results ([`output`]). Talking to the
//! gateway and parsing arguments stay in the binary.

pub mod manifest;
pub mod output;

use sluice_api::proto::v1::Kind;

/// A gateway table, as `sluicectl get` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableName {
    Hosts,
    Vpcs,
    Subnets,
    Endpoints,
    Services,
}

impl TableName {
    pub fn kind(self) -> Kind {
        match self {
            Self::Hosts => Kind::Host,
            Self::Vpcs => Kind::Vpc,
            Self::Subnets => Kind::Subnet,
            Self::Endpoints => Kind::Endpoint,
            Self::Services => Kind::Service,
        }
    }
}
