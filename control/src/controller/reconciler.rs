//! The controller's loop: after every change to the objects, compute the placement and
//! each gateway's desired tables, and push each gateway what changed for it.
//!
//! Reconciles run one at a time (a change waits for the previous one's gateway calls),
//! so every gateway sees changes in order. A gateway that fails a call is not retried
//! here: the link forgets what it holds and the periodic check gives it a full sync.
//! The source of objects is behind [`ObjectSource`]; nothing here knows it is redb.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use sluice_api::client::{ClientTls, Target};

use super::desired::{
    backends_change, desired_tables, endpoint_change, service_endpoints, Changes, GatewayTables,
    Index,
};
use super::objects::EndpointSpec;
use super::objects::{ClusterObject, EndpointAlloc, Kind, Service, Subnet};
use super::placement::Placement;
use super::source::{AttachRequest, ObjectSource, Snapshot, SourceError};
use super::syncer::GatewayLink;

/// What the last reconcile computed, kept current by the incremental paths.
#[derive(Debug, Default)]
struct Desired {
    /// Whether a full reconcile has run; before it, changes take the full path.
    computed: bool,
    snapshot: Snapshot,
    placement: Placement,
    tables: BTreeMap<String, GatewayTables>,
    index: Index,
}

/// The standalone or Kubernetes controller, over any [`ObjectSource`].
#[derive(Debug)]
pub struct Controller {
    source: Arc<dyn ObjectSource>,
    gateway_tls: Option<ClientTls>,
    links: Mutex<BTreeMap<String, Arc<GatewayLink>>>,
    desired: tokio::sync::Mutex<Desired>,
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// `Gateway.Apply` calls it sent.
    pub apply_calls: u64,
    /// Gateways it could not bring up to date (retried by the periodic check).
    pub failed: Vec<String>,
}

impl Controller {
    /// A controller over `source`; `gateway_tls` is the client identity for gateways
    /// reached over `https://`.
    pub fn new(source: Arc<dyn ObjectSource>, gateway_tls: Option<ClientTls>) -> Arc<Self> {
        Arc::new(Self {
            source,
            gateway_tls,
            links: Mutex::default(),
            desired: tokio::sync::Mutex::default(),
        })
    }

    pub fn source(&self) -> &Arc<dyn ObjectSource> {
        &self.source
    }

    /// `Gateway.Apply` calls sent to all gateways since start.
    pub fn apply_calls(&self) -> u64 {
        self.links().values().map(|l| l.apply_calls()).sum()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<GatewayLink>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes every gateway's tables from the source and pushes the differences.
    /// O(cluster): for changes to VPCs, subnets, services and gateways; endpoints and
    /// backend lists take [`attach`](Self::attach), [`detach`](Self::detach) and
    /// [`update_backends`](Self::update_backends).
    pub async fn reconcile(&self) -> Result<Reconciled, SourceError> {
        let mut desired = self.desired.lock().await;
        let snapshot = self.source.snapshot()?;
        let placement = Placement::of(&snapshot);
        let tables = desired_tables(&snapshot, &placement);
        let links = self.update_links(&snapshot);
        let before = self.apply_calls();
        let work: Vec<_> = links
            .iter()
            .map(|(name, link)| {
                let want = tables.get(name).cloned().unwrap_or_default();
                let changed = desired.tables.get(name) != Some(&want);
                async move {
                    // An unchanged gateway that is in sync needs nothing; `sync` finds
                    // an empty delta itself, but skipping avoids the diff.
                    let result = if changed || !link.status().in_sync {
                        link.sync(Arc::new(want)).await
                    } else {
                        Ok(())
                    };
                    (name.clone(), result)
                }
            })
            .collect();
        let mut failed = Vec::new();
        for (name, result) in join_all(work).await {
            if let Err(e) = result {
                tracing::warn!(gateway = %name, error = %e, "gateway not updated; will re-sync");
                failed.push(name);
            }
        }
        let index = Index::of(&snapshot, &tables);
        *desired = Desired {
            computed: true,
            snapshot,
            placement,
            tables,
            index,
        };
        Ok(Reconciled {
            apply_calls: self.apply_calls() - before,
            failed,
        })
    }

    /// Sends each touched gateway its change (one `Apply` each while in sync).
    async fn push(&self, desired: &Desired, changes: Changes) -> Reconciled {
        let links = self.links().clone();
        let before = self.apply_calls();
        let work: Vec<_> = changes
            .iter()
            .filter_map(|(name, txn)| {
                let link = links.get(name)?.clone();
                let want = desired.tables.get(name)?;
                Some(async move { (name.clone(), link.apply_change(txn, want).await) })
            })
            .collect();
        let mut failed = Vec::new();
        for (name, result) in join_all(work).await {
            if let Err(e) = result {
                tracing::warn!(gateway = %name, error = %e, "gateway not updated; will re-sync");
                failed.push(name);
            }
        }
        Reconciled {
            apply_calls: self.apply_calls() - before,
            failed,
        }
    }

    /// Allocates (or finds) the endpoint of one pod interface and pushes only what it
    /// changes: the endpoint and its host to the gateways holding its subnet's bouncer
    /// or VPC's divider role, new backend lists to those holding services naming the
    /// pod. Cost is independent of the number of pods. Returns the allocation, whether
    /// it already existed (then nothing is sent), and what was sent.
    pub async fn attach(
        &self,
        request: &AttachRequest,
    ) -> Result<(EndpointAlloc, bool, Reconciled), SourceError> {
        let mut desired = self.desired.lock().await;
        let key =
            EndpointSpec::attachment(&request.node, &request.container_id, &request.interface);
        let existed = desired.computed && desired.snapshot.endpoints.contains_key(&key);
        let alloc = self.source.attach(request)?;
        if existed {
            return Ok((alloc, true, Reconciled::default()));
        }
        if let Err(e) = self.source.record_attach(&alloc).await {
            // Not handed out unless recorded: a new leader could not know it.
            let released =
                self.source
                    .detach(&request.node, &request.container_id, &request.interface);
            if let Err(undo) = released {
                tracing::error!(endpoint = %key, error = %undo, "releasing an unrecorded allocation");
            }
            return Err(e);
        }
        if !desired.computed {
            drop(desired);
            let done = self.reconcile().await?;
            return Ok((alloc, false, done));
        }
        let d = &mut *desired;
        d.snapshot.endpoints.insert(key, alloc.clone());
        let changes = endpoint_change(
            &d.snapshot,
            &d.placement,
            &mut d.tables,
            &mut d.index,
            &alloc,
            true,
        );
        let done = self.push(d, changes).await;
        Ok((alloc, false, done))
    }

    /// Releases the endpoint of one pod interface, pushing only what that changes;
    /// `None` when nothing was attached.
    pub async fn detach(
        &self,
        node: &str,
        container_id: &str,
        interface: &str,
    ) -> Result<Option<(EndpointAlloc, Reconciled)>, SourceError> {
        let mut desired = self.desired.lock().await;
        let Some(alloc) = self.source.detach(node, container_id, interface)? else {
            return Ok(None);
        };
        if let Err(e) = self.source.record_detach(&alloc).await {
            // The address is free here; a stale record only makes a new leader hold it
            // until the pod is gone.
            tracing::warn!(endpoint = %alloc.name(), error = %e, "removing the allocation's record");
        }
        if !desired.computed {
            drop(desired);
            let done = self.reconcile().await?;
            return Ok(Some((alloc, done)));
        }
        let d = &mut *desired;
        d.snapshot.endpoints.remove(alloc.name());
        let changes = endpoint_change(
            &d.snapshot,
            &d.placement,
            &mut d.tables,
            &mut d.index,
            &alloc,
            false,
        );
        let done = self.push(d, changes).await;
        Ok(Some((alloc, done)))
    }

    /// After the source took a new version of service `key` (`namespace/name`): when
    /// only its backend list changed, pushes the new backend lists alone; otherwise a
    /// full reconcile.
    pub async fn update_backends(
        &self,
        key: &str,
        service: Service,
    ) -> Result<Reconciled, SourceError> {
        let mut desired = self.desired.lock().await;
        let d = &mut *desired;
        let old = d.snapshot.services.get(key).cloned();
        if let (true, Some(old)) = (d.computed, old) {
            d.snapshot.services.insert(key.to_owned(), service);
            if let Some(changes) =
                backends_change(&d.snapshot, &mut d.tables, &mut d.index, key, &old)
            {
                return Ok(self.push(d, changes).await);
            }
        }
        drop(desired);
        self.reconcile().await
    }

    /// Makes the links match the registered gateways: new ones for new or moved
    /// gateways (a fresh link does a full sync), none for removed ones.
    fn update_links(&self, snapshot: &Snapshot) -> BTreeMap<String, Arc<GatewayLink>> {
        let mut links = self.links();
        links.retain(|name, _| snapshot.gateways.contains_key(name));
        for (name, gw) in &snapshot.gateways {
            let Ok(target) = gw.spec.control.parse::<Target>() else {
                continue;
            };
            let fresh = links.get(name).is_none_or(|l| *l.target() != target);
            if fresh {
                links.insert(
                    name.clone(),
                    Arc::new(GatewayLink::new(name, target, self.gateway_tls.clone())),
                );
            }
        }
        links.clone()
    }

    /// Forgets what a gateway holds, so the next sync is a full one (a re-registration
    /// after a restart).
    pub async fn resync(&self, gateway: &str) {
        let link = self.links().get(gateway).cloned();
        if let Some(link) = link {
            link.invalidate().await;
        }
    }

    /// Checks every gateway's boot id and generation, re-syncing restarted ones.
    /// Does not wait for reconciles: each link checks against what it was last asked to
    /// hold.
    pub async fn check_gateways(&self) {
        let links = self.links().clone();
        let work = links
            .iter()
            .map(|(name, link)| async move { (name, link.check().await) });
        for (name, result) in join_all(work).await {
            if let Err(e) = result {
                tracing::warn!(gateway = %name, error = %e, "gateway check failed; will retry");
            }
        }
    }

    /// Runs [`check_gateways`](Self::check_gateways) every `interval` until the
    /// controller is dropped.
    pub fn spawn_checks(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(controller) = weak.upgrade() else {
                    return;
                };
                controller.check_gateways().await;
            }
        })
    }

    /// Every object of `kind` with its status filled in: placement for VPCs and subnets,
    /// attached backends for services, link state for gateways.
    pub async fn list(&self, kind: Kind) -> Result<Vec<ClusterObject>, SourceError> {
        let snapshot = self.source.snapshot()?;
        let placement = Placement::of(&snapshot);
        let links = self.links().clone();
        Ok(match kind {
            Kind::Vpc => snapshot
                .vpcs
                .values()
                .cloned()
                .map(|mut v| {
                    let placed = placement
                        .dividers
                        .get(v.name())
                        .cloned()
                        .unwrap_or_default();
                    v.status
                        .get_or_insert_with(Default::default)
                        .divider_gateways = placed;
                    ClusterObject::Vpc(v)
                })
                .collect(),
            Kind::Subnet => snapshot
                .subnets
                .values()
                .cloned()
                .map(|mut s| {
                    let placed = placement
                        .bouncers
                        .get(s.name())
                        .cloned()
                        .unwrap_or_default();
                    s.status
                        .get_or_insert_with(Default::default)
                        .bouncer_gateways = placed;
                    ClusterObject::Subnet(s)
                })
                .collect(),
            Kind::Service => snapshot
                .services
                .iter()
                .map(|(key, s)| {
                    let mut s = s.clone();
                    s.status.get_or_insert_with(Default::default).endpoints =
                        service_endpoints(&snapshot, key);
                    ClusterObject::Service(s)
                })
                .collect(),
            Kind::Gateway => snapshot
                .gateways
                .values()
                .cloned()
                .map(|mut g| {
                    g.status = links.get(g.name()).map(|l| l.status());
                    ClusterObject::Gateway(g)
                })
                .collect(),
            Kind::Node => snapshot
                .nodes
                .into_values()
                .map(ClusterObject::Node)
                .collect(),
            Kind::Endpoint => snapshot
                .endpoints
                .into_values()
                .map(ClusterObject::Endpoint)
                .collect(),
        })
    }

    /// Subnet `name` as of the last reconcile (from the source before the first).
    pub async fn subnet(&self, name: &str) -> Result<Option<Subnet>, SourceError> {
        let desired = self.desired.lock().await;
        if desired.computed {
            return Ok(desired.snapshot.subnets.get(name).cloned());
        }
        drop(desired);
        Ok(self.source.snapshot()?.subnets.remove(name))
    }

    /// The bouncer gateways of `subnet`, in placement order, with their hosts.
    pub async fn bouncers(&self, subnet: &str) -> Vec<sluice_api::Host> {
        let desired = self.desired.lock().await;
        desired
            .placement
            .bouncers
            .get(subnet)
            .into_iter()
            .flatten()
            .filter_map(|g| desired.snapshot.gateways.get(g))
            .map(|g| sluice_api::Host {
                ip: g.spec.ip,
                mac: g.spec.mac,
            })
            .collect()
    }

    /// The tables the last reconcile computed for `gateway`.
    pub async fn desired_for(&self, gateway: &str) -> GatewayTables {
        let desired = self.desired.lock().await;
        desired.tables.get(gateway).cloned().unwrap_or_default()
    }
}
