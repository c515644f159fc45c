//! Attaching and detaching the stub programs through netlink (not BPF links), so they
//! stay attached while the node agent restarts.
//!
//! A stub program already on the interface (one of [`super::PROGRAM_NAMES`]) is replaced
//! atomically in native mode; any other program is refused, never replaced.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use libbpf_rs::{Xdp, XdpFlags};

use super::{StubError, PROGRAM_NAMES};

/// `ENODEV`: no interface of that index in this network namespace.
const ENODEV: &str = "os error 19)";

pub(super) fn attach(
    prog: BorrowedFd<'_>,
    program: &'static str,
    ifindex: u32,
) -> Result<(), StubError> {
    let err = |op: &'static str| {
        move |e: libbpf_rs::Error| StubError::Attach {
            op,
            program,
            ifindex,
            message: explain(&e),
        }
    };
    let index = netlink_index(ifindex, program)?;
    let xdp = Xdp::new(prog);
    // An interface without a program (a new pod veth) takes it in one request: with
    // UPDATE_IF_NOEXIST the kernel itself refuses if anything is attached, so nothing
    // foreign can be replaced. The query below is skipped because libbpf implements it
    // as a dump of every link in the namespace, a cost that grows with the pods on the
    // node. Any refusal (a program there, native mode unsupported) takes the full path.
    match xdp.attach(index, XdpFlags::DRV_MODE | XdpFlags::UPDATE_IF_NOEXIST) {
        Ok(()) => return Ok(()),
        Err(e) if explain(&e).contains(ENODEV) => return Err(err("attaching")(e)),
        Err(_) => {}
    }
    let attached = xdp.query(index, XdpFlags::NONE).map_err(err("querying"))?;
    for prog_id in [
        attached.drv_prog_id,
        attached.skb_prog_id,
        attached.hw_prog_id,
    ] {
        if prog_id == 0 {
            continue;
        }
        let prog_name = program_name(prog_id).unwrap_or_default();
        if !PROGRAM_NAMES.contains(&prog_name.as_str()) {
            return Err(StubError::Occupied {
                ifindex,
                prog_id,
                prog_name,
            });
        }
    }
    // Native mode replaces a native program in one step; a generic one must go first,
    // the kernel keeps at most one mode per interface.
    if attached.skb_prog_id != 0 {
        xdp.detach(index, XdpFlags::SKB_MODE)
            .map_err(err("detaching the generic-mode program before attaching"))?;
    }
    match xdp.attach(index, XdpFlags::DRV_MODE) {
        Ok(()) => Ok(()),
        Err(native) => {
            let reason = explain(&native);
            if reason.contains(ENODEV) {
                return Err(err("attaching")(native));
            }
            xdp.attach(index, XdpFlags::SKB_MODE)
                .map_err(|e| StubError::Attach {
                    op: "attaching",
                    program,
                    ifindex,
                    message: format!("{} (after native mode failed: {reason})", explain(&e)),
                })?;
            tracing::warn!(
                ifindex,
                program,
                reason = %reason,
                "native XDP refused; the stub runs in generic mode"
            );
            Ok(())
        }
    }
}

/// Detaches whatever XDP program is on `ifindex` in this network namespace, in any mode.
/// Ok if none, or if the interface no longer exists.
pub(super) fn detach_all(ifindex: u32) -> Result<(), StubError> {
    let program = "(any)";
    let err = |op: &'static str| {
        move |e: libbpf_rs::Error| StubError::Attach {
            op,
            program,
            ifindex,
            message: explain(&e),
        }
    };
    let index = netlink_index(ifindex, program)?;
    // Querying and detaching by interface need no program, but libbpf-rs hangs both on an
    // `Xdp` made from one; any descriptor serves, it is never used.
    let placeholder = File::open("/dev/null").map_err(|e| StubError::Attach {
        op: "detaching",
        program,
        ifindex,
        message: format!("opening /dev/null: {e}"),
    })?;
    let xdp = Xdp::new(placeholder.as_fd());
    let attached = match xdp.query(index, XdpFlags::NONE) {
        Ok(q) => q,
        Err(e) if explain(&e).contains(ENODEV) => return Ok(()),
        Err(e) => return Err(err("querying")(e)),
    };
    for (prog_id, flags) in [
        (attached.drv_prog_id, XdpFlags::DRV_MODE),
        (attached.skb_prog_id, XdpFlags::SKB_MODE),
        (attached.hw_prog_id, XdpFlags::HW_MODE),
    ] {
        if prog_id == 0 {
            continue;
        }
        match xdp.detach(index, flags) {
            Ok(()) => {}
            Err(e) if explain(&e).contains(ENODEV) => return Ok(()),
            Err(e) => return Err(err("detaching")(e)),
        }
    }
    Ok(())
}

fn netlink_index(ifindex: u32, program: &'static str) -> Result<i32, StubError> {
    i32::try_from(ifindex)
        .ok()
        .filter(|i| *i > 0)
        .ok_or(StubError::Attach {
            op: "attaching",
            program,
            ifindex,
            message: "not a valid interface index".into(),
        })
}

/// The error with a hint for the usual causes.
fn explain(e: &libbpf_rs::Error) -> String {
    let text = format!("{e:#}");
    let hint = if text.contains(ENODEV) {
        " (no interface of that index in this network namespace)"
    } else if text.contains("os error 1)") {
        " (are you root?)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// The kernel's name of a loaded program, if it still exists.
fn program_name(prog_id: u32) -> Option<String> {
    libbpf_rs::query::ProgInfoIter::default()
        .find(|info| info.id == prog_id)
        .map(|info| info.name.to_string_lossy().into_owned())
}
