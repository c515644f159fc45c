//! Protobuf messages to validated domain types and back.
//!
//! Inbound (`TryFrom<pb::…>`): every field is parsed and checked on its own, and an error
//! names the field by its full path in the request, spelled as in YAML
//! (`upserts[3].subnet.routerMac: "02:00" is not a MAC address ...`). Checks that relate
//! objects to each other or to table state are not done here: they belong to whoever
//! holds the tables. Outbound (`From<&model::…>`) cannot fail.

use std::net::Ipv4Addr;

use crate::model::{
    Backend, Endpoint, FieldError, Host, Ipv4Cidr, MacAddr, Object, ObjectKey, Protocol, Service,
    Subnet, Transaction, Vni, Vpc,
};
use crate::proto::v1 as pb;

/// A protobuf message that does not describe a valid domain object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    /// The field's path in the request, YAML spelling (`upserts[3].subnet.cidr`).
    pub field: String,
    pub reason: String,
}

impl ConvertError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Puts `outer` in front of the path: `cidr` becomes `upserts[3].subnet.cidr`.
    fn within(mut self, outer: &str) -> Self {
        self.field = if self.field.is_empty() {
            outer.to_owned()
        } else {
            format!("{outer}.{}", self.field)
        };
        self
    }

    /// A domain check's error, its field renamed to the path the request used.
    fn from_field(field: &str, error: FieldError) -> Self {
        Self::new(field, error.reason)
    }
}

fn ip(field: &str, text: &str) -> Result<Ipv4Addr, ConvertError> {
    text.parse().map_err(|_| {
        ConvertError::new(
            field,
            format!("{text:?} is not an IPv4 address like 10.0.0.1"),
        )
    })
}

fn ips(field: &str, texts: &[String]) -> Result<Vec<Ipv4Addr>, ConvertError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| ip(&format!("{field}[{i}]"), t))
        .collect()
}

fn mac(field: &str, text: &str) -> Result<MacAddr, ConvertError> {
    text.parse().map_err(|e| ConvertError::from_field(field, e))
}

fn cidr(field: &str, text: &str) -> Result<Ipv4Cidr, ConvertError> {
    text.parse().map_err(|e| ConvertError::from_field(field, e))
}

fn vni(value: u32) -> Result<Vni, ConvertError> {
    Vni::new(value).map_err(|e| ConvertError::from_field("vni", e))
}

fn port(field: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::new(field, format!("{value} exceeds 65535")))
}

fn protocol(field: &str, value: i32) -> Result<Protocol, ConvertError> {
    match pb::Protocol::try_from(value) {
        Ok(pb::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(pb::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(pb::Protocol::Unspecified) => Err(ConvertError::new(
            field,
            "not set: must be PROTOCOL_TCP or PROTOCOL_UDP",
        )),
        Err(_) => Err(ConvertError::new(
            field,
            format!("{value} is not a known protocol (PROTOCOL_TCP or PROTOCOL_UDP)"),
        )),
    }
}

/// The protobuf enum value of a protocol.
pub fn protocol_to_pb(protocol: Protocol) -> pb::Protocol {
    match protocol {
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
    }
}

impl TryFrom<&pb::Host> for Host {
    type Error = ConvertError;
    fn try_from(m: &pb::Host) -> Result<Self, ConvertError> {
        Ok(Self {
            ip: ip("ip", &m.ip)?,
            mac: mac("mac", &m.mac)?,
        })
    }
}

impl TryFrom<&pb::Vpc> for Vpc {
    type Error = ConvertError;
    fn try_from(m: &pb::Vpc) -> Result<Self, ConvertError> {
        Ok(Self {
            vni: vni(m.vni)?,
            cidr: cidr("cidr", &m.cidr)?,
            service_cidr: cidr("serviceCidr", &m.service_cidr)?,
            dividers: ips("dividers", &m.dividers)?,
        })
    }
}

impl TryFrom<&pb::Subnet> for Subnet {
    type Error = ConvertError;
    fn try_from(m: &pb::Subnet) -> Result<Self, ConvertError> {
        Ok(Self {
            vni: vni(m.vni)?,
            cidr: cidr("cidr", &m.cidr)?,
            router_mac: mac("routerMac", &m.router_mac)?,
            bouncers: ips("bouncers", &m.bouncers)?,
        })
    }
}

impl TryFrom<&pb::Endpoint> for Endpoint {
    type Error = ConvertError;
    fn try_from(m: &pb::Endpoint) -> Result<Self, ConvertError> {
        Ok(Self {
            vni: vni(m.vni)?,
            ip: ip("ip", &m.ip)?,
            mac: mac("mac", &m.mac)?,
            host: ip("host", &m.host)?,
        })
    }
}

impl TryFrom<&pb::Backend> for Backend {
    type Error = ConvertError;
    fn try_from(m: &pb::Backend) -> Result<Self, ConvertError> {
        Ok(Self {
            ip: ip("ip", &m.ip)?,
            port: port("port", m.port)?,
            // Absent means 1, as serde's default for YAML.
            weight: m.weight.unwrap_or(1),
        })
    }
}

impl TryFrom<&pb::Service> for Service {
    type Error = ConvertError;
    fn try_from(m: &pb::Service) -> Result<Self, ConvertError> {
        let backends = m
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Backend::try_from(b).map_err(|e| e.within(&format!("backends[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            vni: vni(m.vni)?,
            vip: ip("vip", &m.vip)?,
            port: port("port", m.port)?,
            protocol: protocol("protocol", m.protocol)?,
            backends,
        })
    }
}

impl TryFrom<&pb::Object> for Object {
    type Error = ConvertError;
    fn try_from(m: &pb::Object) -> Result<Self, ConvertError> {
        use pb::object::Kind;
        match &m.kind {
            Some(Kind::Host(h)) => Host::try_from(h)
                .map(Object::Host)
                .map_err(|e| e.within("host")),
            Some(Kind::Vpc(v)) => Vpc::try_from(v)
                .map(Object::Vpc)
                .map_err(|e| e.within("vpc")),
            Some(Kind::Subnet(s)) => Subnet::try_from(s)
                .map(Object::Subnet)
                .map_err(|e| e.within("subnet")),
            Some(Kind::Endpoint(e)) => Endpoint::try_from(e)
                .map(Object::Endpoint)
                .map_err(|e| e.within("endpoint")),
            Some(Kind::Service(s)) => Service::try_from(s)
                .map(Object::Service)
                .map_err(|e| e.within("service")),
            None => Err(ConvertError::new(
                "",
                "names no object: set one of host, vpc, subnet, endpoint, service",
            )),
        }
    }
}

impl TryFrom<&pb::ObjectKey> for ObjectKey {
    type Error = ConvertError;
    fn try_from(m: &pb::ObjectKey) -> Result<Self, ConvertError> {
        use pb::object_key::Kind;
        match &m.kind {
            Some(Kind::Host(k)) => Ok(ObjectKey::Host {
                ip: ip("host.ip", &k.ip)?,
            }),
            Some(Kind::Vpc(k)) => Ok(ObjectKey::Vpc {
                vni: vni(k.vni).map_err(|e| e.within("vpc"))?,
            }),
            Some(Kind::Subnet(k)) => Ok(ObjectKey::Subnet {
                vni: vni(k.vni).map_err(|e| e.within("subnet"))?,
                cidr: cidr("subnet.cidr", &k.cidr)?,
            }),
            Some(Kind::Endpoint(k)) => Ok(ObjectKey::Endpoint {
                vni: vni(k.vni).map_err(|e| e.within("endpoint"))?,
                ip: ip("endpoint.ip", &k.ip)?,
            }),
            Some(Kind::Service(k)) => Ok(ObjectKey::Service {
                vni: vni(k.vni).map_err(|e| e.within("service"))?,
                vip: ip("service.vip", &k.vip)?,
                port: port("service.port", k.port)?,
                protocol: protocol("service.protocol", k.protocol)?,
            }),
            None => Err(ConvertError::new(
                "",
                "names no key: set one of host, vpc, subnet, endpoint, service",
            )),
        }
    }
}

impl TryFrom<&pb::Transaction> for Transaction {
    type Error = ConvertError;
    fn try_from(m: &pb::Transaction) -> Result<Self, ConvertError> {
        let upserts = m
            .upserts
            .iter()
            .enumerate()
            .map(|(i, o)| Object::try_from(o).map_err(|e| e.within(&format!("upserts[{i}]"))))
            .collect::<Result<_, _>>()?;
        let deletes = m
            .deletes
            .iter()
            .enumerate()
            .map(|(i, k)| ObjectKey::try_from(k).map_err(|e| e.within(&format!("deletes[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { upserts, deletes })
    }
}

fn texts(ips: &[Ipv4Addr]) -> Vec<String> {
    ips.iter().map(ToString::to_string).collect()
}

impl From<&Object> for pb::Object {
    fn from(object: &Object) -> Self {
        use pb::object::Kind;
        let kind = match object {
            Object::Host(h) => Kind::Host(pb::Host {
                ip: h.ip.to_string(),
                mac: h.mac.to_string(),
            }),
            Object::Vpc(v) => Kind::Vpc(pb::Vpc {
                vni: v.vni.get(),
                cidr: v.cidr.to_string(),
                service_cidr: v.service_cidr.to_string(),
                dividers: texts(&v.dividers),
            }),
            Object::Subnet(s) => Kind::Subnet(pb::Subnet {
                vni: s.vni.get(),
                cidr: s.cidr.to_string(),
                router_mac: s.router_mac.to_string(),
                bouncers: texts(&s.bouncers),
            }),
            Object::Endpoint(e) => Kind::Endpoint(pb::Endpoint {
                vni: e.vni.get(),
                ip: e.ip.to_string(),
                mac: e.mac.to_string(),
                host: e.host.to_string(),
            }),
            Object::Service(s) => Kind::Service(pb::Service {
                vni: s.vni.get(),
                vip: s.vip.to_string(),
                port: u32::from(s.port),
                protocol: protocol_to_pb(s.protocol).into(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| pb::Backend {
                        ip: b.ip.to_string(),
                        port: u32::from(b.port),
                        weight: Some(b.weight),
                    })
                    .collect(),
            }),
        };
        Self { kind: Some(kind) }
    }
}

impl From<&ObjectKey> for pb::ObjectKey {
    fn from(key: &ObjectKey) -> Self {
        use pb::object_key::Kind;
        let kind = match *key {
            ObjectKey::Host { ip } => Kind::Host(pb::HostKey { ip: ip.to_string() }),
            ObjectKey::Vpc { vni } => Kind::Vpc(pb::VpcKey { vni: vni.get() }),
            ObjectKey::Subnet { vni, cidr } => Kind::Subnet(pb::SubnetKey {
                vni: vni.get(),
                cidr: cidr.to_string(),
            }),
            ObjectKey::Endpoint { vni, ip } => Kind::Endpoint(pb::EndpointKey {
                vni: vni.get(),
                ip: ip.to_string(),
            }),
            ObjectKey::Service {
                vni,
                vip,
                port,
                protocol,
            } => Kind::Service(pb::ServiceKey {
                vni: vni.get(),
                vip: vip.to_string(),
                port: u32::from(port),
                protocol: protocol_to_pb(protocol).into(),
            }),
        };
        Self { kind: Some(kind) }
    }
}

impl From<&Transaction> for pb::Transaction {
    fn from(txn: &Transaction) -> Self {
        Self {
            upserts: txn.upserts.iter().map(Into::into).collect(),
            deletes: txn.deletes.iter().map(Into::into).collect(),
        }
    }
}

/// The table an object lives in.
pub fn kind_of(object: &Object) -> pb::Kind {
    match object {
        Object::Host(_) => pb::Kind::Host,
        Object::Vpc(_) => pb::Kind::Vpc,
        Object::Subnet(_) => pb::Kind::Subnet,
        Object::Endpoint(_) => pb::Kind::Endpoint,
        Object::Service(_) => pb::Kind::Service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(cidr: &str, router_mac: &str) -> pb::Object {
        pb::Object {
            kind: Some(pb::object::Kind::Subnet(pb::Subnet {
                vni: 100,
                cidr: cidr.into(),
                router_mac: router_mac.into(),
                bouncers: vec!["198.18.0.1".into()],
            })),
        }
    }

    fn service(port: u32, protocol: i32, backend_ip: &str) -> pb::Object {
        pb::Object {
            kind: Some(pb::object::Kind::Service(pb::Service {
                vni: 100,
                vip: "10.96.0.1".into(),
                port,
                protocol,
                backends: vec![
                    pb::Backend {
                        ip: "10.0.1.2".into(),
                        port: 8080,
                        weight: None,
                    },
                    pb::Backend {
                        ip: backend_ip.into(),
                        port: 8080,
                        weight: Some(0),
                    },
                ],
            })),
        }
    }

    fn error(upserts: Vec<pb::Object>) -> String {
        Transaction::try_from(&pb::Transaction {
            upserts,
            deletes: vec![],
        })
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn errors_name_the_field_path() {
        let ok = subnet("10.0.1.0/24", "02:aa:00:00:01:01");
        let tcp = pb::Protocol::Tcp as i32;
        let cases = [
            (
                vec![ok.clone(), subnet("10.0.0.0/33", "02:aa:00:00:01:01")],
                "upserts[1].subnet.cidr: prefix length /33 exceeds /32",
            ),
            (
                vec![subnet("10.0.1.0/24", "02:aa")],
                "upserts[0].subnet.routerMac: \"02:aa\" is not a MAC address",
            ),
            (
                vec![ok.clone(), ok.clone(), service(70_000, tcp, "10.0.1.3")],
                "upserts[2].service.port: 70000 exceeds 65535",
            ),
            (
                vec![service(80, 0, "10.0.1.3")],
                "upserts[0].service.protocol: not set",
            ),
            (
                vec![service(80, 9, "10.0.1.3")],
                "upserts[0].service.protocol: 9 is not a known protocol",
            ),
            (
                vec![service(80, tcp, "10.0.1")],
                "upserts[0].service.backends[1].ip: \"10.0.1\" is not an IPv4 address",
            ),
            (
                vec![pb::Object { kind: None }],
                "upserts[0]: names no object",
            ),
        ];
        for (upserts, want) in cases {
            let got = error(upserts);
            assert!(got.starts_with(want), "got {got:?}, want {want:?}...");
        }
        let bad_key = pb::Transaction {
            upserts: vec![],
            deletes: vec![pb::ObjectKey {
                kind: Some(pb::object_key::Kind::Vpc(pb::VpcKey { vni: 1 << 24 })),
            }],
        };
        let got = Transaction::try_from(&bad_key).unwrap_err().to_string();
        assert!(
            got.starts_with("deletes[0].vpc.vni: 16777216 is outside"),
            "{got}"
        );
    }

    #[test]
    fn absent_weight_means_one_and_zero_drains() {
        let Object::Service(s) =
            Object::try_from(&service(80, pb::Protocol::Udp as i32, "10.0.1.3")).unwrap()
        else {
            panic!("not a service")
        };
        assert_eq!(s.backends[0].weight, 1);
        assert_eq!(s.backends[1].weight, 0);
        assert_eq!(s.protocol, Protocol::Udp);
    }

    proptest::proptest! {
        /// Every valid object survives model -> proto -> model unchanged.
        #[test]
        fn objects_round_trip(
            vni_value in 1u32..=Vni::MAX,
            a in proptest::prelude::any::<u32>(),
            prefix in 0u8..=32,
            m in proptest::prelude::any::<[u8; 6]>(),
            port_value in 1u16..,
            weight in 0u32..=Backend::MAX_WEIGHT,
            udp in proptest::prelude::any::<bool>(),
        ) {
            let vni = Vni::new(vni_value).unwrap();
            let addr = Ipv4Addr::from(a);
            let cidr = Ipv4Cidr::truncate(addr, prefix);
            let mac = MacAddr(m);
            let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
            let objects = [
                Object::Host(Host { ip: addr, mac }),
                Object::Vpc(Vpc { vni, cidr, service_cidr: cidr, dividers: vec![addr, addr] }),
                Object::Subnet(Subnet { vni, cidr, router_mac: mac, bouncers: vec![] }),
                Object::Endpoint(Endpoint { vni, ip: addr, mac, host: addr }),
                Object::Service(Service {
                    vni, vip: addr, port: port_value, protocol,
                    backends: vec![Backend { ip: addr, port: port_value, weight }],
                }),
            ];
            for object in objects {
                let back = Object::try_from(&pb::Object::from(&object)).unwrap();
                proptest::prop_assert_eq!(&back, &object);
                let key = object.key();
                let back = ObjectKey::try_from(&pb::ObjectKey::from(&key)).unwrap();
                proptest::prop_assert_eq!(back, key);
            }
        }
    }
}
