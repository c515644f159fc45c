//! What each gateway should hold, as a pure function of the objects and the placement.
//!
//! A gateway holding any role in a VPC gets the VPC, all of its subnets (routing needs
//! the whole prefix set), its services with backends resolved to endpoint addresses and
//! target ports, and the underlay hosts those name. Endpoints go where packets for them
//! are looked up: a bouncer gets its subnet's endpoints, a divider all of its VPC's.
//! Nothing of a VPC reaches a gateway with no role in it, and every key carries the VNI.
//!
//! [`delta`] turns two table sets into the one transaction that moves a gateway from the
//! first to the second; [`chunks`] splits a large one into transactions under the
//! message limit that are each valid in order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use prost::Message;
use sluice_api::proto::v1 as pb;
use sluice_api::{Backend, Endpoint, Host, Object, ObjectKey, Transaction, Vni};

use super::placement::Placement;
use super::source::{service_namespace, Snapshot};

/// One gateway's tables, by key.
pub type GatewayTables = BTreeMap<ObjectKey, Object>;

/// The addresses of `service`'s backends that are attached now, in its VPC, sorted.
pub fn service_endpoints(snapshot: &Snapshot, service_key: &str) -> Vec<Ipv4Addr> {
    let Some(svc) = snapshot.services.get(service_key) else {
        return Vec::new();
    };
    let ns = service_namespace(svc);
    let pods: BTreeSet<(&str, &str)> = svc
        .spec
        .backends
        .iter()
        .map(|p| (p.namespace_or(ns), p.name.as_str()))
        .collect();
    let mut ips: Vec<Ipv4Addr> = snapshot
        .endpoints
        .values()
        .filter(|e| {
            e.spec.vpc == svc.spec.vpc
                && pods.contains(&(e.spec.pod_namespace.as_str(), e.spec.pod_name.as_str()))
        })
        .map(|e| e.spec.ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Everything of one VPC that any gateway with a role in it needs, plus its endpoints by
/// subnet.
#[derive(Default)]
struct VpcTables {
    shared: Vec<Object>,
    hosts: BTreeMap<Ipv4Addr, Host>,
    endpoints: BTreeMap<String, Vec<(Endpoint, Host)>>,
}

fn vpc_tables(
    snapshot: &Snapshot,
    placement: &Placement,
    vpc_name: &str,
    vni: Vni,
) -> Option<VpcTables> {
    let vpc = &snapshot.vpcs[vpc_name];
    let gateway_host = |name: &String| {
        snapshot.gateways.get(name).map(|g| Host {
            ip: g.spec.ip,
            mac: g.spec.mac,
        })
    };
    let dividers: Vec<Host> = placement
        .dividers
        .get(vpc_name)?
        .iter()
        .filter_map(gateway_host)
        .collect();
    if dividers.is_empty() {
        return None;
    }
    let mut out = VpcTables::default();
    out.hosts.extend(dividers.iter().map(|h| (h.ip, h.clone())));
    out.shared.push(Object::Vpc(sluice_api::Vpc {
        vni,
        cidr: vpc.spec.cidr,
        service_cidr: vpc.spec.service_cidr,
        dividers: dividers.iter().map(|h| h.ip).collect(),
    }));
    for (name, subnet) in snapshot
        .subnets
        .iter()
        .filter(|(_, s)| s.spec.vpc == vpc_name)
    {
        let bouncers: Vec<Host> = placement
            .bouncers
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(gateway_host)
            .collect();
        let Some(router_mac) = subnet.status.as_ref().and_then(|s| s.router_mac) else {
            continue;
        };
        if bouncers.is_empty() {
            continue;
        }
        out.hosts.extend(bouncers.iter().map(|h| (h.ip, h.clone())));
        out.shared.push(Object::Subnet(sluice_api::Subnet {
            vni,
            cidr: subnet.spec.cidr,
            router_mac,
            bouncers: bouncers.iter().map(|h| h.ip).collect(),
        }));
        out.endpoints.insert(name.clone(), Vec::new());
    }
    for ep in snapshot
        .endpoints
        .values()
        .filter(|e| e.spec.vpc == vpc_name)
    {
        let (Some(list), Some(node)) = (
            out.endpoints.get_mut(&ep.spec.subnet),
            snapshot.nodes.get(&ep.spec.node),
        ) else {
            continue;
        };
        let host = Host {
            ip: node.spec.ip,
            mac: node.spec.mac,
        };
        list.push((
            Endpoint {
                vni,
                ip: ep.spec.ip,
                mac: ep.spec.mac,
                host: host.ip,
            },
            host,
        ));
    }
    for (key, svc) in snapshot
        .services
        .iter()
        .filter(|(_, s)| s.spec.vpc == vpc_name)
    {
        let Some(vip) = svc.status.as_ref().and_then(|s| s.vip) else {
            continue;
        };
        let ips = service_endpoints(snapshot, key);
        for port in &svc.spec.ports {
            out.shared.push(Object::Service(sluice_api::Service {
                vni,
                vip,
                port: port.port,
                protocol: port.protocol,
                backends: ips
                    .iter()
                    .map(|&ip| Backend {
                        ip,
                        port: port.target(),
                        weight: 1,
                    })
                    .collect(),
            }));
        }
    }
    Some(out)
}

/// The tables every registered gateway should hold (an empty set for a gateway with no
/// role).
pub fn desired_tables(
    snapshot: &Snapshot,
    placement: &Placement,
) -> BTreeMap<String, GatewayTables> {
    let mut out: BTreeMap<String, GatewayTables> = snapshot
        .gateways
        .keys()
        .map(|g| (g.clone(), GatewayTables::new()))
        .collect();
    for (vpc_name, vpc) in &snapshot.vpcs {
        let Some(vni) = vpc.status.as_ref().and_then(|s| s.vni) else {
            continue;
        };
        let Some(tables) = vpc_tables(snapshot, placement, vpc_name, vni) else {
            continue;
        };
        let dividers = &placement.dividers[vpc_name];
        let subnets: Vec<&String> = tables.endpoints.keys().collect();
        for (gateway, held) in &mut out {
            let divider = dividers.contains(gateway);
            let bounced: Vec<&String> = subnets
                .iter()
                .copied()
                .filter(|s| {
                    placement
                        .bouncers
                        .get(*s)
                        .is_some_and(|b| b.contains(gateway))
                })
                .collect();
            if !divider && bounced.is_empty() {
                continue;
            }
            let mut insert = |o: Object| {
                held.insert(o.key(), o);
            };
            for h in tables.hosts.values() {
                insert(Object::Host(h.clone()));
            }
            for o in &tables.shared {
                insert(o.clone());
            }
            for (subnet, eps) in &tables.endpoints {
                if divider || bounced.contains(&subnet) {
                    for (ep, host) in eps {
                        insert(Object::Host(host.clone()));
                        insert(Object::Endpoint(ep.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Order in which the gateway applies operations within a transaction: deletes of
/// dependents first, upserts from hosts to services, host deletes last. Chunks follow
/// the same order so that each is valid on its own.
fn delete_rank(key: &ObjectKey) -> u8 {
    match key {
        ObjectKey::Service { .. } => 0,
        ObjectKey::Endpoint { .. } => 1,
        ObjectKey::Subnet { .. } => 2,
        ObjectKey::Vpc { .. } => 3,
        ObjectKey::Host { .. } => 10,
    }
}

fn upsert_rank(object: &Object) -> u8 {
    match object {
        Object::Host(_) => 4,
        Object::Vpc(_) => 5,
        Object::Subnet(_) => 6,
        Object::Endpoint(_) => 7,
        Object::Service(_) => 8,
    }
}

/// The transaction that turns `held` into `want`: upserts of what is new or changed,
/// deletes of what `want` lacks. Empty when they are equal.
pub fn delta(held: &GatewayTables, want: &GatewayTables) -> Transaction {
    Transaction {
        upserts: want
            .iter()
            .filter(|(k, o)| held.get(k) != Some(o))
            .map(|(_, o)| o.clone())
            .collect(),
        deletes: held
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect(),
    }
}

/// Splits `txn` into transactions of at most `max_bytes` encoded, in the gateway's
/// order of application, so that applying them one after another equals applying
/// `txn`. A transaction that fits is returned whole.
pub fn chunks(txn: Transaction, max_bytes: usize) -> Vec<Transaction> {
    enum Op {
        Upsert(Object),
        Delete(ObjectKey),
    }
    let mut ops: Vec<(u8, Op)> = txn
        .deletes
        .into_iter()
        .map(|k| (delete_rank(&k), Op::Delete(k)))
        .chain(
            txn.upserts
                .into_iter()
                .map(|o| (upsert_rank(&o), Op::Upsert(o))),
        )
        .collect();
    ops.sort_by_key(|(rank, _)| *rank);
    let mut out = vec![Transaction::default()];
    let mut size = 0usize;
    for (_, op) in ops {
        let len = match &op {
            Op::Upsert(o) => pb::Object::from(o).encoded_len(),
            Op::Delete(k) => pb::ObjectKey::from(k).encoded_len(),
        } + 8;
        let last = out.last_mut().expect("never empty");
        if size + len > max_bytes && !(last.upserts.is_empty() && last.deletes.is_empty()) {
            out.push(Transaction::default());
            size = 0;
        }
        let last = out.last_mut().expect("never empty");
        size += len;
        match op {
            Op::Upsert(o) => last.upserts.push(o),
            Op::Delete(k) => last.deletes.push(k),
        }
    }
    out.retain(|t| !t.upserts.is_empty() || !t.deletes.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use sluice_api::{Ipv4Cidr, MacAddr, ObjectKind};
    use sluice_dataplane::tables::TableWriter;

    use super::*;
    use crate::controller::objects::*;
    use crate::controller::store::{endpoint_mac, router_mac};

    /// A random world: VPCs with the same (overlapping) CIDRs, subnets, gateways, nodes,
    /// endpoints and services.
    #[derive(Debug, Clone)]
    struct World {
        vpcs: Vec<(u32, Vec<u32>)>,
        gateways: usize,
        nodes: usize,
        endpoints: Vec<(usize, usize, usize)>,
    }

    fn world() -> impl Strategy<Value = World> {
        (
            prop::collection::vec((1u32..4, prop::collection::vec(1u32..4, 1..4)), 1..4),
            1usize..6,
            1usize..4,
            prop::collection::vec((0usize..4, 0usize..4, 0usize..4), 0..40),
        )
            .prop_map(|(vpcs, gateways, nodes, endpoints)| World {
                vpcs,
                gateways,
                nodes,
                endpoints,
            })
    }

    fn snapshot(w: &World, extra_gateway: bool) -> Snapshot {
        let mut s = Snapshot::default();
        let gws = w.gateways + usize::from(extra_gateway);
        for g in 0..gws {
            let last = 1 + g as u8;
            s.gateways.insert(
                format!("gw-{g}"),
                Resource::new(
                    Metadata::named(format!("gw-{g}")),
                    GatewaySpec {
                        ip: Ipv4Addr::new(198, 18, 0, last),
                        mac: MacAddr([2, 0, 0, 0, 0, last]),
                        control: "unix:///x".into(),
                    },
                ),
            );
        }
        for n in 0..w.nodes {
            let last = 100 + n as u8;
            s.nodes.insert(
                format!("node-{n}"),
                Resource::new(
                    Metadata::named(format!("node-{n}")),
                    NodeSpec {
                        ip: Ipv4Addr::new(198, 18, 1, last),
                        mac: MacAddr([2, 0, 0, 0, 1, last]),
                    },
                ),
            );
        }
        let mut pods = Vec::new();
        for (v, (dividers, subnets)) in w.vpcs.iter().enumerate() {
            let vpc_name = format!("vpc-{v}");
            let mut vpc = Resource::new(
                Metadata::named(&vpc_name),
                VpcSpec {
                    cidr: "10.0.0.0/16".parse().unwrap(),
                    service_cidr: "10.96.0.0/16".parse().unwrap(),
                    dividers: *dividers,
                },
            );
            vpc.status = Some(VpcStatus {
                vni: Some(Vni::new(100 + v as u32).unwrap()),
                divider_gateways: vec![],
            });
            s.vpcs.insert(vpc_name.clone(), vpc);
            for (i, bouncers) in subnets.iter().enumerate() {
                let cidr: Ipv4Cidr = format!("10.0.{i}.0/24").parse().unwrap();
                let router = cidr.first_host().unwrap();
                let mut sub = Resource::new(
                    Metadata::named(format!("{vpc_name}-s{i}")),
                    SubnetSpec {
                        vpc: vpc_name.clone(),
                        cidr,
                        bouncers: *bouncers,
                    },
                );
                sub.status = Some(SubnetStatus {
                    vni: Some(Vni::new(100 + v as u32).unwrap()),
                    router_ip: Some(router),
                    router_mac: Some(router_mac(router)),
                    bouncer_gateways: vec![],
                });
                s.subnets.insert(sub.name().to_owned(), sub);
            }
            let mut svc = Resource::new(
                Metadata::named(format!("svc-{v}")),
                ServiceSpec {
                    vpc: vpc_name.clone(),
                    vip: None,
                    ports: vec![ServicePort {
                        port: 80,
                        protocol: sluice_api::Protocol::Tcp,
                        target_port: Some(8080),
                    }],
                    backends: vec!["default/pod-0".parse().unwrap(), "pod-1".parse().unwrap()],
                },
            );
            svc.status = Some(ServiceStatus {
                vip: Some(Ipv4Addr::new(10, 96, 0, 1)),
                endpoints: vec![],
            });
            s.services.insert(format!("default/svc-{v}"), svc);
            pods.push(vpc_name);
        }
        for (k, &(v, sub, node)) in w.endpoints.iter().enumerate() {
            let v = v % w.vpcs.len();
            let sub = sub % w.vpcs[v].1.len();
            let node = node % w.nodes;
            let vpc_name = format!("vpc-{v}");
            let ip = Ipv4Addr::new(10, 0, sub as u8, 2 + k as u8);
            let key = format!("node-{node}/c{k}/eth0");
            s.endpoints.insert(
                key.clone(),
                Resource::new(
                    Metadata::named(key),
                    EndpointSpec {
                        node: format!("node-{node}"),
                        container_id: format!("c{k}"),
                        interface: "eth0".into(),
                        pod_namespace: "default".into(),
                        pod_name: format!("pod-{}", k % 3),
                        vpc: vpc_name.clone(),
                        subnet: format!("{vpc_name}-s{sub}"),
                        vni: Vni::new(100 + v as u32).unwrap(),
                        ip,
                        mac: endpoint_mac(ip),
                    },
                ),
            );
        }
        s
    }

    fn vni_of(o: &Object) -> Option<u32> {
        match o {
            Object::Host(_) => None,
            Object::Vpc(v) => Some(v.vni.get()),
            Object::Subnet(s) => Some(s.vni.get()),
            Object::Endpoint(e) => Some(e.vni.get()),
            Object::Service(s) => Some(s.vni.get()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_endpoint_reaches_its_gateways_and_nothing_leaks(w in world()) {
            let snap = snapshot(&w, false);
            let placement = Placement::of(&snap);
            let desired = desired_tables(&snap, &placement);
            for ep in snap.endpoints.values() {
                let want = Object::Endpoint(Endpoint {
                    vni: ep.spec.vni,
                    ip: ep.spec.ip,
                    mac: ep.spec.mac,
                    host: snap.nodes[&ep.spec.node].spec.ip,
                });
                let holders: BTreeSet<&String> = placement.bouncers[&ep.spec.subnet]
                    .iter()
                    .chain(&placement.dividers[&ep.spec.vpc])
                    .collect();
                for g in holders {
                    prop_assert_eq!(desired[g].get(&want.key()), Some(&want), "{} on {}", ep.name(), g);
                }
            }
            for (g, tables) in &desired {
                let roles: BTreeSet<u32> = snap.vpcs.iter().filter(|(name, _)| {
                    placement.dividers[*name].contains(g)
                        || snap.subnets.iter().any(|(s, sub)| sub.spec.vpc == **name && placement.bouncers[s].contains(g))
                }).map(|(_, v)| v.status.as_ref().unwrap().vni.unwrap().get()).collect();
                for (key, o) in tables {
                    prop_assert_eq!(&o.key(), key);
                    if let Some(vni) = vni_of(o) {
                        prop_assert!(roles.contains(&vni), "{} holds {} of VNI {} without a role", g, key, vni);
                    }
                    // Tenant isolation: an endpoint keyed by (VNI, IP) is that VPC's.
                    if let Object::Endpoint(e) = o {
                        prop_assert!(snap.endpoints.values().any(|a| a.spec.vni == e.vni && a.spec.ip == e.ip && a.spec.mac == e.mac));
                    }
                    if let Object::Service(s) = o {
                        for b in &s.backends {
                            prop_assert!(snap.endpoints.values().any(|a| a.spec.vni == s.vni && a.spec.ip == b.ip));
                            prop_assert_eq!(b.port, 8080);
                        }
                    }
                }
                // The real gateway tables accept the whole set in one transaction.
                let full = Transaction { upserts: tables.values().cloned().collect(), deletes: vec![] };
                let mut writer = TableWriter::new();
                if let Err(e) = writer.apply(&full) {
                    prop_assert!(false, "{} rejects its tables: {}", g, e);
                }
            }
        }

        #[test]
        fn deltas_and_chunks_move_a_gateway_between_any_two_worlds(a in world(), b in world(), max in 200usize..2000) {
            let (sa, sb) = (snapshot(&a, false), snapshot(&b, true));
            let da = desired_tables(&sa, &Placement::of(&sa));
            let db = desired_tables(&sb, &Placement::of(&sb));
            for g in db.keys() {
                let empty = GatewayTables::new();
                let from = da.get(g).unwrap_or(&empty);
                let to = &db[g];
                let mut writer = TableWriter::new();
                let load = Transaction { upserts: from.values().cloned().collect(), deletes: vec![] };
                writer.apply(&load).unwrap();
                for chunk in chunks(delta(from, to), max) {
                    if let Err(e) = writer.apply(&chunk) {
                        prop_assert!(false, "{}: chunk rejected: {}", g, e);
                    }
                }
                let snap = writer.snapshot();
                let mut held = GatewayTables::new();
                for kind in [ObjectKind::Host, ObjectKind::Vpc, ObjectKind::Subnet, ObjectKind::Endpoint, ObjectKind::Service] {
                    for o in snap.objects_of(kind) {
                        held.insert(o.key(), o);
                    }
                }
                prop_assert_eq!(&held, to);
            }
        }
    }

    #[test]
    fn chunks_respect_the_limit_and_keep_order() {
        let hosts: Vec<Object> = (0..50)
            .map(|i| {
                Object::Host(Host {
                    ip: Ipv4Addr::new(198, 18, 2, i),
                    mac: MacAddr([2, 0, 0, 0, 2, i]),
                })
            })
            .collect();
        let txn = Transaction {
            upserts: hosts.clone(),
            deletes: vec![ObjectKey::Vpc {
                vni: Vni::new(5).unwrap(),
            }],
        };
        let parts = chunks(txn, 200);
        assert!(parts.len() > 3, "{}", parts.len());
        assert_eq!(
            parts[0].deletes.len(),
            1,
            "deletes of dependents come first"
        );
        for p in &parts {
            assert!(pb::Transaction::from(p).encoded_len() <= 200 + 8 * 10);
        }
        let rejoined: Vec<Object> = parts.into_iter().flat_map(|p| p.upserts).collect();
        assert_eq!(rejoined, hosts);
        assert_eq!(chunks(Transaction::default(), 100), vec![]);
    }
}
