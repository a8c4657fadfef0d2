//! Xen PVH boot for the guest kernel (`docs/misc/pvh.pandoc`).
//!
//! - [`entry`] (bare-metal builds only): the `XEN_ELFNOTE_PHYS32_ENTRY` ELF note and
//!   the 32-bit entry point that loads a GDT, identity-maps the low 4 GiB, enters long
//!   mode on a boot stack and calls the kernel's `pvh_rust_entry(start_info_paddr)`.
//! - [`start_info`]: validation of the `hvm_start_info` block the loader hands over
//!   (magic, version, command line, memory map, modules, RSDP). It reads guest memory
//!   through the [`start_info::PhysRead`] trait so that it is unit-tested on the host
//!   with malformed inputs.
#![cfg_attr(not(test), no_std)]

#[cfg(target_os = "none")]
pub mod entry;
pub mod memmap;
pub mod start_info;
