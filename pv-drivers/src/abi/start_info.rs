//! `xen/include/public/arch-x86/hvm/start_info.h`: the PVH boot information block.
//!
//! A PVH guest is entered in 32-bit protected mode with paging off and `%ebx` holding
//! the physical address of an [`HvmStartInfo`]. Version 1 of the structure adds the
//! memory map (`memmap_paddr`, `memmap_entries`).

/// `XEN_HVM_START_MAGIC_VALUE`: "xEn3" with the 0x80 bit of the "E" set.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// `SIF_PRIVILEGED`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`: the domain is the initial domain (dom0).
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `SIF_MULTIBOOT_MOD`: modules are multiboot modules (PV only).
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `SIF_MOD_START_PFN`: `mod_start` is a PFN (PV only).
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS`: the p2m is mapped for the tools (PV only).
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

/// `struct hvm_start_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// Contains [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Version of this structure (0 or 1; 1 adds the memory map).
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules passed to the kernel.
    pub nr_modules: u32,
    /// Physical address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the RSDP ACPI data structure.
    pub rsdp_paddr: u64,
    /// Version 1+: physical address of an array of [`HvmMemmapTableEntry`].
    pub memmap_paddr: u64,
    /// Version 1+: number of entries in the memory map (0: none provided).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Size of the version-0 part of [`HvmStartInfo`] (up to and including `rsdp_paddr`).
pub const HVM_START_INFO_V0_SIZE: usize = 40;

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size of the module in bytes.
    pub size: u64,
    /// Physical address of the module's command line (0: none).
    pub cmdline_paddr: u64,
    /// Must be zero.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapTableEntry {
    /// Base address of the memory region.
    pub addr: u64,
    /// Size of the memory region in bytes.
    pub size: u64,
    /// Mapping type (`XEN_HVM_MEMMAP_TYPE_*`).
    pub type_: u32,
    /// Must be zero for version 1.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_paddr) == HVM_START_INFO_V0_SIZE);
const _: () = assert!(core::mem::size_of::<HvmModlistEntry>() == 32);
const _: () = assert!(core::mem::size_of::<HvmMemmapTableEntry>() == 24);

pod_bytes!(HvmStartInfo {
    magic,
    version,
    flags,
    nr_modules,
    modlist_paddr,
    cmdline_paddr,
    rsdp_paddr,
    memmap_paddr,
    memmap_entries,
    reserved,
});
pod_bytes!(HvmModlistEntry {
    paddr,
    size,
    cmdline_paddr,
    reserved
});
pod_bytes!(HvmMemmapTableEntry {
    addr,
    size,
    type_,
    reserved
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_keeps_field_offsets() {
        let si = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: 1,
            cmdline_paddr: 0x1122_3344_5566_7788,
            memmap_entries: 3,
            ..Default::default()
        };
        let b = si.to_bytes();
        assert_eq!(&b[0..4], &0x336e_c578u32.to_le_bytes());
        assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[48..52], &3u32.to_le_bytes());
        assert_eq!(HvmStartInfo::from_bytes(&b), si);
    }
}
