//! `host-shim`: a KVM-based VMM that boots a guest ELF through its Xen PVH entry note.
//!
//! The shim loads the kernel's `PT_LOAD` segments at their physical addresses, writes an
//! `hvm_start_info` (version 1, with memory map, command line and boot modules) into
//! low guest memory, and starts one vCPU in the 32-bit protected-mode state of Xen's
//! `docs/misc/pvh.pandoc`. It offers the guest the Xen interface (hypercalls from 64-
//! and 32-bit code, through the hypercall page or, where KVM's Xen support intercepts
//! them, `vmcall`; events, grants, xenstore, PV disks and NICs) and classic emulated
//! devices: a 16550 UART at COM1, the Bochs/QEMU debug console at port 0xe9, an
//! `isa-debug-exit`-compatible exit port at 0xf4, the 8042 reset line, a CMOS RTC, and
//! a PCI bus with a PIIX3 IDE disk and Intel e1000 NICs.
//!
//! Layout of the crate:
//! - [`kvm`]: the only module that names `kvm_ioctls`/`kvm_bindings`; it offers a
//!   narrow [`kvm::Vm`]/[`kvm::Vcpu`] interface and its own [`kvm::VcpuExit`].
//! - [`elf`]: validation of the kernel image (pure, fuzzable); [`boot`]: the guest
//!   memory layout, loading, and the PVH boot information.
//! - [`devices`]: the KVM-free [`devices::BusDevice`] trait, the address [`devices::Bus`],
//!   the PCI bus, and one file per device model.
//! - [`hostio`]: the host side every device path shares (disk image, TAP, network
//!   namespaces); [`devmgr`]: the command line's `--disk`/`--net` into PV backends
//!   ([`backends`]) or emulated devices; [`xen`]: the Xen interface.
//! - [`vmm`]: [`Vmm`] ties them together and runs the vCPU loop; [`stats`] holds the
//!   counters reported as JSON.
//! - [`cli`]: the `host-shim run` and `host-shim bench` command lines; `main.rs` only
//!   calls into it. [`bench`]: the PV-against-emulated benchmark (runs VMs in-process,
//!   drives iperf3/ping/fio on the host, writes JSON, markdown and SVG reports).
//!   [`crashtest`]: flush, then kill -9 (a child `host-shim run` killed while its guest
//!   writes, the image checked against the flushes the guest saw complete).
//!   [`soak`]: many block requests and packets through one child shim, its RSS, fds and
//!   threads and the guest's free grants and frames compared at the start and the end.
//!   [`paths`]: the disk and network paths these three commands name, with the shim's
//!   and the guest's options and the counters of each.
//!
//! # Exit status of the `host-shim` binary
//! | status | meaning |
//! |---|---|
//! | 0..=255 | the guest wrote that value to the exit port 0xf4 (the low byte of the write) |
//! | 124 | `--timeout` expired before the guest exited ([`EXIT_TIMEOUT`]) |
//! | 125 | shim error: bad input, KVM failure ([`EXIT_SHIM_ERROR`]) |
//! | 126 | the guest crashed: triple fault, KVM internal error, entry failure ([`EXIT_GUEST_CRASHED`]) |
//!
//! Unlike QEMU's `isa-debug-exit`, which exits with `(v << 1) | 1`, the shim exits with
//! the written value itself. A guest that writes 124, 125 or 126 is indistinguishable
//! from the shim's own statuses; use `--stats` to tell them apart.

pub mod backends;
pub mod bench;
pub mod boot;
pub mod cli;
pub mod crashtest;
pub mod devices;
pub mod devmgr;
pub mod elf;
pub mod hostio;
pub mod kvm;
pub mod paths;
pub mod soak;
pub mod stats;
pub mod testing;
pub mod vmm;
pub mod xen;

pub use boot::MemoryLayout;
pub use devices::console::{Capture, ConsoleSink};
pub use stats::{ExitCounters, RunStats};
pub use vmm::{Error, Kernel, Outcome, RunReport, VmConfig, Vmm};

/// Exit status when `--timeout` expired before the guest exited.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status for an error of the shim itself (bad input, KVM failure).
pub const EXIT_SHIM_ERROR: u8 = 125;
/// Exit status when the guest crashed (triple fault, KVM internal error, entry failure).
pub const EXIT_GUEST_CRASHED: u8 = 126;
