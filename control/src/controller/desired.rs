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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What the incremental path needs besides the tables, derived from a snapshot and its
/// tables and kept current by [`endpoint_change`] and [`backends_change`].
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Per gateway, how many objects of its tables name each underlay host (VPC
    /// dividers, subnet bouncers, endpoints' hosts): a host is held while this is > 0.
    host_refs: BTreeMap<String, HashMap<Ipv4Addr, u32>>,
    /// Endpoint addresses by (VPC, pod namespace, pod name).
    pod_ips: HashMap<(String, String, String), BTreeSet<Ipv4Addr>>,
    /// Services naming a pod as a backend, by (namespace, pod name).
    backend_of: HashMap<(String, String), BTreeSet<String>>,
}

fn host_refs(tables: &GatewayTables) -> HashMap<Ipv4Addr, u32> {
    let mut refs = HashMap::new();
    for object in tables.values() {
        let named: &[Ipv4Addr] = match object {
            Object::Vpc(v) => &v.dividers,
            Object::Subnet(s) => &s.bouncers,
            Object::Endpoint(e) => std::slice::from_ref(&e.host),
            Object::Host(_) | Object::Service(_) => &[],
        };
        for ip in named {
            *refs.entry(*ip).or_insert(0) += 1;
        }
    }
    refs
}

fn backend_pods(svc: &super::objects::Service) -> impl Iterator<Item = (String, String)> + '_ {
    let ns = service_namespace(svc);
    svc.spec
        .backends
        .iter()
        .map(move |p| (p.namespace_or(ns).to_owned(), p.name.clone()))
}

impl Index {
    /// The index of `snapshot` and the tables computed from it.
    pub fn of(snapshot: &Snapshot, tables: &BTreeMap<String, GatewayTables>) -> Self {
        let mut index = Self {
            host_refs: tables
                .iter()
                .map(|(g, t)| (g.clone(), host_refs(t)))
                .collect(),
            ..Self::default()
        };
        for ep in snapshot.endpoints.values() {
            index
                .pod_ips
                .entry(pod_key(ep))
                .or_default()
                .insert(ep.spec.ip);
        }
        for (key, svc) in &snapshot.services {
            for pod in backend_pods(svc) {
                index.backend_of.entry(pod).or_default().insert(key.clone());
            }
        }
        index
    }

    /// Backend addresses of `svc` (sorted, deduplicated), as [`service_endpoints`]
    /// computes them, in time proportional to the service's backends.
    fn backend_ips(&self, svc: &super::objects::Service) -> Vec<Ipv4Addr> {
        let mut ips = BTreeSet::new();
        for (ns, name) in backend_pods(svc) {
            if let Some(set) = self.pod_ips.get(&(svc.spec.vpc.clone(), ns, name)) {
                ips.extend(set.iter().copied());
            }
        }
        ips.into_iter().collect()
    }
}

fn pod_key(ep: &super::objects::EndpointAlloc) -> (String, String, String) {
    (
        ep.spec.vpc.clone(),
        ep.spec.pod_namespace.clone(),
        ep.spec.pod_name.clone(),
    )
}

/// The gateway objects of one service (one per port), with backends from the index.
fn service_objects(
    snapshot: &Snapshot,
    index: &Index,
    svc: &super::objects::Service,
) -> Vec<Object> {
    let vni = snapshot
        .vpcs
        .get(&svc.spec.vpc)
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.vni);
    let (Some(vni), Some(vip)) = (vni, svc.status.as_ref().and_then(|s| s.vip)) else {
        return Vec::new();
    };
    let ips = index.backend_ips(svc);
    svc.spec
        .ports
        .iter()
        .map(|port| {
            Object::Service(sluice_api::Service {
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
            })
        })
        .collect()
}

/// Per gateway, the transaction a change needs; gateways it does not touch are absent.
pub type Changes = BTreeMap<String, Transaction>;

fn upsert(changes: &mut Changes, tables: &mut GatewayTables, gateway: &str, object: Object) {
    let key = object.key();
    if tables.get(&key) == Some(&object) {
        return;
    }
    tables.insert(key, object.clone());
    changes
        .entry(gateway.to_owned())
        .or_default()
        .upserts
        .push(object);
}

fn remove(changes: &mut Changes, tables: &mut GatewayTables, gateway: &str, key: ObjectKey) {
    if tables.remove(&key).is_some() {
        changes
            .entry(gateway.to_owned())
            .or_default()
            .deletes
            .push(key);
    }
}

/// Upserts the current objects of the services naming `pods` where a gateway holds them.
fn refresh_services<'a>(
    snapshot: &Snapshot,
    tables: &mut BTreeMap<String, GatewayTables>,
    index: &Index,
    services: impl IntoIterator<Item = &'a String>,
    changes: &mut Changes,
) {
    for key in services {
        let Some(svc) = snapshot.services.get(key) else {
            continue;
        };
        let objects = service_objects(snapshot, index, svc);
        for (gateway, held) in tables.iter_mut() {
            for object in &objects {
                if held.contains_key(&object.key()) {
                    upsert(changes, held, gateway, object.clone());
                }
            }
        }
    }
}

/// Attaches (`attached`) or releases one endpoint: updates `tables` and `index` to what
/// [`desired_tables`] computes for `snapshot`, which already has the change, and
/// returns only what changed per gateway. Costs O(gateways × log(table size) + the
/// backends of the pod's services), whatever the number of pods: the endpoint and its
/// host go to (or leave) the gateways holding its subnet's bouncer or VPC's divider
/// role, and the services naming the pod get their new backend lists.
pub fn endpoint_change(
    snapshot: &Snapshot,
    placement: &Placement,
    tables: &mut BTreeMap<String, GatewayTables>,
    index: &mut Index,
    ep: &super::objects::EndpointAlloc,
    attached: bool,
) -> Changes {
    let mut changes = Changes::new();
    let pod = pod_key(ep);
    if attached {
        index.pod_ips.entry(pod).or_default().insert(ep.spec.ip);
    } else if let Some(set) = index.pod_ips.get_mut(&pod) {
        set.remove(&ep.spec.ip);
        if set.is_empty() {
            index.pod_ips.remove(&pod);
        }
    }
    let vni = ep.spec.vni;
    let ep_key = ObjectKey::Endpoint {
        vni,
        ip: ep.spec.ip,
    };
    let subnet_key = snapshot
        .subnets
        .get(&ep.spec.subnet)
        .map(|s| ObjectKey::Subnet {
            vni,
            cidr: s.spec.cidr,
        });
    let node = snapshot.nodes.get(&ep.spec.node).map(|n| Host {
        ip: n.spec.ip,
        mac: n.spec.mac,
    });
    let holds_role = |g: &String| {
        placement
            .dividers
            .get(&ep.spec.vpc)
            .is_some_and(|d| d.contains(g))
            || placement
                .bouncers
                .get(&ep.spec.subnet)
                .is_some_and(|b| b.contains(g))
    };
    for (gateway, held) in tables.iter_mut() {
        let refs = index.host_refs.entry(gateway.clone()).or_default();
        if attached {
            let (Some(subnet_key), Some(host)) = (&subnet_key, &node) else {
                continue;
            };
            if !holds_role(gateway) || !held.contains_key(subnet_key) {
                continue;
            }
            let object = Object::Endpoint(Endpoint {
                vni,
                ip: ep.spec.ip,
                mac: ep.spec.mac,
                host: host.ip,
            });
            if held.contains_key(&ep_key) {
                continue;
            }
            let count = refs.entry(host.ip).or_insert(0);
            *count += 1;
            if *count == 1 {
                upsert(&mut changes, held, gateway, Object::Host(host.clone()));
            }
            upsert(&mut changes, held, gateway, object);
        } else {
            let Some(Object::Endpoint(old)) = held.get(&ep_key) else {
                continue;
            };
            let host = old.host;
            remove(&mut changes, held, gateway, ep_key);
            if let Some(count) = refs.get_mut(&host) {
                *count -= 1;
                if *count == 0 {
                    refs.remove(&host);
                    remove(&mut changes, held, gateway, ObjectKey::Host { ip: host });
                }
            }
        }
    }
    let named_by: Vec<String> = index
        .backend_of
        .get(&(ep.spec.pod_namespace.clone(), ep.spec.pod_name.clone()))
        .into_iter()
        .flatten()
        .filter(|k| {
            snapshot
                .services
                .get(*k)
                .is_some_and(|s| s.spec.vpc == ep.spec.vpc)
        })
        .cloned()
        .collect();
    refresh_services(snapshot, tables, index, &named_by, &mut changes);
    changes
}

/// A service whose backend list changed and nothing else (an EndpointSlice update, or
/// a standalone re-apply with new backends): `snapshot` holds the new service, `old`
/// is the one the tables were computed from. `None` when more than the backends changed
/// (VPC, VIP, ports, or the service is new or gone): that needs a full recompute.
pub fn backends_change(
    snapshot: &Snapshot,
    tables: &mut BTreeMap<String, GatewayTables>,
    index: &mut Index,
    key: &str,
    old: &super::objects::Service,
) -> Option<Changes> {
    let new = snapshot.services.get(key)?;
    let same_shape = new.spec.vpc == old.spec.vpc
        && new.spec.ports == old.spec.ports
        && new.status.as_ref().and_then(|s| s.vip) == old.status.as_ref().and_then(|s| s.vip);
    if !same_shape {
        return None;
    }
    for pod in backend_pods(old) {
        if let Some(set) = index.backend_of.get_mut(&pod) {
            set.remove(key);
            if set.is_empty() {
                index.backend_of.remove(&pod);
            }
        }
    }
    for pod in backend_pods(new) {
        index
            .backend_of
            .entry(pod)
            .or_default()
            .insert(key.to_owned());
    }
    let mut changes = Changes::new();
    refresh_services(
        snapshot,
        tables,
        index,
        std::iter::once(&key.to_owned()),
        &mut changes,
    );
    Some(changes)
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Attaching every endpoint one by one, then releasing them in another order,
        /// keeps the incrementally maintained tables equal to a full recompute after
        /// every step, and each step's changes replayed on the previous tables give the
        /// new ones.
        #[test]
        fn incremental_endpoint_changes_equal_a_full_recompute(w in world(), seed in any::<u64>()) {
            let full = snapshot(&w, false);
            let placement = Placement::of(&full);
            let mut snap = full.clone();
            snap.endpoints.clear();
            let mut tables = desired_tables(&snap, &placement);
            let mut index = Index::of(&snap, &tables);
            let mut order: Vec<String> = full.endpoints.keys().cloned().collect();
            for (key, ep) in &full.endpoints {
                snap.endpoints.insert(key.clone(), ep.clone());
                let before = tables.clone();
                let changes = endpoint_change(&snap, &placement, &mut tables, &mut index, ep, true);
                prop_assert_eq!(&tables, &desired_tables(&snap, &placement), "after attaching {}", key);
                for (g, txn) in &changes {
                    let mut replay = before[g].clone();
                    for k in &txn.deletes { replay.remove(k); }
                    for o in &txn.upserts { replay.insert(o.key(), o.clone()); }
                    prop_assert_eq!(&replay, &tables[g]);
                }
                // Only the gateways holding a role for the endpoint are touched.
                for g in changes.keys() {
                    prop_assert!(placement.dividers[&ep.spec.vpc].contains(g)
                        || snap.subnets.iter().any(|(n, s)| s.spec.vpc == ep.spec.vpc && placement.bouncers[n].contains(g)));
                }
            }
            // Release in a shuffled order.
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for key in order {
                let ep = snap.endpoints.remove(&key).unwrap();
                endpoint_change(&snap, &placement, &mut tables, &mut index, &ep, false);
                prop_assert_eq!(&tables, &desired_tables(&snap, &placement), "after releasing {}", key);
            }
        }

        /// A service's backend list changing alone is applied incrementally and equals a
        /// full recompute.
        #[test]
        fn backend_changes_equal_a_full_recompute(w in world(), picks in prop::collection::vec(0usize..4, 0..4)) {
            let mut snap = snapshot(&w, false);
            let placement = Placement::of(&snap);
            let mut tables = desired_tables(&snap, &placement);
            let mut index = Index::of(&snap, &tables);
            let key = "default/svc-0".to_owned();
            let old = snap.services[&key].clone();
            let mut new = old.clone();
            new.spec.backends = picks.iter().map(|p| format!("pod-{p}").parse().unwrap()).collect();
            new.spec.backends.dedup();
            snap.services.insert(key.clone(), new);
            let changes = backends_change(&snap, &mut tables, &mut index, &key, &old);
            prop_assert!(changes.is_some());
            prop_assert_eq!(&tables, &desired_tables(&snap, &placement));
            // A changed port is not a backend change.
            let mut ported = snap.services[&key].clone();
            ported.spec.ports[0].port = 81;
            let prev = snap.services[&key].clone();
            snap.services.insert(key.clone(), ported);
            prop_assert!(backends_change(&snap, &mut tables, &mut index, &key, &prev).is_none());
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
