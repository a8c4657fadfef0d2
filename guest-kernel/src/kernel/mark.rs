//! Phase markers for host-shim's benchmark (`hw_devices::bench`): one port write at the
//! start and one at the end of each measured phase, so the shim counts that phase's
//! exits and device work alone. Harmless where nothing listens (QEMU, Xen).

use hw_devices::bench::{MARK_PORT, MarkKind, mark};

use super::arch;

/// Marks the start of measured phase `phase`.
pub fn start(phase: u32) {
    arch::outl(MARK_PORT, mark(phase, MarkKind::Start));
}

/// Marks the end of measured phase `phase`.
pub fn end(phase: u32) {
    arch::outl(MARK_PORT, mark(phase, MarkKind::End));
}
