//! The one exit path of the kernel.
//!
//! Writes the status to the `isa-debug-exit` compatible port (QEMU, host-shim). On a
//! machine without that device the write is ignored and the CPU halts for good;
//! `SCHEDOP_shutdown` for Xen joins here with the Xen interface.

use super::{arch, console};
use guest_kernel::exit_status::DEBUG_EXIT_PORT;

/// Ends the guest with `status` (see `guest_kernel::exit_status`).
pub fn exit(status: u8) -> ! {
    arch::cli();
    let mut line = [0u8; 32];
    let msg = format_exit(status, &mut line);
    console::write_bytes_unlocked(msg);
    arch::outl(DEBUG_EXIT_PORT, u32::from(status));
    arch::halt_forever()
}

fn format_exit(status: u8, buf: &mut [u8; 32]) -> &[u8] {
    let prefix = b"guest: exit status ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let digits = [status / 100, status / 10 % 10, status % 10];
    let first = digits.iter().position(|&d| d != 0).unwrap_or(2);
    for &d in &digits[first..] {
        buf[n] = b'0' + d;
        n += 1;
    }
    buf[n] = b'\n';
    &buf[..=n]
}
