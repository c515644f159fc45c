//! Pure functions from Kubernetes objects to the controller's object model: which
//! network a pod joins, which Services are Sluice services and what their ports and
//! backends are. No I/O: the operator feeds them what its watchers cached.
//!
//! * A pod's network is its `sluice.dev/network` annotation (`VPC/SUBNET` or `SUBNET`),
//!   else its namespace's, else empty (the only subnet, as standalone).
//! * A Service is programmed when it is `ClusterIP` with an address and its VPC is known:
//!   its own `sluice.dev/vpc` annotation, else the VPC of its namespace's network. Its
//!   VIP is its ClusterIP (so cluster DNS answers stay right; the VPC's `serviceCidr`
//!   should be the cluster's service CIDR).
//! * Backends are the ready endpoints of its EndpointSlices that name a Pod (a `ready`
//!   left unset counts as ready, as the API defines it), deduplicated and sorted.
//! * A named `targetPort` is resolved through the EndpointSlices, whose ports carry the
//!   service port's name and the number the endpoints listen on; a named port not
//!   resolved yet (no endpoints) is left out until it is.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_api::Protocol;

use crate::controller::objects::{
    Metadata, ObjectError, PodRef, Resource, Service, ServicePort, ServiceSpec,
};

/// The annotation naming a pod's (or a namespace's default) network: `VPC/SUBNET`.
pub const NETWORK_ANNOTATION: &str = "sluice.dev/network";
/// The annotation naming a Service's VPC, when its namespace's network does not.
pub const VPC_ANNOTATION: &str = "sluice.dev/vpc";
/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The network a pod asks for: its annotation, else its namespace's, else empty.
pub fn pod_network(pod: Option<&Pod>, namespace: Option<&Namespace>) -> String {
    pod.and_then(|p| annotation(&p.metadata, NETWORK_ANNOTATION))
        .or_else(|| namespace.and_then(|n| annotation(&n.metadata, NETWORK_ANNOTATION)))
        .unwrap_or_default()
        .to_owned()
}

/// The VPC of a Service: its annotation, else the VPC part of its namespace's network.
pub fn service_vpc(service: &KubeService, namespace: Option<&Namespace>) -> Option<String> {
    if let Some(vpc) = annotation(&service.metadata, VPC_ANNOTATION) {
        return Some(vpc.to_owned());
    }
    let network = namespace.and_then(|n| annotation(&n.metadata, NETWORK_ANNOTATION))?;
    network.split_once('/').map(|(vpc, _)| vpc.to_owned())
}

fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The ready Pod endpoints of `slices`, as pod references, sorted and deduplicated.
pub fn ready_backends(slices: &[&EndpointSlice]) -> Vec<PodRef> {
    let mut pods = BTreeSet::new();
    for slice in slices {
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let Some(target) = ep.target_ref.as_ref() else {
                continue;
            };
            if !ready || target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let (Some(ns), Some(name)) = (target.namespace.clone(), target.name.clone()) else {
                continue;
            };
            pods.insert(PodRef {
                namespace: Some(ns),
                name,
            });
        }
    }
    pods.into_iter().collect()
}

/// The target port of a service port: a number as given, a name through the slices.
fn target_port(
    port: &k8s_openapi::api::core::v1::ServicePort,
    slices: &[&EndpointSlice],
) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
        Some(IntOrString::String(_)) => slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| {
                p.name == port.name
                    && protocol(p.protocol.as_deref()) == protocol(port.protocol.as_deref())
            })
            .and_then(|p| p.port)
            .and_then(|n| u16::try_from(n).ok()),
    }
}

/// The controller's Service for a Kubernetes Service and its EndpointSlices; `None`
/// when it is not one Sluice programs (not ClusterIP, headless, no VPC, or no port
/// resolved yet). An `Err` names what is wrong with one it should program.
pub fn service_object(
    service: &KubeService,
    slices: &[&EndpointSlice],
    namespace: Option<&Namespace>,
) -> Option<Result<Service, ObjectError>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref().unwrap_or("ClusterIP") != "ClusterIP" {
        return None;
    }
    let vip: Ipv4Addr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let vpc = service_vpc(service, namespace)?;
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                port: u16::try_from(p.port).ok()?,
                protocol: protocol(p.protocol.as_deref())?,
                target_port: Some(target_port(p, slices)?),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let metadata = Metadata {
        name: service.metadata.name.clone()?,
        namespace: Some(
            service
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
    };
    let object = Resource::new(
        metadata,
        ServiceSpec {
            vpc,
            vip: Some(vip),
            ports,
            backends: ready_backends(slices),
        },
    );
    let checked = crate::controller::objects::ClusterObject::Service(object);
    Some(checked.validate().map(|()| match checked {
        crate::controller::objects::ClusterObject::Service(s) => s,
        _ => unreachable!("built as a Service"),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ObjectReference, ServicePort as KubePort, ServiceSpec as KubeSpec,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;
    use sluice_api::{MacAddr, Object, Vni};

    use super::*;
    use crate::controller::desired::desired_tables;
    use crate::controller::objects::*;
    use crate::controller::placement::Placement;
    use crate::controller::source::Snapshot;
    use crate::controller::store::{endpoint_mac, router_mac};

    fn meta(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: (!ns.is_empty()).then(|| ns.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    fn kube_service(ns: &str, name: &str, ip: &str, target: IntOrString) -> KubeService {
        KubeService {
            metadata: meta(ns, name, &[]),
            spec: Some(KubeSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(vec![KubePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(target),
                    ..KubePort::default()
                }]),
                ..KubeSpec::default()
            }),
            status: None,
        }
    }

    fn slice(ns: &str, service: &str, pods: &[(&str, Option<bool>)], port: i32) -> EndpointSlice {
        EndpointSlice {
            metadata: meta(ns, &format!("{service}-abc"), &[]),
            address_type: "IPv4".into(),
            endpoints: pods
                .iter()
                .map(|(pod, ready)| Endpoint {
                    addresses: vec!["192.0.2.1".into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(ns.into()),
                        name: Some(pod.to_string()),
                        ..Default::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(port),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn networks_come_from_the_pod_then_its_namespace() {
        let ns = Namespace {
            metadata: meta("", "shop", &[(NETWORK_ANNOTATION, "blue/blue-a")]),
            ..Default::default()
        };
        let plain = Pod {
            metadata: meta("shop", "web-0", &[]),
            ..Default::default()
        };
        let own = Pod {
            metadata: meta("shop", "web-1", &[(NETWORK_ANNOTATION, "green/green-a")]),
            ..Default::default()
        };
        assert_eq!(pod_network(Some(&plain), Some(&ns)), "blue/blue-a");
        assert_eq!(pod_network(Some(&own), Some(&ns)), "green/green-a");
        assert_eq!(pod_network(None, None), "");
        let svc = kube_service("shop", "web", "10.96.0.10", IntOrString::Int(8080));
        assert_eq!(service_vpc(&svc, Some(&ns)).as_deref(), Some("blue"));
        assert_eq!(
            service_vpc(&svc, None),
            None,
            "no VPC: not a Sluice service"
        );
    }

    #[test]
    fn services_take_ready_pods_and_resolve_named_ports() {
        let ns = Namespace {
            metadata: meta("", "shop", &[(NETWORK_ANNOTATION, "blue/blue-a")]),
            ..Default::default()
        };
        let svc = kube_service(
            "shop",
            "web",
            "10.96.0.10",
            IntOrString::String("http".into()),
        );
        let s = slice(
            "shop",
            "web",
            &[
                ("web-0", Some(true)),
                ("web-1", Some(false)),
                ("web-2", None),
            ],
            8080,
        );
        let object = service_object(&svc, &[&s], Some(&ns)).unwrap().unwrap();
        assert_eq!(object.spec.vip, Some("10.96.0.10".parse().unwrap()));
        assert_eq!(
            object.spec.ports[0].target(),
            8080,
            "named port resolved through the slice"
        );
        let names: Vec<String> = object.spec.backends.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            ["shop/web-0", "shop/web-2"],
            "not-ready web-1 is left out"
        );
        // A named port with no slice yet is not programmed; a NodePort never is.
        assert!(service_object(&svc, &[], Some(&ns)).is_none());
        let mut node_port = svc.clone();
        node_port.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        assert!(service_object(&node_port, &[&s], Some(&ns)).is_none());
        let mut headless = svc;
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert!(service_object(&headless, &[&s], Some(&ns)).is_none());
    }

    /// Kubernetes Services and EndpointSlices over random readiness, VPCs and gateways:
    /// every ready endpoint of every service reaches exactly the gateways holding a role
    /// in the service's VPC, and no gateway without one holds the service.
    type PodReadiness = (u8, Option<bool>);

    #[derive(Clone, Debug)]
    struct World {
        gateways: usize,
        vpcs: Vec<(u32, u32)>,
        /// (VPC index, [(pod number, ready condition)]) per service.
        services: Vec<(usize, Vec<PodReadiness>)>,
    }

    fn world() -> impl Strategy<Value = World> {
        (
            1usize..6,
            prop::collection::vec((1u32..3, 1u32..3), 1..3),
            prop::collection::vec(
                (
                    0usize..3,
                    prop::collection::vec((0u8..6, prop::option::of(any::<bool>())), 0..6),
                ),
                0..4,
            ),
        )
            .prop_map(|(gateways, vpcs, services)| World {
                gateways,
                vpcs,
                services,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_ready_endpoint_reaches_exactly_the_vpc_gateways(w in world()) {
            let mut snap = Snapshot::default();
            for g in 0..w.gateways {
                let last = 1 + g as u8;
                snap.gateways.insert(format!("gw-{g}"), Resource::new(Metadata::named(format!("gw-{g}")), GatewaySpec {
                    ip: Ipv4Addr::new(198, 18, 0, last), mac: MacAddr([2, 0, 0, 0, 0, last]), control: "unix:///x".into(),
                }));
            }
            snap.nodes.insert("node-0".into(), Resource::new(Metadata::named("node-0"), NodeSpec {
                ip: Ipv4Addr::new(198, 18, 1, 1), mac: MacAddr([2, 0, 0, 0, 1, 1]),
            }));
            let mut namespaces = BTreeMap::new();
            for (v, (dividers, bouncers)) in w.vpcs.iter().enumerate() {
                let vpc = format!("vpc-{v}");
                let vni = Vni::new(100 + v as u32).unwrap();
                let mut object = Resource::new(Metadata::named(&vpc), VpcSpec {
                    cidr: "10.0.0.0/16".parse().unwrap(), service_cidr: "10.96.0.0/16".parse().unwrap(), dividers: *dividers,
                });
                object.status = Some(VpcStatus { vni: Some(vni), divider_gateways: vec![] });
                snap.vpcs.insert(vpc.clone(), object);
                let router = Ipv4Addr::new(10, 0, 0, 1);
                let mut subnet = Resource::new(Metadata::named(format!("{vpc}-a")), SubnetSpec {
                    vpc: vpc.clone(), cidr: "10.0.0.0/24".parse().unwrap(), bouncers: *bouncers,
                });
                subnet.status = Some(SubnetStatus { vni: Some(vni), router_ip: Some(router), router_mac: Some(router_mac(router)), bouncer_gateways: vec![] });
                snap.subnets.insert(format!("{vpc}-a"), subnet);
                let ns = format!("ns-{v}");
                namespaces.insert(ns.clone(), Namespace { metadata: meta("", &ns, &[(NETWORK_ANNOTATION, &format!("{vpc}/{vpc}-a"))]), ..Default::default() });
                // Six pods per namespace, all attached.
                for p in 0..6u8 {
                    let ip = Ipv4Addr::new(10, 0, 0, 2 + p);
                    let key = format!("node-0/{ns}-{p}/eth0");
                    snap.endpoints.insert(key.clone(), Resource::new(Metadata::named(key), EndpointSpec {
                        node: "node-0".into(), container_id: format!("{ns}-{p}"), interface: "eth0".into(),
                        pod_namespace: ns.clone(), pod_name: format!("pod-{p}"), vpc: vpc.clone(),
                        subnet: format!("{vpc}-a"), vni, ip, mac: endpoint_mac(ip),
                    }));
                }
            }
            let mut expected = Vec::new();
            for (i, (v, pods)) in w.services.iter().enumerate() {
                let v = v % w.vpcs.len();
                let ns = format!("ns-{v}");
                let name = format!("svc-{i}");
                let vip = format!("10.96.0.{}", 10 + i);
                let svc = kube_service(&ns, &name, &vip, IntOrString::Int(8080));
                let pods: Vec<(String, Option<bool>)> = pods.iter().map(|(p, r)| (format!("pod-{p}"), *r)).collect();
                let refs: Vec<(&str, Option<bool>)> = pods.iter().map(|(p, r)| (p.as_str(), *r)).collect();
                let s = slice(&ns, &name, &refs, 8080);
                let object = service_object(&svc, &[&s], namespaces.get(&ns)).unwrap().unwrap();
                let mut stored = object.clone();
                stored.status = Some(ServiceStatus { vip: object.spec.vip, endpoints: vec![] });
                snap.services.insert(format!("{ns}/{name}"), stored);
                let ready: BTreeSet<Ipv4Addr> = pods.iter().filter(|(_, r)| r.unwrap_or(true))
                    .map(|(p, _)| Ipv4Addr::new(10, 0, 0, 2 + p[4..].parse::<u8>().unwrap())).collect();
                expected.push((format!("vpc-{v}"), Vni::new(100 + v as u32).unwrap(), vip.parse::<Ipv4Addr>().unwrap(), ready));
            }
            let placement = Placement::of(&snap);
            let tables = desired_tables(&snap, &placement);
            for (vpc, vni, vip, ready) in expected {
                let holders: BTreeSet<&String> = placement.dividers[&vpc].iter().chain(&placement.bouncers[&format!("{vpc}-a")]).collect();
                for (g, held) in &tables {
                    let found = held.values().find_map(|o| match o {
                        Object::Service(s) if s.vni == vni && s.vip == vip => Some(s),
                        _ => None,
                    });
                    match (holders.contains(g), found) {
                        (true, Some(s)) => {
                            let got: BTreeSet<Ipv4Addr> = s.backends.iter().map(|b| b.ip).collect();
                            prop_assert_eq!(&got, &ready, "{} on {}", vip, g);
                            prop_assert!(s.backends.iter().all(|b| b.port == 8080));
                        }
                        (true, None) => prop_assert!(false, "{} misses {} of {}", g, vip, vpc),
                        (false, Some(_)) => prop_assert!(false, "{} holds {} without a role in {}", g, vip, vpc),
                        (false, None) => {}
                    }
                }
            }
        }
    }
}
