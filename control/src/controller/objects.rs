//! The controller's object model: named objects as users write them and as the
//! Kubernetes CRDs hold them (`apiVersion`, `kind`, `metadata`, `spec`, `status`).
//!
//! Users write `spec`; the controller owns `status` (allocated VNI, VIP, router address,
//! placed gateways) and ignores a `status` sent to it. Gateways, nodes and endpoints are
//! registrations and allocations: nodes and endpoints are written only through
//! `RegisterNode`/`AttachEndpoint`, gateways through `RegisterGateway` or `apply`.
//!
//! This module checks what an object can check alone (names, port numbers, CIDR sizes).
//! Checks against other objects (a subnet inside its VPC) are the store's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sluice_api::client::Target;
use sluice_api::{Ipv4Cidr, MacAddr, Protocol, Vni};

/// The API group and version of every object, as the CRDs will declare it.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// The namespace of a service or pod reference that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Most gateways one role may be spread over.
pub const MAX_ROLE_GATEWAYS: u32 = 64;

/// An object failed a check; `field` is its path as written in YAML (`spec.cidr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ObjectError {
    pub field: String,
    pub reason: String,
}

impl ObjectError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The name (and for services, the namespace) of an object.
///
/// Read from any of Kubernetes' `ObjectMeta` fields, so that the YAML
/// written for the CRDs, or printed by `kubectl get -o yaml`, applies as it is; only the
/// name and namespace are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "ObjectMeta")]
pub struct Metadata {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `metadata` as Kubernetes writes it (`ObjectMeta`, meta/v1). Standalone mode has no use
/// for labels and annotations (nothing selects Vpcs or Subnets by label) nor for what
/// the API server sets (`uid`, `resourceVersion`, `generation`, timestamps, finalizers,
/// owners, managed fields), so it reads and drops them; labels and annotations must
/// still be maps of strings, as the API server requires. A field that is not one of
/// these (a misspelt `lables`) is refused.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Read only to be accepted: the derive is the one reader of the fields after `namespace`.
#[allow(dead_code)]
struct ObjectMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    generate_name: Option<IgnoredAny>,
    #[serde(default)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    finalizers: Option<IgnoredAny>,
    #[serde(default)]
    owner_references: Option<IgnoredAny>,
    #[serde(default)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    self_link: Option<IgnoredAny>,
}

impl From<ObjectMeta> for Metadata {
    fn from(meta: ObjectMeta) -> Self {
        Self {
            name: meta.name,
            namespace: meta.namespace,
        }
    }
}

impl Metadata {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
        }
    }
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

/// One object: `spec` as written, `status` as the controller filled it in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S, T> {
    #[serde(default = "api_version")]
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<T>,
}

impl<S, T> Resource<S, T> {
    pub fn new(metadata: Metadata, spec: S) -> Self {
        Self {
            api_version: api_version(),
            metadata,
            spec,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

const fn one() -> u32 {
    1
}

/// A tenant's virtual network. Cluster-scoped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcSpec {
    pub cidr: Ipv4Cidr,
    /// Where the VPC's service virtual IPs are allocated; disjoint from `cidr`.
    pub service_cidr: Ipv4Cidr,
    /// How many gateways hold the VPC's divider role.
    #[serde(default = "one")]
    pub dividers: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcStatus {
    /// Allocated by the controller, never reused while the VPC exists.
    pub vni: Option<Vni>,
    /// Gateways holding the divider role, by name.
    #[serde(default)]
    pub divider_gateways: Vec<String>,
}

/// A subnet of a VPC. Cluster-scoped; its name is unique across VPCs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetSpec {
    pub vpc: String,
    pub cidr: Ipv4Cidr,
    /// How many gateways hold the subnet's bouncer role.
    #[serde(default = "one")]
    pub bouncers: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetStatus {
    pub vni: Option<Vni>,
    pub router_ip: Option<Ipv4Addr>,
    pub router_mac: Option<MacAddr>,
    #[serde(default)]
    pub bouncer_gateways: Vec<String>,
}

/// A pod, by namespace and name: `namespace/name`, or `name` in the service's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl PodRef {
    /// The namespace, or `default` when the reference names none.
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }
}

impl FromStr for PodRef {
    type Err = ObjectError;
    fn from_str(s: &str) -> Result<Self, ObjectError> {
        let (namespace, name) = match s.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, s),
        };
        if let Some(ns) = namespace {
            check_name("namespace", ns)?;
        }
        check_name("name", name).map_err(|e| ObjectError::new("pod", format!("{s:?}: {e}")))?;
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        })
    }
}

impl TryFrom<String> for PodRef {
    type Error = ObjectError;
    fn try_from(s: String) -> Result<Self, ObjectError> {
        s.parse()
    }
}

impl From<PodRef> for String {
    fn from(pod: PodRef) -> String {
        pod.to_string()
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

const fn tcp() -> Protocol {
    Protocol::Tcp
}

/// One port of a service: clients connect to `port`, backends listen on `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// A virtual IP balanced over pods. Namespaced (default `default`).
///
/// Standalone, `backends` lists the pods; in Kubernetes mode the controller fills the
/// same field from the service's EndpointSlices. A pod that is not attached yet is
/// simply not a backend until it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub vpc: String,
    /// Allocated from the VPC's `serviceCidr` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub backends: Vec<PodRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    pub vip: Option<Ipv4Addr>,
    /// Addresses of the backends that are attached now.
    #[serde(default)]
    pub endpoints: Vec<Ipv4Addr>,
}

/// A gateway process: its underlay address and where its control service listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// `unix:///path/to/socket` or `https://host:port` (mutual TLS).
    pub control: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayStatus {
    /// The boot id the gateway last reported; a change means it lost its tables.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// Whether the gateway holds what the controller last computed for it.
    #[serde(default)]
    pub in_sync: bool,
    /// `Gateway.Apply` calls sent to it since the controller started.
    #[serde(default)]
    pub apply_calls: u64,
}

/// A worker node: where Geneve to its pods goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// One pod interface's allocation, made by `AttachEndpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub node: String,
    pub container_id: String,
    pub interface: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub vpc: String,
    pub subnet: String,
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

impl EndpointSpec {
    /// The attachment identity, which is also the stored name: `node/container/interface`.
    pub fn attachment(node: &str, container_id: &str, interface: &str) -> String {
        format!("{node}/{container_id}/{interface}")
    }
}

/// Status-free kinds use this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoStatus {}

pub type Vpc = Resource<VpcSpec, VpcStatus>;
pub type Subnet = Resource<SubnetSpec, SubnetStatus>;
pub type Service = Resource<ServiceSpec, ServiceStatus>;
pub type Gateway = Resource<GatewaySpec, GatewayStatus>;
pub type Node = Resource<NodeSpec, NoStatus>;
pub type EndpointAlloc = Resource<EndpointSpec, NoStatus>;

/// Any object, tagged by `kind` as in YAML and the CRDs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ClusterObject {
    Vpc(Vpc),
    Subnet(Subnet),
    Service(Service),
    Gateway(Gateway),
    Node(Node),
    Endpoint(EndpointAlloc),
}

/// The kinds, as `sluicectl get` and `ListObjects` name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Vpc,
    Subnet,
    Service,
    Gateway,
    Node,
    Endpoint,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Vpc,
        Kind::Subnet,
        Kind::Service,
        Kind::Gateway,
        Kind::Node,
        Kind::Endpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vpc => "Vpc",
            Self::Subnet => "Subnet",
            Self::Service => "Service",
            Self::Gateway => "Gateway",
            Self::Node => "Node",
            Self::Endpoint => "Endpoint",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ObjectError;
    fn from_str(s: &str) -> Result<Self, ObjectError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ObjectError::new(
                    "kind",
                    format!("{s:?} is not one of Vpc, Subnet, Service, Gateway, Node, Endpoint"),
                )
            })
    }
}

/// Names an object: its kind, and `name` or `namespace/name` for services.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

impl ClusterObject {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Vpc(_) => Kind::Vpc,
            Self::Subnet(_) => Kind::Subnet,
            Self::Service(_) => Kind::Service,
            Self::Gateway(_) => Kind::Gateway,
            Self::Node(_) => Kind::Node,
            Self::Endpoint(_) => Kind::Endpoint,
        }
    }

    fn metadata(&self) -> &Metadata {
        match self {
            Self::Vpc(o) => &o.metadata,
            Self::Subnet(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::Node(o) => &o.metadata,
            Self::Endpoint(o) => &o.metadata,
        }
    }

    fn api_version(&self) -> &str {
        match self {
            Self::Vpc(o) => &o.api_version,
            Self::Subnet(o) => &o.api_version,
            Self::Service(o) => &o.api_version,
            Self::Gateway(o) => &o.api_version,
            Self::Node(o) => &o.api_version,
            Self::Endpoint(o) => &o.api_version,
        }
    }

    /// The stored name: `namespace/name` for services, `name` otherwise.
    pub fn reference(&self) -> ObjectRef {
        let meta = self.metadata();
        let name = match self {
            Self::Service(_) => service_key(meta),
            _ => meta.name.clone(),
        };
        ObjectRef {
            kind: self.kind(),
            name,
        }
    }

    /// The checks that need nothing but the object itself.
    pub fn validate(&self) -> Result<(), ObjectError> {
        if self.api_version() != API_VERSION {
            return Err(ObjectError::new(
                "apiVersion",
                format!("{:?} is not {API_VERSION}", self.api_version()),
            ));
        }
        let meta = self.metadata();
        if !matches!(self, Self::Endpoint(_)) {
            check_name("metadata.name", &meta.name)?;
        }
        match self {
            Self::Service(_) => {
                if let Some(ns) = &meta.namespace {
                    check_name("metadata.namespace", ns)?;
                }
            }
            _ if meta.namespace.is_some() => {
                return Err(ObjectError::new(
                    "metadata.namespace",
                    format!("a {} is cluster-scoped and has no namespace", self.kind()),
                ))
            }
            _ => {}
        }
        match self {
            Self::Vpc(v) => {
                let s = &v.spec;
                if s.cidr.overlaps(s.service_cidr) {
                    return Err(ObjectError::new(
                        "spec.serviceCidr",
                        format!("{} overlaps the VPC's cidr {}", s.service_cidr, s.cidr),
                    ));
                }
                if s.service_cidr.prefix_len() > 30 {
                    return Err(ObjectError::new(
                        "spec.serviceCidr",
                        format!("{} is smaller than /30", s.service_cidr),
                    ));
                }
                check_role_count("spec.dividers", s.dividers)
            }
            Self::Subnet(sub) => {
                let s = &sub.spec;
                check_name("spec.vpc", &s.vpc)?;
                if s.cidr.first_host().is_none() {
                    return Err(ObjectError::new(
                        "spec.cidr",
                        format!(
                            "{}: a subnet needs at least /30 (router plus one host)",
                            s.cidr
                        ),
                    ));
                }
                check_role_count("spec.bouncers", s.bouncers)
            }
            Self::Service(svc) => {
                let s = &svc.spec;
                check_name("spec.vpc", &s.vpc)?;
                if s.ports.is_empty() {
                    return Err(ObjectError::new("spec.ports", "needs at least one port"));
                }
                for (i, p) in s.ports.iter().enumerate() {
                    if p.port == 0 {
                        return Err(ObjectError::new(
                            format!("spec.ports[{i}].port"),
                            "must not be 0",
                        ));
                    }
                    if p.target_port == Some(0) {
                        return Err(ObjectError::new(
                            format!("spec.ports[{i}].targetPort"),
                            "must not be 0",
                        ));
                    }
                    if let Some(j) = s.ports[..i]
                        .iter()
                        .position(|o| o.port == p.port && o.protocol == p.protocol)
                    {
                        return Err(ObjectError::new(
                            format!("spec.ports[{i}]"),
                            format!("{}/{} repeats spec.ports[{j}]", p.port, p.protocol),
                        ));
                    }
                }
                if let Some(vip) = s.vip {
                    check_unicast("spec.vip", vip)?;
                }
                for (i, pod) in s.backends.iter().enumerate() {
                    if s.backends[..i].contains(pod) {
                        return Err(ObjectError::new(
                            format!("spec.backends[{i}]"),
                            format!("{pod} is listed twice"),
                        ));
                    }
                }
                Ok(())
            }
            Self::Gateway(g) => {
                check_unicast("spec.ip", g.spec.ip)?;
                g.spec
                    .mac
                    .check_station("spec.mac")
                    .map_err(|e| ObjectError::new(e.field, e.reason))?;
                g.spec
                    .control
                    .parse::<Target>()
                    .map(|_| ())
                    .map_err(|e| ObjectError::new("spec.control", e.to_string()))
            }
            Self::Node(n) => {
                check_unicast("spec.ip", n.spec.ip)?;
                n.spec
                    .mac
                    .check_station("spec.mac")
                    .map_err(|e| ObjectError::new(e.field, e.reason))
            }
            Self::Endpoint(_) => Ok(()),
        }
    }
}

/// `namespace/name` of a service, the namespace defaulting to `default`.
pub fn service_key(meta: &Metadata) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        meta.name
    )
}

/// A DNS label as Kubernetes names objects: 1 to 63 of `a-z`, `0-9`, `-`, not starting or
/// ending with `-`. Also allows `.` (DNS subdomain) for node names.
pub fn check_name(field: &str, name: &str) -> Result<(), ObjectError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ObjectError::new(
            field,
            format!("{name:?} is not a name: lowercase letters, digits, '-' and '.'"),
        ))
    }
}

fn check_role_count(field: &str, count: u32) -> Result<(), ObjectError> {
    if count == 0 || count > MAX_ROLE_GATEWAYS {
        return Err(ObjectError::new(
            field,
            format!("{count} is outside 1..={MAX_ROLE_GATEWAYS}"),
        ));
    }
    Ok(())
}

fn check_unicast(field: &str, ip: Ipv4Addr) -> Result<(), ObjectError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ObjectError::new(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}

/// A YAML manifest that does not hold cluster objects.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: {source}")]
    Yaml {
        document: usize,
        source: serde_norway::Error,
    },
    #[error("document {document} ({object}): {source}")]
    Invalid {
        document: usize,
        object: ObjectRef,
        source: ObjectError,
    },
}

/// Parses a multi-document YAML manifest: one object per document (empty documents are
/// skipped), each checked on its own. A document's `status` is dropped unread: the
/// controller owns it, and a `kubectl get -o yaml` of a CRD carries one in the CRD's own
/// form (conditions, `observedGeneration`).
pub fn parse_manifest(text: &str) -> Result<Vec<ClusterObject>, ManifestError> {
    let mut objects = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut value =
            serde_norway::Value::deserialize(document).map_err(|source| ManifestError::Yaml {
                document: i + 1,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        if let Some(map) = value.as_mapping_mut() {
            map.remove("status");
        }
        let object: ClusterObject =
            serde_norway::from_value(value).map_err(|source| ManifestError::Yaml {
                document: i + 1,
                source,
            })?;
        object.validate().map_err(|source| ManifestError::Invalid {
            document: i + 1,
            object: object.reference(),
            source,
        })?;
        objects.push(object);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "\
apiVersion: sluice.dev/v1alpha1
kind: Vpc
metadata: {name: blue}
spec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16}
---
kind: Subnet
metadata: {name: blue-a}
spec: {vpc: blue, cidr: 10.0.1.0/24, bouncers: 2}
---
kind: Service
metadata: {name: web, namespace: shop}
spec:
  vpc: blue
  ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}]
  backends: [shop/web-0, web-1]
";

    #[test]
    fn manifests_read_with_defaults() {
        let objects = parse_manifest(CLUSTER).unwrap();
        assert_eq!(objects.len(), 3);
        let ClusterObject::Vpc(vpc) = &objects[0] else {
            panic!("{:?}", objects[0]);
        };
        assert_eq!(vpc.spec.dividers, 1, "dividers default to 1");
        let ClusterObject::Service(svc) = &objects[2] else {
            panic!("{:?}", objects[2]);
        };
        assert_eq!(objects[2].reference().name, "shop/web");
        assert_eq!(svc.spec.ports[0].target(), 8080);
        assert_eq!(svc.spec.ports[1].target(), 53);
        assert_eq!(svc.spec.ports[1].protocol, Protocol::Udp);
        assert_eq!(svc.spec.backends[1].namespace_or("shop"), "shop");
        // Round trip through JSON, the gRPC form.
        for o in &objects {
            let json = serde_json::to_string(o).unwrap();
            assert_eq!(&serde_json::from_str::<ClusterObject>(&json).unwrap(), o);
        }
    }

    #[test]
    fn bad_objects_name_their_field() {
        let cases = [
            (
                "kind: Vpc\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/16, serviceCidr: 10.0.128.0/20}\n",
                "spec.serviceCidr",
            ),
            (
                "kind: Vpc\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/16, serviceCidr: 10.9.0.0/16, dividers: 0}\n",
                "spec.dividers",
            ),
            (
                "kind: Subnet\nmetadata: {name: Bad_Name}\nspec: {vpc: b, cidr: 10.0.0.0/24}\n",
                "metadata.name",
            ),
            (
                "kind: Subnet\nmetadata: {name: s, namespace: x}\nspec: {vpc: b, cidr: 10.0.0.0/24}\n",
                "metadata.namespace",
            ),
            (
                "kind: Service\nmetadata: {name: s}\nspec: {vpc: b, ports: [{port: 80}, {port: 80}]}\n",
                "spec.ports[1]",
            ),
            (
                "kind: Gateway\nmetadata: {name: g}\nspec: {ip: 198.18.0.1, mac: \"02:00:00:00:00:01\", control: \"tcp://x\"}\n",
                "spec.control",
            ),
        ];
        for (text, field) in cases {
            match parse_manifest(text) {
                Err(ManifestError::Invalid { source, .. }) => {
                    assert_eq!(source.field, field, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let err = parse_manifest("kind: Vpc\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/16, serviceCidr: 10.9.0.0/16, dividerz: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `dividerz`"), "{err}");
        let err = parse_manifest("kind: Router\nmetadata: {name: b}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `Router`"), "{err}");
    }

    /// What `kubectl get vpc blue -o yaml` prints applies as it is: every ObjectMeta field
    /// is read, only the name kept, and the CRD's status dropped.
    #[test]
    fn kubernetes_metadata_and_status_are_accepted_and_dropped() {
        let text = r#"
apiVersion: sluice.dev/v1alpha1
kind: Vpc
metadata:
  name: blue
  labels: {tenant: blue, app.kubernetes.io/part-of: shop}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"sluice.dev/v1alpha1"}'
  uid: 5f0c8a52-2f4e-4c1e-9d7a-0c6f3f1b2a11
  resourceVersion: "4711"
  generation: 3
  creationTimestamp: "2025-01-02T03:04:05Z"
  deletionTimestamp: null
  finalizers: [sluice.dev/cleanup]
  managedFields:
    - {manager: kubectl, operation: Apply, apiVersion: sluice.dev/v1alpha1, fieldsType: FieldsV1}
spec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16, dividers: 2}
status:
  conditions: [{type: Ready, status: "True", reason: Placed, message: "", lastTransitionTime: "2025-01-02T03:04:06Z"}]
  observedGeneration: 3
  vni: 1
"#;
        let objects = parse_manifest(text).unwrap();
        let plain = parse_manifest(
            "kind: Vpc\nmetadata: {name: blue}\nspec: {cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16, dividers: 2}\n",
        )
        .unwrap();
        assert_eq!(objects, plain, "only the name and the spec count");
        // Stored and sent over gRPC without them.
        let json = serde_json::to_string(&objects[0]).unwrap();
        assert!(
            !json.contains("labels") && !json.contains("status"),
            "{json}"
        );
        // `creationTimestamp: null`, as `kubectl create --dry-run=client -o yaml` prints it.
        parse_manifest("kind: Subnet\nmetadata: {name: s, creationTimestamp: null, labels: null}\nspec: {vpc: b, cidr: 10.0.0.0/24}\n")
            .unwrap();

        let refused = [
            (
                "metadata: {name: b, lables: {a: b}}",
                "unknown field `lables`",
            ),
            (
                "metadata: {name: b, labels: {a: 1}}",
                "invalid type: integer",
            ),
            ("metadata: {name: b, labels: [a]}", "invalid type: sequence"),
            ("metadata: {labels: {a: b}}", "missing field `name`"),
        ];
        for (meta, error) in refused {
            let text = format!(
                "kind: Vpc\n{meta}\nspec: {{cidr: 10.0.0.0/16, serviceCidr: 10.96.0.0/16}}\n"
            );
            let err = parse_manifest(&text).unwrap_err().to_string();
            assert!(err.contains(error), "{meta}: {err}");
        }
    }
}
