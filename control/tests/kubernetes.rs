//! Kubernetes mode against a mocked API server (kube's client over `tower_test::mock`:
//! every request the reconcilers make is checked and answered here) and a real gateway
//! control service (sluice-dataplane's harness), so the `Gateway.Apply` calls counted
//! are real calls that the real tables accepted.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{
    ObjectReference, Service as KubeService, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::client::Body;
use kube::Client;
use sluice_api::{MacAddr, ObjectKey};
use sluice_control::controller::objects::{
    ClusterObject, GatewaySpec, Metadata, NodeSpec, Resource,
};
use sluice_control::controller::source::{AttachRequest, ObjectSource};
use sluice_control::controller::{Controller, Store};
use sluice_control::kubernetes::crd::{Subnet, SubnetSpec, Vpc, VpcSpec};
use sluice_control::kubernetes::operator::{self, Context, FINALIZER};
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen};
use sluice_dataplane::tables::TableWriter;
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Answers the next request after checking it: method, path (with query) prefix, and
/// that the body contains each of `needles`; replies `reply` as JSON.
async fn expect(
    handle: &mut ApiHandle,
    method: &str,
    path: &str,
    needles: &[&str],
    reply: serde_json::Value,
) -> String {
    let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} request"))
        .expect("the client is alive");
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    let uri = request.uri().to_string();
    assert!(uri.starts_with(path), "{uri} is not {path}");
    if uri.contains("/status?") {
        // Status is written by server-side apply, as this controller's field manager.
        let kind = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(kind.as_deref(), Some("application/apply-patch+yaml"));
        assert!(
            uri.contains("fieldManager=sluice-controller") && uri.contains("force=true"),
            "{uri}"
        );
    }
    let content_type = request
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = request.into_body().collect_bytes().await.unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    for needle in needles {
        let found = body.contains(needle) || content_type.contains(needle);
        assert!(
            found,
            "{method} {uri}: {needle:?} not in {body} ({content_type})"
        );
    }
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

fn vpc(finalized: bool, deleting: bool) -> Vpc {
    let mut v = Vpc::new(
        "blue",
        VpcSpec {
            cidr: "10.0.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            dividers: 1,
        },
    );
    v.metadata.generation = Some(2);
    v.metadata.resource_version = Some("7".into());
    if finalized {
        v.metadata.finalizers = Some(vec![FINALIZER.into()]);
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
            bouncers: 1,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_status_backend_churn_and_cleanup_program_a_real_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gw-a.sock");
    let _gateway = GatewayHarness::start(
        Listen::Unix(socket.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("c.redb")).unwrap());
    let controller = Controller::new(store.clone(), None);
    store
        .apply(vec![ClusterObject::Gateway(Resource::new(
            Metadata::named("gw-a"),
            GatewaySpec {
                ip: "198.18.0.1".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                control: format!("unix://{}", socket.display()),
            },
        ))])
        .unwrap();
    controller.reconcile().await.unwrap();
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(
        Client::new(service, "default"),
        controller.clone(),
        store.clone(),
    );

    // 1. A new Vpc gets the finalizer first, and nothing reaches the gateway yet.
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(false, false)),
        ctx.clone(),
    ));
    expect(
        &mut api,
        "PATCH",
        "/apis/sluice.dev/v1alpha1/vpcs/blue?",
        &[FINALIZER],
        serde_json::to_value(vpc(true, false)).unwrap(),
    )
    .await;
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 0);

    // 2. With the finalizer, it is placed, programmed (one Apply) and its status applied.
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(true, false)),
        ctx.clone(),
    ));
    expect(
        &mut api,
        "PATCH",
        "/apis/sluice.dev/v1alpha1/vpcs/blue/status?",
        &[
            "\"Ready\"",
            "\"True\"",
            "\"vni\"",
            "gw-a",
            "\"observedGeneration\":2",
        ],
        serde_json::to_value(vpc(true, false)).unwrap(),
    )
    .await;
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 1, "one Apply for the new VPC");
    let task = tokio::spawn(operator::reconcile_subnet(
        Arc::new(subnet(false)),
        ctx.clone(),
    ));
    expect(
        &mut api,
        "PATCH",
        "/apis/sluice.dev/v1alpha1/subnets/blue-a/status?",
        &["\"True\"", "routerIp", "gw-a"],
        serde_json::to_value(subnet(false)).unwrap(),
    )
    .await;
    task.await.unwrap().unwrap();
    assert_eq!(controller.apply_calls(), 2);

    // 3. EndpointSlice churn: each change of ready pods is one Apply.
    store
        .register_node(
            "node-1",
            NodeSpec {
                ip: "198.18.1.1".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 1, 1]),
            },
        )
        .unwrap();
    controller.reconcile().await.unwrap();
    for pod in ["web-0", "web-1"] {
        let (_, _, done) = controller
            .attach(&AttachRequest {
                node: "node-1".into(),
                container_id: pod.into(),
                interface: "eth0".into(),
                pod_namespace: "shop".into(),
                pod_name: pod.into(),
                network: "blue/blue-a".into(),
            })
            .await
            .unwrap();
        assert_eq!(done.apply_calls, 1, "{pod}: one Apply to the one gateway");
    }
    let mut svc = KubeService {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            annotations: Some([("sluice.dev/vpc".to_string(), "blue".to_string())].into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        "http".into(),
                    ),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let one = slice(&["web-0"]);
    operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&one], None)
        .await
        .unwrap();
    let backends = |tables: sluice_control::controller::desired::GatewayTables| {
        tables.values().find_map(|o| match o {
            sluice_api::Object::Service(s) => Some(
                s.backends
                    .iter()
                    .map(|b| (b.ip.to_string(), b.port))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
    };
    assert_eq!(
        backends(controller.desired_for("gw-a").await),
        Some(vec![("10.0.1.2".into(), 8080)])
    );
    let two = slice(&["web-0", "web-1"]);
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(
        calls, 1,
        "a backend change is one Apply per gateway holding the VPC"
    );
    assert_eq!(
        backends(controller.desired_for("gw-a").await).map(|b| b.len()),
        Some(2)
    );
    let calls = operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(calls, 0, "no change, no Apply");
    // Turning the service into a NodePort removes it.
    svc.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    operator::sync_service(&ctx, "shop", "web", Some(&svc), &[&two], None)
        .await
        .unwrap();
    assert_eq!(backends(controller.desired_for("gw-a").await), None);

    // 4. Deleting: the VPC waits (its subnet still exists: an error, retried with
    // backoff); the subnet waits for its pods; then both leave every gateway and drop
    // their finalizers.
    let err = operator::reconcile_vpc(Arc::new(vpc(true, true)), ctx.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("blue-a"), "{err}");
    assert_eq!(ctx.backoff("vpc/blue"), Duration::from_secs(1));
    for pod in ["web-0", "web-1"] {
        controller
            .detach("node-1", pod, "eth0")
            .await
            .unwrap()
            .unwrap();
    }
    let task = tokio::spawn(operator::reconcile_subnet(
        Arc::new(subnet(true)),
        ctx.clone(),
    ));
    expect(
        &mut api,
        "PATCH",
        "/apis/sluice.dev/v1alpha1/subnets/blue-a?",
        &["\"remove\"", "/metadata/finalizers"],
        serde_json::to_value(subnet(false)).unwrap(),
    )
    .await;
    task.await.unwrap().unwrap();
    let task = tokio::spawn(operator::reconcile_vpc(
        Arc::new(vpc(true, true)),
        ctx.clone(),
    ));
    expect(
        &mut api,
        "PATCH",
        "/apis/sluice.dev/v1alpha1/vpcs/blue?",
        &["\"remove\"", "/metadata/finalizers"],
        serde_json::to_value(vpc(false, false)).unwrap(),
    )
    .await;
    task.await.unwrap().unwrap();
    let held = controller.desired_for("gw-a").await;
    assert!(held.is_empty(), "{held:?}");
    assert!(!held.contains_key(&ObjectKey::Host {
        ip: "198.18.0.1".parse().unwrap()
    }));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_rebuilds_allocations_from_the_api_server_and_keeps_every_pod() {
    use sluice_control::kubernetes::allocations::{self, ALLOCATION_ANNOTATION};
    use sluice_control::kubernetes::operator::{Caches, KubeSource};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gw-a.sock");
    let _gateway = GatewayHarness::start(
        Listen::Unix(socket.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    let gateway = ClusterObject::Gateway(Resource::new(
        Metadata::named("gw-a"),
        GatewaySpec {
            ip: "198.18.0.1".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            control: format!("unix://{}", socket.display()),
        },
    ));
    let blue = || sluice_control::kubernetes::crd::vpc_object(&vpc(true, false)).unwrap();
    let blue_a = || sluice_control::kubernetes::crd::subnet_object(&subnet(false)).unwrap();

    // Leader A. A VPC that came and went moved its VNI cursor, so blue's VNI is one a
    // fresh counter would not hand out first.
    let store_a = Arc::new(Store::open(&dir.path().join("a.redb")).unwrap());
    let mut red = blue();
    red.metadata = Metadata::named("red");
    store_a.apply(vec![ClusterObject::Vpc(red)]).unwrap();
    store_a
        .delete(&[sluice_control::controller::objects::ObjectRef {
            kind: sluice_control::controller::objects::Kind::Vpc,
            name: "red".into(),
        }])
        .unwrap();
    store_a
        .apply(vec![
            gateway.clone(),
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
    store_a
        .register_node(
            "node-1",
            NodeSpec {
                ip: "198.18.1.1".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 1, 1]),
            },
        )
        .unwrap();
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let caches = Caches::new();
    let source_a = KubeSource::new(
        store_a.clone(),
        caches.pods.clone(),
        caches.namespaces.clone(),
    )
    .recording(Client::new(service, "default"));
    let controller_a = Controller::new(Arc::new(source_a), None);
    controller_a.reconcile().await.unwrap();

    // Each attach is recorded on its pod (a merge patch) before it is answered.
    let mut records = std::collections::BTreeMap::new();
    for (pod, ip) in [
        ("web-0", "10.0.1.2"),
        ("web-1", "10.0.1.3"),
        ("web-2", "10.0.1.4"),
        ("web-3", "10.0.1.5"),
    ] {
        let c = controller_a.clone();
        let task = tokio::spawn(async move { c.attach(&attach_request(pod)).await });
        let body = expect(
            &mut api,
            "PATCH",
            &format!("/api/v1/namespaces/shop/pods/{pod}?"),
            &[
                "application/merge-patch+json",
                ALLOCATION_ANNOTATION,
                &format!("\\\"ip\\\":\\\"{ip}\\\""),
                &format!("\\\"containerId\\\":\\\"c-{pod}\\\""),
                "\\\"nodeIp\\\":\\\"198.18.1.1\\\"",
                "\\\"interface\\\":\\\"eth0\\\"",
            ],
            pod_json(pod, serde_json::json!({}), "Running"),
        )
        .await;
        let (alloc, _, done) = task.await.unwrap().unwrap();
        assert_eq!(alloc.spec.ip.to_string(), ip);
        assert_eq!(done.apply_calls, 1, "{pod}: one Apply");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        records.insert(pod, body["metadata"]["annotations"].clone());
    }
    // Detach reads the pod and removes the record only if it is still this attachment's.
    let c = controller_a.clone();
    let task = tokio::spawn(async move { c.detach("node-1", "c-web-1", "eth0").await });
    expect(
        &mut api,
        "GET",
        "/api/v1/namespaces/shop/pods/web-1",
        &[],
        pod_json("web-1", records["web-1"].clone(), "Running"),
    )
    .await;
    expect(
        &mut api,
        "PATCH",
        "/api/v1/namespaces/shop/pods/web-1?",
        &[
            "application/json-patch+json",
            "\"test\"",
            "\"remove\"",
            "/metadata/annotations/sluice.dev~1allocation",
        ],
        pod_json("web-1", serde_json::json!({}), "Running"),
    )
    .await;
    task.await.unwrap().unwrap().expect("web-1 was attached");
    // A failed record is not handed out: the address goes back.
    let c = controller_a.clone();
    let task = tokio::spawn(async move { c.attach(&attach_request("web-9")).await });
    let (request, send) = api.next_request().await.unwrap();
    assert_eq!(request.method(), "PATCH");
    send.send_response(
        Response::builder()
            .status(503)
            .body(Body::from(
                serde_json::to_vec(&serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "etcd unavailable", "reason": "ServiceUnavailable", "code": 503
                }))
                .unwrap(),
            ))
            .unwrap(),
    );
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
    let before = controller_a.desired_for("gw-a").await;
    assert_eq!(
        before
            .values()
            .filter(|o| matches!(o, sluice_api::Object::Endpoint(_)))
            .count(),
        3,
        "web-0, web-2 and web-3 on the gateway"
    );
    drop(controller_a);

    // Leader B, with an empty store. web-3 was deleted while no leader was watching;
    // web-8 finished (its sandbox is gone); another pod was never Sluice's.
    let store_b = Arc::new(Store::open(&dir.path().join("b.redb")).unwrap());
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let rebuild = {
        let (client, store) = (client.clone(), store_b.clone());
        tokio::spawn(async move { allocations::rebuild(&client, &store).await })
    };
    let mut blue_status = serde_json::to_value(vpc(true, false)).unwrap();
    blue_status["status"] = serde_json::json!({"vni": blue_vni.get()});
    let mut green = serde_json::to_value(vpc(true, false)).unwrap();
    green["metadata"]["name"] = "green".into();
    expect(
        &mut api,
        "GET",
        "/apis/sluice.dev/v1alpha1/vpcs",
        &[],
        list_json("sluice.dev/v1alpha1", "VpcList", vec![green, blue_status]),
    )
    .await;
    expect(
        &mut api,
        "GET",
        "/apis/sluice.dev/v1alpha1/subnets",
        &[],
        list_json(
            "sluice.dev/v1alpha1",
            "SubnetList",
            vec![serde_json::to_value(subnet(false)).unwrap()],
        ),
    )
    .await;
    let mut finished = records["web-2"].clone();
    finished[ALLOCATION_ANNOTATION] = finished[ALLOCATION_ANNOTATION]
        .as_str()
        .unwrap()
        .replace("10.0.1.4", "10.0.1.9")
        .replace("c-web-2", "c-web-8")
        .into();
    expect(
        &mut api,
        "GET",
        "/api/v1/pods",
        &[],
        list_json(
            "v1",
            "PodList",
            vec![
                pod_json("web-0", records["web-0"].clone(), "Running"),
                pod_json("web-1", serde_json::json!({}), "Running"),
                pod_json("web-2", records["web-2"].clone(), "Running"),
                pod_json("web-8", finished, "Succeeded"),
                pod_json("other", serde_json::json!({"x": "y"}), "Running"),
            ],
        ),
    )
    .await;
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
    let caches = Caches::new();
    let source_b = KubeSource::new(
        store_b.clone(),
        caches.pods.clone(),
        caches.namespaces.clone(),
    )
    .recording(client);
    let controller_b = Controller::new(Arc::new(source_b), None);
    store_b.apply(vec![gateway]).unwrap();
    let first = controller_b.reconcile().await.unwrap();
    assert!(first.failed.is_empty(), "{first:?}");
    assert_eq!(
        first.apply_calls, 1,
        "one Apply: the full sync's difference"
    );
    let after = controller_b.desired_for("gw-a").await;
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
    let c = controller_b.clone();
    let task = tokio::spawn(async move { c.attach(&attach_request("web-4")).await });
    expect(
        &mut api,
        "PATCH",
        "/api/v1/namespaces/shop/pods/web-4?",
        &[ALLOCATION_ANNOTATION, "10.0.1.3"],
        pod_json("web-4", serde_json::json!({}), "Running"),
    )
    .await;
    let (alloc, _, done) = task.await.unwrap().unwrap();
    assert_eq!(alloc.spec.ip.to_string(), "10.0.1.3");
    assert_eq!(done.apply_calls, 1);
}
