//! The hypervisor side of grant tables (v1): checked access to the guest's granted
//! pages, for the guest's own `GNTTABOP_copy` and for the shim's backends (domain 0).
//!
//! The guest's grant table lives in guest pages it placed with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`. An access to a granted frame
//! follows Xen's `_set_status_v1`: the entry's type must be `GTF_permit_access`, its
//! domid must be the accessor, a write needs an entry without `GTF_readonly`; then
//! `GTF_reading` (and for a write `GTF_writing`) is set with a compare-exchange of
//! flags and domid together, retried at most five times (a guest flipping the entry
//! gets an error, not a hang). While any access is in flight the bits stay set, so the
//! guest cannot end access and recycle the page underneath it; the last access to end
//! clears them.
//!
//! Backends never reach guest memory except through [`Xen::grant_read`] and
//! [`Xen::grant_write`].

use std::collections::HashMap;

use pv_drivers::abi::grant_table::*;
use pv_drivers::abi::xen::{DOMID_SELF, DomId};
use pv_drivers::shmem::SharedMemory;

use super::guest_mem::PAGE_SIZE;
use super::{State, Xen};

/// Grant entries per 4 KiB frame (8 bytes each).
pub const ENTRIES_PER_FRAME: u32 = (PAGE_SIZE / 8) as u32;

/// Accesses in flight to one grant entry (Xen's active-grant pin counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pins {
    readers: u32,
    writers: u32,
}

/// The shim's per-guest active-grant table: entries with accesses in flight.
pub type ActiveGrants = HashMap<GrantRef, Pins>;

/// One end of a copy, acquired: the guest frame, and the grant to release after.
#[derive(Debug, Clone, Copy)]
pub(super) struct CopyEnd {
    pub pfn: u64,
    grant: Option<(GrantRef, bool)>,
}

/// Offset of entry `gref` within its frame, and the frame index.
fn locate(gref: GrantRef) -> (usize, usize) {
    (
        (gref / ENTRIES_PER_FRAME) as usize,
        (gref % ENTRIES_PER_FRAME) as usize * 8,
    )
}

impl Xen {
    /// Pins grant `gref` of the guest for an access by `accessor`; returns the granted
    /// guest frame.
    fn pin_locked(
        &self,
        st: &mut State,
        accessor: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<u64, i16> {
        let (frame_index, offset) = locate(gref);
        let Some(Some(frame)) = st.grant_frames.get(frame_index) else {
            return Err(GNTST_BAD_GNTREF);
        };
        let mem = frame.mem();
        let pins = st.grant_pins.get(&gref).copied().unwrap_or_default();
        let already = pins.readers + pins.writers > 0;
        let mut seen = mem.load_u32(offset, std::sync::atomic::Ordering::Acquire);
        let mut retries = 0;
        loop {
            let flags = seen as u16;
            let domid = (seen >> 16) as u16;
            // An entry already pinned was checked when it was first pinned; the guest
            // cannot have changed it since without breaking the protocol, and Xen does
            // not look again.
            if !already && (flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != accessor) {
                return Err(GNTST_GENERAL_ERROR);
            }
            let mut new = flags | GTF_READING;
            if write {
                if flags & GTF_READONLY != 0 {
                    return Err(GNTST_GENERAL_ERROR);
                }
                new |= GTF_WRITING;
            }
            let new = u32::from(new) | u32::from(domid) << 16;
            match mem.compare_exchange_u32(offset, seen, new) {
                Ok(_) => break,
                Err(now) if retries < 4 => {
                    retries += 1;
                    seen = now;
                }
                Err(_) => return Err(GNTST_GENERAL_ERROR),
            }
        }
        // The frame number is read after the flags are pinned: the guest may not change
        // it while the entry is in use.
        let pfn = u64::from(mem.load_u32(offset + 4, std::sync::atomic::Ordering::Acquire));
        let entry = st.grant_pins.entry(gref).or_default();
        if write {
            entry.writers += 1;
        } else {
            entry.readers += 1;
        }
        Ok(pfn)
    }

    /// Ends one access pinned by [`Xen::pin_locked`].
    fn unpin_locked(&self, st: &mut State, gref: GrantRef, write: bool) {
        let Some(pins) = st.grant_pins.get_mut(&gref) else {
            return;
        };
        if write {
            pins.writers = pins.writers.saturating_sub(1);
        } else {
            pins.readers = pins.readers.saturating_sub(1);
        }
        let clear = match (pins.readers, pins.writers) {
            (0, 0) => GTF_READING | GTF_WRITING,
            (_, 0) => GTF_WRITING,
            _ => 0,
        };
        if pins.readers == 0 && pins.writers == 0 {
            st.grant_pins.remove(&gref);
        }
        let (frame_index, offset) = locate(gref);
        if let Some(Some(frame)) = st.grant_frames.get(frame_index) {
            // Only Xen sets these bits, so clearing them cannot lose a guest update of
            // the flags (the guest may not touch an entry in use); retry until it sticks.
            let mem = frame.mem();
            let mut seen = mem.load_u16(offset, std::sync::atomic::Ordering::Acquire);
            for _ in 0..16 {
                match mem.compare_exchange_u16(offset, seen, seen & !clear) {
                    Ok(_) => break,
                    Err(now) => seen = now,
                }
            }
        }
    }

    /// Acquires one end of a guest `GNTTABOP_copy`: a frame of the guest's own (`gmfn`)
    /// or a grant reference some domain gave the guest.
    pub(super) fn copy_end(
        &self,
        end: &GnttabCopyPtr,
        is_ref: bool,
        write: bool,
    ) -> Result<CopyEnd, i16> {
        let me = self.config.domid;
        let owner = if end.domid == DOMID_SELF {
            me
        } else {
            end.domid
        };
        if owner != me {
            // Only the guest and domain 0 exist, and domain 0 grants nothing.
            return Err(GNTST_BAD_DOMAIN);
        }
        if !is_ref {
            let pfn = end.gmfn_();
            if !self.ram.is_ram(pfn.saturating_mul(PAGE_SIZE), PAGE_SIZE) {
                return Err(GNTST_BAD_PAGE);
            }
            return Ok(CopyEnd { pfn, grant: None });
        }
        let gref = end.ref_();
        let mut st = self.lock();
        let pfn = self.pin_locked(&mut st, me, gref, write)?;
        if !self.ram.is_ram(pfn.saturating_mul(PAGE_SIZE), PAGE_SIZE) {
            self.unpin_locked(&mut st, gref, write);
            return Err(GNTST_BAD_PAGE);
        }
        Ok(CopyEnd {
            pfn,
            grant: Some((gref, write)),
        })
    }

    /// Releases what [`Xen::copy_end`] acquired.
    pub(super) fn release_end(&self, end: CopyEnd) {
        if let Some((gref, write)) = end.grant {
            self.unpin_locked(&mut self.lock(), gref, write);
        }
    }

    /// Domain 0 (a backend) reads `buf.len()` bytes at `offset` of the page the guest
    /// granted it as `gref`. Errors are `GNTST_*` values.
    pub fn grant_read(&self, gref: GrantRef, offset: u16, buf: &mut [u8]) -> Result<(), i16> {
        self.grant_access(gref, offset, buf.len(), false, |ram, gpa| {
            ram.read_phys(gpa, buf)
        })
    }

    /// Domain 0 (a backend) writes `data` at `offset` of the page the guest granted it
    /// writable as `gref`.
    pub fn grant_write(&self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), i16> {
        self.grant_access(gref, offset, data.len(), true, |ram, gpa| {
            ram.write_phys(gpa, data)
        })
    }

    fn grant_access(
        &self,
        gref: GrantRef,
        offset: u16,
        len: usize,
        write: bool,
        copy: impl FnOnce(&super::GuestRam, u64) -> Result<(), super::guest_mem::Fault>,
    ) -> Result<(), i16> {
        if u64::from(offset) + len as u64 > PAGE_SIZE {
            return Err(GNTST_BAD_COPY_ARG);
        }
        let pfn = {
            let mut st = self.lock();
            self.pin_locked(&mut st, 0, gref, write)?
        };
        // The copy runs without the lock: the pin keeps the grant in place.
        let result = match pfn.checked_mul(PAGE_SIZE) {
            Some(gpa) if self.ram.is_ram(gpa, PAGE_SIZE) => {
                copy(&self.ram, gpa + u64::from(offset)).map_err(|_| GNTST_BAD_PAGE)
            }
            _ => Err(GNTST_BAD_PAGE),
        };
        self.unpin_locked(&mut self.lock(), gref, write);
        result
    }
}
