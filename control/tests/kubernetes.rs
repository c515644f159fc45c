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
) {
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
    let body = request.into_body().collect_bytes().await.unwrap();
    let body = String::from_utf8_lossy(&body);
    for needle in needles {
        assert!(
            body.contains(needle),
            "{method} {uri}: {needle:?} not in {body}"
        );
    }
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
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
