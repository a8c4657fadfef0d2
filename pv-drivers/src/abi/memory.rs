//! `xen/include/public/memory.h`: the memory operations a PVH guest uses
//! (`HYPERVISOR_memory_op(cmd, arg)`): placing Xen's pages (shared info, grant table)
//! in its physical address space, reading its memory map, and sizing its reservation.

use super::xen::{DomId, XenPfn, XenUlong};

/// `XENMEM_increase_reservation`: arg is [`XenMemoryReservation`].
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// `XENMEM_decrease_reservation`: arg is [`XenMemoryReservation`].
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// `XENMEM_maximum_ram_page`: arg is NULL.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// `XENMEM_current_reservation`: arg is [`XenMemoryDomain`]; returns pages.
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// `XENMEM_maximum_reservation`: arg is [`XenMemoryDomain`]; returns pages.
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// `XENMEM_machphys_mfn_list` (PV).
pub const XENMEM_MACHPHYS_MFN_LIST: u32 = 5;
/// `XENMEM_populate_physmap`: arg is [`XenMemoryReservation`].
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// `XENMEM_add_to_physmap`: arg is [`XenAddToPhysmap`].
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`: arg is [`XenMemoryMap`].
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// `XENMEM_machine_memory_map`: arg is [`XenMemoryMap`] (privileged).
pub const XENMEM_MACHINE_MEMORY_MAP: u32 = 10;
/// `XENMEM_exchange` (PV).
pub const XENMEM_EXCHANGE: u32 = 11;
/// `XENMEM_machphys_mapping` (PV).
pub const XENMEM_MACHPHYS_MAPPING: u32 = 12;
/// `XENMEM_set_memory_map` (tools).
pub const XENMEM_SET_MEMORY_MAP: u32 = 13;
/// `XENMEM_maximum_gpfn`: arg is [`XenMemoryDomain`].
pub const XENMEM_MAXIMUM_GPFN: u32 = 14;
/// `XENMEM_remove_from_physmap`: arg is [`XenRemoveFromPhysmap`].
pub const XENMEM_REMOVE_FROM_PHYSMAP: u32 = 15;
/// `XENMEM_add_to_physmap_batch`.
pub const XENMEM_ADD_TO_PHYSMAP_BATCH: u32 = 23;

/// `XENMAPSPACE_shared_info`: the shared-info page (`idx` 0).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`: grant-table frame `idx` (or status frame, with
/// [`XENMAPIDX_GRANT_TABLE_STATUS`]).
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// `XENMAPSPACE_gmfn`.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// `XENMAPSPACE_gmfn_range` (`XENMEM_add_to_physmap` only).
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// `XENMAPSPACE_gmfn_foreign` (`XENMEM_add_to_physmap_batch` only).
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// `XENMAPSPACE_dev_mmio` (Arm only).
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// `XENMAPIDX_grant_table_status`: or-ed into `idx` to map a (version-2) status frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: XenUlong = 0x8000_0000;

/// `struct xen_add_to_physmap`: make page `idx` of `space` appear at `gpfn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    /// Domain whose mapping changes.
    pub domid: DomId,
    /// Number of pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into `space`.
    pub idx: XenUlong,
    /// Guest frame where the page should appear.
    pub gpfn: XenPfn,
}

/// `struct xen_remove_from_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenRemoveFromPhysmap {
    /// Domain whose mapping changes.
    pub domid: DomId,
    /// Implicit C padding before the 8-byte frame.
    pub _pad: [u16; 3],
    /// Guest frame of the current mapping.
    pub gpfn: XenPfn,
}

/// `struct xen_memory_map`: IN the capacity of `buffer` in entries, OUT the number
/// stored. The header defines the entries only as "in the same format as returned by
/// the BIOS INT 0x15 EAX=0xE820 call"; no structure for them is mirrored here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryMap {
    /// IN/OUT.
    pub nr_entries: u32,
    /// Implicit C padding before the 8-byte handle.
    pub _pad: u32,
    /// `XEN_GUEST_HANDLE(void)`: guest address of the entry buffer.
    pub buffer: u64,
}

/// `struct xen_memory_reservation` (interface version >= 0x00030209: `mem_flags`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryReservation {
    /// `XEN_GUEST_HANDLE(xen_pfn_t)`: guest address of the extent array.
    pub extent_start: u64,
    /// Number of extents.
    pub nr_extents: XenUlong,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*` flags.
    pub mem_flags: u32,
    /// Domain (unprivileged callers: `DOMID_SELF`).
    pub domid: DomId,
    /// Implicit C padding to the 8-byte alignment.
    pub _pad: [u16; 3],
}

/// `struct xen_memory_domain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryDomain {
    /// Domain queried (may be `DOMID_SELF`).
    pub domid: DomId,
}

pod_bytes!(XenAddToPhysmap {
    domid,
    size,
    space,
    idx,
    gpfn
});
pod_bytes!(XenRemoveFromPhysmap { domid, _pad, gpfn });
pod_bytes!(XenMemoryMap {
    nr_entries,
    _pad,
    buffer
});
pod_bytes!(XenMemoryReservation {
    extent_start,
    nr_extents,
    extent_order,
    mem_flags,
    domid,
    _pad,
});
pod_bytes!(XenMemoryDomain { domid });

const _: () = assert!(core::mem::size_of::<XenAddToPhysmap>() == 24);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, space) == 4);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, idx) == 8);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, gpfn) == 16);
const _: () = assert!(core::mem::size_of::<XenRemoveFromPhysmap>() == 16);
const _: () = assert!(core::mem::size_of::<XenMemoryMap>() == 16);
const _: () = assert!(core::mem::offset_of!(XenMemoryMap, buffer) == 8);
const _: () = assert!(core::mem::size_of::<XenMemoryReservation>() == 32);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, domid) == 24);
const _: () = assert!(core::mem::size_of::<XenMemoryDomain>() == 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_to_physmap_grant_status_frame() {
        let op = XenAddToPhysmap {
            domid: crate::abi::xen::DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 2 | XENMAPIDX_GRANT_TABLE_STATUS,
            gpfn: 0xFEFF0,
        };
        let b = op.to_bytes();
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        assert_eq!(&b[8..16], &0x8000_0002u64.to_le_bytes());
        assert_eq!(&b[16..24], &0xFEFF0u64.to_le_bytes());
        assert_eq!(XenAddToPhysmap::from_bytes(&b), op);
    }
}
