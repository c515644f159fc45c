//! Routes libbpf's messages to `tracing` (instead of raw stderr) and keeps the kernel's
//! explanation of a refused netlink request (its extack message, e.g. "veth: Peer MTU is
//! too large to set XDP") so that the error reporting the refusal can quote it.
//!
//! libbpf has one print callback per process: installing this one replaces whatever was
//! there, which in the gateway is nothing but libbpf-rs's default (stderr).

use std::cell::RefCell;
use std::sync::Once;

use libbpf_rs::PrintLevel;

/// How libbpf prefixes the extack message of a failed netlink request.
const KERNEL_MESSAGE: &str = "libbpf: Kernel error message: ";

thread_local! {
    /// Kernel messages libbpf printed on this thread since the last `take`. libbpf calls
    /// the print callback synchronously, on the thread that made the failing request.
    static KERNEL_MESSAGES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Installs the callback, once per process.
pub(super) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Info, forward)));
    });
}

/// Drops the kernel messages collected so far on this thread.
pub(super) fn clear() {
    KERNEL_MESSAGES.with(|m| m.borrow_mut().clear());
}

/// The kernel messages collected on this thread since the last `clear`, joined.
pub(super) fn take_kernel_message() -> Option<String> {
    let messages = KERNEL_MESSAGES.with(|m| std::mem::take(&mut *m.borrow_mut()));
    (!messages.is_empty()).then(|| messages.join("; "))
}

fn forward(level: PrintLevel, message: String) {
    let message = message.trim_end();
    if let Some(kernel) = message.strip_prefix(KERNEL_MESSAGE) {
        KERNEL_MESSAGES.with(|m| {
            let mut m = m.borrow_mut();
            // Bounded: nobody may take them on a thread that only loads programs.
            if m.len() < 8 {
                m.push(kernel.to_string());
            }
        });
    }
    match level {
        PrintLevel::Warn => tracing::warn!(target: "libbpf", "{message}"),
        PrintLevel::Info => tracing::info!(target: "libbpf", "{message}"),
        PrintLevel::Debug => tracing::debug!(target: "libbpf", "{message}"),
    }
}
