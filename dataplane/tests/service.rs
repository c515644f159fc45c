//! The control service end to end: a real server on a Unix socket in a temporary
//! directory or on loopback TCP with mutual TLS, and the sluice-api client.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_api::client::{self, ClientTls, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::{Endpoint, Object, ObjectKey, Transaction};
use sluice_dataplane::pipeline::{DropReason, Verdict};
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{self, Limits, Listen, ServeError, ServerTls};
use sluice_dataplane::tables::TableWriter;
use sluice_dataplane::testkit::*;
use tonic::transport::Channel;
use tonic::Code;

type Client = pb::gateway_client::GatewayClient<Channel>;

fn start_unix(dir: &Path, writer: TableWriter, limits: Limits) -> (GatewayHarness, PathBuf) {
    let path = dir.join("gateway.sock");
    let harness =
        GatewayHarness::start(Listen::Unix(path.clone()), writer, limits).expect("server starts");
    (harness, path)
}

async fn connect(path: &Path) -> Client {
    let channel = client::connect(&Target::Unix(path.to_owned()), None)
        .await
        .expect("connects");
    client::gateway(channel)
}

const KINDS: [pb::Kind; 5] = [
    pb::Kind::Host,
    pb::Kind::Vpc,
    pb::Kind::Subnet,
    pb::Kind::Endpoint,
    pb::Kind::Service,
];

/// Every object the gateway lists, by key, and the generation of the listing.
async fn everything(client: &mut Client) -> (BTreeMap<ObjectKey, Object>, u64) {
    let mut all = BTreeMap::new();
    let mut generations = Vec::new();
    for kind in KINDS {
        let mut stream = client
            .list(pb::ListRequest { kind: kind.into() })
            .await
            .expect("list")
            .into_inner();
        while let Some(chunk) = stream.message().await.expect("list chunk") {
            generations.push(chunk.generation);
            for object in &chunk.objects {
                let object = Object::try_from(object).expect("valid object");
                assert_eq!(sluice_api::convert::kind_of(&object), kind);
                all.insert(object.key(), object);
            }
        }
    }
    generations.dedup();
    assert_eq!(generations.len(), 1, "one generation: {generations:?}");
    (all, generations[0])
}

fn by_key(txn: &Transaction) -> BTreeMap<ObjectKey, Object> {
    txn.upserts.iter().map(|o| (o.key(), o.clone())).collect()
}

fn new_endpoint(last: u8) -> Object {
    Object::Endpoint(Endpoint {
        vni: vni(VNI_A),
        ip: Ipv4Addr::new(10, 0, 1, last),
        mac: MacAddr([0x0a, 0x58, 10, 0, 1, last]),
        host: H2,
    })
}

use sluice_api::MacAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_and_list_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, path) = start_unix(dir.path(), TableWriter::new(), Limits::default());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut client = connect(&path).await;

    let world = world();
    let reply = client
        .apply(pb::Transaction::from(&world))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, 1);
    assert_eq!(reply.boot_id, service::boot_id());
    assert_eq!(reply.boot_id.len(), 36, "a UUID: {}", reply.boot_id);

    let (listed, generation) = everything(&mut client).await;
    assert_eq!(generation, 1);
    assert_eq!(listed, by_key(&world));

    // Idempotent: the same transaction again changes nothing.
    let again = client
        .apply(pb::Transaction::from(&world))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.generation, 1);
    assert_eq!(everything(&mut client).await, (by_key(&world), 1));

    let key = ObjectKey::Endpoint {
        vni: vni(VNI_A),
        ip: POD_A1,
    };
    let got = client
        .get(pb::ObjectKey::from(&key))
        .await
        .unwrap()
        .into_inner();
    let object = Object::try_from(got.object.as_ref().unwrap()).unwrap();
    assert_eq!(Some(&object), by_key(&world).get(&key));

    let reply = client
        .apply(pb::Transaction::from(&Transaction {
            upserts: vec![],
            deletes: vec![key],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, 2);
    let missing = client.get(pb::ObjectKey::from(&key)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.message(),
        "endpoint 10.0.1.10 in VNI 100: not in the tables"
    );
    let unset = client.list(pb::ListRequest { kind: 0 }).await.unwrap_err();
    assert_eq!(unset.code(), Code::InvalidArgument);
    assert!(unset.message().starts_with("kind: not set"), "{unset}");
}

fn model_case(objects: Vec<Object>, deletes: Vec<ObjectKey>) -> pb::Transaction {
    let mut upserts = vec![new_endpoint(60)];
    upserts.extend(objects);
    pb::Transaction::from(&Transaction { upserts, deletes })
}

/// A good endpoint followed by `bad`, as raw protobuf (for what the model cannot hold).
fn raw_case(bad: pb::Object) -> pb::Transaction {
    let mut txn = model_case(vec![], vec![]);
    txn.upserts.push(bad);
    txn
}

fn pb_subnet(cidr: &str, vni: u32) -> pb::Object {
    pb::Object {
        kind: Some(pb::object::Kind::Subnet(pb::Subnet {
            vni,
            cidr: cidr.into(),
            router_mac: "02:aa:00:00:09:01".into(),
            bouncers: vec![GW.to_string()],
        })),
    }
}

fn subnet(cidr: &str, vni_value: u32) -> Object {
    Object::try_from(&pb_subnet(cidr, vni_value)).unwrap()
}

fn service_at(vip: [u8; 4], protocol: i32) -> pb::Object {
    pb::Object {
        kind: Some(pb::object::Kind::Service(pb::Service {
            vni: VNI_A,
            vip: Ipv4Addr::from(vip).to_string(),
            port: 80,
            protocol,
            backends: vec![pb::Backend {
                ip: POD_A1.to_string(),
                port: 8080,
                weight: None,
            }],
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_are_refused_whole_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, path) = start_unix(dir.path(), world_tables(), Limits::default());
    let mut client = connect(&path).await;
    let before = everything(&mut client).await;
    let tcp = pb::Protocol::Tcp as i32;
    let service = |vip| Object::try_from(&service_at(vip, tcp)).unwrap();
    let cases: Vec<(&str, pb::Transaction, Code, &str)> = vec![
        (
            "bad CIDR",
            raw_case(pb_subnet("10.0.9.0/33", VNI_A)),
            Code::InvalidArgument,
            "upserts[1].subnet.cidr: prefix length /33 exceeds /32",
        ),
        (
            "VNI out of range",
            raw_case(pb_subnet("10.0.9.0/24", 1 << 24)),
            Code::InvalidArgument,
            "upserts[1].subnet.vni: 16777216 is outside 1..=16777215",
        ),
        (
            "protocol not set",
            raw_case(service_at([10, 96, 1, 1], 0)),
            Code::InvalidArgument,
            "upserts[1].service.protocol: not set",
        ),
        (
            "an upsert naming no object",
            raw_case(pb::Object { kind: None }),
            Code::InvalidArgument,
            "upserts[1]: names no object",
        ),
        (
            "subnet outside its VPC",
            model_case(vec![subnet("10.1.0.0/24", VNI_A)], vec![]),
            Code::InvalidArgument,
            "subnet 10.1.0.0/24 in VNI 100: cidr: ",
        ),
        (
            "overlapping subnets in one VPC",
            model_case(vec![subnet("10.0.1.128/25", VNI_A)], vec![]),
            Code::InvalidArgument,
            "subnet 10.0.1.128/25 in VNI 100: cidr: ",
        ),
        (
            "subnet of an unknown VNI",
            model_case(vec![subnet("10.0.9.0/24", 999)], vec![]),
            Code::InvalidArgument,
            "subnet 10.0.9.0/24 in VNI 999: vni: ",
        ),
        (
            "endpoint outside every subnet",
            model_case(
                vec![Object::Endpoint(Endpoint {
                    vni: vni(VNI_A),
                    ip: Ipv4Addr::new(10, 0, 200, 1),
                    mac: MacAddr([0x0a, 0x58, 10, 0, 200, 1]),
                    host: H1,
                })],
                vec![],
            ),
            Code::InvalidArgument,
            "endpoint 10.0.200.1 in VNI 100: ip: 10.0.200.1 is outside every subnet",
        ),
        (
            "duplicate VIP",
            model_case(
                vec![service([10, 96, 1, 1]), service([10, 96, 1, 1])],
                vec![],
            ),
            Code::InvalidArgument,
            "service 10.96.1.1:80/tcp in VNI 100: key: ",
        ),
        (
            "VIP outside the service CIDR",
            model_case(vec![service([10, 0, 1, 200])], vec![]),
            Code::InvalidArgument,
            "service 10.0.1.200:80/tcp in VNI 100: vip: ",
        ),
        (
            "subnet deleted with its endpoints",
            model_case(
                vec![],
                vec![ObjectKey::Subnet {
                    vni: vni(VNI_A),
                    cidr: "10.0.2.0/24".parse().unwrap(),
                }],
            ),
            Code::FailedPrecondition,
            "subnet 10.0.2.0/24 in VNI 100: cidr: ",
        ),
        (
            "host deleted while in use",
            model_case(vec![], vec![ObjectKey::Host { ip: H3 }]),
            Code::FailedPrecondition,
            "host 198.18.0.13: ip: ",
        ),
    ];
    for (what, txn, code, message) in cases {
        let err = client.apply(txn).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().starts_with(message),
            "{what}: got {:?}, want {message:?}...",
            err.message()
        );
        assert!(!err.message().contains('\n'), "{what}: one line");
        assert_eq!(
            everything(&mut client).await,
            before,
            "{what}: nothing applied, generation unchanged"
        );
    }
    // The good endpoint of every case goes in on its own: the refusals left no trace.
    let reply = client
        .apply(model_case(vec![], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, before.1 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_they_reach_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_message_bytes: 64 << 10,
        ..Limits::default()
    };
    let (_server, path) = start_unix(dir.path(), world_tables(), limits);
    let mut client = connect(&path).await;
    let before = everything(&mut client).await;
    let big = Transaction {
        upserts: (0..2000u32)
            .map(|i| {
                Object::Endpoint(Endpoint {
                    vni: vni(VNI_A),
                    ip: Ipv4Addr::new(10, 0, 2, 0) | Ipv4Addr::from(i % 250 + 2),
                    mac: MacAddr([0x0a, 0x58, 0, 0, (i >> 8) as u8, i as u8]),
                    host: H1,
                })
            })
            .collect(),
        deletes: vec![],
    };
    let err = client
        .apply(pb::Transaction::from(&big))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert_eq!(everything(&mut client).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_read_and_watched() {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = start_unix(dir.path(), world_tables(), Limits::default());
    let mut client = connect(&path).await;
    {
        let mut counters = server.counters().lock().unwrap();
        counters.rx_packets = 1000;
        counters.rx_bytes = 64_000;
        counters.tx_packets = 900;
        counters.tx_bytes = 80_000;
        counters.outcomes.record(Verdict::Forward);
        counters.outcomes.record(Verdict::Reply);
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                counters.outcomes.record(Verdict::Drop(*reason));
            }
        }
        counters.services = vec![service::ServiceCount {
            vni: VNI_A,
            vip: VIP_TCP,
            port: VIP_TCP_PORT,
            protocol: sluice_api::Protocol::Tcp,
            packets: 7,
            backends: vec![
                service::BackendCount {
                    ip: POD_A1,
                    port: 8080,
                    packets: 5,
                },
                service::BackendCount {
                    ip: POD_A2,
                    port: 8080,
                    packets: 2,
                },
            ],
        }];
    }
    let got = client
        .get_counters(pb::GetCountersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.rx_packets, got.rx_bytes, got.tx_packets, got.tx_bytes),
        (1000, 64_000, 900, 80_000)
    );
    assert_eq!((got.forwarded, got.replied), (1, 1));
    assert_eq!(got.drops.len(), DropReason::COUNT);
    for (i, (drop, reason)) in got.drops.iter().zip(DropReason::ALL).enumerate() {
        assert_eq!(drop.reason, reason.label());
        assert_eq!(drop.packets, i as u64 + 1, "{}", drop.reason);
    }
    assert_eq!(got.boot_id, service::boot_id());
    let [svc] = got.services.as_slice() else {
        panic!("one service: {:?}", got.services)
    };
    assert_eq!(
        (
            svc.vni,
            svc.vip.as_str(),
            svc.port,
            svc.protocol,
            svc.packets
        ),
        (VNI_A, "10.96.0.10", 80, pb::Protocol::Tcp as i32, 7)
    );
    let backends: Vec<_> = svc
        .backends
        .iter()
        .map(|b| (b.ip.as_str(), b.port, b.packets))
        .collect();
    assert_eq!(backends, [("10.0.1.10", 8080, 5), ("10.0.2.10", 8080, 2)]);

    let mut watch = client
        .watch_counters(pb::WatchCountersRequest { interval_ms: 1 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("an update");
    assert_eq!(first.rx_packets, 1000);
    server.counters().lock().unwrap().rx_packets = 2000;
    let start = std::time::Instant::now();
    let second = watch.message().await.unwrap().expect("another update");
    assert_eq!(second.rx_packets, 2000);
    // interval_ms 1 is clamped to 100 ms: a watcher cannot make the gateway spin.
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_socket_path_is_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sock");
    let server = GatewayHarness::start(
        Listen::Unix(path.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    // A second server may not steal a live socket.
    let err = GatewayHarness::start(
        Listen::Unix(path.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ServeError::SocketInUse(_)), "{err}");
    server.stop().unwrap();
    assert!(!path.exists(), "socket removed on shutdown");

    // A socket left by a dead server is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = GatewayHarness::start(
        Listen::Unix(path.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    server.stop().unwrap();

    // Anything else is left alone.
    std::fs::write(&path, b"not a socket").unwrap();
    let err = GatewayHarness::start(
        Listen::Unix(path.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ServeError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

/// A CA and, signed by it, certificates for the server (127.0.0.1) and a client.
struct Pki {
    ca_pem: String,
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
        ca_pem: ca.pem(),
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf(
            vec!["sluicectl".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An Apply of one new endpoint that must not get through: the connection or the call
/// fails.
async fn refused(channel: Result<Channel, impl std::fmt::Debug>) -> bool {
    let Ok(channel) = channel else {
        return true;
    };
    client::gateway(channel)
        .apply(model_case(vec![], vec![]))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki();
    let rogue = pki();
    let tls = ServerTls {
        cert_pem: good.server.0.clone().into_bytes(),
        key_pem: good.server.1.clone().into_bytes(),
        client_ca_pem: good.ca_pem.clone().into_bytes(),
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server =
        GatewayHarness::start(Listen::Tcp { addr, tls }, world_tables(), Limits::default())
            .unwrap();
    let port = server.tcp_addr().unwrap().port();
    let target = Target::Https {
        host: "127.0.0.1".into(),
        port,
    };
    let files = |pki: &Pki, prefix: &str| ClientTls {
        // The client always trusts the real CA for the server's certificate.
        ca: write(dir.path(), "ca.pem", &good.ca_pem),
        cert: write(dir.path(), &format!("{prefix}.pem"), &pki.client.0),
        key: write(dir.path(), &format!("{prefix}.key"), &pki.client.1),
    };

    // No certificate at all.
    let url = format!("https://127.0.0.1:{port}");
    let no_cert = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&good.ca_pem))
                .domain_name("127.0.0.1"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(
        refused(no_cert).await,
        "a client without a certificate got in"
    );

    // A certificate from another CA.
    let rogue_channel = client::connect(&target, Some(&files(&rogue, "rogue"))).await;
    assert!(
        refused(rogue_channel).await,
        "a certificate from another CA got in"
    );

    // Plain text on the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    assert!(refused(plain).await, "plain text got in");

    // The real client gets in, and finds the tables untouched by the attempts above.
    let channel = client::connect(&target, Some(&files(&good, "good")))
        .await
        .unwrap();
    let mut client = client::gateway(channel);
    let generation = world_tables().generation();
    let reply = client
        .apply(model_case(vec![], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, generation + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        requests_per_second: 2,
        request_burst: 3,
        ..Limits::default()
    };
    let (_server, path) = start_unix(dir.path(), world_tables(), limits);
    let mut client = connect(&path).await;
    let mut refused = 0;
    let mut served = 0;
    for _ in 0..10 {
        match client.get_counters(pb::GetCountersRequest::default()).await {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("rate limit"), "{status:?}");
                refused += 1;
            }
        }
    }
    // The burst, plus at most one token refilled while the ten calls ran.
    assert!((3..=4).contains(&served), "served {served}");
    assert_eq!(served + refused, 10);
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .get_counters(pb::GetCountersRequest::default())
        .await
        .expect("a token came back after half a second");
}
