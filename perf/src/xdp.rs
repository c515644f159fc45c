//! The sink and the XDP forwarder (`bpf/bench.bpf.c`), attached through BPF links: the
//! program comes off the interface when the process exits, however it exits, so a killed
//! benchmark leaves nothing attached.

use std::fmt;

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder};

use crate::packets::Addrs;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));
/// Buckets of the delay histogram: 1 us each up to 2,048 us, then 64 us each; the last
/// holds everything longer.
pub const HIST_BUCKETS: usize = 4096;

/// The lower edge, in microseconds, of delay histogram bucket `bucket`.
pub fn bucket_us(bucket: usize) -> u64 {
    if bucket < 2048 {
        bucket as u64
    } else {
        2048 + (bucket as u64 - 2048) * 64
    }
}

/// What failed while loading, attaching or reading the programs.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading bpf/bench.bpf.c: {0} (are you root?)")]
    Load(String),
    #[error("no {kind} named {name} in bpf/bench.bpf.c")]
    Missing { kind: &'static str, name: String },
    #[error("interface {0:?} not found in this network namespace")]
    Interface(String),
    #[error("attaching {program} to {ifname}: {message}")]
    Attach {
        program: String,
        ifname: String,
        message: String,
    },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
}

/// Which program to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Sink,
    Fwd,
    Pass,
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sink => "sink",
            Self::Fwd => "fwd",
            Self::Pass => "pass",
        })
    }
}

/// The loaded object and the links that keep its programs attached.
pub struct Bench {
    object: Object,
    links: Vec<Link>,
}

impl fmt::Debug for Bench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bench")
            .field("links", &self.links.len())
            .finish()
    }
}

/// The interface index of `ifname` in this network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, XdpError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|_| XdpError::Interface(ifname.into()))
}

impl Bench {
    pub fn load() -> Result<Self, XdpError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let object = open.load().map_err(|e| XdpError::Load(e.to_string()))?;
        Ok(Self {
            object,
            links: Vec::new(),
        })
    }

    /// Sets the forwarder's output and MACs, and whether the sink reads stamps.
    pub fn configure(
        &self,
        out_ifindex: u32,
        stamps: bool,
        dst: Option<Addrs>,
        src: Option<Addrs>,
    ) -> Result<(), XdpError> {
        let mut value = Vec::with_capacity(20);
        value.extend_from_slice(&out_ifindex.to_ne_bytes());
        value.extend_from_slice(&u32::from(stamps).to_ne_bytes());
        value.extend_from_slice(&dst.map(|a| a.mac.0).unwrap_or_default());
        value.extend_from_slice(&src.map(|a| a.mac.0).unwrap_or_default());
        self.map("cfg")?
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "cfg",
                message: e.to_string(),
            })
    }

    pub fn attach(&mut self, program: Program, ifname: &str) -> Result<(), XdpError> {
        let index = ifindex(ifname)?;
        let name = program.to_string();
        let prog = self
            .object
            .progs_mut()
            .find(|p| p.name().to_str() == Some(name.as_str()))
            .ok_or(XdpError::Missing {
                kind: "program",
                name: name.clone(),
            })?;
        let link = prog
            .attach_xdp(index as i32)
            .map_err(|e| XdpError::Attach {
                program: name,
                ifname: ifname.into(),
                message: e.to_string(),
            })?;
        self.links.push(link);
        Ok(())
    }

    /// The sink's counters summed over CPUs: frames, bytes, stamped frames, stamps from
    /// the future.
    pub fn counts(&self) -> Result<[u64; 4], XdpError> {
        let mut out = [0u64; 4];
        for (slot, v) in out.iter_mut().enumerate() {
            *v = self.percpu_sum("counts", slot as u32)?;
        }
        Ok(out)
    }

    /// The delay histogram summed over CPUs.
    pub fn histogram(&self) -> Result<Vec<u64>, XdpError> {
        (0..HIST_BUCKETS as u32)
            .map(|i| self.percpu_sum("hist", i))
            .collect()
    }

    fn percpu_sum(&self, map: &'static str, slot: u32) -> Result<u64, XdpError> {
        let values = self
            .map(map)?
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map,
                message: e.to_string(),
            })?
            .unwrap_or_default();
        Ok(values
            .iter()
            .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or_default()))
            .sum())
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>, XdpError> {
        self.object
            .maps()
            .find(|m| m.name().to_str() == Some(name))
            .ok_or(XdpError::Missing {
                kind: "map",
                name: name.into(),
            })
    }
}
