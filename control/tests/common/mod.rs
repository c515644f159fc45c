//! What the Kubernetes-mode tests run against: real `sluice-gateway` processes, each in
//! its own network namespace, and a scripted Kubernetes API server (kube's client over
//! `tower_test::mock`).
//!
//! * [`RealGateway`]: the real binary (found next to the test executable, in
//!   `target/<profile>/`, as cni-shim's tests find it), in a namespace named
//!   `sl-k8s-<pid>-<n>` with a veth pair (one queue each, so its XDP program attaches
//!   and its one AF_XDP socket binds), its config and gRPC socket in a temporary
//!   directory. What it holds is read back over `Gateway.List`. Dropping it kills the
//!   process (by its PID, which is the gateway's: nsenter execs it) and deletes the
//!   namespace, also when a test fails. Needs root (tests assert it; `scripts/test.sh`
//!   runs as root). Underlay addresses are in 198.18.0.0/15.
//! * [`FakeApi`]: answers list requests from configured lists, holds watch requests
//!   open and answers them with the events a test pushes, and hands every other
//!   request (patches, gets of one object, lease calls) to the test to check and answer.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use sluice_api::client::Target;
use sluice_api::proto::v1 as pb;
use sluice_api::{MacAddr, Object};
use sluice_control::controller::desired::GatewayTables;
use sluice_control::controller::objects::{ClusterObject, GatewaySpec, Metadata, Resource};
use tokio::sync::mpsc;
use tower_test::mock::{self, Handle, SendResponse};

pub fn assert_root(what: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(
        euid, "0",
        "the {what} tests need root (network namespaces, XDP): run them as root"
    );
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sl-k8s-<pid>-<n>`: unique per process and call.
pub fn unique() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "sl-k8s-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("sluice-gateway");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice-dataplane --bin sluice-gateway` \
         (same profile) first, or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The control core (first online) and the worker core (last online).
fn cores() -> (u32, u32) {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("cpus");
    let cores = sluice_dataplane::config::cpulist::parse(&online).expect("cpulist");
    let (control, worker) = (*cores.first().unwrap(), *cores.last().unwrap());
    assert_ne!(control, worker, "a gateway needs two cores");
    (control, worker)
}

/// The real `sluice-gateway`, with empty tables, in its own namespace.
pub struct RealGateway {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: MacAddr,
    child: Option<Child>,
    socket: PathBuf,
    stderr: PathBuf,
    // Dropped after the process is killed (fields drop in order, after `drop`).
    _ns: Netns,
    _dir: tempfile::TempDir,
}

impl RealGateway {
    /// Starts gateway `name` at underlay address 198.18.0.`last` and waits for its
    /// control socket.
    pub fn start(name: &str, last: u8) -> Self {
        let ns = Netns::new(unique());
        let dir = tempfile::tempdir().expect("temp dir");
        let ip = std::net::Ipv4Addr::new(198, 18, 0, last);
        let mac = MacAddr([2, 0, 0, 0, 0, last]);
        // eth0 and its peer both live in the namespace; one queue each, so the
        // gateway's one socket covers every RX queue (PLATFORM.md pitfall 4).
        ip_n(
            &ns,
            &[
                "link",
                "add",
                "eth0",
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
                "numtxqueues",
                "1",
                "numrxqueues",
                "1",
            ],
        );
        ip_n(&ns, &["link", "set", "eth0", "address", &mac.to_string()]);
        ip_n(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ip_n(&ns, &["link", "set", "peer0", "up"]);
        ip_n(&ns, &["link", "set", "eth0", "up"]);
        let (control, worker) = cores();
        let socket = dir.path().join("gateway.sock");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[cores]\ncontrol = \"{control}\"\nworkers = \"{worker}\"\n\n\
                 [[interfaces]]\nname = \"eth0\"\nip = \"{ip}\"\nmac = \"{mac}\"\nqueues = \"0\"\n\n\
                 [umem]\nframe_size = 4096\nframe_count = 4096\n\n\
                 [rings]\nrx = 1024\ntx = 1024\nfill = 2048\ncompletion = 2048\n\n\
                 [control]\ngrpc = \"unix://{}\"\nmetrics = \"127.0.0.1:9471\"\n",
                socket.display()
            ),
        )
        .expect("gateway.toml");
        let stderr = dir.path().join("gateway.stderr");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(gateway_bin())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("starting sluice-gateway");
        let mut gw = RealGateway {
            name: name.to_owned(),
            ip,
            mac,
            child: Some(child),
            socket,
            stderr,
            _ns: ns,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gw.socket.exists() {
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().expect("try_wait") {
                gw.child = None;
                panic!("gateway {name} exited ({status}): {}", gw.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "gateway {name} not up: {}",
                gw.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn control(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The registration the gateway's sidecar would make.
    pub fn registration(&self) -> ClusterObject {
        ClusterObject::Gateway(Resource::new(
            Metadata::named(&self.name),
            GatewaySpec {
                ip: self.ip,
                mac: self.mac,
                control: self.control(),
            },
        ))
    }

    async fn client(&self) -> pb::gateway_client::GatewayClient<tonic::transport::Channel> {
        let target: Target = self.control().parse().expect("target");
        let channel = sluice_api::client::connect(&target, None)
            .await
            .unwrap_or_else(|e| panic!("gateway {}: {e}: {}", self.name, self.stderr()));
        sluice_api::client::gateway(channel)
    }

    /// Everything the gateway holds, read with `Gateway.List`.
    pub async fn list(&self) -> GatewayTables {
        let mut client = self.client().await;
        let mut held = GatewayTables::new();
        for kind in [
            pb::Kind::Host,
            pb::Kind::Vpc,
            pb::Kind::Subnet,
            pb::Kind::Endpoint,
            pb::Kind::Service,
        ] {
            let mut stream = client
                .list(pb::ListRequest { kind: kind.into() })
                .await
                .expect("Gateway.List")
                .into_inner();
            while let Some(chunk) = stream.message().await.expect("Gateway.List chunk") {
                for object in &chunk.objects {
                    let object = Object::try_from(object).expect("a valid object");
                    held.insert(object.key(), object);
                }
            }
        }
        held
    }

    /// The generation of the gateway's tables: one more per `Apply` that changed them.
    pub async fn generation(&self) -> u64 {
        let mut client = self.client().await;
        client
            .get_counters(pb::GetCountersRequest {})
            .await
            .expect("Gateway.GetCounters")
            .into_inner()
            .generation
    }
}

fn ip_n(ns: &Netns, args: &[&str]) {
    let mut all = vec!["-n", ns.name.as_str()];
    all.extend_from_slice(args);
    ip(&all);
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The PID this test started (nsenter exec'd the gateway in place).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The services a gateway holds: (VIP, port) -> backends as (address, port), sorted.
pub fn services(held: &GatewayTables) -> BTreeMap<(String, u16), Vec<(String, u16)>> {
    held.values()
        .filter_map(|o| match o {
            Object::Service(s) => {
                let mut backends: Vec<(String, u16)> = s
                    .backends
                    .iter()
                    .map(|b| (b.ip.to_string(), b.port))
                    .collect();
                backends.sort();
                Some(((s.vip.to_string(), s.port), backends))
            }
            _ => None,
        })
        .collect()
}

/// The endpoint addresses a gateway holds, sorted.
pub fn endpoints(held: &GatewayTables) -> Vec<String> {
    let mut ips: Vec<String> = held
        .values()
        .filter_map(|o| match o {
            Object::Endpoint(e) => Some(e.ip.to_string()),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

/// The subnets a gateway holds, as CIDRs, sorted.
pub fn subnets(held: &GatewayTables) -> Vec<String> {
    let mut cidrs: Vec<String> = held
        .values()
        .filter_map(|o| match o {
            Object::Subnet(s) => Some(s.cidr.to_string()),
            _ => None,
        })
        .collect();
    cidrs.sort();
    cidrs
}

/// Polls `check` on what `gateway` holds until it passes or `timeout` ends; returns
/// the last tables read.
pub async fn eventually(
    gateway: &RealGateway,
    timeout: Duration,
    check: impl Fn(&GatewayTables) -> bool,
) -> GatewayTables {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let held = gateway.list().await;
        if check(&held) || tokio::time::Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// The Kubernetes side.

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A JSON response.
pub fn json(status: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A `Status` failure with `code`.
pub fn failure(code: u16, reason: &str) -> Response<Body> {
    json(
        code,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code
        }),
    )
}

/// A request the [`FakeApi`] handed to the test.
pub struct Forwarded {
    pub method: String,
    pub uri: String,
    pub content_type: String,
    pub body: String,
    pub at: tokio::time::Instant,
    respond: SendResponse<Response<Body>>,
}

impl Forwarded {
    pub fn respond(self, response: Response<Body>) {
        self.respond.send_response(response);
    }

    /// Answers with `object` as JSON, status 200.
    pub fn ok(self, object: &serde_json::Value) {
        self.respond(json(200, object));
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.method, self.uri, self.body)
    }
}

/// One collection (a list path) of the fake API server.
#[derive(Default)]
struct Collection {
    /// name (`namespace/name` for namespaced kinds) -> the object now.
    items: BTreeMap<String, serde_json::Value>,
    /// Every event pushed, with its resourceVersion.
    log: Vec<(u64, serde_json::Value)>,
    /// Watch requests held open, with the resourceVersion they watch from.
    watching: Vec<(u64, SendResponse<Response<Body>>)>,
}

#[derive(Default)]
struct Collections {
    paths: HashMap<String, Collection>,
    version: u64,
    /// Status patches answered by the fake: (collection path, name, status).
    statuses: Vec<(String, String, serde_json::Value)>,
    answer_status: bool,
}

fn key_of(object: &serde_json::Value) -> String {
    let meta = &object["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap_or_default()),
        None => meta["name"].as_str().unwrap_or_default().to_owned(),
    }
}

/// A scripted API server: see the module doc.
pub struct FakeApi {
    collections: Arc<Mutex<Collections>>,
    forwarded: mpsc::UnboundedReceiver<Forwarded>,
    unclaimed: Vec<Forwarded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn split(uri: &str) -> (&str, &str) {
    uri.split_once('?').unwrap_or((uri, ""))
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn watch_response(events: &[serde_json::Value]) -> Response<Body> {
    let mut body = Vec::new();
    for e in events {
        body.extend(serde_json::to_vec(e).unwrap());
        body.push(b'\n');
    }
    Response::builder().body(Body::from(body)).unwrap()
}

impl Collection {
    fn events_after(&self, since: u64) -> Vec<serde_json::Value> {
        self.log
            .iter()
            .filter(|(v, _)| *v > since)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Answers every held watch that has events to see.
    fn wake(&mut self) {
        let held = std::mem::take(&mut self.watching);
        for (since, respond) in held {
            let events = self.events_after(since);
            if events.is_empty() {
                self.watching.push((since, respond));
            } else {
                respond.send_response(watch_response(&events));
            }
        }
    }
}

impl FakeApi {
    /// A client talking to a new fake API server with empty collections at `paths`.
    pub fn start(paths: &[&str]) -> (kube::Client, FakeApi) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let collections = Arc::new(Mutex::new(Collections {
            version: 100,
            ..Collections::default()
        }));
        for path in paths {
            collections
                .lock()
                .unwrap()
                .paths
                .insert(path.to_string(), Collection::default());
        }
        let (tx, forwarded) = mpsc::unbounded_channel();
        let task = tokio::spawn(Self::serve(handle, collections.clone(), tx));
        let api = FakeApi {
            collections,
            forwarded,
            unclaimed: Vec::new(),
            task,
        };
        (kube::Client::new(service, "default"), api)
    }

    /// The collections the operator watches (with gateway pods in `sluice-system`).
    pub const OPERATOR: &'static [&'static str] = &[
        "/apis/sluice.dev/v1alpha1/vpcs",
        "/apis/sluice.dev/v1alpha1/subnets",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/namespaces/sluice-system/pods",
        "/api/v1/pods",
        "/api/v1/namespaces",
    ];

    /// Answers status patches itself from now on (the object as last listed or
    /// pushed, with the patch's status), recording them for [`statuses`](Self::statuses).
    pub fn answer_status(&self) {
        self.collections.lock().unwrap().answer_status = true;
    }

    /// The status patches answered so far for `name` in collection `path`.
    pub fn statuses(&self, path: &str, name: &str) -> Vec<serde_json::Value> {
        self.collections
            .lock()
            .unwrap()
            .statuses
            .iter()
            .filter(|(p, n, _)| p == path && n == name)
            .map(|(_, _, s)| s.clone())
            .collect()
    }

    async fn serve(
        mut handle: ApiHandle,
        collections: Arc<Mutex<Collections>>,
        forward: mpsc::UnboundedSender<Forwarded>,
    ) {
        while let Some((request, respond)) = handle.next_request().await {
            let uri = request.uri().to_string();
            let (path, query) = split(&uri);
            let (path, query) = (path.to_owned(), query.to_owned());
            let method = request.method().as_str().to_owned();
            if method == "GET" {
                let mut c = collections.lock().unwrap();
                let version = c.version;
                if let Some(collection) = c.paths.get_mut(&path) {
                    if param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
                        let since = param(&query, "resourceVersion")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        collection.watching.push((since, respond));
                        collection.wake();
                    } else {
                        let items: Vec<_> = collection.items.values().cloned().collect();
                        respond.send_response(json(
                            200,
                            &serde_json::json!({
                                "apiVersion": "v1", "kind": "List",
                                "metadata": {"resourceVersion": version.to_string()},
                                "items": items,
                            }),
                        ));
                    }
                    continue;
                }
            }
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            if method == "PATCH" && path.ends_with("/status") {
                let mut c = collections.lock().unwrap();
                if c.answer_status {
                    let object_path = path.trim_end_matches("/status");
                    let (collection, name) = object_path.rsplit_once('/').unwrap();
                    let patch: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let found = c
                        .paths
                        .get(collection)
                        .and_then(|col| col.items.get(name))
                        .cloned();
                    if let Some(mut object) = found {
                        let changed = object["status"] != patch["status"];
                        object["status"] = patch["status"].clone();
                        c.statuses.push((
                            collection.to_owned(),
                            name.to_owned(),
                            patch["status"].clone(),
                        ));
                        if changed {
                            // As the API server does: a new resourceVersion and a
                            // MODIFIED event, only when something changed.
                            c.version += 1;
                            let version = c.version;
                            object["metadata"]["resourceVersion"] = version.to_string().into();
                            let col = c.paths.get_mut(collection).expect("found above");
                            col.items.insert(name.to_owned(), object.clone());
                            col.log.push((
                                version,
                                serde_json::json!({"type": "MODIFIED", "object": object}),
                            ));
                            col.wake();
                        }
                        respond.send_response(json(200, &object));
                        continue;
                    }
                }
            }
            let _ = forward.send(Forwarded {
                method,
                uri,
                content_type,
                body,
                at: tokio::time::Instant::now(),
                respond,
            });
        }
    }

    /// Puts `objects` in collection `path` (what lists return) without an event, as
    /// if they were there before anybody watched.
    pub fn set_list(&self, path: &str, objects: Vec<serde_json::Value>) {
        let mut c = self.collections.lock().unwrap();
        c.version += 1;
        let version = c.version.to_string();
        let collection = c.paths.get_mut(path).expect("a known collection");
        collection.items.clear();
        for mut object in objects {
            object["metadata"]["resourceVersion"] = version.clone().into();
            collection.items.insert(key_of(&object), object);
        }
    }

    /// Applies watch events (`ADDED`, `MODIFIED`, `DELETED` with their objects) to
    /// collection `path`: lists change, and every watch sees them.
    pub fn push(&self, path: &str, events: Vec<(&str, serde_json::Value)>) {
        let mut c = self.collections.lock().unwrap();
        for (kind, mut object) in events {
            c.version += 1;
            let version = c.version;
            object["metadata"]["resourceVersion"] = version.to_string().into();
            let collection = c.paths.get_mut(path).expect("a known collection");
            if kind == "DELETED" {
                collection.items.remove(&key_of(&object));
            } else {
                collection.items.insert(key_of(&object), object.clone());
            }
            collection
                .log
                .push((version, serde_json::json!({"type": kind, "object": object})));
        }
        c.paths.get_mut(path).expect("a known collection").wake();
    }

    /// Removes `name` from collection `path` without an event (deleted while nobody
    /// watched).
    pub fn remove_silently(&self, path: &str, name: &str) {
        let mut c = self.collections.lock().unwrap();
        c.paths
            .get_mut(path)
            .expect("a known collection")
            .items
            .remove(name);
    }

    /// Fails every watch open on `path` with 410 Gone (and every later one resuming
    /// from before now), so its watchers list again.
    pub fn expire(&self, path: &str) {
        let mut c = self.collections.lock().unwrap();
        c.version += 1;
        let version = c.version;
        let collection = c.paths.get_mut(path).expect("a known collection");
        collection.log.push((
            version,
            serde_json::json!({
                "type": "ERROR",
                "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410}
            }),
        ));
        collection.wake();
    }

    /// How many watches are open on `path`.
    pub fn watching(&self, path: &str) -> usize {
        self.collections
            .lock()
            .unwrap()
            .paths
            .get(path)
            .map_or(0, |c| c.watching.len())
    }

    /// The next forwarded request with `method` whose URI starts with `prefix`, waiting
    /// up to `timeout`; others are kept for later calls.
    pub async fn take(&mut self, method: &str, prefix: &str, timeout: Duration) -> Forwarded {
        if let Some(i) = self
            .unclaimed
            .iter()
            .position(|f| f.method == method && f.uri.starts_with(prefix))
        {
            return self.unclaimed.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.forwarded.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {method} {prefix}* request within {timeout:?}; unclaimed: {:?}",
                        self.unclaimed
                    )
                })
                .expect("the fake API server runs");
            if next.method == method && next.uri.starts_with(prefix) {
                return next;
            }
            self.unclaimed.push(next);
        }
    }

    /// Forwarded requests no test has taken (waiting up to `wait` for more).
    pub async fn unclaimed(&mut self, wait: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, self.forwarded.recv()).await {
            self.unclaimed.push(next);
        }
        self.unclaimed.iter().map(|f| format!("{f:?}")).collect()
    }
}
