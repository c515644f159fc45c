//! The node agent's controller client (`ControllerAllocator`) against the real
//! `sluice-controller` binary: registering nodes (gateways and the other workers come
//! back as underlay neighbours), attaching pods (address, router, bouncers, MTU; idempotent;
//! a worker that joined later comes back once), errors in the allocator's terms, detach,
//! and a controller restart that keeps every allocation and reconnects the client.
//!
//! The gateway object points at a socket nobody serves: the controller tolerates an
//! unreachable gateway (it re-syncs it later), and what is under test here is the
//! allocation, not the forwarding (scripts/demo.sh runs the whole path). No root needed.
//! Needs the `sluice-controller` binary of the same profile (built by `cargo test
//! --workspace`; otherwise `cargo build -p sluice-control --bin sluice-controller`).

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::controller::{apply, apply_with, Controller, OBJECTS};
use serde::Deserialize;
use sluice_cni::agent::allocator::{
    AllocError, Allocator, AttachRequest, ControllerAllocator, PEER_REFRESH,
};
use sluice_cni::api::client::ClientTls;

const GW: (Ipv4Addr, [u8; 6]) = (Ipv4Addr::new(198, 18, 0, 1), [2, 0, 0, 0, 0, 1]);
const N1: (Ipv4Addr, [u8; 6]) = (Ipv4Addr::new(198, 18, 0, 11), [2, 0, 0, 0, 0, 0x11]);
const N2: (Ipv4Addr, [u8; 6]) = (Ipv4Addr::new(198, 18, 0, 12), [2, 0, 0, 0, 0, 0x12]);

fn pod(node: &str, cid: &str, network: &str) -> AttachRequest {
    AttachRequest {
        node: node.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: cid.into(),
        network: network.into(),
    }
}

/// Retries `f` while the controller is unreachable (it is restarting).
async fn patiently<T>(mut f: impl AsyncFnMut() -> Result<T, AllocError>) -> Result<T, AllocError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Err(AllocError::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn the_node_agents_client_allocates_from_the_real_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut controller = Controller::start(dir.path());
    apply(&controller, &OBJECTS).await;

    // Registering: the gateway comes back; the second node also learns the first.
    let n1 = ControllerAllocator::new(&controller.url(), None).expect("target");
    let n2 = ControllerAllocator::new(&controller.url(), None).expect("target");
    let hosts = n1.register("n1", N1.0, N1.1).await.expect("register n1");
    assert_eq!(hosts, vec![GW], "n1 is alone with the gateway");
    let hosts = n2.register("n2", N2.0, N2.1).await.expect("register n2");
    assert_eq!(hosts, vec![GW, N1], "n2 learns the gateway and n1");

    // Attaching: the controller's allocation, in the agent's terms.
    tokio::time::sleep(PEER_REFRESH + Duration::from_millis(100)).await;
    let a = n1.attach(&pod("n1", "pod-a", "blue/blue-a")).await;
    let a = a.unwrap_or_else(|e| panic!("attach: {e}: {}", controller.stderr()));
    assert_eq!(a.ip, Ipv4Addr::new(10, 0, 1, 2));
    assert_eq!(
        (a.prefix_len, a.router_ip),
        (29, Ipv4Addr::new(10, 0, 1, 1))
    );
    assert_eq!(a.mac, [0x0a, 0x58, 10, 0, 1, 2]);
    assert_eq!(a.bouncers, vec![GW]);
    assert_eq!(a.mtu, Some(1400), "the default underlay MTU minus 100");
    assert_eq!((a.vpc.as_str(), a.subnet.as_str()), ("blue", "blue-a"));
    assert_ne!(a.vni, 0);
    assert_eq!(
        a.new_neighbors,
        vec![N2],
        "n1 learns n2, which registered after it, on its next attach"
    );
    let again = n1.attach(&pod("n1", "pod-a", "blue/blue-a")).await;
    let again = again.expect("attach again");
    assert_eq!(again.ip, a.ip, "attach is idempotent");
    assert!(again.new_neighbors.is_empty(), "n2 is not announced twice");

    // Refusals keep their meaning.
    let e = n1
        .attach(&pod("n1", "pod-x", "blue/nope"))
        .await
        .unwrap_err();
    assert!(matches!(e, AllocError::UnknownNetwork(_)), "{e}");
    let b = n2.attach(&pod("n2", "pod-b", "blue/blue-a")).await;
    let b = b.expect("attach pod-b");
    assert_eq!(b.ip, Ipv4Addr::new(10, 0, 1, 3));
    for i in 0..3 {
        n2.attach(&pod("n2", &format!("fill-{i}"), "blue/blue-a"))
            .await
            .expect("room for .4 to .6");
    }
    let e = n2.attach(&pod("n2", "one-too-many", "")).await.unwrap_err();
    assert!(matches!(e, AllocError::Exhausted(_)), "{e}");
    assert!(n2.detach("n2", "fill-2", "eth0").await.expect("detach"));
    assert!(!n2.detach("n2", "fill-2", "eth0").await.expect("idempotent"));
    n1.reachable().await.expect("reachable");

    // A controller restart on the same store: nothing lost, nothing handed out twice,
    // and the clients' cached channels find the new process.
    controller.kill();
    let e = n1.reachable().await.unwrap_err();
    assert!(matches!(e, AllocError::Unreachable { .. }), "{e}");
    controller.spawn();
    let kept = patiently(async || n1.attach(&pod("n1", "pod-a", "blue/blue-a")).await).await;
    assert_eq!(kept.expect("pod-a after the restart").ip, a.ip);
    let kept = patiently(async || n2.attach(&pod("n2", "pod-b", "blue/blue-a")).await).await;
    assert_eq!(kept.expect("pod-b after the restart").ip, b.ip);
    let c = n2.attach(&pod("n2", "pod-c", "blue/blue-a")).await;
    assert_eq!(
        c.expect("pod-c").ip,
        Ipv4Addr::new(10, 0, 1, 6),
        "the one address released before the restart, no other"
    );
    let hosts = patiently(async || n1.register("n1", N1.0, N1.1).await).await;
    assert_eq!(hosts.expect("register again"), vec![GW, N2]);

    // A controller that has forgotten the node (a new leader in Kubernetes mode starts
    // without registrations): the client registers again and the attach goes through.
    controller.kill();
    std::fs::remove_file(&controller.store).expect("removing the store");
    controller.spawn();
    apply(&controller, &OBJECTS).await;
    let d = patiently(async || n1.attach(&pod("n1", "pod-d", "blue/blue-a")).await).await;
    let d =
        d.unwrap_or_else(|e| panic!("attach after re-registering: {e}: {}", controller.stderr()));
    assert_eq!(d.ip, Ipv4Addr::new(10, 0, 1, 2));
}

/// A CA and, signed by it, a server certificate for 127.0.0.1 and a client certificate,
/// written as PEM files under `dir` with `prefix`: (ca, server cert, server key, client
/// cert, client key).
fn pki(dir: &Path, prefix: &str) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("sluice test CA {prefix}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(vec!["node-1".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.crt", ca.pem()),
        ("server.crt", server.0),
        ("server.key", server.1),
        ("client.crt", client.0),
        ("client.key", client.1),
    ];
    files.map(|(name, text)| {
        let path = dir.join(format!("{prefix}-{name}"));
        std::fs::write(&path, text).unwrap();
        path
    })
}

#[tokio::test]
async fn the_node_agents_client_reaches_the_controller_over_tcp_with_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, server_cert, server_key, client_cert, client_key] = pki(dir.path(), "good");
    let controller = Controller::start_tls(dir.path(), [server_cert, server_key, ca.clone()]);
    let tls = ClientTls {
        ca: ca.clone(),
        cert: client_cert.clone(),
        key: client_key.clone(),
    };
    apply_with(&controller, Some(&tls), &OBJECTS).await;

    // The node agent's client over https:// with its certificate: the same allocation
    // as over the Unix socket.
    let n1 = ControllerAllocator::new(&controller.url(), Some(tls)).expect("target");
    let hosts = n1.register("n1", N1.0, N1.1).await;
    let hosts = hosts.unwrap_or_else(|e| panic!("register: {e}: {}", controller.stderr()));
    assert_eq!(hosts, vec![GW]);
    let a = n1.attach(&pod("n1", "pod-a", "blue/blue-a")).await;
    let a = a.unwrap_or_else(|e| panic!("attach: {e}: {}", controller.stderr()));
    assert_eq!(a.ip, Ipv4Addr::new(10, 0, 1, 2));
    assert!(n1.detach("n1", "pod-a", "eth0").await.expect("detach"));

    // Without TLS settings an https:// controller is refused before any connection.
    let e = ControllerAllocator::new(&controller.url(), None).unwrap_err();
    assert!(e.to_string().contains("needs [controller_tls]"), "{e}");

    // A CA that did not sign the controller's certificate: refused, saying why.
    let [other_ca, ..] = pki(dir.path(), "other");
    let wrong = ControllerAllocator::new(
        &controller.url(),
        Some(ClientTls {
            ca: other_ca,
            cert: client_cert.clone(),
            key: client_key.clone(),
        }),
    )
    .expect("target");
    let e = wrong.reachable().await.unwrap_err();
    assert!(matches!(e, AllocError::Unreachable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&controller.url()) && text.contains("UnknownIssuer"),
        "the error names the controller and the certificate problem: {text}"
    );

    // A client certificate the controller's CA did not sign: the controller refuses it.
    let [_, _, _, stranger_cert, stranger_key] = pki(dir.path(), "stranger");
    let stranger = ControllerAllocator::new(
        &controller.url(),
        Some(ClientTls {
            ca,
            cert: stranger_cert,
            key: stranger_key,
        }),
    )
    .expect("target");
    let e = stranger.reachable().await.unwrap_err();
    assert!(matches!(e, AllocError::Unreachable { .. }), "{e}");
}

/// The node agent's configuration in the DaemonSet's ConfigMap is one `sluice-node`
/// accepts, and it reaches the controller over mutual TLS with the mounted Secret.
#[test]
fn the_daemonsets_node_toml_names_the_controller_with_tls() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/kubernetes/30-node-agent.yaml");
    let text = std::fs::read_to_string(&path).expect("30-node-agent.yaml");
    let config_map = serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_norway::Value::deserialize(doc).expect("YAML"))
        .find(|doc| doc["kind"] == "ConfigMap")
        .expect("the ConfigMap");
    let node_toml = config_map["data"]["node.toml"].as_str().expect("node.toml");
    let config = sluice_cni::agent::config::NodeConfig::parse(node_toml)
        .unwrap_or_else(|e| panic!("node.toml in {}: {e}", path.display()));
    assert!(config.controller.unwrap().starts_with("https://"));
    let tls = config.controller_tls.expect("[controller_tls]");
    for file in [tls.ca, tls.cert, tls.key] {
        assert!(file.starts_with("/etc/sluice/tls/"), "{}", file.display());
    }
    assert!(
        text.contains("mountPath: /etc/sluice/tls") && text.contains("secretName: sluice-tls"),
        "the DaemonSet mounts Secret sluice-tls at /etc/sluice/tls"
    );
}
