//! The guest's exit statuses, shared by every exit path (the `isa-debug-exit`
//! compatible port under QEMU and host-shim, `SCHEDOP_shutdown` on Xen).
//!
//! Under host-shim the process exits with the status itself; under QEMU with
//! `(status << 1) | 1`, which the project's QEMU runner maps back.

/// Every requested self-test passed.
pub const SUCCESS: u8 = 0;
/// At least one self-test failed.
pub const SELFTEST_FAILED: u8 = 1;
/// The kernel panicked.
pub const PANIC: u8 = 2;
/// An unexpected CPU exception.
pub const EXCEPTION: u8 = 3;
/// The loader's boot information was unusable (e.g. bad start_info magic).
pub const BAD_BOOT_INFO: u8 = 4;
/// The command line asked for something this kernel does not have.
pub const BAD_CMDLINE: u8 = 5;

/// I/O port of the `isa-debug-exit` device (QEMU `-device isa-debug-exit,iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
