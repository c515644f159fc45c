//! Geneve (RFC 8926): the header view, an option TLV iterator, Sluice's own options, and a
//! `Repr` that writes a complete header plus options. smoltcp has no Geneve, so this one
//! is written here, in smoltcp's style.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//! option TLV:
//! |          Option Class         |      Type     |R|R|R| Length  |
//! |                 Variable-Length Option Data                   |
//! ```
//!
//! Validation happens once, in [`Header::new_checked`] (base header present, version 0,
//! options area inside the buffer) and while iterating [`Options`] (every TLV inside the
//! options area). Nothing here panics on any input or allocates. What to do with an
//! unknown option is the caller's decision: skip it unless [`RawOption::critical`].

use core::iter::FusedIterator;
use core::ops::Range;
use std::net::Ipv4Addr;

use crate::wire::contract::{
    GENEVE_PROTO_ETHERNET, OPTION_CRITICAL_BIT, OPT_DIRECT, OPT_HOST_HINT, OPT_SERVICE_ORIG,
    OPT_STALE, SLUICE_OPTION_CLASS,
};

/// Base header offsets.
mod field {
    use core::ops::Range;

    pub const VER_OPT_LEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
    pub const OPTIONS: usize = 8;
}

/// Option TLV offsets, relative to the start of the option.
mod opt_field {
    use core::ops::Range;

    pub const CLASS: Range<usize> = 0..2;
    pub const TYPE: usize = 2;
    pub const LENGTH: usize = 3;
    pub const BODY: usize = 4;
}

/// Length of the base header (without options).
pub const HEADER_LEN: usize = field::OPTIONS;
/// The only Geneve version defined.
pub const VERSION: u8 = 0;
/// Geneve lengths count 4-byte words.
pub const WORD_LEN: usize = 4;
/// Largest options area: a 6-bit count of words.
pub const MAX_OPTIONS_LEN: usize = 0x3f * WORD_LEN;
/// Length of an option TLV's header (class, type, length).
pub const OPTION_HEADER_LEN: usize = opt_field::BODY;
/// Largest option body: a 5-bit count of words.
pub const MAX_OPTION_BODY_LEN: usize = 0x1f * WORD_LEN;
/// Largest VNI: 24 bits.
pub const VNI_MAX: u32 = 0x00ff_ffff;

const VERSION_SHIFT: u32 = 6;
const OPT_LEN_MASK: u8 = 0x3f;
const OAM_BIT: u8 = 0x80;
const CRITICAL_BIT: u8 = 0x40;
const OPTION_LEN_MASK: u8 = 0x1f;

/// Body lengths of Sluice's options.
const HOST_HINT_BODY_LEN: usize = 8;
const DIRECT_BODY_LEN: usize = 0;
const SERVICE_ORIG_BODY_LEN: usize = 8;
const STALE_BODY_LEN: usize = 4;

/// Why a Geneve header or option could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends inside the base header or inside the options area it announces.
    #[error("Geneve header truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The version field is not 0.
    #[error("Geneve version {0} is not supported")]
    BadVersion(u8),
    /// An option TLV at `offset` of the options area runs past the area's end.
    #[error("Geneve option at offset {offset} of the options area runs past its end")]
    OptionTruncated { offset: usize },
    /// A known Sluice option type with a body of the wrong length.
    #[error("Sluice option type {kind:#04x} has a {len}-byte body")]
    BadOptionLength { kind: u8, len: usize },
    /// A VNI above 24 bits was given to be emitted.
    #[error("VNI {0:#x} does not fit in 24 bits")]
    VniOutOfRange(u32),
    /// An options area to be emitted is not a multiple of 4 bytes up to 252.
    #[error("options area of {0} bytes is not a multiple of 4 up to 252")]
    BadOptionsLength(usize),
    /// An option body to be emitted is not a multiple of 4 bytes up to 124.
    #[error("option body of {0} bytes is not a multiple of 4 up to 124")]
    BadOptionBodyLength(usize),
    /// The output buffer cannot hold what is to be emitted.
    #[error("buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall { needed: usize, available: usize },
}

/// A read/write view of a Geneve header (base header, options, then payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wrap a buffer without checking it; getters may panic on a short buffer. Use
    /// [`Header::new_checked`] on received bytes.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Header { buffer }
    }

    /// Wrap a buffer after [`Header::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Ensure no getter panics: the base header is present, the version is 0, and the
    /// options area announced by Opt Len lies inside the buffer. Option TLVs are checked
    /// by [`Options`] as they are read. Invalidated by [`Header::set_opt_len_words`].
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let available = self.buffer.as_ref().len();
        if available < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN,
                available,
            });
        }
        if self.version() != VERSION {
            return Err(Error::BadVersion(self.version()));
        }
        let needed = self.header_len();
        if available < needed {
            return Err(Error::Truncated { needed, available });
        }
        Ok(())
    }

    /// Consume the view, returning the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (2 bits).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] >> VERSION_SHIFT
    }

    /// Length of the options area in 4-byte words (6 bits).
    #[inline]
    pub fn opt_len_words(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] & OPT_LEN_MASK
    }

    /// Length of the options area in bytes.
    #[inline]
    pub fn options_len(&self) -> usize {
        usize::from(self.opt_len_words()) * WORD_LEN
    }

    /// Length of the whole header, options included: where the payload starts.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// O bit: the payload is a control (OAM) message.
    #[inline]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & OAM_BIT != 0
    }

    /// C bit: at least one option is critical.
    #[inline]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & CRITICAL_BIT != 0
    }

    /// Protocol type of the payload (an EtherType; 0x6558 for an Ethernet frame).
    #[inline]
    pub fn protocol(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::PROTOCOL.start], b[field::PROTOCOL.start + 1]])
    }

    /// Virtual network identifier (24 bits).
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The options area.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[self.options_range()]
    }

    /// The option TLVs, in order.
    #[inline]
    pub fn options_iter(&self) -> Options<'_> {
        Options::new(self.options())
    }

    /// Everything after the header: the inner frame for protocol 0x6558.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    #[inline]
    fn options_range(&self) -> Range<usize> {
        field::OPTIONS..self.header_len()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Set the version field (only the low 2 bits of `value` are used).
    #[inline]
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_OPT_LEN];
        *b = (*b & OPT_LEN_MASK) | (value << VERSION_SHIFT);
    }

    /// Set the options length in 4-byte words (only the low 6 bits of `words` are used).
    /// Invalidates a previous [`Header::check_len`].
    #[inline]
    pub fn set_opt_len_words(&mut self, words: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_OPT_LEN];
        *b = (*b & !OPT_LEN_MASK) | (words & OPT_LEN_MASK);
    }

    /// Set the O bit.
    #[inline]
    pub fn set_oam(&mut self, value: bool) {
        self.set_flag(OAM_BIT, value);
    }

    /// Set the C bit.
    #[inline]
    pub fn set_critical(&mut self, value: bool) {
        self.set_flag(CRITICAL_BIT, value);
    }

    /// Zero the reserved bits of the flags byte and the reserved byte after the VNI.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::FLAGS] &= OAM_BIT | CRITICAL_BIT;
        b[field::RESERVED] = 0;
    }

    /// Set the protocol type.
    #[inline]
    pub fn set_protocol(&mut self, value: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&value.to_be_bytes());
    }

    /// Set the VNI. Only the low 24 bits are written; [`Repr::emit`] rejects larger
    /// values instead, so a VNI is never silently truncated into another tenant's.
    #[inline]
    pub fn set_vni(&mut self, value: u32) {
        let [_, a, b, c] = value.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&[a, b, c]);
    }

    /// The options area, mutable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let range = self.options_range();
        &mut self.buffer.as_mut()[range]
    }

    /// Everything after the header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    #[inline]
    fn set_flag(&mut self, bit: u8, value: bool) {
        let b = &mut self.buffer.as_mut()[field::FLAGS];
        *b = if value { *b | bit } else { *b & !bit };
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Header<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// One option TLV as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    /// Option class.
    pub class: u16,
    /// Type, as on the wire: the high bit is the critical bit.
    pub kind: u8,
    /// Body (a multiple of 4 bytes, at most 124).
    pub data: &'a [u8],
}

impl<'a> RawOption<'a> {
    /// Parse the TLV at the start of `area`; return it and the bytes after it.
    #[inline]
    fn parse(area: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (head, rest) = area.split_at_checked(OPTION_HEADER_LEN)?;
        let body_len = usize::from(head[opt_field::LENGTH] & OPTION_LEN_MASK) * WORD_LEN;
        let (data, rest) = rest.split_at_checked(body_len)?;
        let class = u16::from_be_bytes([
            head[opt_field::CLASS.start],
            head[opt_field::CLASS.start + 1],
        ]);
        Some((
            RawOption {
                class,
                kind: head[opt_field::TYPE],
                data,
            },
            rest,
        ))
    }

    /// The critical bit: a receiver that does not understand this option must drop the
    /// packet.
    #[inline]
    pub const fn critical(&self) -> bool {
        self.kind & OPTION_CRITICAL_BIT != 0
    }

    /// The type without the critical bit.
    #[inline]
    pub const fn kind_without_critical(&self) -> u8 {
        self.kind & !OPTION_CRITICAL_BIT
    }

    /// Bytes this option takes on the wire.
    #[inline]
    pub const fn wire_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }

    /// Write this option (reserved bits zero) at the start of `buf`; return its length.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let body_len = self.data.len();
        if body_len % WORD_LEN != 0 || body_len > MAX_OPTION_BODY_LEN {
            return Err(Error::BadOptionBodyLength(body_len));
        }
        let needed = self.wire_len();
        let available = buf.len();
        let out = buf
            .get_mut(..needed)
            .ok_or(Error::BufferTooSmall { needed, available })?;
        write_option_header(out, self.class, self.kind, body_len);
        out[opt_field::BODY..].copy_from_slice(self.data);
        Ok(needed)
    }
}

/// Write class, type and length of an option into `out` (at least 4 bytes long).
#[inline]
fn write_option_header(out: &mut [u8], class: u16, kind: u8, body_len: usize) {
    out[opt_field::CLASS].copy_from_slice(&class.to_be_bytes());
    out[opt_field::TYPE] = kind;
    // body_len <= 124 here, so the word count fits the 5-bit field.
    out[opt_field::LENGTH] = (body_len / WORD_LEN) as u8 & OPTION_LEN_MASK;
}

/// Iterator over the option TLVs of an options area, in wire order. Yields `Err` once for
/// a TLV that runs past the end of the area, then stops.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Options<'a> {
    /// Iterate over `area`, the options area of a Geneve header.
    #[inline]
    pub const fn new(area: &'a [u8]) -> Self {
        Options {
            rest: area,
            offset: 0,
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<RawOption<'a>, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match RawOption::parse(self.rest) {
            Some((option, rest)) => {
                self.offset += option.wire_len();
                self.rest = rest;
                Some(Ok(option))
            }
            None => {
                self.rest = &[];
                Some(Err(Error::OptionTruncated {
                    offset: self.offset,
                }))
            }
        }
    }
}

impl FusedIterator for Options<'_> {}

/// The options Sluice defines, all in class [`SLUICE_OPTION_CLASS`], none critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SluiceOption {
    /// Gateway -> worker: `endpoint` lives on `host`; the source stub may go direct.
    HostHint { endpoint: Ipv4Addr, host: Ipv4Addr },
    /// Worker -> worker: sent without a gateway; the receiver may answer directly.
    Direct,
    /// Gateway -> backend's worker: the packet was DNATed from this VIP, port, protocol.
    ServiceOrig {
        vip: Ipv4Addr,
        port: u16,
        protocol: u8,
    },
    /// Worker -> gateway: the worker no longer hosts `endpoint`.
    Stale { endpoint: Ipv4Addr },
}

impl SluiceOption {
    /// Interpret a TLV. `Ok(None)` for another class or a type Sluice does not define
    /// (matching the whole type byte: a Sluice-class type with the critical bit is never
    /// one of ours); the caller then skips it, or drops the packet if it is critical.
    /// `Err` for a known type whose body has the wrong length. SERVICE_ORIG's pad byte is
    /// ignored on receipt.
    #[inline]
    pub fn parse(raw: &RawOption<'_>) -> Result<Option<Self>, Error> {
        if raw.class != SLUICE_OPTION_CLASS {
            return Ok(None);
        }
        let option = match (raw.kind, raw.data) {
            (OPT_HOST_HINT, &[a, b, c, d, e, f, g, h]) => SluiceOption::HostHint {
                endpoint: Ipv4Addr::new(a, b, c, d),
                host: Ipv4Addr::new(e, f, g, h),
            },
            (OPT_DIRECT, &[]) => SluiceOption::Direct,
            (OPT_SERVICE_ORIG, &[a, b, c, d, p0, p1, protocol, _pad]) => {
                SluiceOption::ServiceOrig {
                    vip: Ipv4Addr::new(a, b, c, d),
                    port: u16::from_be_bytes([p0, p1]),
                    protocol,
                }
            }
            (OPT_STALE, &[a, b, c, d]) => SluiceOption::Stale {
                endpoint: Ipv4Addr::new(a, b, c, d),
            },
            (kind @ (OPT_HOST_HINT | OPT_DIRECT | OPT_SERVICE_ORIG | OPT_STALE), data) => {
                return Err(Error::BadOptionLength {
                    kind,
                    len: data.len(),
                });
            }
            _ => return Ok(None),
        };
        Ok(Some(option))
    }

    /// The option type (never critical).
    #[inline]
    pub const fn kind(&self) -> u8 {
        match self {
            SluiceOption::HostHint { .. } => OPT_HOST_HINT,
            SluiceOption::Direct => OPT_DIRECT,
            SluiceOption::ServiceOrig { .. } => OPT_SERVICE_ORIG,
            SluiceOption::Stale { .. } => OPT_STALE,
        }
    }

    /// Length of the body, a multiple of 4.
    #[inline]
    pub const fn body_len(&self) -> usize {
        match self {
            SluiceOption::HostHint { .. } => HOST_HINT_BODY_LEN,
            SluiceOption::Direct => DIRECT_BODY_LEN,
            SluiceOption::ServiceOrig { .. } => SERVICE_ORIG_BODY_LEN,
            SluiceOption::Stale { .. } => STALE_BODY_LEN,
        }
    }

    /// Bytes this option takes on the wire: TLV header plus body.
    #[inline]
    pub const fn wire_len(&self) -> usize {
        OPTION_HEADER_LEN + self.body_len()
    }

    /// Write the option (class, type, length, body) at the start of `buf` and return
    /// [`SluiceOption::wire_len`]. Writes nothing and returns 0 if `buf` is shorter than
    /// that; [`Repr::emit_with_options`] checks the space first.
    #[inline]
    #[must_use]
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.wire_len();
        let Some(out) = buf.get_mut(..len) else {
            return 0;
        };
        write_option_header(out, SLUICE_OPTION_CLASS, self.kind(), self.body_len());
        let body = &mut out[opt_field::BODY..];
        match *self {
            SluiceOption::HostHint { endpoint, host } => {
                body[..4].copy_from_slice(&endpoint.octets());
                body[4..].copy_from_slice(&host.octets());
            }
            SluiceOption::Direct => {}
            SluiceOption::ServiceOrig {
                vip,
                port,
                protocol,
            } => {
                body[..4].copy_from_slice(&vip.octets());
                body[4..6].copy_from_slice(&port.to_be_bytes());
                body[6] = protocol;
                body[7] = 0;
            }
            SluiceOption::Stale { endpoint } => body.copy_from_slice(&endpoint.octets()),
        }
        len
    }
}

/// The base header's fields, to parse or build a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// O bit.
    pub oam: bool,
    /// C bit: set it when any option written is critical.
    pub critical: bool,
    /// Protocol type of the payload.
    pub protocol: u16,
    /// VNI (24 bits).
    pub vni: u32,
}

impl Repr {
    /// A data packet carrying an Ethernet frame of tenant `vni`: Sluice's only kind.
    #[inline]
    pub const fn ethernet(vni: u32) -> Self {
        Repr {
            oam: false,
            critical: false,
            protocol: GENEVE_PROTO_ETHERNET,
            vni,
        }
    }

    /// Read the base header (after checking it).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<Self, Error> {
        header.check_len()?;
        Ok(Repr {
            oam: header.oam(),
            critical: header.critical(),
            protocol: header.protocol(),
            vni: header.vni(),
        })
    }

    /// Length of a header with `options_len` bytes of options.
    #[inline]
    pub const fn header_len(options_len: usize) -> usize {
        HEADER_LEN + options_len
    }

    /// Write the base header, announcing `options_len` bytes of options, which the caller
    /// writes into [`Header::options_mut`]. Reserved bits are zeroed.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        header: &mut Header<T>,
        options_len: usize,
    ) -> Result<(), Error> {
        if options_len % WORD_LEN != 0 || options_len > MAX_OPTIONS_LEN {
            return Err(Error::BadOptionsLength(options_len));
        }
        if self.vni > VNI_MAX {
            return Err(Error::VniOutOfRange(self.vni));
        }
        let needed = Self::header_len(options_len);
        let available = header.buffer.as_ref().len();
        if available < needed {
            return Err(Error::BufferTooSmall { needed, available });
        }
        let b = header.buffer.as_mut();
        // options_len <= 252 here, so the word count fits the 6-bit field.
        b[field::VER_OPT_LEN] = (VERSION << VERSION_SHIFT) | (options_len / WORD_LEN) as u8;
        b[field::FLAGS] = 0;
        b[field::RESERVED] = 0;
        header.set_oam(self.oam);
        header.set_critical(self.critical);
        header.set_protocol(self.protocol);
        header.set_vni(self.vni);
        Ok(())
    }

    /// Write the base header followed by `options`, in order, at the start of `buf`;
    /// return the header length (where the payload goes).
    pub fn emit_with_options(
        &self,
        buf: &mut [u8],
        options: &[SluiceOption],
    ) -> Result<usize, Error> {
        let options_len: usize = options.iter().map(SluiceOption::wire_len).sum();
        let mut header = Header::new_unchecked(&mut *buf);
        self.emit(&mut header, options_len)?;
        let mut area = header.options_mut();
        for option in options {
            let written = option.emit(area);
            area = &mut area[written..];
        }
        Ok(Self::header_len(options_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::contract::{udp_src_port, GENEVE_UDP_PORT, OUTER_HEADERS_LEN, OUTER_TTL};
    use crate::wire::{checksum, ethernet, ipv4, tcp, udp};
    use proptest::prelude::*;

    const GENEVE_UDP: &[u8] = include_bytes!("../../tests/fixtures/geneve_udp.bin");
    const GENEVE_TCP: &[u8] = include_bytes!("../../tests/fixtures/geneve_tcp.bin");
    /// The flow hashes gen_fixtures.py derived the outer source ports from.
    const FLOW_HASH: u32 = 0xDEAD_BEEF;
    const FLOW_HASH_TCP: u32 = 0x0BAD_F00D;
    const VNI: u32 = 0x12_3456;

    const GW_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
    const WORKER_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
    const ROUTER_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x01, 0x01];
    const POD_C_MAC: [u8; 6] = [0x02, 0x5a, 0x00, 0x00, 0x02, 0x14];
    const GW_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const WORKER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const WORKER2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
    const POD_C_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const UNKNOWN_BODY: [u8; 12] = [
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab,
    ];
    const GENEVE_OFFSET: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;

    /// Peel outer Ethernet, IPv4 and UDP with the views, checking the outer contract.
    fn outer_udp_payload(frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr, flow_hash: u32) -> &[u8] {
        let eth = ethernet::checked(frame).unwrap();
        assert_eq!(eth.ethertype(), ethernet::EtherType::Ipv4);
        let ip = ipv4::checked(eth.payload()).unwrap();
        assert_eq!(ip.header_len() as usize, ipv4::MIN_HEADER_LEN);
        assert!(ip.dont_frag() && !ip.more_frags() && ip.frag_offset() == 0);
        assert_eq!(ip.hop_limit(), OUTER_TTL);
        assert_eq!(ip.next_header(), ipv4::Protocol::Udp);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (src, dst));
        assert_eq!(checksum::ipv4_header(&eth.payload()[..20]), ip.checksum());
        let u = udp::checked(ip.payload()).unwrap();
        assert_eq!(u.src_port(), udp_src_port(flow_hash));
        assert_eq!(u.dst_port(), GENEVE_UDP_PORT);
        assert_eq!(u.checksum(), 0);
        u.payload()
    }

    #[test]
    fn parse_geneve_udp_fixture() {
        let geneve = outer_udp_payload(GENEVE_UDP, GW_IP, WORKER_IP, FLOW_HASH);
        let h = Header::new_checked(geneve).unwrap();
        assert_eq!(h.version(), 0);
        assert_eq!(h.opt_len_words(), 11);
        assert_eq!(h.options_len(), 44);
        assert_eq!(h.header_len(), 52);
        assert!(!h.oam());
        assert!(h.critical());
        assert_eq!(h.protocol(), GENEVE_PROTO_ETHERNET);
        assert_eq!(h.vni(), VNI);
        assert_eq!(
            Repr::parse(&h).unwrap(),
            Repr {
                oam: false,
                critical: true,
                protocol: 0x6558,
                vni: VNI
            }
        );
        assert_eq!(
            OUTER_HEADERS_LEN + h.options_len() + h.payload().len(),
            GENEVE_UDP.len()
        );

        let options: Vec<RawOption<'_>> = h.options_iter().map(Result::unwrap).collect();
        let summary: Vec<(u16, u8, bool, usize)> = options
            .iter()
            .map(|o| (o.class, o.kind, o.critical(), o.data.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (0xFF01, 0x01, false, 8),
                (0xFF01, 0x03, false, 8),
                (0x0101, 0x7F, false, 12),
                (0xFF01, 0x85, true, 0)
            ]
        );
        assert_eq!(options[2].data, UNKNOWN_BODY);
        assert_eq!(options[3].kind_without_critical(), 0x05);
        let sluice: Vec<Option<SluiceOption>> = options
            .iter()
            .map(|o| SluiceOption::parse(o).unwrap())
            .collect();
        assert_eq!(
            sluice,
            [
                Some(SluiceOption::HostHint {
                    endpoint: POD_C_IP,
                    host: WORKER_IP
                }),
                Some(SluiceOption::ServiceOrig {
                    vip: VIP,
                    port: 53,
                    protocol: 17
                }),
                None,
                None,
            ]
        );

        let inner = ethernet::checked(h.payload()).unwrap();
        assert_eq!(inner.src_addr(), ethernet::Address(ROUTER_MAC));
        assert_eq!(inner.dst_addr(), ethernet::Address(POD_C_MAC));
        let ip = ipv4::checked(inner.payload()).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
            (POD_A_IP, POD_C_IP, 63)
        );
        let u = udp::checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (40000, 5353));
        assert_eq!(
            checksum::udp_ipv4(POD_A_IP, POD_C_IP, ip.payload()),
            u.checksum()
        );
        assert_eq!(u.payload(), b"sluice geneve udp");
    }

    /// Build the whole geneve_udp packet with our views, Repr and checksums.
    #[test]
    fn emit_geneve_udp_fixture() {
        let mut buf = vec![0u8; GENEVE_UDP.len()];
        let options_len = 44;
        let inner_len = GENEVE_UDP.len() - OUTER_HEADERS_LEN - options_len;
        let ip_len = GENEVE_UDP.len() - ethernet::HEADER_LEN;

        ethernet::Repr {
            src_addr: ethernet::Address(GW_MAC),
            dst_addr: ethernet::Address(WORKER_MAC),
            ethertype: ethernet::EtherType::Ipv4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut buf[..]));
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..]);
            ipv4::Repr {
                src_addr: GW_IP,
                dst_addr: WORKER_IP,
                next_header: ipv4::Protocol::Udp,
                payload_len: ip_len - ipv4::MIN_HEADER_LEN,
                hop_limit: OUTER_TTL,
            }
            .emit(&mut ip, &smoltcp::phy::ChecksumCapabilities::ignored());
            let csum = checksum::ipv4_header(&ip.as_ref()[..ipv4::MIN_HEADER_LEN]);
            ip.set_checksum(csum);
        }
        {
            let mut u =
                udp::Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN..]);
            u.set_src_port(udp_src_port(FLOW_HASH));
            u.set_dst_port(GENEVE_UDP_PORT);
            u.set_len((ip_len - ipv4::MIN_HEADER_LEN) as u16);
            u.set_checksum(0);
        }
        let inner_at = {
            let mut h = Header::new_unchecked(&mut buf[GENEVE_OFFSET..]);
            let repr = Repr {
                critical: true,
                ..Repr::ethernet(VNI)
            };
            repr.emit(&mut h, options_len).unwrap();
            let area = h.options_mut();
            let host_hint = SluiceOption::HostHint {
                endpoint: POD_C_IP,
                host: WORKER_IP,
            };
            let service = SluiceOption::ServiceOrig {
                vip: VIP,
                port: 53,
                protocol: 17,
            };
            let unknown = RawOption {
                class: 0x0101,
                kind: 0x7F,
                data: &UNKNOWN_BODY,
            };
            let critical = RawOption {
                class: SLUICE_OPTION_CLASS,
                kind: 0x85,
                data: &[],
            };
            let mut at = 0;
            at += host_hint.emit(&mut area[at..]);
            at += service.emit(&mut area[at..]);
            at += unknown.emit(&mut area[at..]).unwrap();
            at += critical.emit(&mut area[at..]).unwrap();
            assert_eq!(at, options_len);
            GENEVE_OFFSET + h.header_len()
        };
        assert_eq!(buf.len() - inner_at, inner_len);

        // Inner frame: router MAC -> pod, IPv4 DF TTL 63 id 0x4444, UDP with checksum.
        let payload = b"sluice geneve udp";
        let l4 = crate::wire::ipv4::tests::emit_eth_ipv4(
            &mut buf[inner_at..],
            ROUTER_MAC,
            POD_C_MAC,
            ipv4::tests::Fields {
                ident: 0x4444,
                dont_frag: true,
                ttl: 63,
                protocol: ipv4::Protocol::Udp,
                src: POD_A_IP,
                dst: POD_C_IP,
                options: &[],
            },
            udp::HEADER_LEN + payload.len(),
        );
        crate::wire::udp::tests::emit_udp(
            &mut buf[inner_at + l4..],
            POD_A_IP,
            POD_C_IP,
            40000,
            5353,
            payload,
        );

        assert_eq!(buf, GENEVE_UDP);
    }

    #[test]
    fn geneve_tcp_fixture_both_directions() {
        let geneve = outer_udp_payload(GENEVE_TCP, WORKER_IP, WORKER2_IP, FLOW_HASH_TCP);
        let h = Header::new_checked(geneve).unwrap();
        assert_eq!(Repr::parse(&h).unwrap(), Repr::ethernet(VNI));
        let options: Vec<SluiceOption> = h
            .options_iter()
            .map(|o| SluiceOption::parse(&o.unwrap()).unwrap().unwrap())
            .collect();
        let expected = [
            SluiceOption::Direct,
            SluiceOption::Stale {
                endpoint: Ipv4Addr::new(10, 0, 1, 99),
            },
        ];
        assert_eq!(options, expected);

        let inner = ethernet::checked(h.payload()).unwrap();
        let ip = ipv4::checked(inner.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (POD_A_IP, POD_B_IP));
        let t = tcp::checked(ip.payload()).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40003, 80));
        assert!(t.psh() && t.ack() && !t.syn());
        assert_eq!(t.header_len(), 32);
        assert_eq!(t.payload(), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            checksum::tcp_ipv4(POD_A_IP, POD_B_IP, ip.payload()),
            t.checksum()
        );

        // Emit the Geneve header with its options and compare with scapy's.
        let mut buf = [0u8; 64];
        let len = Repr::ethernet(VNI)
            .emit_with_options(&mut buf, &expected)
            .unwrap();
        assert_eq!(len, h.header_len());
        assert_eq!(&buf[..len], &geneve[..len]);
    }

    #[test]
    fn truncated_header_is_an_error_at_every_length() {
        let geneve = &GENEVE_UDP[GENEVE_OFFSET..];
        let header_len = Header::new_checked(geneve).unwrap().header_len();
        for len in 0..header_len {
            let err = Header::new_checked(&geneve[..len]).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { available, .. } if available == len),
                "{len}: {err}"
            );
            assert!(Repr::parse(&Header::new_unchecked(&geneve[..len])).is_err());
        }
        for len in header_len..=geneve.len() {
            let h = Header::new_checked(&geneve[..len]).unwrap();
            assert_eq!(h.options_iter().filter(Result::is_err).count(), 0);
            assert_eq!(h.payload().len(), len - header_len);
        }
    }

    #[test]
    fn other_versions_are_rejected() {
        let mut bytes = GENEVE_UDP[GENEVE_OFFSET..].to_vec();
        for version in 1..=3 {
            let mut h = Header::new_unchecked(&mut bytes[..]);
            h.set_version(version);
            assert_eq!(h.opt_len_words(), 11, "set_version keeps Opt Len");
            assert_eq!(
                Header::new_checked(&bytes[..]).unwrap_err(),
                Error::BadVersion(version)
            );
        }
    }

    #[test]
    fn option_length_past_the_end_is_an_error_once() {
        let h = Header::new_checked(&GENEVE_UDP[GENEVE_OFFSET..]).unwrap();
        let mut area = h.options().to_vec();
        // Third option (offset 24) claims a 31-word body.
        area[24 + 3] = 0x1f;
        let mut it = Options::new(&area);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next().unwrap(),
            Err(Error::OptionTruncated { offset: 24 })
        );
        assert!(it.next().is_none());
        assert!(it.next().is_none());

        // Every truncation of the area: the whole options before the cut parse, then one
        // error unless the cut falls on an option boundary.
        let area = h.options();
        for len in 0..area.len() {
            let items: Vec<_> = Options::new(&area[..len]).collect();
            let boundary = [0, 12, 24, 40].contains(&len);
            assert_eq!(
                items.iter().filter(|i| i.is_err()).count(),
                usize::from(!boundary),
                "{len}"
            );
            assert!(items.iter().rev().skip(1).all(Result::is_ok));
        }
        assert_eq!(Options::new(&[]).count(), 0);
        assert_eq!(
            Options::new(&[0xff, 0x01, 0x02]).collect::<Vec<_>>(),
            [Err(Error::OptionTruncated { offset: 0 })]
        );
    }

    #[test]
    fn known_option_with_wrong_body_is_an_error() {
        for (kind, data) in [
            (OPT_HOST_HINT, &[0u8; 4][..]),
            (OPT_DIRECT, &[0u8; 4][..]),
            (OPT_SERVICE_ORIG, &[0u8; 12][..]),
            (OPT_STALE, &[][..]),
        ] {
            let raw = RawOption {
                class: SLUICE_OPTION_CLASS,
                kind,
                data,
            };
            assert_eq!(
                SluiceOption::parse(&raw),
                Err(Error::BadOptionLength {
                    kind,
                    len: data.len()
                })
            );
        }
        // The same type in another class, or with the critical bit, is not ours.
        let raw = RawOption {
            class: 0x0101,
            kind: OPT_HOST_HINT,
            data: &[],
        };
        assert_eq!(SluiceOption::parse(&raw), Ok(None));
        let raw = RawOption {
            class: SLUICE_OPTION_CLASS,
            kind: OPT_HOST_HINT | OPTION_CRITICAL_BIT,
            data: &[],
        };
        assert_eq!(SluiceOption::parse(&raw), Ok(None));
    }

    #[test]
    fn emit_rejects_what_does_not_fit() {
        let mut buf = [0u8; 16];
        let mut h = Header::new_unchecked(&mut buf[..]);
        assert_eq!(
            Repr::ethernet(VNI_MAX + 1).emit(&mut h, 0),
            Err(Error::VniOutOfRange(VNI_MAX + 1))
        );
        assert_eq!(
            Repr::ethernet(1).emit(&mut h, 6),
            Err(Error::BadOptionsLength(6))
        );
        assert_eq!(
            Repr::ethernet(1).emit(&mut h, 256),
            Err(Error::BadOptionsLength(256))
        );
        assert_eq!(
            Repr::ethernet(1).emit(&mut h, 12),
            Err(Error::BufferTooSmall {
                needed: 20,
                available: 16
            })
        );
        let hint = SluiceOption::HostHint {
            endpoint: POD_A_IP,
            host: GW_IP,
        };
        assert_eq!(
            Repr::ethernet(1).emit_with_options(&mut buf, &[hint]),
            Err(Error::BufferTooSmall {
                needed: 20,
                available: 16
            })
        );
        assert_eq!(hint.emit(&mut buf[..11]), 0);
        assert_eq!(
            RawOption {
                class: 1,
                kind: 1,
                data: &[0; 3]
            }
            .emit(&mut buf),
            Err(Error::BadOptionBodyLength(3))
        );
        assert_eq!(
            RawOption {
                class: 1,
                kind: 1,
                data: &[0; 128]
            }
            .emit(&mut buf),
            Err(Error::BadOptionBodyLength(128))
        );
        assert_eq!(VNI_MAX, 0xff_ffff);
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0xffu8; 12];
        let mut h = Header::new_unchecked(&mut buf[..]);
        h.set_version(0);
        h.set_opt_len_words(1);
        h.clear_reserved();
        h.set_oam(false);
        h.set_critical(false);
        h.set_protocol(0x0800);
        h.set_vni(0xab_cdef);
        h.options_mut().copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(h.payload_mut().len(), 0);
        assert_eq!(
            buf,
            [0x01, 0x00, 0x08, 0x00, 0xab, 0xcd, 0xef, 0x00, 1, 2, 3, 4]
        );
        let h = Header::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (h.vni(), h.protocol(), h.oam(), h.critical()),
            (0xab_cdef, 0x0800, false, false)
        );
    }

    fn sluice_option() -> impl Strategy<Value = SluiceOption> {
        let addr = any::<u32>().prop_map(Ipv4Addr::from_bits);
        prop_oneof![
            (addr.clone(), addr.clone())
                .prop_map(|(endpoint, host)| SluiceOption::HostHint { endpoint, host }),
            Just(SluiceOption::Direct),
            (addr.clone(), any::<u16>(), any::<u8>()).prop_map(|(vip, port, protocol)| {
                SluiceOption::ServiceOrig {
                    vip,
                    port,
                    protocol,
                }
            }),
            addr.prop_map(|endpoint| SluiceOption::Stale { endpoint }),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = Header::new_checked(&bytes[..]) {
                let _ = (h.version(), h.oam(), h.critical(), h.protocol(), h.vni(), h.payload());
                let _ = Repr::parse(&h);
                let mut seen = 0;
                let mut failed = false;
                for item in h.options_iter() {
                    prop_assert!(!failed, "an item after an error");
                    match item {
                        Ok(o) => { seen += o.wire_len(); let _ = SluiceOption::parse(&o); }
                        Err(_) => failed = true,
                    }
                }
                prop_assert!(seen <= h.options_len());
                prop_assert!(failed || seen == h.options_len());
            }
            let mut failed = false;
            for item in Options::new(&bytes) {
                prop_assert!(!failed, "an item after an error");
                failed = item.is_err();
            }
        }

        #[test]
        fn emit_then_parse_round_trips(
            oam: bool, critical: bool, protocol: u16, vni in 0..=VNI_MAX,
            options in prop::collection::vec(sluice_option(), 0..6),
            payload in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let repr = Repr { oam, critical, protocol, vni };
            let mut buf = [0u8; 128];
            let len = repr.emit_with_options(&mut buf, &options).unwrap();
            buf[len..len + payload.len()].copy_from_slice(&payload);
            let h = Header::new_checked(&buf[..len + payload.len()]).unwrap();
            prop_assert_eq!(Repr::parse(&h).unwrap(), repr);
            prop_assert_eq!(h.header_len(), len);
            prop_assert_eq!(h.payload(), &payload[..]);
            let parsed: Vec<SluiceOption> = h
                .options_iter()
                .map(|o| SluiceOption::parse(&o.unwrap()).unwrap().unwrap())
                .collect();
            prop_assert_eq!(parsed, options);
        }
    }
}
