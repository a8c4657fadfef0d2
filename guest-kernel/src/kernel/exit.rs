//! The one exit path of the kernel.
//!
//! On Xen (real or host-shim), success is `SCHEDOP_shutdown(poweroff)`. Any other
//! status is first written to the `isa-debug-exit` compatible port (QEMU and host-shim
//! end the run with it; real Xen ignores the write) and then, on Xen, reported as
//! `SCHEDOP_shutdown(crash)`. Without Xen the port write ends the run, and on a machine
//! without that device the CPU halts for good.

use super::{arch, console, xen};
use guest_kernel::exit_status::DEBUG_EXIT_PORT;
use pv_drivers::abi::sched::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF};

/// Ends the guest with `status` (see `guest_kernel::exit_status`).
pub fn exit(status: u8) -> ! {
    arch::cli();
    let mut line = [0u8; 32];
    let msg = format_exit(status, &mut line);
    console::write_bytes_unlocked(msg);
    if status == 0 && xen::get().is_some() {
        xen::shutdown(SHUTDOWN_POWEROFF);
    }
    arch::outl(DEBUG_EXIT_PORT, u32::from(status));
    xen::shutdown(SHUTDOWN_CRASH);
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
