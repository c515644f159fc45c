//! The watchers and reconcilers of Kubernetes mode. They translate Kubernetes objects
//! into the object model, hand them to the same [`Store`] (allocations) and
//! [`Controller`] (placement, desired tables, gateway programming) standalone mode
//! uses, and report back:
//!
//! * `Vpc` and `Subnet`: a finalizer (`sluice.dev/cleanup`) is added first, so a delete
//!   waits until the object is gone from the store and from every gateway; status
//!   (`Ready`, `observedGeneration`, VNI, placed gateways) is written by server-side
//!   apply, and a condition's `lastTransitionTime` moves only when its status does;
//!   errors requeue with exponential backoff (1 s doubling to 5 min). A Subnet is
//!   reconciled again whenever its Vpc changes (one whose Vpc is not known yet is an
//!   error, retried), and both kinds refresh their status whenever a gateway registers
//!   or goes ([`Signals`]).
//! * `Service` (ClusterIP) and its `EndpointSlice`s: a backend-only change takes the
//!   controller's incremental path (one `Apply` per gateway holding the VPC). A failed
//!   sync is retried with the same backoff; a Service is synced again when its
//!   namespace changes (its `sluice.dev/network` names the VPC) and when its Vpc is
//!   stored.
//! * Gateway pods (label `app.kubernetes.io/component=sluice-gateway`): a deleted one
//!   is unregistered. Gateways register themselves over gRPC, as standalone.
//! * Pods and Namespaces are cached ([`Caches`]) so `AttachEndpoint` finds a pod's
//!   network in its annotations ([`KubeSource`]), which also records each allocation on
//!   its pod ([`allocations`]) so a new leader keeps it. A deleted pod's allocations are
//!   released even when no CNI DEL came (a lost node): from the allocation records on
//!   the deleted pod, and, after the pod watch restarts, for every pod that was
//!   attached before the re-list and is missing from it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
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
use tokio::sync::{broadcast, mpsc, watch};

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
/// The longest retry delay (the backoff doubles from 1 s up to this).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A Subnet whose Vpc the store does not hold yet (retried, and reconciled again
    /// when the Vpc changes).
    #[error("subnet {subnet}: VPC {vpc} is not known yet")]
    VpcNotKnown { subnet: String, vpc: String },
}

/// What the operator reacts to besides its own watches: gateways registering or
/// going (over gRPC, or their pod deleted), which changes placement and so the status
/// of every Vpc and Subnet; and a Vpc stored or removed, which its Services wait for.
/// Clones share the channels.
#[derive(Clone, Debug)]
pub struct Signals {
    gateways: watch::Sender<u64>,
    vpcs: broadcast::Sender<String>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            gateways: watch::Sender::new(0),
            vpcs: broadcast::Sender::new(1024),
        }
    }
}

impl Signals {
    /// A gateway registered, changed or went.
    pub fn gateways_changed(&self) {
        self.gateways.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// VPC `name` was stored, changed or removed.
    pub fn vpc_changed(&self, name: &str) {
        // No receiver yet: nothing waits for it.
        let _ = self.vpcs.send(name.to_owned());
    }

    /// One item per [`gateways_changed`](Self::gateways_changed) (coalesced when they
    /// come faster than they are taken).
    pub fn gateway_changes(&self) -> impl Stream<Item = ()> + Send + Sync + 'static {
        let mut rx = self.gateways.subscribe();
        rx.mark_unchanged();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

/// The object source of Kubernetes mode: the redb [`Store`] for allocations, with
/// networks of attaching pods read from their (or their namespace's) annotations.
/// VPCs, subnets and services come from the Kubernetes API: applying or deleting them
/// over gRPC is refused; gateways still register over gRPC (and raise
/// [`Signals::gateways_changed`]).
#[derive(Clone)]
pub struct KubeSource {
    store: Arc<Store>,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
    /// Where allocations are recorded on their pods ([`allocations`]); none: not
    /// recorded (a single replica that never changes leader).
    client: Option<Client>,
    signals: Signals,
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
            signals: Signals::default(),
        }
    }

    /// Records every allocation on its pod through `client`, so a new leader keeps it
    /// ([`allocations::rebuild`]).
    pub fn recording(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Raises `signals` when gateways register or are deleted.
    pub fn signalling(mut self, signals: Signals) -> Self {
        self.signals = signals;
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
        let gateways = objects.iter().any(|o| o.kind() == Kind::Gateway);
        let stored = self.store.apply(objects)?;
        if gateways {
            self.signals.gateways_changed();
        }
        Ok(stored)
    }
    fn delete(&self, refs: &[ObjectRef]) -> Result<usize, SourceError> {
        if let Some(r) = refs.iter().find(|r| from_kubernetes(r.kind)) {
            return Err(refused(r.to_string()));
        }
        let deleted = self.store.delete(refs)?;
        if refs.iter().any(|r| r.kind == Kind::Gateway) {
            self.signals.gateways_changed();
        }
        Ok(deleted)
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
    signals: Signals,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, controller: Arc<Controller>, store: Arc<Store>) -> Arc<Self> {
        Self::with_signals(client, controller, store, Signals::default())
    }

    /// A context raising and following `signals` (the [`KubeSource`]'s).
    pub fn with_signals(
        client: Client,
        controller: Arc<Controller>,
        store: Arc<Store>,
        signals: Signals,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            controller,
            store,
            signals,
            failures: Mutex::default(),
        })
    }

    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a failure of `key` (`vpc/NAME`, `subnet/NAME`, `service/NS/NAME`) and
    /// returns the delay before its retry: 1 s, doubling per failure, at most
    /// [`MAX_BACKOFF`].
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(MAX_BACKOFF)
    }

    /// Failures of `key` since its last success.
    pub fn failures_of(&self, key: &str) -> u32 {
        self.failures().get(key).copied().unwrap_or(0)
    }

    fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }
}

/// The `Ready` condition. `lastTransitionTime` is kept from `previous` while the
/// status stays the same, so rewriting an unchanged status changes nothing (and
/// triggers no watch event).
pub fn ready_condition(
    previous: &[Condition],
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
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

/// Why the store refused an object: the user's to fix (`Ready=False`, no retry until
/// the object changes), or a Vpc that is not stored yet (retried).
#[derive(Debug)]
enum Refused {
    Invalid(String),
    VpcNotKnown(String),
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::Invalid(_) => "Invalid",
            Refused::VpcNotKnown(_) => "VpcNotKnown",
        }
    }

    fn message(&self) -> String {
        match self {
            Refused::Invalid(m) | Refused::VpcNotKnown(m) => m.clone(),
        }
    }
}

/// Adds the object to the store, or reports why it cannot be.
async fn upsert(
    ctx: &Context,
    object: Result<ClusterObject, ObjectError>,
    name: &str,
) -> Result<Result<(), Refused>, OperatorError> {
    let object = match object {
        Ok(o) => o,
        Err(e) => return Ok(Err(Refused::Invalid(e.to_string()))),
    };
    match ctx.store.apply(vec![object]) {
        Ok(_) => {}
        Err(
            e @ SourceError::Rejected {
                code: Code::NotFound,
                ..
            },
        ) if matches!(&e, SourceError::Rejected { field, .. } if field == "spec.vpc") => {
            return Ok(Err(Refused::VpcNotKnown(e.to_string())))
        }
        Err(e @ SourceError::Rejected { .. }) => return Ok(Err(Refused::Invalid(e.to_string()))),
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

fn previous_conditions(status: Option<&[Condition]>) -> &[Condition] {
    status.unwrap_or_default()
}

/// Reconciles one Vpc.
#[tracing::instrument(skip_all, fields(vpc = %vpc.name_any()))]
pub async fn reconcile_vpc(vpc: Arc<Vpc>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let api: Api<Vpc> = Api::all(ctx.client.clone());
    let name = vpc.name_any();
    let result = finalizer(&api, FINALIZER, vpc, |event| async {
        match event {
            Finalizer::Apply(vpc) => {
                let generation = vpc.metadata.generation;
                let previous =
                    previous_conditions(vpc.status.as_ref().map(|s| s.conditions.as_slice()));
                let outcome =
                    upsert(&ctx, crd::vpc_object(&vpc).map(ClusterObject::Vpc), &name).await?;
                if outcome.is_ok() {
                    ctx.signals.vpc_changed(&name);
                }
                let listed = ctx.controller.list(Kind::Vpc).await?;
                let stored = listed.iter().find_map(|o| match o {
                    ClusterObject::Vpc(v) if v.name() == name => v.status.clone(),
                    _ => None,
                });
                let status = match (&outcome, stored) {
                    (Ok(()), Some(s)) => VpcStatus {
                        conditions: vec![ready_condition(
                            previous,
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
                        conditions: vec![ready_condition(
                            previous,
                            false,
                            why.reason(),
                            why.message(),
                            generation,
                        )],
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
                Ok(Action::requeue(MAX_BACKOFF))
            }
            Finalizer::Cleanup(_) => {
                let removed = remove(&ctx, Kind::Vpc, &name).await;
                if removed.is_ok() {
                    ctx.signals.vpc_changed(&name);
                }
                removed
            }
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(e.to_string()));
    if result.is_ok() {
        ctx.succeeded(&format!("vpc/{name}"));
    }
    result
}

/// Reconciles one Subnet. One whose Vpc is not stored yet gets `Ready=False`
/// (`VpcNotKnown`) and fails, so it is retried with backoff besides being reconciled
/// when the Vpc changes.
#[tracing::instrument(skip_all, fields(subnet = %subnet.name_any()))]
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
                let previous =
                    previous_conditions(subnet.status.as_ref().map(|s| s.conditions.as_slice()));
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
                let vpc_unknown = matches!(&outcome, Err(Refused::VpcNotKnown(_)));
                let status = match (&outcome, stored) {
                    (Ok(()), Some(s)) => SubnetStatus {
                        conditions: vec![ready_condition(
                            previous,
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
                        router_ip: s.router_ip.map(|ip| ip.to_string()),
                        router_mac: s.router_mac.map(|mac| mac.to_string()),
                        bouncer_gateways: s.bouncer_gateways,
                    },
                    (Err(why), _) => SubnetStatus {
                        conditions: vec![ready_condition(
                            previous,
                            false,
                            why.reason(),
                            why.message(),
                            generation,
                        )],
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
                if vpc_unknown {
                    return Err(OperatorError::VpcNotKnown {
                        subnet: name.clone(),
                        vpc: subnet.spec.vpc.clone(),
                    });
                }
                Ok(Action::requeue(MAX_BACKOFF))
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

/// The error policy of both reconcilers: requeue after [`Context::backoff`].
pub fn retry<K: Resource>(object: Arc<K>, error: &OperatorError, ctx: Arc<Context>) -> Action
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

/// What [`Caches::run`] tells the operator (through [`CacheFeed::events`]).
#[derive(Debug)]
pub enum CacheEvent {
    /// A namespace was added, changed or deleted: its Services' VPC may have changed.
    Namespace(String),
    /// A pod is gone from the API server: the allocations recorded on it are released.
    PodDeleted(Box<Pod>),
    /// The pod watch re-listed (at start, or after it lost its place): of the
    /// endpoints that were attached before the list began, those whose pod the list
    /// did not hold are released (their pod was deleted while nobody watched).
    PodsListed { before: Vec<EndpointAlloc> },
}

/// The read side of the [`Caches`], for [`KubeSource`] and [`run`].
#[derive(Debug)]
pub struct CacheFeed {
    pub pods: Cache<Pod>,
    pub namespaces: Cache<Namespace>,
    pub events: mpsc::UnboundedReceiver<CacheEvent>,
}

/// The caches stopped before they were first filled.
#[derive(Debug, thiserror::Error)]
#[error("the Pod and Namespace watches stopped before their first list")]
pub struct CachesStopped;

impl CacheFeed {
    /// Resolves once both caches hold a first full list (serve `AttachEndpoint` only
    /// then: before, a pod's network annotation would look absent).
    pub fn ready(&self) -> impl std::future::Future<Output = Result<(), CachesStopped>> + Send {
        let (pods, namespaces) = (self.pods.clone(), self.namespaces.clone());
        async move {
            pods.wait_until_ready().await.map_err(|_| CachesStopped)?;
            namespaces
                .wait_until_ready()
                .await
                .map_err(|_| CachesStopped)
        }
    }
}

/// Caches of Pods and Namespaces, filled by reflectors (run them with
/// [`Caches::run`]); what changed is reported as [`CacheEvent`]s.
pub struct Caches {
    store: Arc<Store>,
    pod_writer: reflector::store::Writer<Pod>,
    ns_writer: reflector::store::Writer<Namespace>,
    events: mpsc::UnboundedSender<CacheEvent>,
}

impl Caches {
    /// Caches whose pod re-lists are checked against the endpoints in `store`.
    pub fn new(store: Arc<Store>) -> (Self, CacheFeed) {
        let (pods, pod_writer) = reflector::store();
        let (namespaces, ns_writer) = reflector::store();
        let (events, rx) = mpsc::unbounded_channel();
        (
            Self {
                store,
                pod_writer,
                ns_writer,
                events,
            },
            CacheFeed {
                pods,
                namespaces,
                events: rx,
            },
        )
    }

    /// Keeps the caches filled until the watches end (a lost watch is retried with
    /// backoff inside).
    pub async fn run(self, client: Client) {
        let Caches {
            store,
            pod_writer,
            ns_writer,
            events,
        } = self;
        let pod_events = events.clone();
        let pod_client = client.clone();
        let pods = async move {
            let stream = reflector::reflector(
                pod_writer,
                watcher(Api::<Pod>::all(pod_client), watcher::Config::default()),
            )
            .default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut before = None;
            while let Some(event) = stream.next().await {
                match event {
                    // Taken before the list is requested (the watcher asks for it only
                    // when polled again), so every endpoint here was attached to a pod
                    // that existed before the list.
                    Ok(watcher::Event::Init) => {
                        before = match store.snapshot() {
                            Ok(s) => Some(
                                s.endpoints
                                    .into_values()
                                    .filter(|e| !e.spec.pod_name.is_empty())
                                    .collect(),
                            ),
                            Err(e) => {
                                tracing::warn!(error = %e, "endpoints not read before the pod list; no sweep after it");
                                None
                            }
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(before) = before.take() {
                            let _ = pod_events.send(CacheEvent::PodsListed { before });
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let _ = pod_events.send(CacheEvent::PodDeleted(Box::new(pod)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                }
            }
        };
        let namespaces = reflector::reflector(
            ns_writer,
            watcher(Api::<Namespace>::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|touched| {
            if let Ok(ns) = touched {
                let _ = events.send(CacheEvent::Namespace(ns.name_any()));
            }
            async {}
        });
        futures_util::future::join(pods, namespaces).await;
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// Releases the allocations recorded on `pod`, which is gone from the API server (a
/// pod on a lost node gets no CNI DEL). Returns how many were still held.
pub async fn release_pod(ctx: &Context, pod: &Pod) -> Result<usize, OperatorError> {
    let mut released = 0;
    for (key, record) in allocations::recorded(pod) {
        let Ok(record) = record else {
            tracing::warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), annotation = %key, "unreadable allocation record on a deleted pod");
            continue;
        };
        if let Some((alloc, done)) = ctx
            .controller
            .detach(&record.node, &record.container_id, &record.interface)
            .await?
        {
            tracing::info!(endpoint = %alloc.name(), apply_calls = done.apply_calls, "pod deleted without a CNI DEL; its address is released");
            released += 1;
        }
    }
    Ok(released)
}

/// After a pod re-list: releases the endpoints of `before` whose pod `pods` does not
/// hold. Returns how many.
pub async fn release_missing(
    ctx: &Context,
    pods: &Cache<Pod>,
    before: &[EndpointAlloc],
) -> Result<usize, OperatorError> {
    let mut released = 0;
    for alloc in before {
        let s = &alloc.spec;
        if pods
            .get(&KubeRef::new(&s.pod_name).within(&s.pod_namespace))
            .is_some()
        {
            continue;
        }
        if let Some((alloc, done)) = ctx
            .controller
            .detach(&s.node, &s.container_id, &s.interface)
            .await?
        {
            tracing::info!(endpoint = %alloc.name(), apply_calls = done.apply_calls, "pod deleted while not watched; its address is released");
            released += 1;
        }
    }
    Ok(released)
}

/// Runs every watcher and reconciler until one of them ends (a lost watch is retried
/// with backoff inside; this returns only on shutdown). `caches` is the read side of
/// the [`Caches`] the caller runs.
pub async fn run(ctx: Arc<Context>, caches: CacheFeed, gateway_namespace: String) {
    let client = ctx.client.clone();
    // Subscribed before the Vpc reconciler can store anything.
    let vpc_changes = ctx.signals.vpcs.subscribe();
    let vpcs =
        kube::runtime::Controller::new(Api::<Vpc>::all(client.clone()), watcher::Config::default())
            .reconcile_all_on(ctx.signals.gateway_changes())
            .run(reconcile_vpc, retry::<Vpc>, Arc::clone(&ctx))
            .for_each(|_| async {});
    let subnets = kube::runtime::Controller::new(
        Api::<Subnet>::all(client.clone()),
        watcher::Config::default(),
    );
    let known = subnets.store();
    let subnets = subnets
        .watches(
            Api::<Vpc>::all(client.clone()),
            watcher::Config::default(),
            move |vpc: Vpc| subnets_of(&known, &vpc.name_any()),
        )
        .reconcile_all_on(ctx.signals.gateway_changes())
        .run(reconcile_subnet, retry::<Subnet>, Arc::clone(&ctx))
        .for_each(|_| async {});
    let CacheFeed {
        pods,
        namespaces,
        events,
    } = caches;
    let (resync, resyncs) = mpsc::unbounded_channel();
    let services = watch_services(Arc::clone(&ctx), namespaces, resyncs, vpc_changes);
    let cached = follow_caches(Arc::clone(&ctx), events, pods, resync);
    let gateways = watch_gateways(Arc::clone(&ctx), gateway_namespace);
    futures_util::future::join5(vpcs, subnets, services, cached, gateways).await;
}

fn subnets_of(known: &Cache<Subnet>, vpc: &str) -> Vec<KubeRef<Subnet>> {
    known
        .state()
        .iter()
        .filter(|s| s.spec.vpc == vpc)
        .map(|s| KubeRef::from_obj(&**s))
        .collect()
}

/// Acts on what the caches report: namespace changes re-sync that namespace's
/// Services, deleted pods are released.
async fn follow_caches(
    ctx: Arc<Context>,
    mut events: mpsc::UnboundedReceiver<CacheEvent>,
    pods: Cache<Pod>,
    resync: mpsc::UnboundedSender<Resync>,
) {
    while let Some(event) = events.recv().await {
        let released = match event {
            CacheEvent::Namespace(ns) => {
                let _ = resync.send(Resync::Namespace(ns));
                continue;
            }
            CacheEvent::PodDeleted(pod) => release_pod(&ctx, &pod).await,
            CacheEvent::PodsListed { before } => release_missing(&ctx, &pods, &before).await,
        };
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing a deleted pod's address failed; it is released at its CNI DEL or the next re-list");
        }
    }
}

/// Which Services to sync again.
#[derive(Debug)]
enum Resync {
    One(String, String),
    Namespace(String),
    Vpc(String),
    All,
}

/// Services and EndpointSlices: every change to either re-syncs that one service; a
/// namespace change re-syncs its services, a stored Vpc those of that VPC; a failed
/// sync is retried with backoff.
async fn watch_services(
    ctx: Arc<Context>,
    namespaces: Cache<Namespace>,
    mut resyncs: mpsc::UnboundedReceiver<Resync>,
    mut vpc_changes: broadcast::Receiver<String>,
) {
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
    // Retries due, one per service at most.
    let mut retries = FuturesUnordered::new();
    let mut waiting = BTreeSet::new();
    let mut vpcs_open = true;
    loop {
        let work = tokio::select! {
            item = touched.next() => match item {
                Some(Some((namespace, name))) => Resync::One(namespace, name),
                Some(None) => continue,
                None => return,
            },
            Some(resync) = resyncs.recv() => resync,
            changed = vpc_changes.recv(), if vpcs_open => match changed {
                Ok(vpc) => Resync::Vpc(vpc),
                Err(broadcast::error::RecvError::Lagged(_)) => Resync::All,
                Err(broadcast::error::RecvError::Closed) => {
                    vpcs_open = false;
                    continue;
                }
            },
            Some((namespace, name)) = retries.next(), if !retries.is_empty() => {
                let (namespace, name): (String, String) = (namespace, name);
                waiting.remove(&(namespace.clone(), name.clone()));
                Resync::One(namespace, name)
            }
        };
        let keys: Vec<(String, String)> = match work {
            Resync::One(namespace, name) => vec![(namespace, name)],
            other => svc_cache
                .state()
                .iter()
                .filter(|svc| match &other {
                    Resync::Namespace(ns) => svc.namespace().as_deref() == Some(ns.as_str()),
                    Resync::Vpc(vpc) => {
                        let ns = svc
                            .namespace()
                            .and_then(|ns| namespaces.get(&KubeRef::new(&ns)));
                        model::service_vpc(svc, ns.as_deref()).as_deref() == Some(vpc.as_str())
                    }
                    _ => true,
                })
                .map(|svc| (svc.namespace().unwrap_or_default(), svc.name_any()))
                .collect(),
        };
        for (namespace, name) in keys {
            let service = svc_cache.get(&KubeRef::new(&name).within(&namespace));
            let all_slices = slice_cache.state();
            let slices = slices_of(&all_slices, &namespace, &name);
            let ns = namespaces.get(&KubeRef::new(&namespace));
            let key = format!("service/{namespace}/{name}");
            match sync_service(
                &ctx,
                &namespace,
                &name,
                service.as_deref(),
                &slices,
                ns.as_deref(),
            )
            .await
            {
                Ok(_) => ctx.succeeded(&key),
                Err(e) => {
                    let delay = ctx.backoff(&key);
                    tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, ?delay, "service not synced; retrying");
                    if waiting.insert((namespace.clone(), name.clone())) {
                        retries.push(async move {
                            tokio::time::sleep(delay).await;
                            (namespace, name)
                        });
                    }
                }
            }
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
                ctx.signals.gateways_changed();
                tracing::info!(gateway = %name, "gateway pod deleted; unregistered");
            }
            Err(e) => tracing::warn!(gateway = %name, error = %e, "gateway not unregistered"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(status: &str, at: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: "Programmed".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let before = [condition("True", 1_000)];
        let same = ready_condition(&before, true, "Programmed", "changed text".into(), Some(2));
        assert_eq!(same.last_transition_time, before[0].last_transition_time);
        assert_eq!(same.message, "changed text");
        assert_eq!(same.observed_generation, Some(2));
        let flipped = ready_condition(&before, false, "NoGateways", String::new(), Some(2));
        assert_eq!(flipped.status, "False");
        assert!(flipped.last_transition_time.0 > before[0].last_transition_time.0);
        let first = ready_condition(&[], true, "Programmed", String::new(), None);
        assert!(first.last_transition_time.0.as_second() > 1_000);
    }

    #[test]
    fn the_backoff_doubles_from_one_second_to_five_minutes() {
        let (service, _api) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let ctx = Context::new(
            Client::new(service, "default"),
            Controller::new(store.clone(), None),
            store,
        );
        let delays: Vec<u64> = (0..12).map(|_| ctx.backoff("vpc/a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(ctx.failures_of("vpc/a"), 12);
        ctx.succeeded("vpc/a");
        assert_eq!(ctx.backoff("vpc/a").as_secs(), 1);
    }
}
