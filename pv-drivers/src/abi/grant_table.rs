//! `xen/include/public/grant_table.h`: grant references, version-1 grant entries and
//! the grant-table operations (`HYPERVISOR_grant_table_op(cmd, args, count)`, where
//! `args` points at an array of `count` per-command structures).
//!
//! Only the version-1 entry is mirrored; version-2 entries (`union grant_entry_v2`,
//! `grant_status_t`) are not, and guests here stay on the default version 1.

use super::xen::{DomId, XenPfn};

/// `grant_ref_t`: index into a domain's grant table.
pub type GrantRef = u32;
/// `grant_handle_t`: tracks a mapping made with `GNTTABOP_map_grant_ref`.
pub type GrantHandle = u32;

/// `struct grant_entry_v1`. `flags` is written by both sides (Xen sets
/// `GTF_reading`/`GTF_writing`); `domid` and `frame` only by the granting guest, which
/// must make them visible before it sets the type in `flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: DomId,
    /// `GTF_permit_access`: frame `domid` may map; `GTF_accept_transfer`: frame it may
    /// transfer into.
    pub frame: u32,
}

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries kept across version changes, which the tools
/// may pre-populate; a guest's allocator starts above them.
pub const GNTTAB_NR_RESERVED_ENTRIES: GrantRef = 8;
/// `GNTTAB_RESERVED_CONSOLE`.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// `GNTTAB_RESERVED_XENSTORE`.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`: `domid` may map and access `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`: `domid` may transfer a frame into `frame`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive`: `domid` may use another domain's grant (version 2 only).
pub const GTF_TRANSITIVE: u16 = 3;
/// `GTF_type_mask`.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly` (`_GTF_readonly` = 2): restrict to read-only mappings.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading` (`_GTF_reading` = 3): set by Xen while the grant is mapped/in use
/// for reading.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing` (`_GTF_writing` = 4): set by Xen while in use for writing.
pub const GTF_WRITING: u16 = 1 << 4;
/// `GTF_PWT` (`_GTF_PWT` = 5).
pub const GTF_PWT: u16 = 1 << 5;
/// `GTF_PCD` (`_GTF_PCD` = 6).
pub const GTF_PCD: u16 = 1 << 6;
/// `GTF_PAT` (`_GTF_PAT` = 7).
pub const GTF_PAT: u16 = 1 << 7;
/// `GTF_sub_page` (`_GTF_sub_page` = 8; version 2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// `GTF_transfer_committed` (`_GTF_transfer_committed` = 2).
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// `GTF_transfer_completed` (`_GTF_transfer_completed` = 3).
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// `GNTTABOP_map_grant_ref`: args are [`GnttabMapGrantRef`].
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`: args are [`GnttabUnmapGrantRef`].
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`: args are [`GnttabSetupTable`].
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_dump_table`.
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// `GNTTABOP_transfer` (PV only).
pub const GNTTABOP_TRANSFER: u32 = 4;
/// `GNTTABOP_copy`: args are [`GnttabCopy`].
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`: args are [`GnttabQuerySize`].
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_unmap_and_replace`.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// `GNTTABOP_set_version`: args are [`GnttabSetVersion`].
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_status_frames`.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// `GNTTABOP_swap_grant_ref`.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// `GNTTABOP_cache_flush`.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

/// `GNTMAP_device_map` (`_GNTMAP_device_map` = 0).
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map` (`_GNTMAP_host_map` = 1).
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly` (`_GNTMAP_readonly` = 2).
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_application_map` (`_GNTMAP_application_map` = 3).
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_contains_pte` (`_GNTMAP_contains_pte` = 4).
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

/// `struct gnttab_map_grant_ref`: map `(dom, ref)`; on error `status` is a negative
/// `GNTST_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (host virtual address, or PTE address with
    /// `GNTMAP_contains_pte`; a guest-physical address for an HVM/PVH caller).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN.
    pub ref_: GrantRef,
    /// IN: granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: handle for the unmap.
    pub handle: GrantHandle,
    /// OUT: bus address for `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabUnmapGrantRef {
    /// IN (0: ignored).
    pub host_addr: u64,
    /// IN (0: ignored).
    pub dev_bus_addr: u64,
    /// IN.
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding to the 8-byte alignment.
    pub _pad: u16,
}

/// `struct gnttab_setup_table`: ask for a table of at least `nr_frames` frames; Xen
/// writes `nr_frames` frame numbers to `frame_list`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetupTable {
    /// IN (`DOMID_SELF` unless privileged).
    pub dom: DomId,
    /// Implicit C padding.
    pub _pad0: u16,
    /// IN.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding before the 8-byte handle.
    pub _pad1: [u16; 3],
    /// IN: `XEN_GUEST_HANDLE(xen_pfn_t)`, guest address of an array of
    /// `nr_frames` [`XenPfn`].
    pub frame_list: u64,
}

/// `GNTCOPY_source_gref` (`_GNTCOPY_source_gref` = 0): `source.u` is a grant ref.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref` (`_GNTCOPY_dest_gref` = 1): `dest.u` is a grant ref.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `struct gnttab_copy_ptr`, one end of a [`GnttabCopy`].
///
/// The C `union { grant_ref_t ref; xen_pfn_t gmfn; } u` is kept as its 64-bit word:
/// `gmfn` is all of it, `ref` is its first four bytes, i.e. the low 32 bits in the
/// little-endian guest layout. Which one applies is chosen by the `GNTCOPY_*` flag of
/// the enclosing [`GnttabCopy`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopyPtr {
    /// `u.ref` or `u.gmfn`.
    pub u: u64,
    /// Domain owning the frame (the granting domain when `u` is a ref).
    pub domid: DomId,
    /// Byte offset within the frame.
    pub offset: u16,
    /// Implicit C padding to the union's 8-byte alignment.
    pub _pad: u32,
}

impl GnttabCopyPtr {
    /// An end named by grant reference (pair it with the `GNTCOPY_*_gref` flag).
    pub fn gref(ref_: GrantRef, domid: DomId, offset: u16) -> Self {
        Self {
            u: u64::from(ref_),
            domid,
            offset,
            _pad: 0,
        }
    }

    /// An end named by the caller's own frame number.
    pub fn gmfn(gmfn: XenPfn, domid: DomId, offset: u16) -> Self {
        Self {
            u: gmfn,
            domid,
            offset,
            _pad: 0,
        }
    }

    /// `u.ref`: the low 32 bits of `u`.
    pub fn ref_(&self) -> GrantRef {
        self.u as GrantRef
    }

    /// `u.gmfn`.
    pub fn gmfn_(&self) -> XenPfn {
        self.u
    }
}

/// `struct gnttab_copy`: Xen copies `len` bytes from `source` to `dest`; neither
/// range may cross its page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopy {
    /// IN.
    pub source: GnttabCopyPtr,
    /// IN.
    pub dest: GnttabCopyPtr,
    /// IN: bytes to copy.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding to the 8-byte alignment.
    pub _pad: u16,
}

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabQuerySize {
    /// IN (`DOMID_SELF` unless privileged).
    pub dom: DomId,
    /// Implicit C padding.
    pub _pad0: u16,
    /// OUT: current size in frames.
    pub nr_frames: u32,
    /// OUT: maximum size in frames.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding to the 4-byte alignment.
    pub _pad1: u16,
}

/// `struct gnttab_set_version`: IN the wanted version (1 or 2), OUT the version in
/// force. Only allowed while no grants are active.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetVersion {
    /// IN/OUT.
    pub version: u32,
}

/// `GNTST_okay`: normal return.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`: general undefined error.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`: unrecognised domain id.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`: unrecognised or inappropriate gntref.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`: unrecognised or inappropriate handle.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// `GNTST_bad_virt_addr`: inappropriate virtual address to map.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// `GNTST_bad_dev_addr`: inappropriate device address to unmap.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// `GNTST_no_device_space`: out of space in I/O MMU.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// `GNTST_permission_denied`: not enough privilege for operation.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`: specified page was invalid for op.
pub const GNTST_BAD_PAGE: i16 = -9;
/// `GNTST_bad_copy_arg`: copy arguments cross page boundary.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// `GNTST_address_too_big`: transfer page address too large.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// `GNTST_eagain`: operation not done; try again.
pub const GNTST_EAGAIN: i16 = -12;
/// `GNTST_no_space`: out of space (handles etc).
pub const GNTST_NO_SPACE: i16 = -13;

/// `GNTTABOP_error_msgs`, indexed by `-status`.
const GNTTABOP_ERROR_MSGS: [&str; 14] = [
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
];

/// The header's message for a `GNTST_*` status; `None` for values it does not define.
pub fn gntst_message(status: i16) -> Option<&'static str> {
    let index = usize::try_from(-i32::from(status)).ok()?;
    GNTTABOP_ERROR_MSGS.get(index).copied()
}

pod_bytes!(GrantEntryV1 {
    flags,
    domid,
    frame
});
pod_bytes!(GnttabMapGrantRef {
    host_addr,
    flags,
    ref_,
    dom,
    status,
    handle,
    dev_bus_addr,
});
pod_bytes!(GnttabUnmapGrantRef {
    host_addr,
    dev_bus_addr,
    handle,
    status,
    _pad,
});
pod_bytes!(GnttabSetupTable {
    dom,
    _pad0,
    nr_frames,
    status,
    _pad1,
    frame_list,
});
pod_bytes!(GnttabCopyPtr {
    u,
    domid,
    offset,
    _pad
});
pod_bytes!(GnttabCopy {
    source,
    dest,
    len,
    flags,
    status,
    _pad
});
pod_bytes!(GnttabQuerySize {
    dom,
    _pad0,
    nr_frames,
    max_nr_frames,
    status,
    _pad1,
});
pod_bytes!(GnttabSetVersion { version });

const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);
const _: () = assert!(core::mem::offset_of!(GrantEntryV1, frame) == 4);
const _: () = assert!(core::mem::size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, dom) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, status) == 18);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, handle) == 20);
const _: () = assert!(core::mem::size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, status) == 20);
const _: () = assert!(core::mem::size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, nr_frames) == 4);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, frame_list) == 16);
const _: () = assert!(core::mem::size_of::<GnttabCopyPtr>() == 16);
const _: () = assert!(core::mem::offset_of!(GnttabCopyPtr, domid) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabCopyPtr, offset) == 10);
const _: () = assert!(core::mem::size_of::<GnttabCopy>() == 40);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, dest) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, len) == 32);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, flags) == 34);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, status) == 36);
const _: () = assert!(core::mem::size_of::<GnttabQuerySize>() == 16);
const _: () = assert!(core::mem::offset_of!(GnttabQuerySize, status) == 12);
const _: () = assert!(core::mem::size_of::<GnttabSetVersion>() == 4);
// A grant-table frame holds 512 version-1 entries.
const _: () = assert!(4096 / core::mem::size_of::<GrantEntryV1>() == 512);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_entry_bytes() {
        let e = GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: 0,
            frame: 0x000A_BCDE,
        };
        assert_eq!(e.to_bytes(), [5, 0, 0, 0, 0xDE, 0xBC, 0x0A, 0]);
        assert_eq!(GrantEntryV1::from_bytes(&e.to_bytes()), e);
    }

    #[test]
    fn copy_op_layout() {
        let op = GnttabCopy {
            source: GnttabCopyPtr::gref(17, 3, 0x10),
            dest: GnttabCopyPtr::gmfn(0x1_2345_6789, crate::abi::xen::DOMID_SELF, 0x20),
            len: 512,
            flags: GNTCOPY_SOURCE_GREF,
            status: GNTST_BAD_COPY_ARG,
            _pad: 0,
        };
        let b = op.to_bytes();
        assert_eq!(&b[0..4], &17u32.to_le_bytes());
        assert_eq!(&b[8..10], &3u16.to_le_bytes());
        assert_eq!(&b[10..12], &0x10u16.to_le_bytes());
        assert_eq!(&b[16..24], &0x1_2345_6789u64.to_le_bytes());
        assert_eq!(&b[24..26], &0x7FF0u16.to_le_bytes());
        assert_eq!(&b[32..34], &512u16.to_le_bytes());
        assert_eq!(&b[34..36], &1u16.to_le_bytes());
        assert_eq!(&b[36..38], &(-10i16).to_le_bytes());
        let back = GnttabCopy::from_bytes(&b);
        assert_eq!(back, op);
        assert_eq!(back.source.ref_(), 17);
        assert_eq!(back.dest.gmfn_(), 0x1_2345_6789);
    }

    #[test]
    fn status_messages() {
        assert_eq!(gntst_message(GNTST_OKAY), Some("okay"));
        assert_eq!(
            gntst_message(GNTST_EAGAIN),
            Some("operation not done; try again")
        );
        assert_eq!(gntst_message(GNTST_NO_SPACE), Some("out of space"));
        assert_eq!(gntst_message(-14), None);
        assert_eq!(gntst_message(1), None);
        assert_eq!(gntst_message(i16::MIN), None);
    }
}
