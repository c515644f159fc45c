//! The controller end to end over real sockets: the controller's gRPC service on a Unix
//! socket, real gateway control services (sluice-dataplane's harness: the real
//! `sluice.v1.Gateway` over real tables), `sluicectl` as a process.
//!
//! One gateway runs in this process; the other runs as a child process (this test binary
//! re-executed), so that restarting it gives it a new boot id as a real restart does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_api::client::{self, ClientTls, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::proto::v1::controller_client::ControllerClient;
use sluice_api::{Backend, Endpoint, Host, MacAddr, Object, ObjectKey, Protocol, Vni};
use sluice_control::controller::objects::{ClusterObject, Kind};
use sluice_control::controller::placement::place;
use sluice_control::controller::server::{self, ListenAddr, ServerTls};
use sluice_control::controller::service::ControllerService;
use sluice_control::controller::{Controller, Store};
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen, ServerTls as GatewayTls};
use sluice_dataplane::tables::TableWriter;
use tokio::sync::oneshot;

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cluster.yaml");
const CHILD_SOCKET: &str = "SLUICE_TEST_GATEWAY_SOCKET";

/// Entry point of the child gateway process; see [`GatewayChild`].
#[test]
#[ignore = "not a test: the entry point of the gateway child process that \
            controller_programs_gateways_and_survives_restarts starts with SLUICE_TEST_GATEWAY_SOCKET"]
fn gateway_process_entry() {
    let path = std::env::var(CHILD_SOCKET).expect("started by GatewayChild, with the socket path");
    let parent = std::os::unix::process::parent_id();
    let _gateway = GatewayHarness::start(
        Listen::Unix(PathBuf::from(path)),
        TableWriter::new(),
        Limits::default(),
    )
    .expect("the child gateway binds its socket");
    // Serve until killed; leave if the test that started us is gone.
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A gateway control service in a child process; killed (by its PID) when dropped.
struct GatewayChild {
    child: Child,
}

impl GatewayChild {
    fn start(socket: &Path) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "gateway_process_entry",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_SOCKET, socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("the test binary re-executes");
        let this = Self { child };
        wait_for(&format!("child gateway on {}", socket.display()), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
        this
    }
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The controller's service on its own thread and runtime, as the binary runs it.
struct ControllerServer {
    controller: Option<Arc<Controller>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControllerServer {
    fn start(store: &Path, socket: &Path) -> Self {
        Self::start_with(store, ListenAddr::Unix(socket.to_owned()), None, None).0
    }

    /// Serves on `listen`; returns the bound TCP address for `https://` with port 0.
    fn start_with(
        store: &Path,
        listen: ListenAddr,
        tls: Option<ServerTls>,
        gateway_tls: Option<ClientTls>,
    ) -> (Self, Option<SocketAddr>) {
        let store = Store::open(store).unwrap();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let controller = Controller::new(Arc::new(store), gateway_tls);
                controller.reconcile().await.unwrap();
                let checks = controller.spawn_checks(Duration::from_millis(100));
                let bound = server::bind(&listen, tls).await.unwrap();
                ready_tx
                    .send((Arc::clone(&controller), bound.tcp_addr()))
                    .unwrap();
                let service = ControllerService::new(controller, 1500);
                server::serve(bound, service, async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
                checks.abort();
            });
        });
        let (controller, addr) = ready.recv().expect("the controller starts");
        (
            Self {
                controller: Some(controller),
                shutdown: Some(shutdown),
                thread: Some(thread),
            },
            addr,
        )
    }

    fn controller(&self) -> &Controller {
        self.controller.as_ref().unwrap()
    }

    /// Stops serving and lets go of the store.
    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.controller = None;
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                t.join().unwrap();
            }
        }
    }
}

impl Drop for ControllerServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn sluicectl(controller: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--controller")
        .arg(format!("unix://{}", controller.display()))
        .args(args)
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_CONTROLLER")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("sluicectl runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sluicectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn controller_client(socket: &Path) -> ControllerClient<tonic::transport::Channel> {
    ControllerClient::new(
        client::connect(&Target::Unix(socket.to_owned()), None)
            .await
            .unwrap(),
    )
}

/// Everything a gateway holds, through its own `List`.
async fn held(socket: &Path) -> BTreeMap<ObjectKey, Object> {
    let channel = client::connect(&Target::Unix(socket.to_owned()), None)
        .await
        .unwrap();
    let mut gw = client::gateway(channel);
    let mut out = BTreeMap::new();
    for kind in [
        pb::Kind::Host,
        pb::Kind::Vpc,
        pb::Kind::Subnet,
        pb::Kind::Endpoint,
        pb::Kind::Service,
    ] {
        let mut stream = gw
            .list(pb::ListRequest { kind: kind.into() })
            .await
            .unwrap()
            .into_inner();
        while let Some(chunk) = stream.message().await.unwrap() {
            for o in &chunk.objects {
                let o = Object::try_from(o).unwrap();
                out.insert(o.key(), o);
            }
        }
    }
    out
}

struct Gw {
    name: &'static str,
    ip: Ipv4Addr,
    mac: MacAddr,
}

const GATEWAYS: [Gw; 2] = [
    Gw {
        name: "gw-a",
        ip: Ipv4Addr::new(198, 18, 0, 1),
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
    },
    Gw {
        name: "gw-b",
        ip: Ipv4Addr::new(198, 18, 0, 2),
        mac: MacAddr([2, 0, 0, 0, 0, 2]),
    },
];

const NODES: [(&str, Ipv4Addr, MacAddr); 2] = [
    (
        "n1",
        Ipv4Addr::new(198, 18, 0, 11),
        MacAddr([2, 0, 0, 0, 0, 0x11]),
    ),
    (
        "n2",
        Ipv4Addr::new(198, 18, 0, 12),
        MacAddr([2, 0, 0, 0, 0, 0x12]),
    ),
];

fn gw_host(name: &str) -> Host {
    let g = GATEWAYS.iter().find(|g| g.name == name).unwrap();
    Host {
        ip: g.ip,
        mac: g.mac,
    }
}

fn names() -> [&'static str; 2] {
    ["gw-a", "gw-b"]
}

/// A pod attached in the test: (pod name, node, subnet, VPC, address).
type Pod = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Ipv4Addr,
);

/// What `gateway` must hold for config/cluster.yaml and `pods`, written out from the
/// rules (not from the controller's code): the VPC, all its subnets and services, and
/// the hosts they name, on every gateway with a role in the VPC; a subnet's endpoints on
/// its bouncers and the VPC's dividers.
fn expected(gateway: &str, pods: &[Pod]) -> BTreeMap<ObjectKey, Object> {
    let mut out = BTreeMap::new();
    let mut put = |o: Object| {
        out.insert(o.key(), o);
    };
    // (VPC, VNI, dividers count, [(subnet, third octet, bouncers count)])
    let vpcs = [
        ("blue", 1, 1, vec![("blue-a", 1u8, 1u32), ("blue-b", 2, 1)]),
        ("red", 2, 1, vec![("red-a", 1, 2)]),
    ];
    for (vpc, vni, dividers, subnets) in vpcs {
        let vni = Vni::new(vni).unwrap();
        let div = place(&format!("vpc/{vpc}"), dividers, names());
        let bnc: BTreeMap<&str, Vec<String>> = subnets
            .iter()
            .map(|(s, _, n)| (*s, place(&format!("subnet/{s}"), *n, names())))
            .collect();
        let role = div
            .iter()
            .chain(bnc.values().flatten())
            .any(|g| g == gateway);
        if !role {
            continue;
        }
        for g in div.iter().chain(bnc.values().flatten()) {
            put(Object::Host(gw_host(g)));
        }
        put(Object::Vpc(sluice_api::Vpc {
            vni,
            cidr: "10.0.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            dividers: div.iter().map(|g| gw_host(g).ip).collect(),
        }));
        for (s, octet, _) in &subnets {
            put(Object::Subnet(sluice_api::Subnet {
                vni,
                cidr: format!("10.0.{octet}.0/24").parse().unwrap(),
                router_mac: MacAddr([0x0a, 0x59, 10, 0, *octet, 1]),
                bouncers: bnc[s].iter().map(|g| gw_host(g).ip).collect(),
            }));
        }
        let in_vpc: Vec<&Pod> = pods.iter().filter(|p| p.3 == vpc).collect();
        if vpc == "blue" {
            let mut backends: Vec<Backend> = in_vpc
                .iter()
                .filter(|p| p.0.starts_with("web-"))
                .map(|p| Backend {
                    ip: p.4,
                    port: 8080,
                    weight: 1,
                })
                .collect();
            backends.sort_by_key(|b| b.ip);
            put(Object::Service(sluice_api::Service {
                vni,
                vip: Ipv4Addr::new(10, 96, 0, 1),
                port: 80,
                protocol: Protocol::Tcp,
                backends,
            }));
        }
        for p in in_vpc {
            if div.iter().chain(&bnc[p.2]).any(|g| g == gateway) {
                let (_, ip, mac) = NODES.iter().find(|n| n.0 == p.1).unwrap();
                put(Object::Host(Host { ip: *ip, mac: *mac }));
                let [a, b, c, d] = p.4.octets();
                put(Object::Endpoint(Endpoint {
                    vni,
                    ip: p.4,
                    mac: MacAddr([0x0a, 0x58, a, b, c, d]),
                    host: *ip,
                }));
            }
        }
    }
    out
}

/// Holders of a role for `pod`: its subnet's bouncers and its VPC's dividers; and with
/// `service`, every gateway with a role in the VPC.
fn holders(subnet: &str, vpc_subnets: &[(&str, u32)], dividers: u32, service: bool) -> usize {
    let vpc = if subnet.starts_with("blue") {
        "blue"
    } else {
        "red"
    };
    let mut set: BTreeSet<String> = place(&format!("vpc/{vpc}"), dividers, names())
        .into_iter()
        .collect();
    for (s, n) in vpc_subnets {
        if *s == subnet || service {
            set.extend(place(&format!("subnet/{s}"), *n, names()));
        }
    }
    set.len()
}

#[test]
fn controller_programs_gateways_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("controller.redb");
    let ctl_sock = dir.path().join("controller.sock");
    let sock = |g: &str| dir.path().join(format!("{g}.sock"));
    let rt = runtime();

    let gw_a = GatewayHarness::start(
        Listen::Unix(sock("gw-a")),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    let gw_b = GatewayChild::start(&sock("gw-b"));
    let ctl = ControllerServer::start(&store_path, &ctl_sock);

    // Objects from the example configuration, through sluicectl.
    let out = ok(&sluicectl(&ctl_sock, &["apply", "-f", CLUSTER]));
    assert!(out.contains("Vpc blue applied"), "{out}");
    assert!(out.contains("Service default/web applied"), "{out}");

    // Gateways and nodes register themselves.
    rt.block_on(async {
        let mut c = controller_client(&ctl_sock).await;
        for g in &GATEWAYS {
            c.register_gateway(pb::RegisterGatewayRequest {
                name: g.name.into(),
                underlay: Some(pb::UnderlayHost {
                    ip: g.ip.to_string(),
                    mac: g.mac.to_string(),
                }),
                control: format!("unix://{}", sock(g.name).display()),
                boot_id: String::new(),
            })
            .await
            .unwrap();
        }
        for (name, ip, mac) in NODES {
            let reply = c
                .register_node(pb::RegisterNodeRequest {
                    node: name.into(),
                    underlay: Some(pb::UnderlayHost {
                        ip: ip.to_string(),
                        mac: mac.to_string(),
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(reply.gateways.len(), 2);
        }
    });
    // Nothing attached yet: each gateway holds exactly its roles' VPCs.
    for g in names() {
        assert_eq!(rt.block_on(held(&sock(g))), expected(g, &[]), "{g}");
    }

    // Attach pods; each reply is what the CNI result needs.
    let mut pods: Vec<Pod> = Vec::new();
    let attach =
        |rt: &tokio::runtime::Runtime, pod: &'static str, ns: &str, node: &str, network: &str| {
            rt.block_on(async {
                let mut c = controller_client(&ctl_sock).await;
                c.attach_endpoint(pb::AttachEndpointRequest {
                    node: node.into(),
                    container_id: format!("ctr-{pod}"),
                    interface: "eth0".into(),
                    pod_namespace: ns.into(),
                    pod_name: pod.into(),
                    network: network.into(),
                })
                .await
                .map(|r| r.into_inner())
            })
        };
    let blue = [("blue-a", 1), ("blue-b", 1)];
    let web0 = attach(&rt, "web-0", "default", "n1", "blue/blue-a").unwrap();
    assert_eq!(web0.ip, "10.0.1.2");
    assert_eq!((web0.vni, web0.prefix_len, web0.mtu), (1, 24, 1400));
    assert_eq!(web0.mac, "0a:58:0a:00:01:02");
    assert_eq!(
        (web0.router_ip.as_str(), web0.router_mac.as_str()),
        ("10.0.1.1", "0a:59:0a:00:01:01")
    );
    let bouncers: Vec<String> = place("subnet/blue-a", 1, names())
        .iter()
        .map(|g| gw_host(g).ip.to_string())
        .collect();
    assert_eq!(
        web0.bouncers
            .iter()
            .map(|b| b.ip.clone())
            .collect::<Vec<_>>(),
        bouncers
    );
    assert_eq!(web0.apply_calls as usize, holders("blue-a", &blue, 1, true));
    pods.push(("web-0", "n1", "blue-a", "blue", Ipv4Addr::new(10, 0, 1, 2)));
    let web1 = attach(&rt, "web-1", "default", "n2", "blue-b").unwrap();
    assert_eq!(web1.ip, "10.0.2.2");
    pods.push(("web-1", "n2", "blue-b", "blue", Ipv4Addr::new(10, 0, 2, 2)));
    // The other tenant, same addresses, another VNI.
    let red0 = attach(&rt, "red-0", "default", "n1", "red/red-a").unwrap();
    assert_eq!((red0.ip.as_str(), red0.vni), ("10.0.1.2", 2));
    assert_eq!(
        red0.apply_calls as usize,
        holders("red-a", &[("red-a", 2)], 1, false)
    );
    pods.push(("red-0", "n1", "red-a", "red", Ipv4Addr::new(10, 0, 1, 2)));
    // Idempotent: the same attachment again costs nothing.
    let again = attach(&rt, "web-0", "default", "n1", "blue/blue-a").unwrap();
    assert_eq!((again.ip.as_str(), again.apply_calls), ("10.0.1.2", 0));

    // The cost of a pod does not grow with the cluster: plain pods cost one Apply per
    // gateway holding their subnet's bouncer or VPC's divider role, every time.
    let per_pod = holders("blue-a", &blue, 1, false);
    for i in 0..12u8 {
        let pod: &'static str = Box::leak(format!("app-{i}").into_boxed_str());
        let before = ctl_controller_calls(&ctl);
        let reply = attach(
            &rt,
            pod,
            "default",
            if i % 2 == 0 { "n1" } else { "n2" },
            "blue-a",
        )
        .unwrap();
        assert_eq!(reply.apply_calls as usize, per_pod, "pod {i}");
        assert_eq!((ctl_controller_calls(&ctl) - before) as usize, per_pod);
        let ip: Ipv4Addr = reply.ip.parse().unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 1, 3 + i));
        pods.push((
            pod,
            if i % 2 == 0 { "n1" } else { "n2" },
            "blue-a",
            "blue",
            ip,
        ));
    }
    for g in names() {
        assert_eq!(rt.block_on(held(&sock(g))), expected(g, &pods), "{g}");
    }

    // Detach releases the address and removes the endpoint everywhere.
    let detached = rt.block_on(async {
        let mut c = controller_client(&ctl_sock).await;
        c.detach_endpoint(pb::DetachEndpointRequest {
            node: "n2".into(),
            container_id: "ctr-app-1".into(),
            interface: "eth0".into(),
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert!(detached.released);
    assert_eq!(detached.apply_calls as usize, per_pod);
    pods.retain(|p| p.0 != "app-1");
    for g in names() {
        assert_eq!(rt.block_on(held(&sock(g))), expected(g, &pods), "{g}");
    }

    // sluicectl reads the controller's view.
    let vpcs = ok(&sluicectl(&ctl_sock, &["get", "vpcs"]));
    assert!(vpcs.starts_with("NAME  VNI  CIDR"), "{vpcs}");
    assert!(
        vpcs.contains("blue  1    10.0.0.0/16  10.96.0.0/16"),
        "{vpcs}"
    );
    let gateways = ok(&sluicectl(&ctl_sock, &["get", "gateways", "-o", "json"]));
    let gateways: serde_json::Value = serde_json::from_str(&gateways).unwrap();
    for g in gateways["items"].as_array().unwrap() {
        assert_eq!(g["status"]["inSync"], true, "{g}");
    }
    let services = ok(&sluicectl(&ctl_sock, &["get", "services", "-o", "yaml"]));
    let services: serde_json::Value = serde_norway::from_str(&services).unwrap();
    assert_eq!(services["items"][0]["status"]["vip"], "10.96.0.1");
    assert_eq!(
        services["items"][0]["status"]["endpoints"],
        serde_json::json!(["10.0.1.2", "10.0.2.2"])
    );
    let endpoints = ok(&sluicectl(&ctl_sock, &["get", "endpoints"]));
    assert_eq!(endpoints.lines().count(), 1 + pods.len(), "{endpoints}");
    // A bad object is refused with its field, in one line, and nothing changes.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Subnet\nmetadata: {name: x}\nspec: {vpc: green, cidr: 10.0.9.0/24}\n",
    )
    .unwrap();
    let out = sluicectl(&ctl_sock, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("NotFound") && err.contains("spec.vpc"),
        "{err}"
    );

    // A gateway process restarts with empty tables and a new boot id: the periodic check
    // notices and re-syncs it.
    let calls = ctl_controller_calls(&ctl);
    drop(gw_b);
    let gw_b = GatewayChild::start(&sock("gw-b"));
    wait_for("gw-b to be re-synced", || {
        rt.block_on(held(&sock("gw-b"))) == expected("gw-b", &pods)
    });
    assert!(ctl_controller_calls(&ctl) > calls, "the re-sync was pushed");
    // A gateway restarted in place keeps the boot id (one process) but its tables start
    // again from generation 0: that is noticed too.
    drop(gw_a);
    let gw_a = GatewayHarness::start(
        Listen::Unix(sock("gw-a")),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    wait_for("gw-a to be re-synced", || {
        rt.block_on(held(&sock("gw-a"))) == expected("gw-a", &pods)
    });

    // The controller restarts on the same store: nothing is lost, nothing needs pushing,
    // and new allocations do not collide.
    let endpoints_before = ok(&sluicectl(&ctl_sock, &["get", "endpoints", "-o", "json"]));
    let vpcs_before = ok(&sluicectl(&ctl_sock, &["get", "vpcs", "-o", "json"]));
    ctl.stop();
    let ctl = ControllerServer::start(&store_path, &ctl_sock);
    assert_eq!(
        ctl_controller_calls(&ctl),
        0,
        "the gateways already hold their tables"
    );
    assert_eq!(
        ok(&sluicectl(&ctl_sock, &["get", "endpoints", "-o", "json"])),
        endpoints_before
    );
    assert_eq!(
        ok(&sluicectl(&ctl_sock, &["get", "vpcs", "-o", "json"])),
        vpcs_before
    );
    let next = attach(&rt, "late", "default", "n2", "blue-a").unwrap();
    assert_eq!(
        next.ip, "10.0.1.4",
        "the address app-1 released, not one in use"
    );
    pods.push(("late", "n2", "blue-a", "blue", Ipv4Addr::new(10, 0, 1, 4)));
    for g in names() {
        assert_eq!(rt.block_on(held(&sock(g))), expected(g, &pods), "{g}");
    }
    let listed = rt.block_on(ctl.controller().list(Kind::Endpoint)).unwrap();
    assert!(listed
        .iter()
        .all(|o| matches!(o, ClusterObject::Endpoint(_))));
    drop((gw_a, gw_b));
}

fn ctl_controller_calls(ctl: &ControllerServer) -> u64 {
    ctl.controller().apply_calls()
}

#[test]
fn controller_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ctl_sock = dir.path().join("controller.sock");
    let ctl = ControllerServer::start(&dir.path().join("c.redb"), &ctl_sock);
    let rt = runtime();
    rt.block_on(async {
        let mut c = controller_client(&ctl_sock).await;
        let attach = |network: &str, node: &str| pb::AttachEndpointRequest {
            node: node.into(),
            container_id: "c1".into(),
            interface: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            network: network.into(),
        };
        let err = c
            .attach_endpoint(attach("blue/blue-a", "n1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("node"), "{err:?}");
        c.register_node(pb::RegisterNodeRequest {
            node: "n1".into(),
            underlay: Some(pb::UnderlayHost {
                ip: "198.18.0.11".into(),
                mac: "02:00:00:00:00:11".into(),
            }),
        })
        .await
        .unwrap();
        let err = c
            .attach_endpoint(attach("blue/blue-a", "n1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(
            err.message()
                .contains("network: subnet blue-a does not exist"),
            "{err:?}"
        );
        let err = c
            .register_node(pb::RegisterNodeRequest {
                node: "n2".into(),
                underlay: Some(pb::UnderlayHost {
                    ip: "198.18.0.12".into(),
                    mac: "01:00:00:00:00:11".into(),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("spec.mac"), "{err:?}");
        let err = c
            .apply_objects(pb::ApplyObjectsRequest {
                objects: vec![pb::ClusterObject {
                    json: r#"{"kind":"Vpc","metadata":{"name":"v"},"spec":{"cidr":"10.0.0.0/16"}}"#
                        .into(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("objects[0]") && err.message().contains("serviceCidr"),
            "{err:?}"
        );
        let err = c
            .list_objects(pb::ListObjectsRequest {
                kind: "Pods".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let err = c
            .delete_objects(pb::DeleteObjectsRequest {
                objects: vec![pb::ObjectRef {
                    kind: "Vpc".into(),
                    name: "nope".into(),
                    namespace: String::new(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    });
    let health = ok(&sluicectl(&ctl_sock, &["health"]));
    assert_eq!(health, "server: SERVING\nsluice.v1.Controller: SERVING\n");
    // The socket is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ctl_sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    ctl.stop();
    assert!(!ctl_sock.exists(), "the socket is removed on shutdown");
}

#[test]
fn mtu_overhead_matches_the_wire_contract() {
    assert_eq!(
        sluice_control::controller::service::ENCAP_MTU_OVERHEAD,
        u32::from(sluice_dataplane::wire::contract::ENCAP_MTU_OVERHEAD)
    );
}

#[test]
fn the_binary_serves_until_sigterm_and_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/controller.sock");
    let bin = env!("CARGO_BIN_EXE_sluice-controller");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(bin)
            .arg("--store")
            .arg(dir.path().join("lib/controller.redb"))
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    wait_for("the controller's socket", || sock.exists());
    let out = ok(&sluicectl(&sock, &["apply", "-f", CLUSTER]));
    assert!(
        out.ends_with("gateways updated with 0 Apply calls\n"),
        "{out}"
    );
    let subnets = ok(&sluicectl(&sock, &["get", "subnets"]));
    assert!(
        subnets.contains("red-a   red   10.0.1.0/24  10.0.1.1  0a:59:0a:00:01:01  -"),
        "{subnets}"
    );
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!sock.exists(), "the socket is removed on SIGTERM");
    drop(child);

    let out = Command::new(bin)
        .args([
            "--store",
            "/proc/sluice-no-such-dir/s.redb",
            "--listen",
            "http://x",
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("sluice-controller: \"http://x\" is not a listen address"),
        "{err}"
    );
}

/// A CA and, signed by it, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf(vec!["sluice".into()], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

#[test]
fn mutual_tls_between_sluicectl_controller_and_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let client_tls = ClientTls {
        ca: file("ca.pem", &pki.ca),
        cert: file("client.pem", &pki.client.0),
        key: file("client.key", &pki.client.1),
    };
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let gateway = GatewayHarness::start(
        Listen::Tcp {
            addr: any_port,
            tls: GatewayTls {
                cert_pem: pki.server.0.clone().into_bytes(),
                key_pem: pki.server.1.clone().into_bytes(),
                client_ca_pem: pki.ca.clone().into_bytes(),
            },
        },
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    let gw_port = gateway.tcp_addr().unwrap().port();
    let (ctl, addr) = ControllerServer::start_with(
        &dir.path().join("c.redb"),
        ListenAddr::Https(any_port),
        Some(ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: pki.ca.clone().into_bytes(),
        }),
        Some(client_tls.clone()),
    );
    let url = format!("https://127.0.0.1:{}", addr.unwrap().port());
    let ctl_tls = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluicectl"))
            .args(["--controller", &url, "--ca"])
            .arg(&client_tls.ca)
            .arg("--cert")
            .arg(&client_tls.cert)
            .arg("--key")
            .arg(&client_tls.key)
            .args(args)
            .env_remove("SLUICE_CONTROLLER")
            .output()
            .unwrap()
    };
    let gw_yaml = file(
        "gateway.yaml",
        &format!(
            "kind: Gateway\nmetadata: {{name: gw-tls}}\n\
             spec: {{ip: 198.18.0.1, mac: \"02:00:00:00:00:01\", control: \"https://127.0.0.1:{gw_port}\"}}\n"
        ),
    );
    ok(&ctl_tls(&["apply", "-f", CLUSTER]));
    let out = ok(&ctl_tls(&["apply", "-f", gw_yaml.to_str().unwrap()]));
    assert!(out.contains("Gateway gw-tls applied"), "{out}");
    // The only gateway holds every role: both VPCs, all three subnets, the service.
    let tables = runtime().block_on(async {
        let channel = client::connect(
            &Target::Https {
                host: "127.0.0.1".into(),
                port: gw_port,
            },
            Some(&client_tls),
        )
        .await
        .unwrap();
        let mut gw = client::gateway(channel);
        let mut kinds = Vec::new();
        for kind in [pb::Kind::Vpc, pb::Kind::Subnet, pb::Kind::Service] {
            let mut stream = gw
                .list(pb::ListRequest { kind: kind.into() })
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while let Some(chunk) = stream.message().await.unwrap() {
                n += chunk.objects.len();
            }
            kinds.push(n);
        }
        kinds
    });
    assert_eq!(tables, [2, 3, 1]);
    // Without a client certificate the controller is not reachable over TCP.
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["--controller", &url, "get", "vpcs"])
        .env_remove("SLUICE_CA")
        .env_remove("SLUICE_CERT")
        .env_remove("SLUICE_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("needs --ca, --cert and --key"), "{err}");
    ctl.stop();
    drop(gateway);
}
