//! `xen/include/public/io/blkif.h`: the PV block device's ring messages (requests,
//! segments, responses), operation and status codes, and the limits a backend checks
//! a frontend's requests against.
//!
//! Requests and responses share the ring slots of `DEFINE_RING_TYPES(blkif, ...)`: a
//! slot is a `union { blkif_request; blkif_response; }`, 112 bytes on x86_64, so a
//! one-page ring holds 32 slots (the ring discipline is in [`crate::ring`]). The
//! discard and indirect requests are other views of the same 112-byte request slot:
//! convert with [`BlkifRequest::from_discard`] / [`BlkifRequest::as_discard`] and
//! their indirect counterparts.
//!
//! Sector numbers and `first_sect`/`last_sect` are always in 512-byte units
//! ([`BLKIF_SECTOR_SIZE`]), whatever the backend's `sector-size` node says; they must
//! merely be aligned to that logical sector size.

use super::grant_table::GrantRef;

/// `blkif_vdev_t`: the virtual device handle (`virtual-device` in xenstore).
pub type BlkifVdev = u16;
/// `blkif_sector_t`: a sector index on the disk, in 512-byte units.
pub type BlkifSector = u64;

/// `BLKIF_OP_READ`: read `nr_segments` segments starting at `sector_number`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`: write `nr_segments` segments starting at `sector_number`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`: a write that is ordered after every earlier write and
/// before every later one (only if the backend offers `feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`: commit the backing device's volatile cache to stable
/// storage (only if the backend offers `feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: reserved (SLES device-specific command packets).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`: the request is a [`BlkifRequestDiscard`] (only if the backend
/// offers `feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`: the request is a [`BlkifRequestIndirect`] whose segments live
/// in granted pages (only if the backend offers `feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments carried in a [`BlkifRequest`] itself
/// (chosen so that a 32-slot ring fits one page).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;

/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: grant references in a
/// [`BlkifRequestIndirect`], each naming a page of [`BlkifRequestSegment`]s.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;

/// Segments in one indirect page: `PAGE_SIZE / sizeof(struct blkif_request_segment)`
/// (the formula of the `BLKIF_OP_INDIRECT` comment; ring pages are always 4 KiB).
/// Linux calls it `SEGS_PER_INDIRECT_FRAME`.
pub const BLKIF_SEGMENTS_PER_INDIRECT_PAGE: usize = 4096 / BlkifRequestSegment::SIZE;

/// The most segments one indirect request can describe: every indirect page full.
/// A backend also caps this at the `feature-max-indirect-segments` it advertised.
pub const BLKIF_MAX_INDIRECT_SEGMENTS: usize =
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGMENTS_PER_INDIRECT_PAGE;

/// The unit of `sector_number`, `nr_sectors`, `first_sect` and `last_sect`: 512 bytes,
/// "despite the value of the 'sector-size' xenstore node".
pub const BLKIF_SECTOR_SIZE: usize = 512;

/// 512-byte sectors in one 4 KiB segment page: a valid segment has
/// `first_sect <= last_sect < BLKIF_SECTORS_PER_PAGE`.
pub const BLKIF_SECTORS_PER_PAGE: u8 = (4096 / BLKIF_SECTOR_SIZE) as u8;

/// `BLKIF_DISCARD_SECURE`: [`BlkifRequestDiscard::flag`] bit asking for a secure
/// discard (ignored unless the backend set `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`: the operation failed for some unspecified reason (-EIO).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`: the operation completed successfully.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// `VDISK_CDROM`: bit of the backend's `info` node: the device is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE`: bit of the backend's `info` node: removable media.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY`: bit of the backend's `info` node: the device is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// `struct blkif_request_segment`: one granted page and the inclusive range of
/// 512-byte sectors in it to transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// Grant reference of the I/O buffer page.
    pub gref: GrantRef,
    /// First sector in the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector in the page to transfer (inclusive).
    pub last_sect: u8,
    /// Implicit C padding: the structure is 4-byte aligned.
    pub _pad: [u8; 2],
}

pod_bytes!(BlkifRequestSegment {
    gref,
    first_sect,
    last_sect,
    _pad,
});

impl BlkifRequestSegment {
    /// A segment of sectors `first_sect..=last_sect` of the page granted as `gref`.
    pub const fn new(gref: GrantRef, first_sect: u8, last_sect: u8) -> Self {
        Self {
            gref,
            first_sect,
            last_sect,
            _pad: [0; 2],
        }
    }

    /// Whether the sector range lies inside one page and is not reversed (the check
    /// a backend makes before touching the page).
    pub const fn is_valid(&self) -> bool {
        self.first_sect <= self.last_sect && self.last_sect < BLKIF_SECTORS_PER_PAGE
    }

    /// Number of 512-byte sectors the segment covers; 0 if it is not
    /// [valid](Self::is_valid).
    pub const fn sectors(&self) -> u32 {
        if self.is_valid() {
            (self.last_sect - self.first_sect) as u32 + 1
        } else {
            0
        }
    }
}

/// `struct blkif_request`: the request of every operation except discard and
/// indirect (which reinterpret the same slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of entries of `seg` in use (at most [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]).
    pub nr_segments: u8,
    /// The virtual device (read/write requests only).
    pub handle: BlkifVdev,
    /// Implicit C padding before the 8-aligned `id`.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk, in 512-byte units (read/write only).
    pub sector_number: BlkifSector,
    /// The scatter/gather list.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

pod_bytes!(BlkifRequest {
    operation,
    nr_segments,
    handle,
    _pad0,
    id,
    sector_number,
    seg,
});

/// `struct blkif_request_discard`: the request slot when `operation` is
/// [`BLKIF_OP_DISCARD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// The virtual device, as for read/write requests.
    pub handle: BlkifVdev,
    /// Implicit C padding before the 8-aligned `id`.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// First sector to discard, in 512-byte units (aligned to `discard-granularity`).
    pub sector_number: BlkifSector,
    /// Number of contiguous 512-byte sectors to discard.
    pub nr_sectors: u64,
}

pod_bytes!(BlkifRequestDiscard {
    operation,
    flag,
    handle,
    _pad0,
    id,
    sector_number,
    nr_sectors,
});

/// `struct blkif_request_indirect`: the request slot when `operation` is
/// [`BLKIF_OP_INDIRECT`]. Its segments are [`BlkifRequestSegment`]s in the pages
/// granted by `indirect_grefs`, [`BLKIF_SEGMENTS_PER_INDIRECT_PAGE`] per page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// The real operation: [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// Number of segments (at most the backend's `feature-max-indirect-segments`).
    pub nr_segments: u16,
    /// Implicit C padding before the 8-aligned `id`.
    pub _pad0: [u8; 4],
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk, in 512-byte units.
    pub sector_number: BlkifSector,
    /// The virtual device, as for read/write requests.
    pub handle: BlkifVdev,
    /// Implicit C padding before the 4-aligned `indirect_grefs`.
    pub _pad1: [u8; 2],
    /// Grant references of the pages holding the segments;
    /// `ceil(nr_segments / BLKIF_SEGMENTS_PER_INDIRECT_PAGE)` of them are used.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Implicit C tail padding to the structure's 8-byte alignment (x86_64; i386
    /// spells it as an explicit `uint64_t pad` instead).
    pub _pad2: [u8; 4],
}

pod_bytes!(BlkifRequestIndirect {
    operation,
    indirect_op,
    nr_segments,
    _pad0,
    id,
    sector_number,
    handle,
    _pad1,
    indirect_grefs,
    _pad2,
});

impl BlkifRequestIndirect {
    /// Indirect pages needed for `nr_segments` segments:
    /// `ceil(nr_segments / BLKIF_SEGMENTS_PER_INDIRECT_PAGE)`.
    pub const fn pages_for(nr_segments: u16) -> usize {
        (nr_segments as usize).div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
    }
}

impl BlkifRequest {
    /// The request slot carrying `discard` (its first 32 bytes; the rest zero).
    pub fn from_discard(discard: &BlkifRequestDiscard) -> Self {
        let mut slot = [0u8; Self::SIZE];
        slot[..BlkifRequestDiscard::SIZE].copy_from_slice(&discard.to_bytes());
        Self::from_bytes(&slot)
    }

    /// This slot read as a discard request (meaningful when `operation` is
    /// [`BLKIF_OP_DISCARD`]).
    pub fn as_discard(&self) -> BlkifRequestDiscard {
        BlkifRequestDiscard::from_prefix(&self.to_bytes()).unwrap_or_default()
    }

    /// The request slot carrying `indirect` (its first 64 bytes; the rest zero).
    pub fn from_indirect(indirect: &BlkifRequestIndirect) -> Self {
        let mut slot = [0u8; Self::SIZE];
        slot[..BlkifRequestIndirect::SIZE].copy_from_slice(&indirect.to_bytes());
        Self::from_bytes(&slot)
    }

    /// This slot read as an indirect request (meaningful when `operation` is
    /// [`BLKIF_OP_INDIRECT`]).
    pub fn as_indirect(&self) -> BlkifRequestIndirect {
        BlkifRequestIndirect::from_prefix(&self.to_bytes()).unwrap_or_default()
    }
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request (`BLKIF_OP_INDIRECT` for an indirect request).
    pub operation: u8,
    /// Implicit C padding before the 2-aligned `status`.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Implicit C tail padding to the structure's 8-byte alignment.
    pub _pad1: [u8; 4],
}

pod_bytes!(BlkifResponse {
    id,
    operation,
    _pad0,
    status,
    _pad1,
});

impl BlkifResponse {
    /// The response to request `id` of `operation` with `status` (`BLKIF_RSP_*`).
    pub const fn new(id: u64, operation: u8, status: i16) -> Self {
        Self {
            id,
            operation,
            _pad0: 0,
            status,
            _pad1: [0; 4],
        }
    }
}

const _: () = assert!(core::mem::size_of::<BlkifRequestSegment>() == 8);
const _: () = assert!(core::mem::align_of::<BlkifRequestSegment>() == 4);
const _: () = assert!(core::mem::offset_of!(BlkifRequestSegment, first_sect) == 4);
const _: () = assert!(core::mem::offset_of!(BlkifRequestSegment, last_sect) == 5);

// "sizeof(blkif_request) = 112 on x86_64": 4 + padding + id + sector + 11 * 8.
const _: () = assert!(core::mem::size_of::<BlkifRequest>() == 112);
const _: () = assert!(core::mem::align_of::<BlkifRequest>() == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, seg) == 24);

// "sizeof(struct blkif_request_discard) <= sizeof(struct blkif_request)".
const _: () = assert!(core::mem::size_of::<BlkifRequestDiscard>() == 32);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, flag) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, nr_sectors) == 24);
const _: () = assert!(BlkifRequestDiscard::SIZE <= BlkifRequest::SIZE);

// "Make it 64 byte aligned on i386": 64 bytes on x86_64 too.
const _: () = assert!(core::mem::size_of::<BlkifRequestIndirect>() == 64);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, indirect_op) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, nr_segments) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, handle) == 24);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);
const _: () = assert!(BlkifRequestIndirect::SIZE <= BlkifRequest::SIZE);

const _: () = assert!(core::mem::size_of::<BlkifResponse>() == 16);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, status) == 10);

const _: () = assert!(BLKIF_SEGMENTS_PER_INDIRECT_PAGE == 512);
const _: () = assert!(BLKIF_MAX_INDIRECT_SEGMENTS == 4096);
const _: () = assert!(BLKIF_SECTORS_PER_PAGE == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_the_c_structure() {
        let mut req = BlkifRequest {
            operation: BLKIF_OP_WRITE,
            nr_segments: 2,
            handle: 0x0102,
            id: 0x1122_3344_5566_7788,
            sector_number: 0x99,
            ..Default::default()
        };
        req.seg[0] = BlkifRequestSegment::new(0xabcd, 1, 7);
        req.seg[10] = BlkifRequestSegment::new(0x1234_5678, 0, 0);
        let b = req.to_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 2);
        assert_eq!(&b[2..4], &[0x02, 0x01]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x99u64.to_le_bytes());
        assert_eq!(&b[24..28], &0xabcdu32.to_le_bytes());
        assert_eq!((b[28], b[29]), (1, 7));
        assert_eq!(&b[104..108], &0x1234_5678u32.to_le_bytes());
        assert_eq!(BlkifRequest::from_bytes(&b), req);
    }

    #[test]
    fn discard_and_indirect_share_the_request_slot() {
        let discard = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            handle: 7,
            id: 42,
            sector_number: 1 << 40,
            nr_sectors: 4096,
            ..Default::default()
        };
        let slot = BlkifRequest::from_discard(&discard);
        assert_eq!(slot.operation, BLKIF_OP_DISCARD);
        assert_eq!(slot.id, 42);
        assert_eq!(slot.sector_number, 1 << 40);
        assert_eq!(slot.as_discard(), discard);
        // nr_sectors overlays the first segment of a read/write request.
        assert_eq!(slot.seg[0].gref, 4096);

        let mut indirect = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_READ,
            nr_segments: 513,
            id: 9,
            sector_number: 8,
            handle: 0x51,
            ..Default::default()
        };
        indirect.indirect_grefs[0] = 100;
        indirect.indirect_grefs[1] = 101;
        let slot = BlkifRequest::from_indirect(&indirect);
        assert_eq!(slot.operation, BLKIF_OP_INDIRECT);
        assert_eq!(slot.id, 9);
        assert_eq!(slot.as_indirect(), indirect);
        assert_eq!(BlkifRequestIndirect::pages_for(indirect.nr_segments), 2);
        assert_eq!(BlkifRequestIndirect::pages_for(512), 1);
        assert_eq!(BlkifRequestIndirect::pages_for(0), 0);
        let b = slot.to_bytes();
        assert_eq!(&b[2..4], &513u16.to_le_bytes());
        assert_eq!(&b[24..26], &0x51u16.to_le_bytes());
        assert_eq!(&b[28..32], &100u32.to_le_bytes());
        assert!(b[64..].iter().all(|&x| x == 0));
    }

    #[test]
    fn response_layout_and_segment_checks() {
        let rsp = BlkifResponse::new(0xfeed, BLKIF_OP_READ, BLKIF_RSP_EOPNOTSUPP);
        let b = rsp.to_bytes();
        assert_eq!(&b[0..8], &0xfeedu64.to_le_bytes());
        assert_eq!(b[8], BLKIF_OP_READ);
        assert_eq!(&b[10..12], &(-2i16).to_le_bytes());
        assert_eq!(BlkifResponse::from_bytes(&b), rsp);

        assert!(BlkifRequestSegment::new(1, 0, 7).is_valid());
        assert_eq!(BlkifRequestSegment::new(1, 0, 7).sectors(), 8);
        assert_eq!(BlkifRequestSegment::new(1, 3, 3).sectors(), 1);
        assert!(!BlkifRequestSegment::new(1, 0, 8).is_valid());
        assert!(!BlkifRequestSegment::new(1, 5, 4).is_valid());
        assert_eq!(BlkifRequestSegment::new(1, 5, 4).sectors(), 0);
        assert_eq!(BlkifRequestSegment::new(1, 255, 255).sectors(), 0);
    }
}
