//! The watchers and reconcilers of Kubernetes mode. They translate Kubernetes objects
//! into the object model, hand them to the same [`Store`] (allocations) and
//! [`Controller`] (placement, desired tables, gateway programming) standalone mode
//! uses, and report back:
//!
//! * `Vpc` and `Subnet`: a finalizer (`sluice.dev/cleanup`) is added first, so a delete
//!   waits until the object is gone from the store and from every gateway; status
//!   (`Ready`, `observedGeneration`, VNI, placed gateways) is written by server-side
//!   apply; errors requeue with exponential backoff (1 s doubling to 5 min).
//! * `Service` (ClusterIP) and its `EndpointSlice`s: a backend-only change takes the
//!   controller's incremental path (one `Apply` per gateway holding the VPC).
//! * Gateway pods (label `app.kubernetes.io/component=sluice-gateway`): a deleted one
//!   is unregistered. Gateways register themselves over gRPC, as standalone.
//! * Pods and Namespaces are cached so `AttachEndpoint` finds a pod's network in its
//!   annotations ([`KubeSource`]), which also records each allocation on its pod
//!   ([`allocations`]) so a new leader keeps it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef as KubeRef, Store as Cache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

use super::allocations;
use super::crd::{self, Subnet, SubnetStatus, Vpc, VpcStatus};
use super::model;
use crate::controller::objects::{
    ClusterObject, EndpointAlloc, Kind, Node, NodeSpec, ObjectError, ObjectRef,
};
use crate::controller::source::{
    AttachRequest, Code, ObjectSource, Recording, Snapshot, SourceError,
};
use crate::controller::{Controller, Store};

/// The finalizer on every Vpc and Subnet.
pub const FINALIZER: &str = "sluice.dev/cleanup";
/// The field manager of status writes.
pub const MANAGER: &str = "sluice-controller";
/// The label gateway pods carry.
pub const GATEWAY_SELECTOR: &str = "app.kubernetes.io/component=sluice-gateway";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// The object source of Kubernetes mode: the redb [`Store`] for allocations, with
/// networks of attaching pods read from their (or their namespace's) annotations.
/// VPCs, subnets and services come from the Kubernetes API: applying or deleting them
/// over gRPC is refused; gateways still register over gRPC.
#[derive(Clone)]
pub struct KubeSource {
    store: Arc<Store>,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
    /// Where allocations are recorded on their pods ([`allocations`]); none: not
    /// recorded (a single replica that never changes leader).
    client: Option<Client>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("store", &self.store)
            .finish()
    }
}

impl KubeSource {
    pub fn new(store: Arc<Store>, pods: Cache<Pod>, namespaces: Cache<Namespace>) -> Self {
        Self {
            store,
            pods,
            namespaces,
            client: None,
        }
    }

    /// Records every allocation on its pod through `client`, so a new leader keeps it
    /// ([`allocations::rebuild`]).
    pub fn recording(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }
}

fn from_kubernetes(kind: Kind) -> bool {
    matches!(kind, Kind::Vpc | Kind::Subnet | Kind::Service)
}

fn refused(what: String) -> SourceError {
    SourceError::Rejected {
        code: Code::FailedPrecondition,
        object: what,
        field: "kind".into(),
        reason: "in Kubernetes mode VPCs, subnets and services come from the Kubernetes API; use kubectl".into(),
    }
}

impl ObjectSource for KubeSource {
    fn snapshot(&self) -> Result<Snapshot, SourceError> {
        self.store.snapshot()
    }
    fn apply(&self, objects: Vec<ClusterObject>) -> Result<Vec<ClusterObject>, SourceError> {
        if let Some(o) = objects.iter().find(|o| from_kubernetes(o.kind())) {
            return Err(refused(o.reference().to_string()));
        }
        self.store.apply(objects)
    }
    fn delete(&self, refs: &[ObjectRef]) -> Result<usize, SourceError> {
        if let Some(r) = refs.iter().find(|r| from_kubernetes(r.kind)) {
            return Err(refused(r.to_string()));
        }
        self.store.delete(refs)
    }
    fn register_node(&self, name: &str, spec: NodeSpec) -> Result<Node, SourceError> {
        self.store.register_node(name, spec)
    }
    fn attach(&self, request: &AttachRequest) -> Result<EndpointAlloc, SourceError> {
        let mut request = request.clone();
        if request.network.is_empty() {
            let pod = self
                .pods
                .get(&KubeRef::new(&request.pod_name).within(&request.pod_namespace));
            let ns = self.namespaces.get(&KubeRef::new(&request.pod_namespace));
            request.network = model::pod_network(pod.as_deref(), ns.as_deref());
        }
        self.store.attach(&request)
    }
    fn detach(
        &self,
        node: &str,
        container_id: &str,
        interface: &str,
    ) -> Result<Option<EndpointAlloc>, SourceError> {
        self.store.detach(node, container_id, interface)
    }
    fn record_attach<'a>(&'a self, alloc: &'a EndpointAlloc) -> Recording<'a> {
        Box::pin(async move {
            match &self.client {
                Some(client) => allocations::record(client, &self.store, alloc).await,
                None => Ok(()),
            }
        })
    }
    fn record_detach<'a>(&'a self, alloc: &'a EndpointAlloc) -> Recording<'a> {
        Box::pin(async move {
            match &self.client {
                Some(client) => allocations::unrecord(client, alloc).await,
                None => Ok(()),
            }
        })
    }
}

/// What the reconcilers share.
pub struct Context {
    pub client: Client,
    pub controller: Arc<Controller>,
    /// The allocations; the operator writes VPCs, subnets and services here directly.
    pub store: Arc<Store>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, controller: Arc<Controller>, store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            client,
            controller,
            store,
            failures: Mutex::default(),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next retry delay of `key`: 1 s, doubling per failure, at most 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }
}

fn ready(ok: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", crd::GROUP),
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// Adds the object to the store, or reports why it cannot be (a refusal is the
/// user's to fix: `Ready=False`, no retry until the object changes).
async fn upsert(
    ctx: &Context,
    object: Result<ClusterObject, ObjectError>,
    name: &str,
) -> Result<Result<(), String>, OperatorError> {
    let object = match object {
        Ok(o) => o,
        Err(e) => return Ok(Err(e.to_string())),
    };
    match ctx.store.apply(vec![object]) {
        Ok(_) => {}
        Err(e @ SourceError::Rejected { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.into()),
    }
    ctx.controller.reconcile().await?;
    tracing::debug!(%name, "applied");
    Ok(Ok(()))
}

/// Removes the object from the store and every gateway; a refusal (a VPC with
/// subnets, a subnet with pods) is retried with backoff until its dependents are gone.
async fn remove(ctx: &Context, kind: Kind, name: &str) -> Result<Action, OperatorError> {
    ctx.store.delete(&[ObjectRef {
        kind,
        name: name.to_owned(),
    }])?;
    ctx.controller.reconcile().await?;
    tracing::info!(%kind, %name, "removed from every gateway");
    Ok(Action::await_change())
}

/// Reconciles one Vpc.
pub async fn reconcile_vpc(vpc: Arc<Vpc>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let api: Api<Vpc> = Api::all(ctx.client.clone());
    let name = vpc.name_any();
    let result = finalizer(&api, FINALIZER, vpc, |event| async {
        match event {
            Finalizer::Apply(vpc) => {
                let generation = vpc.metadata.generation;
                let outcome =
                    upsert(&ctx, crd::vpc_object(&vpc).map(ClusterObject::Vpc), &name).await?;
                let listed = ctx.controller.list(Kind::Vpc).await?;
                let stored = listed.iter().find_map(|o| match o {
                    ClusterObject::Vpc(v) if v.name() == name => v.status.clone(),
                    _ => None,
                });
                let status = match (&outcome, stored) {
                    (Ok(()), Some(s)) => VpcStatus {
                        conditions: vec![ready(
                            !s.divider_gateways.is_empty(),
                            if s.divider_gateways.is_empty() {
                                "NoGateways"
                            } else {
                                "Programmed"
                            },
                            format!(
                                "VNI {:?}, dividers {:?}",
                                s.vni.map(|v| v.get()),
                                s.divider_gateways
                            ),
                            generation,
                        )],
                        observed_generation: generation,
                        vni: s.vni.map(|v| v.get()),
                        divider_gateways: s.divider_gateways,
                    },
                    (Err(why), _) => VpcStatus {
                        conditions: vec![ready(false, "Invalid", why.clone(), generation)],
                        observed_generation: generation,
                        ..VpcStatus::default()
                    },
                    (Ok(()), None) => VpcStatus::default(),
                };
                patch_status(
                    &api,
                    &name,
                    "Vpc",
                    serde_json::to_value(status).expect("status serializes"),
                )
                .await?;
                Ok(Action::requeue(Duration::from_secs(300)))
            }
            Finalizer::Cleanup(_) => remove(&ctx, Kind::Vpc, &name).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(e.to_string()));
    if result.is_ok() {
        ctx.succeeded(&format!("vpc/{name}"));
    }
    result
}

/// Reconciles one Subnet.
pub async fn reconcile_subnet(
    subnet: Arc<Subnet>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let api: Api<Subnet> = Api::all(ctx.client.clone());
    let name = subnet.name_any();
    let result = finalizer(&api, FINALIZER, subnet, |event| async {
        match event {
            Finalizer::Apply(subnet) => {
                let generation = subnet.metadata.generation;
                let outcome = upsert(
                    &ctx,
                    crd::subnet_object(&subnet).map(ClusterObject::Subnet),
                    &name,
                )
                .await?;
                let listed = ctx.controller.list(Kind::Subnet).await?;
                let stored = listed.iter().find_map(|o| match o {
                    ClusterObject::Subnet(s) if s.name() == name => s.status.clone(),
                    _ => None,
                });
                let status = match (&outcome, stored) {
                    (Ok(()), Some(s)) => SubnetStatus {
                        conditions: vec![ready(
                            !s.bouncer_gateways.is_empty(),
                            if s.bouncer_gateways.is_empty() {
                                "NoGateways"
                            } else {
                                "Programmed"
                            },
                            format!("bouncers {:?}", s.bouncer_gateways),
                            generation,
                        )],
                        observed_generation: generation,
                        vni: s.vni.map(|v| v.get()),
                        router_ip: s.router_ip.map(|i| i.to_string()),
                        router_mac: s.router_mac.map(|m| m.to_string()),
                        bouncer_gateways: s.bouncer_gateways,
                    },
                    (Err(why), _) => SubnetStatus {
                        conditions: vec![ready(false, "Invalid", why.clone(), generation)],
                        observed_generation: generation,
                        ..SubnetStatus::default()
                    },
                    (Ok(()), None) => SubnetStatus::default(),
                };
                patch_status(
                    &api,
                    &name,
                    "Subnet",
                    serde_json::to_value(status).expect("status serializes"),
                )
                .await?;
                Ok(Action::requeue(Duration::from_secs(300)))
            }
            Finalizer::Cleanup(_) => remove(&ctx, Kind::Subnet, &name).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(e.to_string()));
    if result.is_ok() {
        ctx.succeeded(&format!("subnet/{name}"));
    }
    result
}

fn retry<K: Resource>(object: Arc<K>, error: &OperatorError, ctx: Arc<Context>) -> Action
where
    K::DynamicType: Default,
{
    let key = format!(
        "{}/{}",
        K::kind(&Default::default()).to_lowercase(),
        object.meta().name.clone().unwrap_or_default()
    );
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Brings service `namespace/name` in line with the cached Service, its slices and its
/// namespace: applied (backend-only changes incrementally), or removed when it is gone
/// or no longer a Sluice service. Returns the `Gateway.Apply` calls made.
pub async fn sync_service(
    ctx: &Context,
    namespace: &str,
    name: &str,
    service: Option<&KubeService>,
    slices: &[&EndpointSlice],
    ns: Option<&Namespace>,
) -> Result<u64, OperatorError> {
    let key = format!("{namespace}/{name}");
    let wanted = service.and_then(|s| model::service_object(s, slices, ns));
    match wanted {
        Some(Ok(object)) => {
            let stored = ctx.store.apply(vec![ClusterObject::Service(object)])?;
            let Some(ClusterObject::Service(stored)) = stored.into_iter().next() else {
                return Ok(0);
            };
            Ok(ctx
                .controller
                .update_backends(&key, stored)
                .await?
                .apply_calls)
        }
        Some(Err(e)) => {
            tracing::warn!(service = %key, error = %e, "not programmed");
            Ok(0)
        }
        None => {
            let known = ctx.store.snapshot()?.services.contains_key(&key);
            if !known {
                return Ok(0);
            }
            ctx.store.delete(&[ObjectRef {
                kind: Kind::Service,
                name: key,
            }])?;
            Ok(ctx.controller.reconcile().await?.apply_calls)
        }
    }
}

fn slices_of<'a>(
    slices: &'a [Arc<EndpointSlice>],
    namespace: &str,
    name: &str,
) -> Vec<&'a EndpointSlice> {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.labels()
                    .get(model::SERVICE_NAME_LABEL)
                    .map(String::as_str)
                    == Some(name)
        })
        .map(|s| &**s)
        .collect()
}

/// Caches of Pods and Namespaces, filled by reflectors (run them with
/// [`Caches::run`]), for [`KubeSource`].
pub struct Caches {
    pub pods: Cache<Pod>,
    pub namespaces: Cache<Namespace>,
    pod_writer: reflector::store::Writer<Pod>,
    ns_writer: reflector::store::Writer<Namespace>,
}

impl Caches {
    pub fn new() -> Self {
        let (pods, pod_writer) = reflector::store();
        let (namespaces, ns_writer) = reflector::store();
        Self {
            pods,
            namespaces,
            pod_writer,
            ns_writer,
        }
    }

    /// Keeps the caches filled until the watches end.
    pub async fn run(self, client: Client) {
        let pods = reflector::reflector(
            self.pod_writer,
            watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| async {});
        let namespaces = reflector::reflector(
            self.ns_writer,
            watcher(Api::<Namespace>::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| async {});
        futures_util::future::join(pods, namespaces).await;
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs every watcher and reconciler until one of them ends (a lost watch is retried
/// with backoff inside; this returns only on shutdown).
pub async fn run(ctx: Arc<Context>, namespaces: Cache<Namespace>, gateway_namespace: String) {
    let client = ctx.client.clone();
    let vpcs =
        kube::runtime::Controller::new(Api::<Vpc>::all(client.clone()), watcher::Config::default())
            .run(reconcile_vpc, retry::<Vpc>, Arc::clone(&ctx))
            .for_each(|_| async {});
    let subnets = kube::runtime::Controller::new(
        Api::<Subnet>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile_subnet, retry::<Subnet>, Arc::clone(&ctx))
    .for_each(|_| async {});
    let services = watch_services(Arc::clone(&ctx), namespaces);
    let gateways = watch_gateways(Arc::clone(&ctx), gateway_namespace);
    futures_util::future::join4(vpcs, subnets, services, gateways).await;
}

/// Services and EndpointSlices: every change to either re-syncs that one service.
async fn watch_services(ctx: Arc<Context>, namespaces: Cache<Namespace>) {
    let client = ctx.client.clone();
    let (svc_cache, svc_writer) = reflector::store::<KubeService>();
    let (slice_cache, slice_writer) = reflector::store::<EndpointSlice>();
    let services = reflector::reflector(
        svc_writer,
        watcher(
            Api::<KubeService>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|r| {
        r.map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .ok()
    });
    let slices = reflector::reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|r| {
        r.ok().and_then(|s| {
            let svc = s.labels().get(model::SERVICE_NAME_LABEL)?.clone();
            Some((s.namespace().unwrap_or_default(), svc))
        })
    });
    let mut touched = std::pin::pin!(futures_util::stream::select(services, slices));
    while let Some(item) = touched.next().await {
        let Some((namespace, name)) = item else {
            continue;
        };
        let service = svc_cache.get(&KubeRef::new(&name).within(&namespace));
        let all_slices = slice_cache.state();
        let slices = slices_of(&all_slices, &namespace, &name);
        let ns = namespaces.get(&KubeRef::new(&namespace));
        if let Err(e) = sync_service(
            &ctx,
            &namespace,
            &name,
            service.as_deref(),
            &slices,
            ns.as_deref(),
        )
        .await
        {
            tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "service not synced; retried at its next change");
        }
    }
}

/// Gateway pods: a deleted gateway pod's registration is removed.
async fn watch_gateways(ctx: Arc<Context>, namespace: String) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut events = watcher(api, watcher::Config::default().labels(GATEWAY_SELECTOR))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Delete(pod)) = event else {
            continue;
        };
        let name = pod.name_any();
        let registered = ctx
            .store
            .snapshot()
            .map(|s| s.gateways.contains_key(&name))
            .unwrap_or(false);
        if !registered {
            continue;
        }
        match ctx.store.delete(&[ObjectRef {
            kind: Kind::Gateway,
            name: name.clone(),
        }]) {
            Ok(_) => {
                if let Err(e) = ctx.controller.reconcile().await {
                    tracing::warn!(gateway = %name, error = %e, "reconcile after gateway removal failed");
                }
                tracing::info!(gateway = %name, "gateway pod deleted; unregistered");
            }
            Err(e) => tracing::warn!(gateway = %name, error = %e, "gateway not unregistered"),
        }
    }
}
