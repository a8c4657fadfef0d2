//! `xen/include/public/elfnote.h`: the ELF notes a Xen guest image carries.
//!
//! Only the PVH entry note is used: the guest emits it (pvh-boot) and the shim reads it.

/// The name every Xen note carries, NUL included.
pub const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point of a PVH guest
/// (`docs/misc/pvh.pandoc`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
