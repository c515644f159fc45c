//! Device features through the ethtool generic-netlink family: the node agent switches
//! TX checksum offload off on the pod side of each veth.
//!
//! Why: a veth with TX checksum offload hands its peer packets whose L4 checksum is still
//! to be completed (CHECKSUM_PARTIAL). The agent stub runs in XDP on the host side and
//! redirects the frame (to another veth, or encapsulated to the underlay); XDP sees only
//! bytes, so nothing ever completes that checksum and the receiver drops the packet
//! (UdpInCsumErrors, or TCP segments that never arrive). With offload off the pod's stack
//! writes full checksums and the stubs adjust them incrementally.
//!
//! A [`Ethtool`] socket talks to the network namespace it was opened in, like
//! [`super::link::Netlink`]: the agent opens one from inside the pod's namespace.

use std::fmt;

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator,
    ParseableParametrized, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

/// The family's registered name and version (`ETHTOOL_GENL_NAME`, `ETHTOOL_GENL_VERSION`
/// in linux/ethtool_netlink.h).
const FAMILY_NAME: &str = "ethtool";
const FAMILY_VERSION: u8 = 1;

// Commands (userspace to kernel) and the kernel's reply type.
const MSG_FEATURES_GET: u8 = 11;
const MSG_FEATURES_SET: u8 = 12;
const MSG_FEATURES_GET_REPLY: u8 = 11;

// ETHTOOL_A_FEATURES_*.
const A_FEATURES_HEADER: u16 = 1;
const A_FEATURES_WANTED: u16 = 3;
const A_FEATURES_ACTIVE: u16 = 4;
// ETHTOOL_A_HEADER_*.
const A_HEADER_DEV_INDEX: u16 = 1;
const A_HEADER_FLAGS: u16 = 3;
/// ETHTOOL_FLAG_OMIT_REPLY: no FEATURES_SET_REPLY (the agent reads the result back).
const FLAG_OMIT_REPLY: u32 = 1 << 1;
// ETHTOOL_A_BITSET_*, ETHTOOL_A_BITSET_BITS_*, ETHTOOL_A_BITSET_BIT_*.
const A_BITSET_NOMASK: u16 = 1;
const A_BITSET_BITS: u16 = 3;
const A_BITSET_BITS_BIT: u16 = 1;
const A_BITSET_BIT_NAME: u16 = 2;
const A_BITSET_BIT_VALUE: u16 = 3;

/// Every TX checksum feature the kernel names (what `ethtool -K DEV tx off` turns off).
/// The kernel ignores those a device cannot change; a veth has `tx-checksum-ip-generic`
/// and `tx-checksum-sctp`.
pub const TX_CHECKSUM_FEATURES: [&str; 5] = [
    "tx-checksum-ipv4",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv6",
    "tx-checksum-fcoe-crc",
    "tx-checksum-sctp",
];

/// What failed talking to the ethtool family.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("ethtool netlink: opening a generic netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("ethtool netlink: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("ethtool netlink: {what}: the kernel answered {source}")]
    Kernel {
        what: String,
        source: std::io::Error,
    },
    #[error("ethtool netlink: {what}: unreadable reply: {detail}")]
    Decode { what: String, detail: String },
    #[error("ethtool netlink: the kernel has no \"ethtool\" generic netlink family")]
    NoFamily,
    #[error("interface {index} still has {features:?} on after asking for them off")]
    StillOn { index: u32, features: Vec<String> },
}

/// One attribute of a request: a u32, a string, a flag or a nest of attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attr {
    U32(u16, u32),
    Str(u16, String),
    Nest(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::U32(..) => 4,
            Attr::Str(_, s) => s.len() + 1,
            Attr::Nest(_, inner) => inner.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::U32(k, _) | Attr::Str(k, _) => *k,
            Attr::Nest(k, _) => *k | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::U32(_, v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Attr::Str(_, s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            Attr::Nest(_, inner) => inner.as_slice().emit(buffer),
        }
    }
}

/// An ethtool message: a request's attributes going out, or a reply's kept as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EthtoolMsg {
    Request { cmd: u8, attrs: Vec<Attr> },
    Reply { cmd: u8, attrs: Vec<u8> },
}

impl GenlFamily for EthtoolMsg {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        match self {
            EthtoolMsg::Request { cmd, .. } | EthtoolMsg::Reply { cmd, .. } => *cmd,
        }
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for EthtoolMsg {
    fn buffer_len(&self) -> usize {
        match self {
            EthtoolMsg::Request { attrs, .. } => attrs.as_slice().buffer_len(),
            EthtoolMsg::Reply { attrs, .. } => attrs.len(),
        }
    }

    fn emit(&self, buffer: &mut [u8]) {
        match self {
            EthtoolMsg::Request { attrs, .. } => attrs.as_slice().emit(buffer),
            EthtoolMsg::Reply { attrs, .. } => buffer.copy_from_slice(attrs),
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for EthtoolMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(EthtoolMsg::Reply {
            cmd: header.cmd,
            attrs: buf.to_vec(),
        })
    }
}

/// The header nest naming the device by index.
fn header(index: u32, flags: u32) -> Attr {
    let mut attrs = vec![Attr::U32(A_HEADER_DEV_INDEX, index)];
    if flags != 0 {
        attrs.push(Attr::U32(A_HEADER_FLAGS, flags));
    }
    Attr::Nest(A_FEATURES_HEADER, attrs)
}

/// A generic netlink socket to the ethtool family in one network namespace.
pub struct Ethtool {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl fmt::Debug for Ethtool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ethtool")
            .field("family", &self.family)
            .finish()
    }
}

impl Ethtool {
    /// Opens a socket in the calling thread's current namespace. `family` is the ethtool
    /// family's id if already known (ids are global to the kernel, so one resolution
    /// serves every namespace); None resolves it.
    pub fn open(family: Option<u16>) -> Result<Self, EthtoolError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(EthtoolError::Socket)?;
        socket.bind_auto().map_err(EthtoolError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(EthtoolError::Socket)?;
        let mut this = Ethtool {
            socket,
            family: family.unwrap_or(0),
            seq: 0,
        };
        if family.is_none() {
            this.family = this.resolve_family()?;
        }
        Ok(this)
    }

    /// The ethtool family's id, to pass to the next [`Ethtool::open`].
    pub fn family(&self) -> u16 {
        self.family
    }

    fn resolve_family(&mut self) -> Result<u16, EthtoolError> {
        let ask = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_owned())],
        });
        let replies: Vec<GenlCtrl> = match self.transact(ask, "resolving the ethtool family") {
            Err(EthtoolError::Kernel { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                return Err(EthtoolError::NoFamily)
            }
            other => other?,
        };
        replies
            .iter()
            .flat_map(|r| &r.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(EthtoolError::NoFamily)
    }

    /// Sends one request with NLM_F_ACK and collects its replies up to the ack.
    fn transact<Q, R>(&mut self, msg: GenlMessage<Q>, what: &str) -> Result<Vec<R>, EthtoolError>
    where
        Q: GenlFamily + Emitable + fmt::Debug,
        R: ParseableParametrized<[u8], GenlHeader> + fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::from(msg);
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let io = |source| EthtoolError::Io {
            what: what.to_owned(),
            source,
        };
        self.socket.send(&buf, 0).map_err(io)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io)?;
            let mut at = 0;
            while at < datagram.len() {
                let msg = NetlinkMessage::<GenlMessage<R>>::deserialize(&datagram[at..]).map_err(
                    |e| EthtoolError::Decode {
                        what: what.to_owned(),
                        detail: e.to_string(),
                    },
                )?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(EthtoolError::Decode {
                        what: what.to_owned(),
                        detail: "a message of length 0".to_owned(),
                    });
                }
                at += len.next_multiple_of(4);
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(EthtoolError::Kernel {
                                what: what.to_owned(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(m) => replies.push(m.payload),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    fn request(&self, cmd: u8, attrs: Vec<Attr>) -> GenlMessage<EthtoolMsg> {
        let mut msg = GenlMessage::from_payload(EthtoolMsg::Request { cmd, attrs });
        msg.set_resolved_family_id(self.family);
        msg
    }

    /// The names of the features active on interface `index` (`ethtool -k`).
    pub fn active_features(&mut self, index: u32) -> Result<Vec<String>, EthtoolError> {
        let what = format!("reading the features of interface {index}");
        let ask = self.request(MSG_FEATURES_GET, vec![header(index, 0)]);
        let replies: Vec<EthtoolMsg> = self.transact(ask, &what)?;
        let decode = |e: DecodeError| EthtoolError::Decode {
            what: what.clone(),
            detail: e.to_string(),
        };
        let mut active = Vec::new();
        for reply in &replies {
            let EthtoolMsg::Reply { cmd, attrs } = reply else {
                continue;
            };
            if *cmd != MSG_FEATURES_GET_REPLY {
                continue;
            }
            for attr in NlasIterator::new(attrs.as_slice()) {
                let attr = attr.map_err(decode)?;
                if attr.kind() == A_FEATURES_ACTIVE {
                    active.extend(bitset_names(attr.value()).map_err(decode)?);
                }
            }
        }
        Ok(active)
    }

    /// Switches every TX checksum offload of interface `index` off and reads the
    /// features back to make sure none is left on.
    pub fn disable_tx_checksums(&mut self, index: u32) -> Result<(), EthtoolError> {
        // A bit listed without ETHTOOL_A_BITSET_BIT_VALUE is asked to be off.
        let bits = TX_CHECKSUM_FEATURES
            .iter()
            .map(|name| {
                Attr::Nest(
                    A_BITSET_BITS_BIT,
                    vec![Attr::Str(A_BITSET_BIT_NAME, (*name).to_owned())],
                )
            })
            .collect();
        let wanted = Attr::Nest(A_FEATURES_WANTED, vec![Attr::Nest(A_BITSET_BITS, bits)]);
        let set = self.request(
            MSG_FEATURES_SET,
            vec![header(index, FLAG_OMIT_REPLY), wanted],
        );
        let _: Vec<EthtoolMsg> = self.transact(
            set,
            &format!("switching TX checksum offload off on interface {index}"),
        )?;
        let still_on: Vec<String> = self
            .active_features(index)?
            .into_iter()
            .filter(|f| TX_CHECKSUM_FEATURES.contains(&f.as_str()))
            .collect();
        if still_on.is_empty() {
            Ok(())
        } else {
            Err(EthtoolError::StillOn {
                index,
                features: still_on,
            })
        }
    }
}

/// The names of the bits that are on in a verbose bitset. The kernel answers FEATURES_GET
/// with ACTIVE as a list without a mask (ETHTOOL_A_BITSET_NOMASK): every bit listed is
/// on. With a mask, a listed bit is on only if it carries ETHTOOL_A_BITSET_BIT_VALUE.
fn bitset_names(bitset: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut nomask = false;
    let mut listed = Vec::new();
    for attr in NlasIterator::new(bitset) {
        let attr = attr?;
        match attr.kind() {
            A_BITSET_NOMASK => nomask = true,
            A_BITSET_BITS => {
                for bit in NlasIterator::new(attr.value()) {
                    let bit = bit?;
                    if bit.kind() == A_BITSET_BITS_BIT {
                        listed.push(bit_name_and_value(&bit)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(listed
        .into_iter()
        .filter_map(|(name, value)| name.filter(|_| nomask || value))
        .collect())
}

fn bit_name_and_value(bit: &NlaBuffer<&[u8]>) -> Result<(Option<String>, bool), DecodeError> {
    let mut name = None;
    let mut value = false;
    for field in NlasIterator::new(bit.value()) {
        let field = field?;
        match field.kind() {
            A_BITSET_BIT_NAME => name = Some(netlink_packet_core::parse_string(field.value())?),
            A_BITSET_BIT_VALUE => value = true,
            _ => {}
        }
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_features_set_request_encodes_nested_bits_without_values() {
        let wanted = Attr::Nest(
            A_FEATURES_WANTED,
            vec![Attr::Nest(
                A_BITSET_BITS,
                vec![Attr::Nest(
                    A_BITSET_BITS_BIT,
                    vec![Attr::Str(A_BITSET_BIT_NAME, "tx-checksum-sctp".to_owned())],
                )],
            )],
        );
        let mut buf = vec![0; wanted.buffer_len()];
        wanted.emit(&mut buf);
        // WANTED(3|NESTED) > BITS(3|NESTED) > BIT(1|NESTED) > NAME(2) "tx-checksum-sctp\0".
        let name = b"tx-checksum-sctp\0";
        let name_len = 4 + name.len();
        let padded = name_len.next_multiple_of(4);
        assert_eq!(buf.len(), 4 + 4 + 4 + padded);
        assert_eq!(
            &buf[0..4],
            &[
                (buf.len() as u16).to_ne_bytes(),
                (3 | NLA_F_NESTED).to_ne_bytes()
            ]
            .concat()[..]
        );
        assert_eq!(u16::from_ne_bytes([buf[6], buf[7]]), 3 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([buf[10], buf[11]]), 1 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([buf[12], buf[13]]) as usize, name_len);
        assert_eq!(u16::from_ne_bytes([buf[14], buf[15]]), A_BITSET_BIT_NAME);
        assert_eq!(&buf[16..16 + name.len()], name);
        assert!(!buf.windows(4).any(|w| w == [4, 0, 3, 0]), "no VALUE flag");
    }

    #[test]
    fn an_active_bitset_lists_the_names_it_holds() {
        let bit = |n: &str| {
            Attr::Nest(
                A_BITSET_BITS_BIT,
                vec![Attr::U32(1, 7), Attr::Str(A_BITSET_BIT_NAME, n.to_owned())],
            )
        };
        let bits = Attr::Nest(A_BITSET_BITS, vec![bit("rx-gro"), bit("tx-checksum-sctp")]);
        let attrs = [Attr::Nest(A_BITSET_NOMASK, vec![]), Attr::U32(2, 64), bits];
        let mut buf = vec![0; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut buf);
        assert_eq!(
            bitset_names(&buf).unwrap(),
            vec!["rx-gro".to_owned(), "tx-checksum-sctp".to_owned()]
        );
        assert!(bitset_names(&buf[..buf.len() - 3]).is_err());

        // With a mask, only bits carrying VALUE are on.
        let masked = Attr::Nest(
            A_BITSET_BITS,
            vec![
                Attr::Nest(
                    A_BITSET_BITS_BIT,
                    vec![
                        Attr::Str(A_BITSET_BIT_NAME, "rx-gro".to_owned()),
                        Attr::Nest(A_BITSET_BIT_VALUE, vec![]),
                    ],
                ),
                bit("tx-checksum-sctp"),
            ],
        );
        let mut buf = vec![0; masked.buffer_len()];
        masked.emit(&mut buf);
        assert_eq!(bitset_names(&buf).unwrap(), vec!["rx-gro".to_owned()]);
    }
}
