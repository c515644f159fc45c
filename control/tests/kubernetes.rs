//! Kubernetes mode against a scripted API server (kube's client over
//! `tower_test::mock`, [`common::FakeApi`]: every request the operator makes is
//! answered from configured lists and pushed watch events, or checked and answered
//! here) and real `sluice-gateway` processes, each in its own network namespace
//! ([`common::RealGateway`]). What a gateway holds is read back from it with
//! `Gateway.List`, and its table generation (one more per `Apply` that changed
//! something) counts the Apply calls it took.
//!
//! The tests that start gateways need root; `scripts/test.sh` runs them as root, and
//! they need `sluice-gateway` built in the same profile (`cargo test --workspace`
//! builds it; alone: `cargo build --release -p sluice-dataplane --bin sluice-gateway`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_root, endpoints, eventually, services, subnets, FakeApi, RealGateway};
use k8s_openapi::api::core::v1::{
    ObjectReference, Service as KubeService, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_api::{MacAddr, Object};
use sluice_control::controller::objects::{ClusterObject, Kind, NodeSpec, ObjectRef};
use sluice_control::controller::source::{AttachRequest, ObjectSource};
use sluice_control::controller::{Controller, Store};
use sluice_control::kubernetes::allocations::ALLOCATION_ANNOTATION;
use sluice_control::kubernetes::crd::{Subnet, SubnetSpec, Vpc, VpcSpec};
use sluice_control::kubernetes::operator::{self, Caches, Context, KubeSource, Signals, FINALIZER};

/// How long anything the operator does in reaction to an event may take here.
const SOON: Duration = Duration::from_secs(10);

const VPCS: &str = "/apis/sluice.dev/v1alpha1/vpcs";
const SUBNETS: &str = "/apis/sluice.dev/v1alpha1/subnets";
const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

fn vpc_named(name: &str, service_cidr: &str, dividers: u32) -> Vpc {
    let mut v = Vpc::new(
        name,
        VpcSpec {
            cidr: "10.0.0.0/16".into(),
            service_cidr: service_cidr.into(),
            dividers,
        },
    );
    v.metadata.generation = Some(2);
    v.metadata.resource_version = Some("7".into());
    v.metadata.finalizers = Some(vec![FINALIZER.into()]);
    v
}

fn vpc(finalized: bool, deleting: bool) -> Vpc {
    let mut v = vpc_named("blue", "10.96.0.0/12", 2);
    if !finalized {
        v.metadata.finalizers = None;
    }
    if deleting {
        v.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    }
    v
}

fn subnet(deleting: bool) -> Subnet {
    let mut s = Subnet::new(
        "blue-a",
        SubnetSpec {
            vpc: "blue".into(),
            cidr: "10.0.1.0/24".into(),
            bouncers: 2,
        },
    );
    s.metadata.generation = Some(1);
    s.metadata.resource_version = Some("9".into());
    s.metadata.finalizers = Some(vec![FINALIZER.into()]);
    if deleting {
        s.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    }
    s
}

fn slice(ready: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-x".into()),
            namespace: Some("shop".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ready
            .iter()
            .map(|p| Endpoint {
                addresses: vec!["192.0.2.1".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some("shop".into()),
                    name: Some(p.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    }
}

fn web_service(annotations: &[(&str, &str)]) -> KubeService {
    KubeService {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn node_spec() -> NodeSpec {
    NodeSpec {
        ip: "198.18.1.1".parse().unwrap(),
        mac: MacAddr([2, 0, 0, 0, 1, 1]),
    }
}

fn attach_request(pod: &str) -> AttachRequest {
    AttachRequest {
        node: "node-1".into(),
        container_id: format!("c-{pod}"),
        interface: "eth0".into(),
        pod_namespace: "shop".into(),
        pod_name: pod.into(),
        network: "blue/blue-a".into(),
    }
}

fn pod_json(name: &str, annotations: serde_json::Value, phase: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "status": {"phase": phase},
    })
}

fn list_json(api_version: &str, kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": "100"},
        "items": items,
    })
}

/// Asserts `body` contains every needle.
fn contains(f: &common::Forwarded, needles: &[&str]) {
    for needle in needles {
        assert!(
            f.body.contains(needle) || f.content_type.contains(needle),
            "{f:?}: {needle:?} missing ({})",
            f.content_type
        );
    }
}

/// Takes a status patch and checks it is a server-side apply by this controller.
async fn take_status(api: &mut FakeApi, prefix: &str, needles: &[&str]) -> common::Forwarded {
    let f = api.take("PATCH", prefix, SOON).await;
    assert_eq!(f.content_type, "application/apply-patch+yaml", "{f:?}");
    assert!(
        f.uri.contains("fieldManager=sluice-controller") && f.uri.contains("force=true"),
        "{f:?}"
    );
    contains(&f, needles);
    f
}

async fn generations(gateways: &[RealGateway]) -> Vec<u64> {
    let mut out = Vec::new();
    for g in gateways {
        out.push(g.generation().await);
    }
    out
}

fn plus(before: &[u64], n: u64) -> Vec<u64> {
    before.iter().map(|g| g + n).collect()
}

/// The VPCs a gateway holds: (VNI, dividers).
fn vpcs(held: &sluice_control::controller::desired::GatewayTables) -> Vec<(u32, Vec<String>)> {
    held.values()
        .filter_map(|o| match o {
            Object::Vpc(v) => Some((
                v.vni.get(),
                v.dividers.iter().map(|d| d.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// The main scenario, reconcilers called one by one: finalizer first, status by
/// server-side apply, EndpointSlice churn, cleanup on delete, each step's `Apply` calls
/// counted by the two real gateways (their table generation) and their tables read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_status_backend_churn_and_cleanup_program_real_gateways() {
    assert_root("Kubernetes mode");
    let gateways = [RealGateway::start("gw-a", 1), RealGateway::start("gw-b", 2)];
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("c.redb")).unwrap());
    let controller = Controller::new(store.clone(), None);
    store
        .apply(gateways.iter().map(RealGateway::registration).collect())
        .unwrap();
    controller.reconcile().await.unwrap();
    let (client, mut api) = FakeApi::start(&[]);
    let ctx = Context::new(client, controller.clone(), store.clone());
    let g0 = generations(&gateways).await;
    for g in &gateways {
        assert!(vpcs(&g.list().await).is_empty());
    }

    // 1. A new Vpc gets the finalizer first, and nothing reaches the gateways yet.
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(false, false)),
        ctx.clone(),
    ));
    let f = api.take("PATCH", &format!("{VPCS}/blue?"), SOON).await;
    contains(&f, &[FINALIZER]);
    f.ok(&serde_json::to_value(vpc(true, false)).unwrap());
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 0);
    assert_eq!(generations(&gateways).await, g0);

    // 2. With the finalizer it is placed on both gateways (two dividers): one Apply
    // each, then its status applied.
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(true, false)),
        ctx.clone(),
    ));
    let f = take_status(
        &mut api,
        &format!("{VPCS}/blue/status?"),
        &[
            "\"Ready\"",
            "\"True\"",
            "\"vni\":1",
            "\"dividerGateways\":[",
            "\"gw-a\"",
            "\"gw-b\"",
            "\"observedGeneration\":2",
        ],
    )
    .await;
    f.ok(&serde_json::to_value(vpc(true, false)).unwrap());
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 2, "one Apply per gateway");
    let g1 = generations(&gateways).await;
    assert_eq!(g1, plus(&g0, 1));
    let dividers = vec!["198.18.0.1".to_string(), "198.18.0.2".to_string()];
    for g in &gateways {
        assert_eq!(
            vpcs(&g.list().await),
            vec![(1, dividers.clone())],
            "{}",
            g.name
        );
    }
    let task = tokio::spawn(operator::reconcile_subnet(
        Arc::new(subnet(false)),
        ctx.clone(),
    ));
    take_status(
        &mut api,
        &format!("{SUBNETS}/blue-a/status?"),
        &[
            "\"True\"",
            "routerIp",
            "\"bouncerGateways\":[",
            "\"gw-a\"",
            "\"gw-b\"",
        ],
    )
    .await
    .ok(&serde_json::to_value(subnet(false)).unwrap());
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 4);
    let g2 = generations(&gateways).await;
    assert_eq!(g2, plus(&g1, 1));
    for g in &gateways {
        assert_eq!(subnets(&g.list().await), ["10.0.1.0/24"], "{}", g.name);
    }

    // 3. Pods attach (one Apply per gateway each); EndpointSlice churn: each change of
    // ready pods is one Apply per gateway holding the VPC, none when nothing changed.
    store.register_node("node-1", node_spec()).unwrap();
    controller.reconcile().await.unwrap();
    let g3 = generations(&gateways).await;
    for (i, pod) in ["web-0", "web-1"].into_iter().enumerate() {
        let (_, _, done) = controller.attach(&attach_request(pod)).await.unwrap();
        assert_eq!(done.apply_calls, 2, "{pod}: one Apply to each gateway");
        assert_eq!(generations(&gateways).await, plus(&g3, i as u64 + 1));
    }
    for g in &gateways {
        assert_eq!(endpoints(&g.list().await), ["10.0.1.2", "10.0.1.3"]);
    }
    let mut svc = web_service(&[("sluice.dev/vpc", "blue")]);
    let one = slice(&["web-0"]);
    let g4 = generations(&gateways).await;
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&one], None)
        .await
        .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(generations(&gateways).await, plus(&g4, 1));
    let web = ("10.96.0.10".to_string(), 80);
    for g in &gateways {
        assert_eq!(
            services(&g.list().await).get(&web),
            Some(&vec![("10.0.1.2".to_string(), 8080)]),
            "{}",
            g.name
        );
    }
    let two = slice(&["web-0", "web-1"]);
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(
        calls, 2,
        "a backend change is one Apply per gateway holding the VPC"
    );
    assert_eq!(generations(&gateways).await, plus(&g4, 2));
    for g in &gateways {
        assert_eq!(
            services(&g.list().await).get(&web),
            Some(&vec![
                ("10.0.1.2".to_string(), 8080),
                ("10.0.1.3".to_string(), 8080)
            ])
        );
    }
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(calls, 0, "no change, no Apply");
    assert_eq!(generations(&gateways).await, plus(&g4, 2));
    // Turning the service into a NodePort removes it from both.
    svc.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(calls, 2);
    for g in &gateways {
        assert!(services(&g.list().await).is_empty(), "{}", g.name);
    }

    // 4. Deleting: the VPC waits (its subnet still exists: an error, retried); the
    // subnet waits for its pods; then both leave every gateway and drop their
    // finalizers.
    let err = operator::reconcile_vpc(Arc::new(vpc(true, true)), ctx.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("blue-a"), "{err}");
    for g in &gateways {
        assert_eq!(
            vpcs(&g.list().await).len(),
            1,
            "{} still holds blue",
            g.name
        );
    }
    for pod in ["web-0", "web-1"] {
        let (_, done) = controller
            .detach("node-1", &format!("c-{pod}"), "eth0")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.apply_calls, 2);
    }
    for g in &gateways {
        assert!(endpoints(&g.list().await).is_empty(), "{}", g.name);
    }
    let task = tokio::spawn(operator::reconcile_subnet(
        Arc::new(subnet(true)),
        ctx.clone(),
    ));
    let f = api.take("PATCH", &format!("{SUBNETS}/blue-a?"), SOON).await;
    contains(&f, &["\"remove\"", "/metadata/finalizers"]);
    // The finalizer goes only once the gateways no longer hold the subnet.
    for g in &gateways {
        assert!(subnets(&g.list().await).is_empty(), "{}", g.name);
    }
    f.ok(&serde_json::to_value(subnet(false)).unwrap());
    task.await.unwrap().unwrap();
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(true, true)),
        ctx.clone(),
    ));
    let f = api.take("PATCH", &format!("{VPCS}/blue?"), SOON).await;
    contains(&f, &["\"remove\"", "/metadata/finalizers"]);
    for g in &gateways {
        let held = g.list().await;
        assert!(held.is_empty(), "{}: {held:?}", g.name);
    }
    f.ok(&serde_json::to_value(vpc(false, false)).unwrap());
    task.await.unwrap().unwrap();
    assert!(api.unclaimed(Duration::from_millis(200)).await.is_empty());
}

/// The endpoints, hosts and subnets a gateway holds (what a pod's traffic needs).
fn pod_tables(
    tables: &sluice_control::controller::desired::GatewayTables,
) -> Vec<sluice_api::Object> {
    tables
        .values()
        .filter(|o| {
            !matches!(
                o,
                sluice_api::Object::Vpc(_) | sluice_api::Object::Service(_)
            )
        })
        .cloned()
        .collect()
}

/// Attaches `pod` through `controller` (whose source records on the pods), answering
/// the record's merge patch; returns the patch body.
async fn attach_recorded(
    api: &mut FakeApi,
    controller: &Arc<Controller>,
    pod: &str,
    ip: &str,
) -> serde_json::Value {
    let c = controller.clone();
    let request = attach_request(pod);
    let task = tokio::spawn(async move { c.attach(&request).await });
    let f = api
        .take(
            "PATCH",
            &format!("/api/v1/namespaces/shop/pods/{pod}?"),
            SOON,
        )
        .await;
    contains(
        &f,
        &[
            "application/merge-patch+json",
            ALLOCATION_ANNOTATION,
            &format!("\\\"ip\\\":\\\"{ip}\\\""),
            &format!("\\\"containerId\\\":\\\"c-{pod}\\\""),
            "\\\"nodeIp\\\":\\\"198.18.1.1\\\"",
            "\\\"interface\\\":\\\"eth0\\\"",
        ],
    );
    let body = f.json();
    f.ok(&pod_json(pod, serde_json::json!({}), "Running"));
    let (alloc, _, _) = task.await.unwrap().unwrap();
    assert_eq!(alloc.spec.ip.to_string(), ip);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_rebuilds_allocations_from_the_api_server_and_keeps_every_pod() {
    use sluice_control::kubernetes::allocations;

    assert_root("Kubernetes mode");
    let gw = RealGateway::start("gw-a", 1);
    let dir = tempfile::tempdir().unwrap();
    let blue = || sluice_control::kubernetes::crd::vpc_object(&vpc(true, false)).unwrap();
    let blue_a = || sluice_control::kubernetes::crd::subnet_object(&subnet(false)).unwrap();

    // Leader A. A VPC that came and went moved its VNI cursor, so blue's VNI is one a
    // fresh counter would not hand out first.
    let store_a = Arc::new(Store::open(&dir.path().join("a.redb")).unwrap());
    let mut red = blue();
    red.metadata = sluice_control::controller::objects::Metadata::named("red");
    store_a.apply(vec![ClusterObject::Vpc(red)]).unwrap();
    store_a
        .delete(&[ObjectRef {
            kind: Kind::Vpc,
            name: "red".into(),
        }])
        .unwrap();
    store_a
        .apply(vec![
            gw.registration(),
            ClusterObject::Vpc(blue()),
            ClusterObject::Subnet(blue_a()),
        ])
        .unwrap();
    let blue_vni = store_a.snapshot().unwrap().vpcs["blue"]
        .status
        .as_ref()
        .and_then(|s| s.vni)
        .unwrap();
    assert_eq!(blue_vni.get(), 2);
    store_a.register_node("node-1", node_spec()).unwrap();
    let (client, mut api) = FakeApi::start(&[]);
    let (_caches, feed) = Caches::new(store_a.clone());
    let source_a = KubeSource::new(store_a.clone(), feed.pods.clone(), feed.namespaces.clone())
        .recording(client);
    let controller_a = Controller::new(Arc::new(source_a), None);
    controller_a.reconcile().await.unwrap();

    // Each attach is recorded on its pod (a merge patch) before it is answered, and is
    // one Apply to the gateway.
    let mut records = std::collections::BTreeMap::new();
    for (pod, ip) in [
        ("web-0", "10.0.1.2"),
        ("web-1", "10.0.1.3"),
        ("web-2", "10.0.1.4"),
        ("web-3", "10.0.1.5"),
    ] {
        let before = gw.generation().await;
        let body = attach_recorded(&mut api, &controller_a, pod, ip).await;
        assert_eq!(gw.generation().await, before + 1, "{pod}: one Apply");
        records.insert(pod, body["metadata"]["annotations"].clone());
    }
    // Detach reads the pod and removes the record only if it is still this attachment's.
    let c = controller_a.clone();
    let task = tokio::spawn(async move { c.detach("node-1", "c-web-1", "eth0").await });
    api.take("GET", "/api/v1/namespaces/shop/pods/web-1", SOON)
        .await
        .ok(&pod_json("web-1", records["web-1"].clone(), "Running"));
    let f = api
        .take("PATCH", "/api/v1/namespaces/shop/pods/web-1?", SOON)
        .await;
    contains(
        &f,
        &[
            "application/json-patch+json",
            "\"test\"",
            "\"remove\"",
            "/metadata/annotations/sluice.dev~1allocation",
        ],
    );
    f.ok(&pod_json("web-1", serde_json::json!({}), "Running"));
    task.await.unwrap().unwrap().expect("web-1 was attached");
    // A failed record is not handed out: the address goes back, nothing reaches the
    // gateway.
    let generation = gw.generation().await;
    let c = controller_a.clone();
    let task = tokio::spawn(async move { c.attach(&attach_request("web-9")).await });
    api.take("PATCH", "/api/v1/namespaces/shop/pods/web-9?", SOON)
        .await
        .respond(common::failure(503, "ServiceUnavailable"));
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("pod shop/web-9: recording the allocation"),
        "{err}"
    );
    assert!(!store_a
        .snapshot()
        .unwrap()
        .endpoints
        .contains_key("node-1/c-web-9/eth0"));
    assert_eq!(gw.generation().await, generation);
    let before = gw.list().await;
    assert_eq!(
        endpoints(&before),
        ["10.0.1.2", "10.0.1.4", "10.0.1.5"],
        "web-0, web-2 and web-3 on the gateway"
    );
    drop(controller_a);

    // Leader B, with an empty store. web-3 was deleted while no leader was watching;
    // web-8 finished (its sandbox is gone); another pod was never Sluice's.
    let store_b = Arc::new(Store::open(&dir.path().join("b.redb")).unwrap());
    let (client, mut api) = FakeApi::start(&[]);
    let rebuild = {
        let (client, store) = (client.clone(), store_b.clone());
        tokio::spawn(async move { allocations::rebuild(&client, &store).await })
    };
    let mut blue_status = serde_json::to_value(vpc(true, false)).unwrap();
    blue_status["status"] = serde_json::json!({"vni": blue_vni.get()});
    let mut green = serde_json::to_value(vpc(true, false)).unwrap();
    green["metadata"]["name"] = "green".into();
    api.take("GET", VPCS, SOON).await.ok(&list_json(
        "sluice.dev/v1alpha1",
        "VpcList",
        vec![green, blue_status],
    ));
    api.take("GET", SUBNETS, SOON).await.ok(&list_json(
        "sluice.dev/v1alpha1",
        "SubnetList",
        vec![serde_json::to_value(subnet(false)).unwrap()],
    ));
    let mut finished = records["web-2"].clone();
    finished[ALLOCATION_ANNOTATION] = finished[ALLOCATION_ANNOTATION]
        .as_str()
        .unwrap()
        .replace("10.0.1.4", "10.0.1.9")
        .replace("c-web-2", "c-web-8")
        .into();
    api.take("GET", PODS, SOON).await.ok(&list_json(
        "v1",
        "PodList",
        vec![
            pod_json("web-0", records["web-0"].clone(), "Running"),
            pod_json("web-1", serde_json::json!({}), "Running"),
            pod_json("web-2", records["web-2"].clone(), "Running"),
            pod_json("web-8", finished, "Succeeded"),
            pod_json("other", serde_json::json!({"x": "y"}), "Running"),
        ],
    ));
    let rebuilt = rebuild.await.unwrap().unwrap();
    assert_eq!(
        (
            rebuilt.vpcs,
            rebuilt.subnets,
            rebuilt.nodes,
            rebuilt.endpoints
        ),
        (2, 1, 1, 2),
        "{rebuilt:?}"
    );
    assert!(rebuilt.skipped.is_empty(), "{rebuilt:?}");
    let snapshot = store_b.snapshot().unwrap();
    let vni_of = |name: &str| {
        snapshot.vpcs[name]
            .status
            .as_ref()
            .and_then(|s| s.vni)
            .unwrap()
    };
    assert_eq!(vni_of("blue"), blue_vni, "blue keeps the VNI in its status");
    assert_ne!(vni_of("green"), blue_vni, "a VPC without one gets another");

    // The gateway registers with B (its sidecar re-registers): one full sync, whose only
    // change for pods is web-3's endpoint going; web-0 and web-2 stay as they were.
    let (_caches, feed) = Caches::new(store_b.clone());
    let source_b = KubeSource::new(store_b.clone(), feed.pods.clone(), feed.namespaces.clone())
        .recording(client);
    let controller_b = Controller::new(Arc::new(source_b), None);
    store_b.apply(vec![gw.registration()]).unwrap();
    let generation = gw.generation().await;
    let first = controller_b.reconcile().await.unwrap();
    assert!(first.failed.is_empty(), "{first:?}");
    assert_eq!(
        first.apply_calls, 1,
        "one Apply: the full sync's difference"
    );
    assert_eq!(gw.generation().await, generation + 1);
    let after = gw.list().await;
    let web3 = sluice_api::ObjectKey::Endpoint {
        vni: blue_vni,
        ip: "10.0.1.5".parse().unwrap(),
    };
    let mut kept = before.clone();
    assert!(kept.remove(&web3).is_some());
    assert_eq!(
        pod_tables(&after),
        pod_tables(&kept),
        "live pods' entries unchanged"
    );
    assert_eq!(
        before.get(&sluice_api::ObjectKey::Vpc { vni: blue_vni }),
        after.get(&sluice_api::ObjectKey::Vpc { vni: blue_vni }),
        "blue as before"
    );

    // A new pod does not collide with a kept one: it gets the lowest free address
    // (web-1's, released by its detach).
    attach_recorded(&mut api, &controller_b, "web-4", "10.0.1.3").await;
    assert_eq!(
        endpoints(&gw.list().await),
        ["10.0.1.2", "10.0.1.3", "10.0.1.4"]
    );
}

/// The operator as the binary runs it: caches, reconcilers and watches over the
/// scripted API server, programming `gateway`.
struct Running {
    api: FakeApi,
    ctx: Arc<Context>,
    controller: Arc<Controller>,
    source: Arc<KubeSource>,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the operator over a store holding `gateway` and node-1 (and, `with_blue`,
/// VPC blue and subnet blue-a, as a new leader's rebuild leaves them), after
/// `prepare` filled the API server's lists.
async fn run_operator(
    gateways: &[&RealGateway],
    with_blue: bool,
    prepare: impl FnOnce(&FakeApi),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("c.redb")).unwrap());
    let mut objects: Vec<ClusterObject> = gateways.iter().map(|g| g.registration()).collect();
    if with_blue {
        objects.push(ClusterObject::Vpc(
            sluice_control::kubernetes::crd::vpc_object(&vpc(true, false)).unwrap(),
        ));
        objects.push(ClusterObject::Subnet(
            sluice_control::kubernetes::crd::subnet_object(&subnet(false)).unwrap(),
        ));
    }
    store.apply(objects).unwrap();
    store.register_node("node-1", node_spec()).unwrap();
    let (client, api) = FakeApi::start(FakeApi::OPERATOR);
    api.answer_status();
    prepare(&api);
    let (caches, feed) = Caches::new(store.clone());
    let signals = Signals::default();
    let source = Arc::new(
        KubeSource::new(store.clone(), feed.pods.clone(), feed.namespaces.clone())
            .recording(client.clone())
            .signalling(signals.clone()),
    );
    let controller = Controller::new(source.clone(), None);
    controller.reconcile().await.unwrap();
    let ctx = Context::with_signals(client.clone(), controller.clone(), store.clone(), signals);
    let ready = feed.ready();
    let tasks = vec![
        tokio::spawn(caches.run(client)),
        tokio::spawn(operator::run(ctx.clone(), feed, "sluice-system".into())),
    ];
    tokio::time::timeout(SOON, ready)
        .await
        .expect("caches filled")
        .expect("caches run");
    Running {
        api,
        ctx,
        controller,
        source,
        store,
        _dir: dir,
        tasks,
    }
}

/// Waits until `check` holds, polling every 20 ms for up to `timeout`.
async fn until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pods deleted without a CNI DEL (their node is gone) are released: from the
/// allocation recorded on the deleted pod, and, for a pod deleted while the watch was
/// down, when the watch lists again. A pod that still exists keeps its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_without_a_cni_del_are_released_from_the_gateways() {
    assert_root("Kubernetes mode");
    let gw = RealGateway::start("gw-a", 1);
    let mut run = run_operator(&[&gw], true, |_| {}).await;
    let mut records = std::collections::BTreeMap::new();
    for (pod, ip) in [
        ("web-0", "10.0.1.2"),
        ("web-1", "10.0.1.3"),
        ("web-2", "10.0.1.4"),
    ] {
        let body = attach_recorded(&mut run.api, &run.controller, pod, ip).await;
        let annotations = body["metadata"]["annotations"].clone();
        records.insert(pod, annotations.clone());
        run.api
            .push(PODS, vec![("ADDED", pod_json(pod, annotations, "Running"))]);
    }
    assert_eq!(
        endpoints(&gw.list().await),
        ["10.0.1.2", "10.0.1.3", "10.0.1.4"]
    );

    // web-0's node is lost: the pod is force-deleted, no CNI DEL ever comes.
    let generation = gw.generation().await;
    run.api.push(
        PODS,
        vec![(
            "DELETED",
            pod_json("web-0", records["web-0"].clone(), "Running"),
        )],
    );
    // Releasing reads the pod to remove its record: it is gone.
    run.api
        .take("GET", "/api/v1/namespaces/shop/pods/web-0", SOON)
        .await
        .respond(common::failure(404, "NotFound"));
    let held = eventually(&gw, SOON, |h| endpoints(h).len() == 2).await;
    assert_eq!(endpoints(&held), ["10.0.1.3", "10.0.1.4"]);
    assert_eq!(gw.generation().await, generation + 1, "one Apply");
    assert!(!run
        .store
        .snapshot()
        .unwrap()
        .endpoints
        .contains_key("node-1/c-web-0/eth0"));

    // web-1 goes while the watch is down (its DELETED event is never seen); the watch
    // then expires and lists again: web-1 is missing from the list and is released,
    // web-2 is in it and stays.
    run.api.remove_silently(PODS, "shop/web-1");
    run.api.expire(PODS);
    run.api
        .take("GET", "/api/v1/namespaces/shop/pods/web-1", SOON)
        .await
        .respond(common::failure(404, "NotFound"));
    let held = eventually(&gw, SOON, |h| endpoints(h).len() == 1).await;
    assert_eq!(endpoints(&held), ["10.0.1.4"]);
    // The address is free again: the next pod gets it.
    attach_recorded(&mut run.api, &run.controller, "web-5", "10.0.1.2").await;
    assert!(run
        .api
        .unclaimed(Duration::from_millis(300))
        .await
        .is_empty());
}

/// A Subnet reconciled before its Vpc is not left waiting for the 5-minute requeue:
/// it is reconciled as soon as the Vpc is (the Vpc watch maps to its Subnets), well
/// before its own backoff would retry it. Gateways registering and going refresh the
/// status of every Vpc and Subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_follows_its_vpc_and_status_follows_gateways() {
    assert_root("Kubernetes mode");
    let gw_a = RealGateway::start("gw-a", 1);
    let gw_b = RealGateway::start("gw-b", 2);
    let mut blue = vpc(true, false);
    blue.spec.dividers = 2;
    let run = run_operator(&[&gw_a], false, |api| {
        api.set_list(SUBNETS, vec![serde_json::to_value(subnet(false)).unwrap()]);
    })
    .await;
    // The subnet fails (its VPC is unknown), reports why, and backs off: 1 s, 2 s, 4 s.
    until(SOON, "subnet status VpcNotKnown", || {
        run.api
            .statuses(SUBNETS, "blue-a")
            .last()
            .is_some_and(|s| s.to_string().contains("VpcNotKnown"))
    })
    .await;
    until(Duration::from_secs(15), "three failures", || {
        run.ctx.failures_of("subnet/blue-a") >= 3
    })
    .await;
    let failures = run.ctx.failures_of("subnet/blue-a");
    // Its next retry is 4 s or more away; the Vpc arrives now.
    run.api
        .push(VPCS, vec![("ADDED", serde_json::to_value(&blue).unwrap())]);
    let held = eventually(&gw_a, Duration::from_secs(3), |h| {
        subnets(h) == ["10.0.1.0/24"]
    })
    .await;
    assert_eq!(subnets(&held), ["10.0.1.0/24"], "reconciled with its Vpc");
    until(Duration::from_secs(3), "subnet status Ready", || {
        run.api
            .statuses(SUBNETS, "blue-a")
            .last()
            .is_some_and(|s| s["conditions"][0]["status"] == "True")
    })
    .await;
    assert_eq!(
        run.ctx.failures_of("subnet/blue-a"),
        0,
        "succeeded (after {failures} failures) before its backoff retried it"
    );
    let ready_since = run.api.statuses(SUBNETS, "blue-a").last().unwrap()["conditions"][0]
        ["lastTransitionTime"]
        .clone();
    let dividers = |api: &FakeApi| {
        api.statuses(VPCS, "blue").last().map(|s| {
            let mut names: Vec<String> = s["dividerGateways"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            names.sort();
            names
        })
    };
    until(SOON, "blue's status", || {
        dividers(&run.api) == Some(vec!["gw-a".to_string()])
    })
    .await;

    // gw-b registers (as over gRPC): blue (two dividers) is placed on it, and both
    // statuses are refreshed without any change to the objects.
    let subnet_statuses = run.api.statuses(SUBNETS, "blue-a").len();
    run.source.apply(vec![gw_b.registration()]).unwrap();
    run.controller.reconcile().await.unwrap();
    until(SOON, "blue's status names gw-b", || {
        dividers(&run.api) == Some(vec!["gw-a".to_string(), "gw-b".to_string()])
    })
    .await;
    assert_eq!(vpcs(&gw_b.list().await).len(), 1, "gw-b holds blue");
    until(SOON, "blue-a's status refreshed with gw-b", || {
        let statuses = run.api.statuses(SUBNETS, "blue-a");
        statuses.len() > subnet_statuses
            && statuses.last().unwrap()["bouncerGateways"]
                .as_array()
                .is_some_and(|b| b.len() == 2)
    })
    .await;
    // Still Ready: the transition time did not move.
    let last = run.api.statuses(SUBNETS, "blue-a").last().unwrap().clone();
    assert_eq!(last["conditions"][0]["lastTransitionTime"], ready_since);

    // gw-b goes: the statuses follow.
    run.source
        .delete(&[ObjectRef {
            kind: Kind::Gateway,
            name: "gw-b".into(),
        }])
        .unwrap();
    run.controller.reconcile().await.unwrap();
    until(SOON, "blue's status without gw-b", || {
        dividers(&run.api) == Some(vec!["gw-a".to_string()])
    })
    .await;
}

/// Services: a failed sync is retried with backoff; a namespace's `sluice.dev/network`
/// annotation arriving programs its Services; a Service of a VPC that is not known yet
/// is programmed as soon as that Vpc is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_follow_their_namespace_and_vpc_and_are_retried() {
    assert_root("Kubernetes mode");
    let gw = RealGateway::start("gw-a", 1);
    let other = KubeService {
        metadata: ObjectMeta {
            name: Some("api".into()),
            namespace: Some("other".into()),
            annotations: Some([("sluice.dev/vpc".to_string(), "green".to_string())].into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.100.0.20".into()),
            ports: Some(vec![ServicePort {
                port: 443,
                target_port: Some(IntOrString::Int(8443)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let mut run = run_operator(&[&gw], true, |api| {
        api.set_list(
            NAMESPACES,
            vec![
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
            ],
        );
        api.set_list(
            SERVICES,
            vec![
                serde_json::to_value(web_service(&[])).unwrap(),
                serde_json::to_value(&other).unwrap(),
            ],
        );
        api.set_list(SLICES, vec![serde_json::to_value(slice(&["web-0"])).unwrap()]);
    })
    .await;
    attach_recorded(&mut run.api, &run.controller, "web-0", "10.0.1.2").await;

    // other/api names VPC green, which does not exist: its sync fails and is retried
    // with backoff (1 s, 2 s, 4 s...), not in a loop and not only at its next change.
    until(SOON, "api retried", || {
        run.ctx.failures_of("service/other/api") >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        run.ctx.failures_of("service/other/api") <= 4,
        "backing off: {} failures",
        run.ctx.failures_of("service/other/api")
    );
    // shop/web is not a Sluice service yet: its namespace names no network.
    assert!(services(&gw.list().await).is_empty());

    // The namespace gets its network: web is programmed, with its ready endpoint.
    run.api.push(
        NAMESPACES,
        vec![(
            "MODIFIED",
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "shop", "annotations": {"sluice.dev/network": "blue/blue-a"}}}),
        )],
    );
    let web = ("10.96.0.10".to_string(), 80);
    let held = eventually(&gw, SOON, |h| services(h).contains_key(&web)).await;
    assert_eq!(
        services(&held).get(&web),
        Some(&vec![("10.0.1.2".to_string(), 8080)])
    );

    // Vpc green arrives (its serviceCidr holds api's ClusterIP): api is programmed at
    // once, not at its next backoff retry.
    let failures = run.ctx.failures_of("service/other/api");
    let mut green = vpc_named("green", "10.96.0.0/12", 1);
    green.spec.cidr = "10.1.0.0/16".into();
    run.api
        .push(VPCS, vec![("ADDED", serde_json::to_value(&green).unwrap())]);
    let api_vip = ("10.100.0.20".to_string(), 443);
    let held = eventually(&gw, Duration::from_secs(3), |h| {
        services(h).contains_key(&api_vip)
    })
    .await;
    assert!(
        services(&held).contains_key(&api_vip),
        "{:?}",
        services(&held)
    );
    assert_eq!(
        run.ctx.failures_of("service/other/api"),
        0,
        "synced after {failures} failures"
    );

    // A ClusterIP outside the VPC's serviceCidr is refused: not programmed, retried,
    // and the reason is what the warning carries.
    let mut outside = web_service(&[]);
    outside.metadata.name = Some("outside".into());
    outside.spec.as_mut().unwrap().cluster_ip = Some("10.200.0.5".into());
    outside.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(IntOrString::Int(8080));
    run.api.push(
        SERVICES,
        vec![("ADDED", serde_json::to_value(&outside).unwrap())],
    );
    until(SOON, "outside refused", || {
        run.ctx.failures_of("service/shop/outside") >= 1
    })
    .await;
    assert!(!services(&gw.list().await).contains_key(&("10.200.0.5".to_string(), 80)));
    let shop = k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            annotations: Some(
                [("sluice.dev/network".to_string(), "blue/blue-a".to_string())].into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = operator::sync_service(
        &run.ctx,
        "shop",
        "outside",
        Some(&outside),
        &[],
        Some(&shop),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service shop/outside: spec.vip: 10.200.0.5 is not a host address of VPC blue's \
         serviceCidr 10.96.0.0/12"
    );
    assert!(run
        .api
        .unclaimed(Duration::from_millis(300))
        .await
        .is_empty());
}

/// The Vpc reconciler's real retry path (kube's controller with this operator's error
/// policy), on a paused clock: a status write that keeps failing is retried after
/// 1 s, 2 s, 4 s and 8 s, and the backoff starts over after a success.
#[tokio::test(start_paused = true)]
async fn a_failing_reconcile_is_retried_with_doubling_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("c.redb")).unwrap());
    let controller = Controller::new(store.clone(), None);
    let (client, mut api) = FakeApi::start(FakeApi::OPERATOR);
    api.set_list(VPCS, vec![serde_json::to_value(vpc(true, false)).unwrap()]);
    let (caches, feed) = Caches::new(store.clone());
    drop(caches);
    let ctx = Context::new(client, controller, store);
    let task = tokio::spawn(operator::run(ctx.clone(), feed, "sluice-system".into()));
    let status = format!("{VPCS}/blue/status?");
    let mut at = Vec::new();
    for _ in 0..5 {
        let f = api.take("PATCH", &status, Duration::from_secs(60)).await;
        at.push(f.at);
        f.respond(common::failure(500, "InternalError"));
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [1, 2, 4, 8].map(Duration::from_secs),
        "retried after 1, 2, 4 and 8 s"
    );
    until(Duration::from_secs(1), "five failures counted", || {
        ctx.failures_of("vpc/blue") == 5
    })
    .await;
    api.take("PATCH", &status, Duration::from_secs(60))
        .await
        .ok(&serde_json::to_value(vpc(true, false)).unwrap());
    let started = tokio::time::Instant::now();
    until(Duration::from_secs(1), "success resets the backoff", || {
        ctx.failures_of("vpc/blue") == 0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    task.abort();
}

/// `AttachEndpoint` is served only once the Pod and Namespace caches hold a first
/// list: [`operator::CacheFeed::ready`] waits for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_are_ready_only_after_both_lists() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("c.redb")).unwrap());
    let (client, mut api) = FakeApi::start(&[]);
    let (caches, feed) = Caches::new(store);
    let ready = tokio::spawn(feed.ready());
    let _run = tokio::spawn(caches.run(client));
    let pods = api.take("GET", PODS, SOON).await;
    let namespaces = api.take("GET", NAMESPACES, SOON).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ready.is_finished(), "ready before any list");
    pods.ok(&list_json(
        "v1",
        "PodList",
        vec![pod_json("web-0", serde_json::json!({}), "Running")],
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ready.is_finished(), "ready before the namespace list");
    namespaces.ok(&list_json("v1", "NamespaceList", vec![]));
    tokio::time::timeout(SOON, ready)
        .await
        .expect("ready after both lists")
        .unwrap()
        .unwrap();
    assert_eq!(feed.pods.state().len(), 1, "web-0 cached");
}
