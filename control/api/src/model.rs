//! The objects a gateway's tables hold, with the checks that need nothing but the object
//! itself (well-formed CIDRs, unicast MACs, VNI range). Checks that relate objects to each
//! other (a subnet inside its VPC, an endpoint inside a subnet) belong to whoever holds
//! the tables, because they depend on state.
//!
//! Field names are the ones the YAML files, the protobuf messages and the Kubernetes CRDs
//! use (camelCase on the wire, snake_case in Rust).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An object or a field failed its own checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field, as spelled in YAML and protobuf (`cidr`, `routerMac`, `backends[2].port`).
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A Geneve virtual network identifier: 24 bits, 0 is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    pub const MAX: u32 = 0x00FF_FFFF;

    pub fn new(value: u32) -> Result<Self, FieldError> {
        if value == 0 || value > Self::MAX {
            return Err(FieldError::new(
                "vni",
                format!("{value} is outside 1..={} (24 bits, 0 reserved)", Self::MAX),
            ));
        }
        Ok(Self(value))
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = FieldError;
    fn try_from(value: u32) -> Result<Self, FieldError> {
        Self::new(value)
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An Ethernet MAC address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: Self = Self([0; 6]);
    pub const BROADCAST: Self = Self([0xff; 6]);

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    pub const fn is_unicast(self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// A MAC a table may hold for a host, a router or an endpoint: unicast and not zero.
    pub fn check_station(self, field: &str) -> Result<(), FieldError> {
        if self == Self::ZERO {
            return Err(FieldError::new(field, "must not be 00:00:00:00:00:00"));
        }
        if !self.is_unicast() {
            return Err(FieldError::new(
                field,
                format!("{self} is a multicast address"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "mac",
                format!("{s:?} is not a MAC address like 02:00:00:00:00:01"),
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

/// An IPv4 prefix, written `10.0.1.0/24`. Host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, FieldError> {
        if prefix_len > 32 {
            return Err(FieldError::new(
                "cidr",
                format!("prefix length /{prefix_len} exceeds /32"),
            ));
        }
        let cidr = Self { addr, prefix_len };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(FieldError::new(
                "cidr",
                format!(
                    "{addr}/{prefix_len} has host bits set; the network is {}",
                    Self::truncate(addr, prefix_len)
                ),
            ));
        }
        Ok(cidr)
    }

    /// The prefix of length `prefix_len` containing `addr` (host bits cleared).
    pub fn truncate(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        let mask = Self::mask_for(prefix_len);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        }
    }

    pub const fn mask_for(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len as u32)
        }
    }

    pub const fn addr(self) -> Ipv4Addr {
        self.addr
    }

    pub const fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    pub const fn mask(self) -> u32 {
        Self::mask_for(self.prefix_len)
    }

    pub fn first(self) -> u32 {
        u32::from(self.addr)
    }

    pub fn last(self) -> u32 {
        u32::from(self.addr) | !self.mask()
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies wholly inside `self`.
    pub fn covers(self, other: Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The first host address (the subnet's virtual router), for prefixes up to /30.
    pub fn first_host(self) -> Option<Ipv4Addr> {
        (self.prefix_len <= 30).then(|| Ipv4Addr::from(self.first() + 1))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "cidr",
                format!("{s:?} is not an IPv4 CIDR like 10.0.0.0/16"),
            )
        };
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(addr, len)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// The transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IANA protocol number carried in the IPv4 header.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// An underlay host (a worker or a gateway) as the gateway reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Host {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// A tenant's virtual network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vpc {
    pub vni: Vni,
    pub cidr: Ipv4Cidr,
    /// Where the VPC's service virtual IPs live; disjoint from `cidr`.
    pub service_cidr: Ipv4Cidr,
    /// Underlay addresses of the gateways holding the divider role for this VPC.
    pub dividers: Vec<Ipv4Addr>,
}

/// A subnet of a VPC. Its virtual router is the first host address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnet {
    pub vni: Vni,
    pub cidr: Ipv4Cidr,
    pub router_mac: MacAddr,
    /// Underlay addresses of the gateways holding the bouncer role for this subnet.
    pub bouncers: Vec<Ipv4Addr>,
}

impl Subnet {
    /// The virtual router's address: the first host address of the CIDR.
    pub fn router_ip(&self) -> Ipv4Addr {
        self.cidr.first_host().unwrap_or(self.cidr.addr())
    }
}

/// A pod's interface in a VPC and the underlay host it lives on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub host: Ipv4Addr,
}

/// One backend of a service. Weight 0 drains it: it keeps no share of new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    #[serde(default = "Backend::default_weight")]
    pub weight: u32,
}

impl Backend {
    pub const MAX_WEIGHT: u32 = 10_000;

    const fn default_weight() -> u32 {
        1
    }
}

/// A service virtual IP and port, balanced over weighted backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub vni: Vni,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

impl Service {
    /// At most this many backends per service (the Maglev table indexes them with a u16).
    pub const MAX_BACKENDS: usize = 4096;
}

/// Anything a transaction may upsert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "PascalCase")]
pub enum Object {
    Host(Host),
    Vpc(Vpc),
    Subnet(Subnet),
    Endpoint(Endpoint),
    Service(Service),
}

/// The five tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Host,
    Vpc,
    Subnet,
    Endpoint,
    Service,
}

/// What identifies an object in its table; a delete names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "PascalCase")]
pub enum ObjectKey {
    Host {
        ip: Ipv4Addr,
    },
    Vpc {
        vni: Vni,
    },
    Subnet {
        vni: Vni,
        cidr: Ipv4Cidr,
    },
    Endpoint {
        vni: Vni,
        ip: Ipv4Addr,
    },
    Service {
        vni: Vni,
        vip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    },
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { ip } => write!(f, "host {ip}"),
            Self::Vpc { vni } => write!(f, "VPC {vni}"),
            Self::Subnet { vni, cidr } => write!(f, "subnet {cidr} in VNI {vni}"),
            Self::Endpoint { vni, ip } => write!(f, "endpoint {ip} in VNI {vni}"),
            Self::Service {
                vni,
                vip,
                port,
                protocol,
            } => write!(f, "service {vip}:{port}/{protocol} in VNI {vni}"),
        }
    }
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Self::Host(_) => ObjectKind::Host,
            Self::Vpc(_) => ObjectKind::Vpc,
            Self::Subnet(_) => ObjectKind::Subnet,
            Self::Endpoint(_) => ObjectKind::Endpoint,
            Self::Service(_) => ObjectKind::Service,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Self::Host(h) => ObjectKey::Host { ip: h.ip },
            Self::Vpc(v) => ObjectKey::Vpc { vni: v.vni },
            Self::Subnet(s) => ObjectKey::Subnet {
                vni: s.vni,
                cidr: s.cidr,
            },
            Self::Endpoint(e) => ObjectKey::Endpoint {
                vni: e.vni,
                ip: e.ip,
            },
            Self::Service(s) => ObjectKey::Service {
                vni: s.vni,
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
            },
        }
    }

    /// The checks that need nothing but the object itself.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            Self::Host(h) => {
                check_underlay_ip("ip", h.ip)?;
                h.mac.check_station("mac")
            }
            Self::Vpc(v) => {
                if v.cidr.overlaps(v.service_cidr) {
                    return Err(FieldError::new(
                        "serviceCidr",
                        format!("{} overlaps the VPC's cidr {}", v.service_cidr, v.cidr),
                    ));
                }
                check_gateway_list("dividers", &v.dividers)
            }
            Self::Subnet(s) => {
                if s.cidr.first_host().is_none() {
                    return Err(FieldError::new(
                        "cidr",
                        format!(
                            "{}: a subnet needs at least /30 (router plus one host)",
                            s.cidr
                        ),
                    ));
                }
                s.router_mac.check_station("routerMac")?;
                check_gateway_list("bouncers", &s.bouncers)
            }
            Self::Endpoint(e) => {
                check_tenant_ip("ip", e.ip)?;
                e.mac.check_station("mac")?;
                check_underlay_ip("host", e.host)
            }
            Self::Service(s) => {
                check_tenant_ip("vip", s.vip)?;
                if s.port == 0 {
                    return Err(FieldError::new("port", "must not be 0"));
                }
                if s.backends.len() > Service::MAX_BACKENDS {
                    return Err(FieldError::new(
                        "backends",
                        format!(
                            "{} backends exceed the limit of {}",
                            s.backends.len(),
                            Service::MAX_BACKENDS
                        ),
                    ));
                }
                for (i, b) in s.backends.iter().enumerate() {
                    check_tenant_ip(&format!("backends[{i}].ip"), b.ip)?;
                    if b.port == 0 {
                        return Err(FieldError::new(
                            format!("backends[{i}].port"),
                            "must not be 0",
                        ));
                    }
                    if b.weight > Backend::MAX_WEIGHT {
                        return Err(FieldError::new(
                            format!("backends[{i}].weight"),
                            format!(
                                "{} exceeds the maximum weight {}",
                                b.weight,
                                Backend::MAX_WEIGHT
                            ),
                        ));
                    }
                    if let Some(j) = s.backends[..i]
                        .iter()
                        .position(|o| o.ip == b.ip && o.port == b.port)
                    {
                        return Err(FieldError::new(
                            format!("backends[{i}]"),
                            format!("{}:{} repeats backends[{j}]", b.ip, b.port),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

fn check_tenant_ip(field: &str, ip: Ipv4Addr) -> Result<(), FieldError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(FieldError::new(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}

fn check_underlay_ip(field: &str, ip: Ipv4Addr) -> Result<(), FieldError> {
    check_tenant_ip(field, ip)
}

fn check_gateway_list(field: &str, gateways: &[Ipv4Addr]) -> Result<(), FieldError> {
    if gateways.is_empty() {
        return Err(FieldError::new(field, "needs at least one gateway"));
    }
    for (i, ip) in gateways.iter().enumerate() {
        check_underlay_ip(&format!("{field}[{i}]"), *ip)?;
        if gateways[..i].contains(ip) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{ip} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A set of changes applied whole or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transaction {
    #[serde(default)]
    pub upserts: Vec<Object>,
    #[serde(default)]
    pub deletes: Vec<ObjectKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_rejects_host_bits() {
        let c: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains(Ipv4Addr::new(10, 1, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 0)));
        let err = "10.1.0.1/16".parse::<Ipv4Cidr>().unwrap_err();
        assert!(err.reason.contains("host bits"), "{err}");
        assert!("10.1.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.1.0.0".parse::<Ipv4Cidr>().is_err());
        let zero: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains(Ipv4Addr::new(255, 1, 2, 3)));
    }

    #[test]
    fn cidr_covers_and_overlaps() {
        let a: Ipv4Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.0.4.0/24".parse().unwrap();
        let c: Ipv4Cidr = "10.1.0.0/24".parse().unwrap();
        assert!(a.covers(b) && !b.covers(a));
        assert!(a.overlaps(b) && b.overlaps(a));
        assert!(!a.overlaps(c));
        assert_eq!(b.first_host(), Some(Ipv4Addr::new(10, 0, 4, 1)));
        assert_eq!(b.last(), u32::from(Ipv4Addr::new(10, 0, 4, 255)));
    }

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let m: MacAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "zz:00:00:00:00:00",
            "2:0:0:0:0:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr([1, 0, 0, 0, 0, 1]).check_station("mac").is_err());
        assert!(MacAddr::ZERO.check_station("mac").is_err());
    }

    #[test]
    fn vni_range() {
        assert!(Vni::new(0).is_err());
        assert!(Vni::new(1).is_ok());
        assert!(Vni::new(Vni::MAX).is_ok());
        assert!(Vni::new(Vni::MAX + 1).is_err());
    }

    #[test]
    fn objects_check_their_own_fields() {
        let vni = Vni::new(7).unwrap();
        let tiny = Object::Subnet(Subnet {
            vni,
            cidr: "10.0.0.0/31".parse().unwrap(),
            router_mac: "02:00:00:00:00:01".parse().unwrap(),
            bouncers: vec![Ipv4Addr::new(198, 18, 0, 1)],
        });
        assert_eq!(tiny.validate().unwrap_err().field, "cidr");
        let svc = Object::Service(Service {
            vni,
            vip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            protocol: Protocol::Tcp,
            backends: vec![
                Backend {
                    ip: Ipv4Addr::new(10, 0, 0, 2),
                    port: 8080,
                    weight: 1,
                },
                Backend {
                    ip: Ipv4Addr::new(10, 0, 0, 2),
                    port: 8080,
                    weight: 2,
                },
            ],
        });
        assert_eq!(svc.validate().unwrap_err().field, "backends[1]");
        let vpc = Object::Vpc(Vpc {
            vni,
            cidr: "10.0.0.0/16".parse().unwrap(),
            service_cidr: "10.0.128.0/20".parse().unwrap(),
            dividers: vec![Ipv4Addr::new(198, 18, 0, 1)],
        });
        assert_eq!(vpc.validate().unwrap_err().field, "serviceCidr");
    }

    #[test]
    fn key_names_read_well() {
        let key = ObjectKey::Service {
            vni: Vni::new(100).unwrap(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            protocol: Protocol::Udp,
        };
        assert_eq!(key.to_string(), "service 10.96.0.10:53/udp in VNI 100");
    }
}
