//! The gateway's NIC program: loads `bpf/gateway.bpf.c` onto an interface, fills its
//! gateway-address map, hands AF_XDP sockets to its XSKMAP and reads its counters.
//!
//! The program redirects Geneve packets addressed to this gateway into the socket of the
//! RX queue they arrived on and passes everything else to the kernel (ARP, ICMP, SSH, the
//! gateway's own gRPC). This module owns only the program and its maps; the engine owns
//! the sockets and calls [`NicProgram::set_socket`] once each is bound. Nothing here runs
//! per packet.
//!
//! The program is attached through netlink (not a BPF link) so that native and generic
//! mode can be chosen. It therefore outlives a process that dies without dropping its
//! [`NicProgram`]; the next [`NicProgram::attach`] recognises such a leftover by its name
//! and by no live process holding it, and replaces it. It refuses to touch a program
//! Sluice did not load or one a running gateway holds.

mod libbpf_log;
mod skel;

use std::collections::HashSet;
use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::str::FromStr;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, Xdp, XdpFlags};
use nix::errno::Errno;

use self::skel::GatewaySkelBuilder;

/// Name of the XDP program in `bpf/gateway.bpf.c`, as the kernel reports it (at most 15
/// characters). A program of this name attached to an interface was loaded by Sluice.
pub const PROGRAM_NAME: &str = "sluice_gw_nic";

/// Slots in the program's XSKMAP (`xsks` in `bpf/gateway.bpf.c`): RX queues `0..256` can
/// have a socket.
pub const MAX_QUEUES: u32 = 256;

/// Capacity of the program's gateway-address map (`gateway_addrs`).
pub const MAX_GATEWAY_ADDRS: usize = 16;

/// Slots of the program's `stats` map (`enum nic_stat` in `bpf/gateway.bpf.c`).
mod stat {
    pub const REDIRECTED: u32 = 0;
    pub const PASSED: u32 = 1;
    pub const NO_SOCKET: u32 = 2;
}

/// `attach_mode` values of `bpf_xdp_query` (`XDP_ATTACHED_*` in `<linux/if_link.h>`).
const XDP_ATTACHED_NONE: u8 = 0;

/// How to attach the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native (driver) mode if the driver takes it, else generic mode; the reason for
    /// falling back is kept in [`NicProgram::fallback_reason`] and logged.
    Auto,
    /// Native (driver) mode only: runs in the driver before any socket buffer exists.
    Native,
    /// Generic (SKB) mode only: works on any interface, at the cost of a socket buffer
    /// per packet and a copy into AF_XDP.
    Generic,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            Self::Native => XdpFlags::DRV_MODE,
            Self::Generic => XdpFlags::SKB_MODE,
            // Callers resolve Auto into a concrete mode first.
            Self::Auto => XdpFlags::NONE,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected \"auto\", \"native\" or \"generic\""
            )),
        }
    }
}

/// Packet counters of the NIC program, summed over CPUs. Every packet the program sees is
/// counted in exactly one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Geneve packets for this gateway handed to the AF_XDP socket of their queue. A
    /// socket whose RX ring is full still drops them afterwards; the socket's own
    /// statistics count that.
    pub redirected: u64,
    /// Everything else, passed to the kernel.
    pub passed: u64,
    /// Geneve packets for this gateway that arrived on a queue without a socket in the
    /// XSKMAP; they were passed to the kernel, which has no listener for them.
    pub no_socket: u64,
}

/// What went wrong, naming the interface, the step and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("interface {ifname} does not exist (in this network namespace)")]
    NoSuchInterface { ifname: String },
    #[error("looking up interface {ifname}: {source}")]
    InterfaceLookup { ifname: String, source: io::Error },
    #[error("no gateway addresses for {ifname}: the program would redirect nothing")]
    NoGatewayAddrs { ifname: String },
    #[error(
        "{count} gateway addresses for {ifname}: the program holds at most {MAX_GATEWAY_ADDRS}"
    )]
    TooManyGatewayAddrs { ifname: String, count: usize },
    #[error("loading the XDP program for {ifname}: {source}{hint}")]
    Load {
        ifname: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("{step} for {ifname}: {source}")]
    Setup {
        ifname: String,
        step: String,
        source: io::Error,
    },
    #[error(
        "{ifname} already has XDP program {prog_id} ({prog_name:?}) attached, which Sluice did \
         not load; detach it first (ip link set dev {ifname} xdp off)"
    )]
    Occupied {
        ifname: String,
        prog_id: u32,
        prog_name: String,
    },
    #[error(
        "{ifname} already runs Sluice's NIC program {prog_id}, held by live process {pid} \
         ({command}); stop that gateway first"
    )]
    InUse {
        ifname: String,
        prog_id: u32,
        pid: u32,
        command: String,
    },
    #[error("attaching XDP to {ifname} in {mode} mode: {source}{hint}")]
    Attach {
        ifname: String,
        mode: XdpMode,
        source: io::Error,
        hint: String,
    },
    #[error("queue {queue} of {ifname} is beyond the {MAX_QUEUES} slots of the XSKMAP")]
    QueueOutOfRange { ifname: String, queue: u32 },
    #[error("putting the AF_XDP socket (fd {fd}) of queue {queue} of {ifname} into the XSKMAP: {source}{hint}")]
    SetSocket {
        ifname: String,
        queue: u32,
        fd: RawFd,
        source: io::Error,
        hint: &'static str,
    },
    #[error("removing the AF_XDP socket of queue {queue} of {ifname} from the XSKMAP: {source}")]
    ClearSocket {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    #[error("reading the NIC program's counters on {ifname}: {source}")]
    Stats { ifname: String, source: io::Error },
    #[error("detaching XDP from {ifname}: {source}")]
    Detach { ifname: String, source: io::Error },
}

/// The NIC program loaded and attached to one interface. Dropping it detaches the
/// program; [`NicProgram::detach`] does the same and reports errors.
#[derive(Debug)]
pub struct NicProgram {
    ifname: String,
    ifindex: i32,
    /// The network namespace the interface index belongs to, so that detaching from
    /// another thread or namespace still finds the right interface.
    netns: File,
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    stats: MapHandle,
    /// Kept so the address map lives as long as the program (it does anyway through the
    /// program's reference; this makes the ownership explicit).
    _gateway_addrs: MapHandle,
    mode: XdpMode,
    fallback_reason: Option<String>,
    replaced_stale: Option<u32>,
    attached: bool,
}

impl NicProgram {
    /// Loads the program, fills its gateway addresses and attaches it to `ifname` in the
    /// calling thread's network namespace. Nothing stays attached or loaded on error.
    ///
    /// A Sluice program left on the interface by a gateway that died is replaced; any
    /// other program is left alone and reported. The first call routes libbpf's log lines
    /// to `tracing` for the whole process (target `libbpf`).
    pub fn attach(
        ifname: &str,
        mode: XdpMode,
        gateway_addrs: &[Ipv4Addr],
    ) -> Result<NicProgram, NicError> {
        libbpf_log::install();
        let name = || ifname.to_string();
        let ifindex = interface_index(ifname)?;
        let addrs: HashSet<Ipv4Addr> = gateway_addrs.iter().copied().collect();
        if addrs.is_empty() {
            return Err(NicError::NoGatewayAddrs { ifname: name() });
        }
        if addrs.len() > MAX_GATEWAY_ADDRS {
            return Err(NicError::TooManyGatewayAddrs {
                ifname: name(),
                count: addrs.len(),
            });
        }
        let netns = File::open("/proc/thread-self/ns/net").map_err(|source| NicError::Setup {
            ifname: name(),
            step: "opening this thread's network namespace".into(),
            source,
        })?;

        let loaded = load(ifname, &addrs)?;
        let xdp = Xdp::new(loaded.prog.as_fd());

        let replaced_stale = remove_stale_program(ifname, ifindex, &xdp)?;

        let (attached_mode, fallback_reason) = match mode {
            XdpMode::Auto => match attach_in(&xdp, ifname, ifindex, XdpMode::Native) {
                Ok(()) => (XdpMode::Native, None),
                Err(native) => {
                    let reason = native.to_string();
                    attach_in(&xdp, ifname, ifindex, XdpMode::Generic).map_err(|e| match e {
                        NicError::Attach {
                            ifname,
                            mode,
                            source,
                            hint,
                        } => NicError::Attach {
                            ifname,
                            mode,
                            source,
                            hint: format!("{hint} (after native mode failed: {reason})"),
                        },
                        other => other,
                    })?;
                    tracing::warn!(
                        interface = ifname,
                        reason = %reason,
                        "native XDP refused; the NIC program runs in generic mode"
                    );
                    (XdpMode::Generic, Some(reason))
                }
            },
            concrete => {
                attach_in(&xdp, ifname, ifindex, concrete)?;
                (concrete, None)
            }
        };

        let program = NicProgram {
            ifname: name(),
            ifindex,
            netns,
            prog_id: loaded.prog_id,
            prog: loaded.prog,
            xsks: loaded.xsks,
            stats: loaded.stats,
            _gateway_addrs: loaded.gateway_addrs,
            mode: attached_mode,
            fallback_reason,
            replaced_stale,
            attached: true,
        };
        tracing::info!(
            interface = ifname,
            ifindex,
            mode = %attached_mode,
            prog_id = program.prog_id,
            addrs = ?gateway_addrs,
            "NIC program attached"
        );
        Ok(program)
    }

    /// Puts the AF_XDP socket `fd`, bound to RX queue `queue` of this interface, into the
    /// XSKMAP: Geneve packets for the gateway arriving on that queue now go to it. The map
    /// takes its own reference to the socket; clear the slot before closing it.
    pub fn set_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), NicError> {
        self.check_queue(queue)?;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| {
                let source = os_error(&e);
                let hint = match errno(&source) {
                    Some(Errno::EOPNOTSUPP) => " (is it an AF_XDP socket, bound, with an RX ring?)",
                    Some(Errno::EBADF) => " (is the descriptor open?)",
                    _ => "",
                };
                NicError::SetSocket {
                    ifname: self.ifname.clone(),
                    queue,
                    fd,
                    source,
                    hint,
                }
            })
    }

    /// Empties the XSKMAP slot of `queue`: its Geneve packets go to the kernel again and
    /// count as `no_socket`. Clearing an empty slot is not an error.
    pub fn clear_socket(&mut self, queue: u32) -> Result<(), NicError> {
        self.check_queue(queue)?;
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NicError::ClearSocket {
                ifname: self.ifname.clone(),
                queue,
                source: os_error(&e),
            }),
        }
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<NicStats, NicError> {
        let read = |slot: u32| -> Result<u64, NicError> {
            let per_cpu = self
                .stats
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| NicError::Stats {
                    ifname: self.ifname.clone(),
                    source: os_error(&e),
                })?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .filter_map(|v| v.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum())
        };
        Ok(NicStats {
            redirected: read(stat::REDIRECTED)?,
            passed: read(stat::PASSED)?,
            no_socket: read(stat::NO_SOCKET)?,
        })
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Its index in the network namespace it was attached in.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// The mode the program runs in: `Native` or `Generic`, never `Auto`.
    pub fn attached_mode(&self) -> XdpMode {
        self.mode
    }

    /// Why native mode was refused, when [`XdpMode::Auto`] fell back to generic mode.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The kernel's id of the loaded program (as `bpftool prog` and `ip link` show it).
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// The id of a Sluice program left attached by an earlier run that this one
    /// replaced, if there was one.
    pub fn replaced_stale_program(&self) -> Option<u32> {
        self.replaced_stale
    }

    /// Detaches the program from the interface and reports what went wrong, if anything.
    /// The maps and the program are freed when the last socket reference goes.
    pub fn detach(mut self) -> Result<(), NicError> {
        self.detach_once()
    }

    fn detach_once(&mut self) -> Result<(), NicError> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        let result = if same_netns(&self.netns) {
            self.detach_here()
        } else {
            // The interface index means something only in the namespace it came from;
            // setns changes the calling thread, so do it on a thread of its own.
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(&self.netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| NicError::Detach {
                            ifname: self.ifname.clone(),
                            source: io::Error::other(format!(
                                "entering its network namespace: {e}"
                            )),
                        },
                    )?;
                    self.detach_here()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(NicError::Detach {
                        ifname: self.ifname.clone(),
                        source: io::Error::other("the detaching thread panicked"),
                    })
                })
            })
        };
        if result.is_ok() {
            tracing::info!(interface = %self.ifname, prog_id = self.prog_id, "NIC program detached");
        }
        result
    }

    /// Detaches in the calling thread's namespace, which must be the program's.
    fn detach_here(&self) -> Result<(), NicError> {
        let xdp = Xdp::new(self.prog.as_fd());
        let err = |source| NicError::Detach {
            ifname: self.ifname.clone(),
            source,
        };
        let attached = match xdp.query(self.ifindex, XdpFlags::NONE) {
            Ok(q) => q,
            // The interface is gone (deleted, or its namespace was): nothing is attached.
            Err(e) if errno(&os_error(&e)) == Some(Errno::ENODEV) => return Ok(()),
            Err(e) => return Err(err(os_error(&e))),
        };
        let ours = match self.mode {
            XdpMode::Generic => attached.skb_prog_id,
            _ => attached.drv_prog_id,
        };
        if ours != self.prog_id {
            // Someone replaced or removed it; never detach a program that is not ours.
            tracing::warn!(
                interface = %self.ifname,
                found = ours,
                ours = self.prog_id,
                "the NIC program is no longer attached; nothing to detach"
            );
            return Ok(());
        }
        xdp.detach(self.ifindex, self.mode.flags())
            .map_err(|e| err(os_error(&e)))
    }

    fn check_queue(&self, queue: u32) -> Result<(), NicError> {
        if queue < MAX_QUEUES {
            Ok(())
        } else {
            Err(NicError::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
            })
        }
    }
}

impl Drop for NicProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_once() {
            tracing::error!("{e}");
        }
    }
}

/// A loaded program and handles to its maps, independent of the skeleton they came from.
struct Loaded {
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    stats: MapHandle,
    gateway_addrs: MapHandle,
}

/// Opens and loads the skeleton and fills the gateway addresses. The skeleton object is
/// dropped on return; the duplicated descriptors keep the program and its maps alive.
fn load(ifname: &str, addrs: &HashSet<Ipv4Addr>) -> Result<Loaded, NicError> {
    let load_err = |e: libbpf_rs::Error| {
        let source = os_error(&e);
        let hint = match errno(&source) {
            Some(Errno::EPERM) | Some(Errno::EACCES) => {
                " (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?)"
            }
            _ => "",
        };
        NicError::Load {
            ifname: ifname.to_string(),
            source,
            hint,
        }
    };
    let map_err = |step: String| {
        move |e: libbpf_rs::Error| NicError::Setup {
            ifname: ifname.to_string(),
            step,
            source: os_error(&e),
        }
    };

    let mut object = MaybeUninit::uninit();
    let skel = GatewaySkelBuilder::default()
        .open(&mut object)
        .and_then(|mut open| {
            // The sizes this module checks against, whatever the C source says.
            open.maps.xsks.set_max_entries(MAX_QUEUES)?;
            open.maps
                .gateway_addrs
                .set_max_entries(MAX_GATEWAY_ADDRS as u32)?;
            open.load()
        })
        .map_err(load_err)?;

    for addr in addrs {
        skel.maps
            .gateway_addrs
            .update(&addr.octets(), &[1], MapFlags::ANY)
            .map_err(map_err(format!("adding gateway address {addr}")))?;
    }
    let handle = |map: &libbpf_rs::MapMut<'_>, what: &str| {
        MapHandle::try_from(map).map_err(map_err(format!("duplicating the {what} map")))
    };
    let prog = skel
        .progs
        .sluice_gw_nic
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| NicError::Setup {
            ifname: ifname.to_string(),
            step: "duplicating the program descriptor".into(),
            source,
        })?;
    let prog_id = libbpf_rs::Program::id_from_fd(prog.as_fd())
        .map_err(map_err("reading the program id".into()))?;
    Ok(Loaded {
        prog,
        prog_id,
        xsks: handle(&skel.maps.xsks, "xsks")?,
        stats: handle(&skel.maps.stats, "stats")?,
        gateway_addrs: handle(&skel.maps.gateway_addrs, "gateway_addrs")?,
    })
}

/// Detaches a Sluice program left attached by an earlier run that died, and returns its
/// id; refuses when a program Sluice did not load is attached.
fn remove_stale_program(
    ifname: &str,
    ifindex: i32,
    xdp: &Xdp<'_>,
) -> Result<Option<u32>, NicError> {
    let query_err = |e: libbpf_rs::Error| NicError::Setup {
        ifname: ifname.to_string(),
        step: "querying the XDP program already attached".into(),
        source: os_error(&e),
    };
    let attached = xdp.query(ifindex, XdpFlags::NONE).map_err(query_err)?;
    if attached.attach_mode == XDP_ATTACHED_NONE {
        return Ok(None);
    }
    let mut stale = None;
    for (prog_id, flags) in [
        (attached.drv_prog_id, XdpFlags::DRV_MODE),
        (attached.skb_prog_id, XdpFlags::SKB_MODE),
        (attached.hw_prog_id, XdpFlags::HW_MODE),
    ] {
        if prog_id == 0 {
            continue;
        }
        let prog_name = program_name(prog_id).unwrap_or_default();
        if prog_name != PROGRAM_NAME {
            return Err(NicError::Occupied {
                ifname: ifname.to_string(),
                prog_id,
                prog_name,
            });
        }
        if let Some((pid, command)) = holder_of(prog_id) {
            return Err(NicError::InUse {
                ifname: ifname.to_string(),
                prog_id,
                pid,
                command,
            });
        }
        xdp.detach(ifindex, flags).map_err(|e| NicError::Detach {
            ifname: ifname.to_string(),
            source: os_error(&e),
        })?;
        tracing::warn!(
            interface = ifname,
            prog_id,
            "replaced a NIC program left attached by an earlier run"
        );
        stale = Some(prog_id);
    }
    Ok(stale)
}

fn attach_in(xdp: &Xdp<'_>, ifname: &str, ifindex: i32, mode: XdpMode) -> Result<(), NicError> {
    libbpf_log::clear();
    xdp.attach(ifindex, mode.flags() | XdpFlags::UPDATE_IF_NOEXIST)
        .map_err(|e| {
            let source = os_error(&e);
            let kernel = libbpf_log::take_kernel_message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let hint = match (errno(&source), mode) {
                (Some(Errno::EPERM), _) => " (are you root?)",
                (Some(Errno::EBUSY) | Some(Errno::EEXIST), _) => {
                    " (another XDP program was attached meanwhile)"
                }
                (Some(Errno::EOPNOTSUPP), XdpMode::Native) => {
                    " (the driver has no native XDP; use generic or auto mode)"
                }
                (Some(Errno::EINVAL) | Some(Errno::ERANGE), XdpMode::Native) => {
                    " (native XDP may refuse this MTU or an enabled LRO/GRO-HW; see dmesg)"
                }
                _ => "",
            };
            // The kernel's own words say more than a guess; keep only the root hint then.
            let hint = match (kernel.is_empty(), errno(&source)) {
                (true, _) | (false, Some(Errno::EPERM)) => format!("{kernel}{hint}"),
                (false, _) => kernel,
            };
            NicError::Attach {
                ifname: ifname.to_string(),
                mode,
                source,
                hint,
            }
        })
}

/// A process holding a descriptor of program `prog_id` (its pid and command name), if any:
/// such a program belongs to a running gateway, not one that died. Scans
/// `/proc/*/fdinfo`, so it sees the processes of this PID namespace only.
fn holder_of(prog_id: u32) -> Option<(u32, String)> {
    let wanted = format!("prog_id:\t{prog_id}\n");
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fdinfo")) else {
            continue; // exited meanwhile
        };
        for fd in fds.flatten() {
            if std::fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&wanted)) {
                let command = std::fs::read_to_string(process.path().join("comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_default();
                return Some((pid, command));
            }
        }
    }
    None
}

/// The kernel's name of a loaded program, if it still exists.
fn program_name(prog_id: u32) -> Option<String> {
    libbpf_rs::query::ProgInfoIter::default()
        .find(|info| info.id == prog_id)
        .map(|info| cstr_lossy(&info.name))
}

fn cstr_lossy(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}

fn interface_index(ifname: &str) -> Result<i32, NicError> {
    match nix::net::if_::if_nametoindex(ifname) {
        Ok(index) => i32::try_from(index).map_err(|_| NicError::InterfaceLookup {
            ifname: ifname.to_string(),
            source: io::Error::other(format!("index {index} out of range")),
        }),
        Err(nix::errno::Errno::ENODEV) => Err(NicError::NoSuchInterface {
            ifname: ifname.to_string(),
        }),
        Err(e) => Err(NicError::InterfaceLookup {
            ifname: ifname.to_string(),
            source: io::Error::from(e),
        }),
    }
}

/// Whether the calling thread is in the network namespace `netns` refers to.
fn same_netns(netns: &File) -> bool {
    match (
        netns.metadata(),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The OS error inside a libbpf-rs error. libbpf-rs keeps it as the root of its chain but
/// exposes only its text, so recover the errno from "... (os error N)".
fn os_error(e: &libbpf_rs::Error) -> io::Error {
    // The alternate form prints the whole chain, down to the OS error.
    let text = format!("{e:#}");
    text.rsplit_once("(os error ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .and_then(|n| n.parse::<i32>().ok())
        .map_or_else(
            || io::Error::other(text.clone()),
            io::Error::from_raw_os_error,
        )
}

/// The errno of an OS error, to choose a hint.
fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}
