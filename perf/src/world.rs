//! The gateway tables of a benchmark run, as one transaction (`sluice-gen world`).
//!
//! VPC [`VNI`] (10.0.0.0/8, services in 172.16.0.0/12), `endpoints` pods spread over /16
//! subnets of 65,000, all bounced and divided by this gateway ([`GATEWAY`]). Every
//! endpoint lives on the sink host ([`SINK`]) but endpoint 0, the generator's pod, which
//! lives on [`GENERATOR`]: whatever the gateway forwards goes to the sink, and a packet
//! arriving anywhere else is misrouted. `services` UDP services on port 80 at
//! `172.16.0.0 + j`, each with `backends` backends among the endpoints.

use std::net::Ipv4Addr;

use sluice_api::{
    Backend, Endpoint, Host, MacAddr, Object, Protocol, Service, Subnet, Transaction, Vni, Vpc,
};

use crate::packets::Addrs;

pub const VNI: u32 = 100;
/// The gateway (the device under test's underlay address).
pub const GATEWAY: Addrs = Addrs {
    mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
    ip: Ipv4Addr::new(198, 18, 0, 1),
};
/// The generator's host.
pub const GENERATOR: Addrs = Addrs {
    mac: MacAddr([0x02, 0, 0, 0, 0, 0x11]),
    ip: Ipv4Addr::new(198, 18, 0, 11),
};
/// The sink's host.
pub const SINK: Addrs = Addrs {
    mac: MacAddr([0x02, 0, 0, 0, 0, 0x12]),
    ip: Ipv4Addr::new(198, 18, 0, 12),
};
/// The first service address; service `j` is `VIP_BASE + j`, port [`SERVICE_PORT`].
pub const VIP_BASE: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);
pub const SERVICE_PORT: u16 = 80;
const PER_SUBNET: usize = 65_000;

/// The sizes of a run's tables.
#[derive(Clone, Copy, Debug)]
pub struct World {
    pub endpoints: usize,
    pub services: usize,
    pub backends: usize,
}

impl World {
    pub fn subnets(&self) -> usize {
        self.endpoints.div_ceil(PER_SUBNET).max(1)
    }

    /// Endpoint `i`'s address and MAC.
    pub fn endpoint(&self, i: usize) -> Addrs {
        let subnet = i % self.subnets();
        let k = 10 + i / self.subnets();
        Addrs {
            mac: MacAddr([
                0x0a,
                0x58,
                (i >> 24) as u8,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ]),
            ip: Ipv4Addr::new(10, subnet as u8, (k >> 8) as u8, k as u8),
        }
    }

    /// The generator's pod (endpoint 0) and the bounce target in its subnet.
    pub fn bounce_pair(&self) -> (Addrs, Addrs) {
        let peer = if self.endpoints > self.subnets() {
            self.subnets()
        } else {
            0
        };
        (self.endpoint(0), self.endpoint(peer))
    }

    pub fn transaction(&self) -> Transaction {
        let vni = Vni::new(VNI).expect("a valid VNI");
        let host = |a: Addrs| {
            Object::Host(Host {
                ip: a.ip,
                mac: a.mac,
            })
        };
        let mut upserts = vec![host(GATEWAY), host(GENERATOR), host(SINK)];
        upserts.push(Object::Vpc(Vpc {
            vni,
            cidr: "10.0.0.0/8".parse().expect("a CIDR"),
            service_cidr: "172.16.0.0/12".parse().expect("a CIDR"),
            dividers: vec![GATEWAY.ip],
        }));
        for s in 0..self.subnets() {
            upserts.push(Object::Subnet(Subnet {
                vni,
                cidr: format!("10.{s}.0.0/16").parse().expect("a CIDR"),
                router_mac: MacAddr([0x02, 0xaa, 0, 0, s as u8, 1]),
                bouncers: vec![GATEWAY.ip],
            }));
        }
        for i in 0..self.endpoints {
            let a = self.endpoint(i);
            upserts.push(Object::Endpoint(Endpoint {
                vni,
                ip: a.ip,
                mac: a.mac,
                host: if i == 0 { GENERATOR.ip } else { SINK.ip },
            }));
        }
        let others = self.endpoints.saturating_sub(1).max(1);
        for j in 0..self.services {
            let backends = (0..self.backends)
                .map(|k| Backend {
                    ip: self.endpoint(1 + (j * self.backends + k) % others).ip,
                    port: 8000 + k as u16,
                    weight: 1,
                })
                .collect();
            upserts.push(Object::Service(Service {
                vni,
                vip: Ipv4Addr::from(u32::from(VIP_BASE) + j as u32),
                port: SERVICE_PORT,
                protocol: Protocol::Udp,
                backends,
            }));
        }
        Transaction {
            upserts,
            deletes: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_is_a_valid_transaction_for_the_gateway() {
        let world = World {
            endpoints: 200_000,
            services: 100,
            backends: 2,
        };
        assert_eq!(world.subnets(), 4);
        let mut tables = sluice_dataplane::tables::TableWriter::new();
        tables.apply(&world.transaction()).expect("valid tables");
        let (src, dst) = world.bounce_pair();
        assert_ne!(src.ip, dst.ip);
        assert_eq!(src.ip.octets()[1], dst.ip.octets()[1], "same subnet");
    }
}
