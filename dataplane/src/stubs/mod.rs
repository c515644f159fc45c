//! The worker node's XDP stubs (`bpf/stubs.bpf.c`): loading, pinning, attaching, and the
//! maps the node agent fills.
//!
//! Three programs share one object and one set of maps:
//! * *agent* (`sluice_agent`), on the host side of each pod veth: pod egress. Same-host
//!   destinations are redirected straight to their veth; everything else is encapsulated
//!   in Geneve to a bouncer of the pod's subnet, or directly to the destination's host
//!   when the transit stub cached it; replies of service backends get their source
//!   rewritten back to the VIP.
//! * *transit* (`sluice_transit`), on the node's underlay interface: Geneve addressed to
//!   the node is decapsulated and redirected to the local endpoint's veth after its
//!   options were recorded (HOST_HINT and DIRECT into the host cache, SERVICE_ORIG into
//!   the reverse-NAT table). Everything else passes to the kernel untouched.
//! * *pod side* (`sluice_pod_side`), XDP_PASS on the pod end of each veth, so that the
//!   pod end receives frames redirected to its peer (PLATFORM.md pitfall 5).
//!
//! Maps and programs are pinned by name under a directory on bpffs. Loading again reuses
//! the pinned maps, so a restarted node agent keeps its pods working. This module does
//! nothing per packet; it does not mount bpffs, create interfaces or decide addresses
//! (the node agent does).
//!
//! Interface indexes are resolved by the kernel in the network namespace of the thread
//! that attaches a program or writes a map (PLATFORM.md pitfall 3): call the methods from
//! the namespace the indexes belong to.

mod attach;
pub mod layout;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType, Object, ObjectBuilder};

pub use self::layout::{flow_hash, Counter, RevNatKey, RevNatValue, COUNTERS};
use self::layout::{EndpointKey, EndpointValue, HostCacheValue, NodeConfig, PodValue};

/// Where the node agent pins the stubs' programs and maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

/// Bouncers a pod entry can name (`MAX_BOUNCERS` in `bpf/sluice.h`).
pub const MAX_BOUNCERS: usize = 8;

/// Capacities of the maps (the C side's are overridden with these at load).
pub mod capacity {
    /// Pod interfaces on one node.
    pub const PODS: u32 = 4096;
    /// Local endpoints ((VNI, IP) -> veth); one per pod.
    pub const ENDPOINTS: u32 = 4096;
    /// Underlay neighbours (gateways and other workers).
    pub const NEIGHBORS: u32 = 1024;
    /// Cached hosts of remote endpoints (LRU).
    pub const HOST_CACHE: u32 = 65536;
    /// Reverse-NAT entries of service flows (LRU).
    pub const REV_NAT: u32 = 65536;
}

/// Names the kernel reports for the stub programs (at most 15 characters). A program of
/// one of these names on an interface was loaded by Sluice's node agent and may be
/// replaced; any other program is refused.
pub const PROGRAM_NAMES: [&str; 3] = [AGENT_PROGRAM, TRANSIT_PROGRAM, POD_SIDE_PROGRAM];
/// The agent program's name.
pub const AGENT_PROGRAM: &str = "sluice_agent";
/// The transit program's name.
pub const TRANSIT_PROGRAM: &str = "sluice_transit";
/// The pod-side program's name.
pub const POD_SIDE_PROGRAM: &str = "sluice_pod_side";

/// Names of the maps, as the C source declares them and as they are pinned.
const MAP_NODE: &str = "node_cfg";
const MAP_PODS: &str = "pods";
const MAP_ENDPOINTS: &str = "endpoints";
const MAP_NEIGHBORS: &str = "neighbors";
const MAP_HOST_CACHE: &str = "host_cache";
const MAP_REV_NAT: &str = "rev_nat";
const MAP_COUNTERS: &str = "counters";

/// The compiled object, written by build.rs.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stubs.bpf.o"));

/// This worker node on the underlay, as the stubs need it (ifindex in the agent's netns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's underlay address: outer source of what it sends, outer destination of
    /// what the transit stub accepts.
    pub ip: Ipv4Addr,
    /// The MAC of the underlay interface.
    pub mac: [u8; 6],
    /// The underlay interface's index, where encapsulated frames are redirected.
    pub ifindex: u32,
}

/// One pod interface as the stubs see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// The VPC's VNI.
    pub vni: u32,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Pod-side interface MAC.
    pub mac: [u8; 6],
    /// The subnet's virtual router MAC (frames to it always go via a bouncer).
    pub router_mac: [u8; 6],
    /// 1..=MAX_BOUNCERS underlay IPs, stable order.
    pub bouncers: Vec<Ipv4Addr>,
}

/// How many entries each map holds (for tests and leak checks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapEntryCounts {
    pub pods: usize,
    pub local_endpoints: usize,
    pub neighbors: usize,
    pub host_cache: usize,
    pub reverse_nat: usize,
}

/// What went wrong, naming the map, program, syscall or interface.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "pin directory {path} is not on bpffs (it is on {fs_type}); mount it first: \
         mount -t bpf bpf /sys/fs/bpf"
    )]
    NotBpffs { path: PathBuf, fs_type: String },
    #[error("opening the stubs' BPF object: {0}")]
    Open(String),
    #[error("loading the stubs (maps pinned under {pin_dir}): {message}{hint}")]
    Load {
        pin_dir: PathBuf,
        message: String,
        hint: &'static str,
    },
    #[error("the stubs' object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("pinning {what} at {path}: {message}")]
    Pin {
        what: String,
        path: PathBuf,
        message: String,
    },
    #[error("removing pin {path}: {source}")]
    Unpin { path: PathBuf, source: io::Error },
    #[error("map {map}: {op}: {message}")]
    Map {
        map: &'static str,
        op: String,
        message: String,
    },
    #[error("map {map}: malformed entry: {what}")]
    Decode { map: &'static str, what: String },
    #[error("invalid pod entry: {0}")]
    InvalidPod(String),
    #[error(
        "interface {ifindex} already has XDP program {prog_id} ({prog_name:?}), which Sluice \
         did not load; detach it first (ip link set dev IFNAME xdp off)"
    )]
    Occupied {
        ifindex: u32,
        prog_id: u32,
        prog_name: String,
    },
    #[error("{op} XDP program {program} on interface {ifindex}: {message}")]
    Attach {
        op: &'static str,
        program: &'static str,
        ifindex: u32,
        message: String,
    },
    #[error("running program {program} with BPF_PROG_TEST_RUN: {message}")]
    TestRun {
        program: &'static str,
        message: String,
    },
}

/// Which stub program (for [`NodeStubs::test_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubProgram {
    Agent,
    Transit,
    PodSide,
}

impl StubProgram {
    /// The program's name in the object and in the kernel.
    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => AGENT_PROGRAM,
            Self::Transit => TRANSIT_PROGRAM,
            Self::PodSide => POD_SIDE_PROGRAM,
        }
    }

    fn pin_name(self) -> &'static str {
        match self {
            Self::Agent => "prog_agent",
            Self::Transit => "prog_transit",
            Self::PodSide => "prog_pod_side",
        }
    }
}

/// What one BPF_PROG_TEST_RUN returned: the XDP action and the frame as the program left
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// `XDP_ABORTED` 0, `XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4.
    pub action: u32,
    pub frame: Vec<u8>,
}

/// XDP actions, as [`TestRun::action`] reports them.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Both stub programs (agent, transit, plus a tiny XDP_PASS "pod_side" program) and their
/// shared maps. Loading reuses maps already pinned under `pin_dir` (a restarted agent
/// re-adopts them; pods keep working) and pins new ones there; programs are pinned too.
/// Does not mount bpffs (the agent does) - fails with a clear error if pin_dir is not on
/// bpffs.
///
/// Dropping it detaches nothing: attached programs and pinned maps outlive the process,
/// so pods keep working while the node agent restarts.
#[derive(Debug)]
pub struct NodeStubs {
    pin_dir: PathBuf,
    object: Object,
    node: MapHandle,
    pods: MapHandle,
    endpoints: MapHandle,
    neighbors: MapHandle,
    host_cache: MapHandle,
    rev_nat: MapHandle,
    counters: MapHandle,
}

impl NodeStubs {
    /// Loads the programs, re-adopting maps pinned under `pin_dir` and pinning the rest.
    pub fn load(pin_dir: &Path) -> Result<Self, StubError> {
        check_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir).map_err(|source| StubError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;

        let mut open = ObjectBuilder::default()
            .name("sluice_stubs")
            .map_err(|e| StubError::Open(message(&e)))?
            .open_memory(OBJECT)
            .map_err(|e| StubError::Open(message(&e)))?;
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            let capacity = match name.as_str() {
                MAP_PODS => Some(capacity::PODS),
                MAP_ENDPOINTS => Some(capacity::ENDPOINTS),
                MAP_NEIGHBORS => Some(capacity::NEIGHBORS),
                MAP_HOST_CACHE => Some(capacity::HOST_CACHE),
                MAP_REV_NAT => Some(capacity::REV_NAT),
                _ => None,
            };
            let fail = |e: libbpf_rs::Error| StubError::Load {
                pin_dir: pin_dir.to_path_buf(),
                message: format!("configuring map {name}: {}", message(&e)),
                hint: "",
            };
            if let Some(capacity) = capacity {
                map.set_max_entries(capacity).map_err(fail)?;
            }
            // libbpf reuses a compatible map pinned here, or creates the map and pins it.
            map.set_pin_path(pin_dir.join(&name)).map_err(fail)?;
        }
        let had_pins = pin_dir.join(MAP_PODS).exists();
        let object = open.load().map_err(|e| {
            let text = message(&e);
            let hint = if text.contains("os error 1)") || text.contains("os error 13)") {
                " (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?)"
            } else if had_pins && text.contains("os error 22)") {
                " (a map pinned there may have another layout, from another Sluice version: \
                 remove the pins with `NodeStubs::unpin_all` or `rm -r` the pin directory)"
            } else {
                ""
            };
            StubError::Load {
                pin_dir: pin_dir.to_path_buf(),
                message: text,
                hint,
            }
        })?;

        let handle = |name: &'static str| -> Result<MapHandle, StubError> {
            let map = object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or(StubError::Missing { kind: "map", name })?;
            MapHandle::try_from(&map).map_err(|e| StubError::Map {
                map: name,
                op: "duplicating its descriptor".into(),
                message: message(&e),
            })
        };
        let stubs = NodeStubs {
            pin_dir: pin_dir.to_path_buf(),
            node: handle(MAP_NODE)?,
            pods: handle(MAP_PODS)?,
            endpoints: handle(MAP_ENDPOINTS)?,
            neighbors: handle(MAP_NEIGHBORS)?,
            host_cache: handle(MAP_HOST_CACHE)?,
            rev_nat: handle(MAP_REV_NAT)?,
            counters: handle(MAP_COUNTERS)?,
            object,
        };
        stubs.pin_programs()?;
        tracing::info!(pin_dir = %pin_dir.display(), "XDP stubs loaded");
        Ok(stubs)
    }

    /// Removes every pin under pin_dir (used by tests and by an explicit uninstall), then
    /// the directory itself. Attached programs keep running until detached. Ok if the
    /// directory does not exist.
    pub fn unpin_all(pin_dir: &Path) -> Result<(), StubError> {
        let entries = match fs::read_dir(pin_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StubError::PinDir {
                    path: pin_dir.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| StubError::PinDir {
                path: pin_dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StubError::Unpin { path, source }),
            }
        }
        match fs::remove_dir(pin_dir) {
            Ok(()) => Ok(()),
            // Something else lives there (a subdirectory): not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(39) => Ok(()), // ENOTEMPTY
            Err(source) => Err(StubError::Unpin {
                path: pin_dir.to_path_buf(),
                source,
            }),
        }
    }

    /// The directory the maps and programs are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn set_node(&self, node: &NodeIdentity) -> Result<(), StubError> {
        let value = NodeConfig {
            ip: node.ip,
            mac: node.mac,
            ifindex: node.ifindex,
        }
        .encode();
        update(
            &self.node,
            MAP_NODE,
            &0u32.to_ne_bytes(),
            &value,
            "setting the node",
        )
    }

    /// Underlay neighbours the agent stub encapsulates to (gateways, other workers):
    /// ip -> mac. On a miss the stub falls back to bpf_fib_lookup (an output lookup on the
    /// node's interface, which the kernel answers only when IPv4 forwarding is on for that
    /// interface, and only for resolved neighbours); if that fails the packet is dropped
    /// (counted as `drop_no_neighbor`).
    pub fn set_underlay_neighbor(&self, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), StubError> {
        let mut value = [0u8; layout::NEIGHBOR_VALUE_SIZE];
        value[..6].copy_from_slice(&mac);
        update(
            &self.neighbors,
            MAP_NEIGHBORS,
            &ip.octets(),
            &value,
            &format!("adding neighbour {ip}"),
        )
    }

    /// The MAC recorded for underlay host `ip`, if any (the node agent takes back only
    /// the entries a failed ADD created).
    pub fn underlay_neighbor(&self, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, StubError> {
        Ok(
            lookup(&self.neighbors, MAP_NEIGHBORS, &ip.octets())?.map(|v| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&v[..6]);
                mac
            }),
        )
    }

    /// Ok whether or not the neighbour was there.
    pub fn remove_underlay_neighbor(&self, ip: Ipv4Addr) -> Result<(), StubError> {
        delete(
            &self.neighbors,
            MAP_NEIGHBORS,
            &ip.octets(),
            &format!("removing neighbour {ip}"),
        )
        .map(|_| ())
    }

    /// XDP attach (native; in the current netns). Replaces a Sluice program left behind,
    /// refuses a foreign program with a clear error.
    pub fn attach_transit(&self, ifindex: u32) -> Result<(), StubError> {
        self.attach(StubProgram::Transit, ifindex)
    }

    /// Attach the agent program to the host side of a pod veth (current netns).
    pub fn attach_agent(&self, ifindex: u32) -> Result<(), StubError> {
        self.attach(StubProgram::Agent, ifindex)
    }

    /// Attach the XDP_PASS program to the pod side of the veth; call it from a thread that
    /// is inside the pod's netns. Needed so the pod side receives XDP-redirected frames
    /// (PLATFORM.md pitfall 5).
    pub fn attach_pod_side(&self, ifindex: u32) -> Result<(), StubError> {
        self.attach(StubProgram::PodSide, ifindex)
    }

    /// Detach whatever XDP program is on ifindex in the current netns (Ok if none, or if
    /// the interface is gone).
    pub fn detach(ifindex: u32) -> Result<(), StubError> {
        attach::detach_all(ifindex)
    }

    fn attach(&self, program: StubProgram, ifindex: u32) -> Result<(), StubError> {
        let prog = self.program(program)?;
        attach::attach(prog.as_fd(), program.name(), ifindex)
    }

    /// Writes the pods map entry (key: host-side ifindex) and the local-endpoint entry
    /// ((vni, ip) -> host-side ifindex, mac). Whole or nothing: on error neither remains.
    pub fn add_pod(&self, host_ifindex: u32, pod: &PodEntry) -> Result<(), StubError> {
        let value = PodValue::from_entry(pod)?.encode();
        let ep_key = EndpointKey {
            vni: pod.vni,
            ip: pod.ip,
        }
        .encode();
        let ep_value = EndpointValue {
            ifindex: host_ifindex,
            mac: pod.mac,
        }
        .encode();
        let key = host_ifindex.to_ne_bytes();
        // What was there before, to restore on failure (a re-add of the same pod must not
        // lose the old entries when the second write fails).
        let old_pod = lookup(&self.pods, MAP_PODS, &key)?;
        let old_ep = lookup(&self.endpoints, MAP_ENDPOINTS, &ep_key)?;
        let what = format!(
            "adding pod {} (VNI {}) on ifindex {host_ifindex}",
            pod.ip, pod.vni
        );
        update(&self.pods, MAP_PODS, &key, &value, &what)?;
        if let Err(e) = update(&self.endpoints, MAP_ENDPOINTS, &ep_key, &ep_value, &what) {
            let _ = match old_pod {
                Some(old) => update(&self.pods, MAP_PODS, &key, &old, "restoring"),
                None => delete(&self.pods, MAP_PODS, &key, "rolling back").map(|_| ()),
            };
            if let Some(old) = old_ep {
                let _ = update(&self.endpoints, MAP_ENDPOINTS, &ep_key, &old, "restoring");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes both entries, plus reverse-NAT entries naming that pod (as the backend) and
    /// host-cache entries for its address; Ok(None) if absent.
    pub fn remove_pod(&self, host_ifindex: u32) -> Result<Option<PodEntry>, StubError> {
        let key = host_ifindex.to_ne_bytes();
        let Some(bytes) = lookup(&self.pods, MAP_PODS, &key)? else {
            return Ok(None);
        };
        let pod = PodValue::decode(&bytes)
            .map_err(|what| StubError::Decode {
                map: MAP_PODS,
                what,
            })?
            .into_entry();
        let what = format!("removing pod {} (VNI {})", pod.ip, pod.vni);
        let ep_key = EndpointKey {
            vni: pod.vni,
            ip: pod.ip,
        }
        .encode();
        // The endpoint entry may meanwhile name another interface (the same address
        // re-added elsewhere): only remove it if it is this pod's.
        if let Some(ep) = lookup(&self.endpoints, MAP_ENDPOINTS, &ep_key)? {
            if EndpointValue::decode(&ep).is_ok_and(|v| v.ifindex == host_ifindex) {
                delete(&self.endpoints, MAP_ENDPOINTS, &ep_key, &what)?;
            }
        }
        delete(&self.pods, MAP_PODS, &key, &what)?;
        delete(&self.host_cache, MAP_HOST_CACHE, &ep_key, &what)?;
        self.remove_rev_nat_of(pod.vni, pod.ip, &what)?;
        Ok(Some(pod))
    }

    fn remove_rev_nat_of(&self, vni: u32, ip: Ipv4Addr, what: &str) -> Result<(), StubError> {
        let stale: Vec<Vec<u8>> = self
            .rev_nat
            .keys()
            .filter(|k| RevNatKey::decode(k).is_ok_and(|k| k.vni == vni && k.src_ip == ip))
            .collect();
        for key in stale {
            delete(&self.rev_nat, MAP_REV_NAT, &key, what)?;
        }
        Ok(())
    }

    pub fn pods(&self) -> Result<Vec<(u32, PodEntry)>, StubError> {
        let mut pods = Vec::new();
        for key in self.pods.keys() {
            let ifindex = key
                .as_slice()
                .try_into()
                .map(u32::from_ne_bytes)
                .map_err(|_| StubError::Decode {
                    map: MAP_PODS,
                    what: format!("key of {} bytes", key.len()),
                })?;
            // Removed between listing and reading: skip it.
            let Some(bytes) = lookup(&self.pods, MAP_PODS, &key)? else {
                continue;
            };
            let pod = PodValue::decode(&bytes).map_err(|what| StubError::Decode {
                map: MAP_PODS,
                what,
            })?;
            pods.push((ifindex, pod.into_entry()));
        }
        pods.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(pods)
    }

    /// Counters summed over CPUs, by reason (stable snake_case labels), for metrics.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, StubError> {
        let mut out = Vec::with_capacity(COUNTERS.len());
        for counter in COUNTERS {
            let slot = counter as u32;
            let per_cpu = self
                .counters
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| StubError::Map {
                    map: MAP_COUNTERS,
                    op: format!("reading counter {}", counter.label()),
                    message: message(&e),
                })?
                .unwrap_or_default();
            let sum = per_cpu
                .iter()
                .filter_map(|v| v.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum();
            out.push((counter.label(), sum));
        }
        Ok(out)
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, StubError> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(label, _)| *label == counter.label())
            .map_or(0, |(_, v)| v))
    }

    /// The host the transit stub cached for (vni, ip), whatever its age (the agent stub
    /// ignores entries older than [`layout::HOST_CACHE_TTL_NS`]). For tests and leak
    /// checks.
    pub fn cached_host(&self, vni: u32, ip: Ipv4Addr) -> Result<Option<Ipv4Addr>, StubError> {
        Ok(self.host_cache_entry(vni, ip)?.map(|v| v.host))
    }

    fn host_cache_entry(
        &self,
        vni: u32,
        ip: Ipv4Addr,
    ) -> Result<Option<HostCacheValue>, StubError> {
        let key = EndpointKey { vni, ip }.encode();
        let Some(bytes) = lookup(&self.host_cache, MAP_HOST_CACHE, &key)? else {
            return Ok(None);
        };
        HostCacheValue::decode(&bytes)
            .map(Some)
            .map_err(|what| StubError::Decode {
                map: MAP_HOST_CACHE,
                what,
            })
    }

    /// Makes the host_cache entry of (vni, ip) look learned `by` earlier than it was
    /// (its timestamp moved back, not below 0); Ok(false) if there is none. For tests
    /// of the TTL: the stubs' clock (`bpf_ktime_get_ns`) is only read in BPF, so aging
    /// an entry the transit stub wrote stays on that clock.
    pub fn age_cached_host(
        &self,
        vni: u32,
        ip: Ipv4Addr,
        by: std::time::Duration,
    ) -> Result<bool, StubError> {
        let Some(mut value) = self.host_cache_entry(vni, ip)? else {
            return Ok(false);
        };
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        value.learned_ns = value.learned_ns.saturating_sub(by);
        let key = EndpointKey { vni, ip }.encode();
        update(
            &self.host_cache,
            MAP_HOST_CACHE,
            &key,
            &value.encode(),
            &format!("ageing the cached host of {ip} (VNI {vni})"),
        )?;
        Ok(true)
    }

    /// The reverse-NAT entries: (vni, proto, backend ip, backend port, client ip, client
    /// port) -> (VIP, VIP port). For tests and diagnostics.
    pub fn reverse_nat(&self) -> Result<Vec<(RevNatKey, RevNatValue)>, StubError> {
        let mut out = Vec::new();
        for key in self.rev_nat.keys() {
            let Some(value) = lookup(&self.rev_nat, MAP_REV_NAT, &key)? else {
                continue;
            };
            let decode = |what| StubError::Decode {
                map: MAP_REV_NAT,
                what,
            };
            out.push((
                RevNatKey::decode(&key).map_err(decode)?,
                RevNatValue::decode(&value).map_err(decode)?,
            ));
        }
        Ok(out)
    }

    pub fn map_entry_counts(&self) -> Result<MapEntryCounts, StubError> {
        Ok(MapEntryCounts {
            pods: self.pods.keys().count(),
            local_endpoints: self.endpoints.keys().count(),
            neighbors: self.neighbors.keys().count(),
            host_cache: self.host_cache.keys().count(),
            reverse_nat: self.rev_nat.keys().count(),
        })
    }

    /// Runs one stub program once on `frame` with BPF_PROG_TEST_RUN (nothing is sent),
    /// as if it arrived on `ingress_ifindex` (an interface of the calling thread's
    /// namespace; `None` means the loopback interface). For tests.
    pub fn test_run(
        &self,
        program: StubProgram,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
    ) -> Result<TestRun, StubError> {
        let prog = self.program_mut(program)?;
        let fail = |e: libbpf_rs::Error| StubError::TestRun {
            program: program.name(),
            message: message(&e),
        };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data 0, data_end the frame's length, data_meta
        // and egress_ifindex 0.
        let len = u32::try_from(frame.len()).map_err(|_| StubError::TestRun {
            program: program.name(),
            message: format!("a frame of {} bytes", frame.len()),
        })?;
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        if let Some(ifindex) = ingress_ifindex {
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 512];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            context_in: ingress_ifindex.is_some().then_some(&mut ctx[..]),
            ..Default::default()
        };
        let output = prog.test_run(input).map_err(fail)?;
        let frame = output.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok(TestRun {
            action: output.return_value,
            frame,
        })
    }

    fn program(&self, program: StubProgram) -> Result<libbpf_rs::Program<'_>, StubError> {
        self.object
            .progs()
            .find(|p| p.name().to_str() == Some(program.name()))
            .ok_or(StubError::Missing {
                kind: "program",
                name: program.name(),
            })
    }

    fn program_mut(&self, program: StubProgram) -> Result<libbpf_rs::ProgramMut<'_>, StubError> {
        self.object
            .progs_mut()
            .find(|p| p.name().to_str() == Some(program.name()))
            .ok_or(StubError::Missing {
                kind: "program",
                name: program.name(),
            })
    }

    /// Pins the programs under the pin directory, replacing pins of an earlier load.
    fn pin_programs(&self) -> Result<(), StubError> {
        for program in [
            StubProgram::Agent,
            StubProgram::Transit,
            StubProgram::PodSide,
        ] {
            let path = self.pin_dir.join(program.pin_name());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StubError::Unpin { path, source }),
            }
            let mut prog = self.program_mut(program)?;
            prog.pin(&path).map_err(|e| StubError::Pin {
                what: format!("program {}", program.name()),
                path: path.clone(),
                message: message(&e),
            })?;
        }
        Ok(())
    }
}

/// Fails unless `pin_dir` (or, if it does not exist yet, its nearest existing ancestor)
/// lies on a bpffs mount, so that pinning fails early with a clear message.
fn check_bpffs(pin_dir: &Path) -> Result<(), StubError> {
    let absolute = if pin_dir.is_absolute() {
        pin_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| StubError::PinDir {
                path: pin_dir.to_path_buf(),
                source,
            })?
            .join(pin_dir)
    };
    let existing = absolute
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let canonical = existing
        .canonicalize()
        .map_err(|source| StubError::PinDir {
            path: existing.to_path_buf(),
            source,
        })?;
    let mounts =
        fs::read_to_string("/proc/self/mountinfo").map_err(|source| StubError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
    // mountinfo: "id parent major:minor root MOUNT_POINT options ... - FS_TYPE source ...";
    // the last mount whose point is a prefix wins (later mounts cover earlier ones).
    let fs_type = mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let fs_type = right.split(' ').next()?;
            canonical
                .starts_with(&point)
                .then(|| (point.len(), fs_type.to_string()))
        })
        .fold(
            None,
            |best: Option<(usize, String)>, (len, fs)| match best {
                Some((best_len, _)) if best_len > len => best,
                _ => Some((len, fs)),
            },
        )
        .map(|(_, fs)| fs)
        .unwrap_or_default();
    if fs_type == "bpf" {
        Ok(())
    } else {
        Err(StubError::NotBpffs {
            path: pin_dir.to_path_buf(),
            fs_type,
        })
    }
}

fn lookup(map: &MapHandle, name: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StubError> {
    map.lookup(key, MapFlags::ANY).map_err(|e| StubError::Map {
        map: name,
        op: "lookup".into(),
        message: message(&e),
    })
}

fn update(
    map: &MapHandle,
    name: &'static str,
    key: &[u8],
    value: &[u8],
    what: &str,
) -> Result<(), StubError> {
    map.update(key, value, MapFlags::ANY).map_err(|e| {
        let text = message(&e);
        let full = if text.contains("os error 7)") {
            format!("{text} (the map is full: {} entries)", map_capacity(map))
        } else {
            text
        };
        StubError::Map {
            map: name,
            op: what.to_string(),
            message: full,
        }
    })
}

/// Deletes `key`; Ok(false) if it was not there.
fn delete(map: &MapHandle, name: &'static str, key: &[u8], what: &str) -> Result<bool, StubError> {
    match map.delete(key) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StubError::Map {
            map: name,
            op: what.to_string(),
            message: message(&e),
        }),
    }
}

fn map_capacity(map: &MapHandle) -> String {
    match map.map_type() {
        MapType::Unknown => "?".into(),
        _ => map.max_entries().to_string(),
    }
}

/// A libbpf-rs error with its whole chain, down to the OS error.
fn message(e: &libbpf_rs::Error) -> String {
    format!("{e:#}")
}
