//! Version-1 grant tables, both halves (`xen/include/public/grant_table.h`, "GRANT
//! TABLE REPRESENTATION" and its guidelines for updating entries concurrently).
//!
//! The table is an array of 8-byte `grant_entry_v1` (flags u16, domid u16, frame u32)
//! in frames shared by the granting guest and the hypervisor, seen here through a
//! [`SharedMemory`] that spans them.
//!
//! * [`GrantTable`] is the granting guest: it allocates references, fills an entry
//!   (domid, frame, write barrier, then the type in `flags`, as the header orders), and
//!   revokes it only when the hypervisor is not using it (`GTF_reading`/`GTF_writing`
//!   clear, checked and cleared in one compare-exchange).
//! * [`HostGrantTable`] is the hypervisor's checked access for backends (what Xen's
//!   `acquire_grant_for_copy` and `_set_status_v1` do; in this product the shim):
//!   a backend of domain `d` reaches a frame only through an entry that grants
//!   `GTF_permit_access` to `d`, never writes through a `GTF_readonly` grant, and holds
//!   `GTF_reading`/`GTF_writing` set while it uses the frame, so that the guest cannot
//!   recycle the entry under it.
//!
//! Each side treats the other as hostile: the guest never loops forever on flags the
//! hypervisor keeps changing, and the hypervisor bounds its compare-exchange retries
//! against a guest that flips flags (Xen: "the guest can modify that location at a
//! higher rate than we can read-modify-CMPXCHG, so the guest could cause us to
//! livelock").

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi::grant_table::{
    GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING, GrantEntryV1, GrantRef,
};
use crate::abi::xen::{DOMID_FIRST_RESERVED, DomId, XenPfn};
use crate::shmem::SharedMemory;

/// Bytes per version-1 entry.
pub const ENTRY_SIZE: usize = GrantEntryV1::SIZE;
/// Version-1 entries per 4 KiB grant-table frame.
pub const ENTRIES_PER_FRAME: usize = 4096 / ENTRY_SIZE;

const FLAGS: usize = offset_of!(GrantEntryV1, flags);
const DOMID: usize = offset_of!(GrantEntryV1, domid);
const FRAME: usize = offset_of!(GrantEntryV1, frame);

// Entries are 8-aligned words with `flags` in their low 16 bits and `domid` in the next
// 16 (Xen's `union grant_combo`), so the hypervisor can compare-exchange both as one
// 32-bit word and clear its flags with one 64-bit atomic AND.
const _: () = assert!(ENTRY_SIZE == 8 && FLAGS == 0 && DOMID == 2 && FRAME == 4);

/// Compare-exchange attempts on a shared `flags` before giving up on a peer that keeps
/// changing it (Xen's `_set_status_v1` allows five).
pub const MAX_FLAG_RETRIES: u32 = 5;

/// Errors of the guest's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The table memory holds no entries beyond the reserved ones (or is not a whole
    /// number of entries).
    TableTooSmall(usize),
    /// Every reference is in use.
    NoFreeRefs,
    /// The reference is outside the table or one of the reserved entries.
    BadRef(GrantRef),
    /// The reference is not allocated (never claimed, or already freed).
    NotAllocated(GrantRef),
    /// The hypervisor has the entry in use (`GTF_reading` or `GTF_writing` set): it
    /// cannot be revoked yet.
    StillInUse(GrantRef),
    /// The entry still grants access: end it before granting again or freeing.
    StillGranted(GrantRef),
    /// The frame number does not fit a version-1 entry (32 bits).
    FrameTooLarge(XenPfn),
    /// The domain id is a reserved one (`DOMID_SELF` and above), which no backend has.
    BadDomain(DomId),
    /// `flags` changed on every attempt.
    Unstable(GrantRef),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableTooSmall(len) => write!(f, "{len} bytes is too small for a grant table"),
            Self::NoFreeRefs => write!(f, "no free grant references"),
            Self::BadRef(r) => write!(f, "grant reference {r} is out of range or reserved"),
            Self::NotAllocated(r) => write!(f, "grant reference {r} is not allocated"),
            Self::StillInUse(r) => write!(f, "grant reference {r} is still in use"),
            Self::StillGranted(r) => write!(f, "grant reference {r} still grants access"),
            Self::FrameTooLarge(fr) => write!(f, "frame {fr:#x} does not fit a v1 grant"),
            Self::BadDomain(d) => write!(f, "cannot grant to reserved domain id {d:#x}"),
            Self::Unstable(r) => write!(f, "grant reference {r} flags keep changing"),
        }
    }
}

impl core::error::Error for GrantError {}

/// The granting guest's table: a reference allocator over the shared entries.
///
/// References `0..GNTTAB_NR_RESERVED_ENTRIES` (8) are never handed out, as in Linux:
/// the toolstack pre-populates entry 0 (`GNTTAB_RESERVED_CONSOLE`) and entry 1
/// (`GNTTAB_RESERVED_XENSTORE`) so that the console and xenstore daemons can map this
/// guest's console and xenstore rings, and the header keeps the first eight entries
/// across a grant-table version change for such uses. Overwriting them would cut the
/// guest off from its own console and xenstore.
#[derive(Debug)]
pub struct GrantTable<M> {
    mem: M,
    nr_entries: u32,
    /// Free references, used as a stack (the most recently freed is reused first,
    /// while its entry is still in the cache).
    free: Vec<GrantRef>,
    /// One bit per reference: allocated.
    allocated: Vec<u64>,
}

impl<M: SharedMemory> GrantTable<M> {
    /// Wraps the table memory (a whole number of entries, more than the reserved ones).
    /// Every non-reserved reference starts free.
    pub fn new(mem: M) -> Result<Self, GrantError> {
        let len = mem.len();
        let nr = len / ENTRY_SIZE;
        if !len.is_multiple_of(ENTRY_SIZE) || nr <= GNTTAB_NR_RESERVED_ENTRIES as usize {
            return Err(GrantError::TableTooSmall(len));
        }
        let nr_entries = u32::try_from(nr).map_err(|_| GrantError::TableTooSmall(len))?;
        Ok(Self {
            mem,
            nr_entries,
            free: (GNTTAB_NR_RESERVED_ENTRIES..nr_entries).rev().collect(),
            allocated: vec![0; nr.div_ceil(64)],
        })
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Entries in the table (reserved ones included).
    pub fn nr_entries(&self) -> u32 {
        self.nr_entries
    }

    /// References available to [`claim`](Self::claim).
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    fn is_allocated(&self, gref: GrantRef) -> bool {
        let i = gref as usize;
        self.allocated
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set_allocated(&mut self, gref: GrantRef, on: bool) {
        let i = gref as usize;
        if let Some(w) = self.allocated.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// Checks that `gref` is an allocated, non-reserved reference; its entry offset.
    fn owned(&self, gref: GrantRef) -> Result<usize, GrantError> {
        if gref < GNTTAB_NR_RESERVED_ENTRIES || gref >= self.nr_entries {
            return Err(GrantError::BadRef(gref));
        }
        if !self.is_allocated(gref) {
            return Err(GrantError::NotAllocated(gref));
        }
        Ok(gref as usize * ENTRY_SIZE)
    }

    /// Takes a free reference (its entry is not touched).
    pub fn claim(&mut self) -> Result<GrantRef, GrantError> {
        let gref = self.free.pop().ok_or(GrantError::NoFreeRefs)?;
        self.set_allocated(gref, true);
        Ok(gref)
    }

    /// Claims a reference and grants `domid` access to `frame` through it
    /// ([`grant_access_ref`](Self::grant_access_ref)).
    pub fn grant_access(
        &mut self,
        domid: DomId,
        frame: XenPfn,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        check_grant_args(domid, frame)?;
        let gref = self.claim()?;
        match self.grant_access_ref(gref, domid, frame, readonly) {
            Ok(()) => Ok(gref),
            Err(e) => {
                // The entry was not valid before and is left as it was; the reference
                // goes back only if nothing else holds it (e.g. a hypervisor that set
                // flags on an invalid entry keeps it out of circulation).
                if !matches!(e, GrantError::StillGranted(_) | GrantError::Unstable(_)) {
                    self.set_allocated(gref, false);
                    self.free.push(gref);
                }
                Err(e)
            }
        }
    }

    /// Grants `domid` access to `frame` through the claimed reference `gref`, following
    /// the header's order: write `domid`, write `frame`, write barrier, write `flags`
    /// (`GTF_permit_access`, plus `GTF_readonly` if `readonly`).
    ///
    /// `flags` is set with a compare-exchange from 0, so an entry that still grants
    /// something (or that the hypervisor is marking) is refused, not overwritten.
    pub fn grant_access_ref(
        &self,
        gref: GrantRef,
        domid: DomId,
        frame: XenPfn,
        readonly: bool,
    ) -> Result<(), GrantError> {
        check_grant_args(domid, frame)?;
        let off = self.owned(gref)?;
        if self.mem.load_u16(off + FLAGS, Ordering::Acquire) != 0 {
            return Err(GrantError::StillGranted(gref));
        }
        self.mem.store_u16(off + DOMID, domid, Ordering::Relaxed);
        self.mem
            .store_u32(off + FRAME, frame as u32, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // The compare-exchange is AcqRel: its release half is the header's "3. Write
        // memory barrier (WMB)", making domid and frame visible before the type.
        self.mem
            .compare_exchange_u16(off + FLAGS, 0, flags)
            .map(|_| ())
            .map_err(|_| GrantError::StillGranted(gref))
    }

    /// Revokes the grant in `gref` unless the hypervisor is using it (the header's
    /// "Invalidating an unused GTF_permit_access entry": read `flags`, check that
    /// `GTF_reading|GTF_writing` are clear, compare-exchange `flags` to 0). On success
    /// the other domain can no longer start using the frame; the reference stays
    /// allocated. An entry that grants nothing succeeds trivially.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), GrantError> {
        let off = self.owned(gref)?;
        let mut flags = self.mem.load_u16(off + FLAGS, Ordering::Acquire);
        for _ in 0..MAX_FLAG_RETRIES {
            if flags & (GTF_READING | GTF_WRITING) != 0 {
                return Err(GrantError::StillInUse(gref));
            }
            match self.mem.compare_exchange_u16(off + FLAGS, flags, 0) {
                Ok(_) => return Ok(()),
                Err(now) => flags = now,
            }
        }
        Err(GrantError::Unstable(gref))
    }

    /// Returns `gref` to the free list. Refuses a reference that is not allocated
    /// (double free) and one whose entry still grants access (free would let the
    /// next user rewrite an entry another domain may be using).
    pub fn free(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let off = self.owned(gref)?;
        if self.mem.load_u16(off + FLAGS, Ordering::Acquire) & GTF_TYPE_MASK != 0 {
            return Err(GrantError::StillGranted(gref));
        }
        self.set_allocated(gref, false);
        self.free.push(gref);
        Ok(())
    }

    /// [`end_access`](Self::end_access) then [`free`](Self::free).
    pub fn end_access_and_free(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        self.end_access(gref)?;
        self.free(gref)
    }

    /// A snapshot of `gref`'s entry (any reference in the table, reserved ones too).
    pub fn entry(&self, gref: GrantRef) -> Option<GrantEntryV1> {
        (gref < self.nr_entries).then(|| read_entry(&self.mem, gref as usize * ENTRY_SIZE))
    }
}

fn check_grant_args(domid: DomId, frame: XenPfn) -> Result<(), GrantError> {
    if domid >= DOMID_FIRST_RESERVED {
        return Err(GrantError::BadDomain(domid));
    }
    if u32::try_from(frame).is_err() {
        return Err(GrantError::FrameTooLarge(frame));
    }
    Ok(())
}

/// Reads an entry with one 64-bit atomic load (flags, domid and frame together).
fn read_entry<M: SharedMemory>(mem: &M, off: usize) -> GrantEntryV1 {
    GrantEntryV1::from_bytes(&mem.load_u64(off, Ordering::Acquire).to_le_bytes())
}

/// Why the hypervisor refused a backend's access to a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// The reference is outside the table (`GNTST_bad_gntref`).
    BadRef(GrantRef),
    /// The entry's type is not `GTF_permit_access`.
    NotPermitAccess(GrantRef),
    /// The entry grants access to another domain, or the grant is in use by another
    /// domain.
    WrongDomain(GrantRef),
    /// Write access to a `GTF_readonly` grant.
    ReadOnly(GrantRef),
    /// The guest changed the entry's flags on every attempt, or changed the entry
    /// while it was being pinned.
    Unstable(GrantRef),
    /// The pin count would overflow.
    TooManyPins(GrantRef),
    /// The token belongs to another table, or its pin is gone.
    BadToken(GrantRef),
}

impl AccessError {
    /// The `GNTST_*` status the hypervisor reports for this refusal (Xen's choice:
    /// `GNTST_bad_gntref` for a reference outside the table, `GNTST_general_error`
    /// for every refusal by `_set_status_v1` and the pin checks).
    pub fn gntst(&self) -> i16 {
        match self {
            Self::BadRef(_) => GNTST_BAD_GNTREF,
            _ => GNTST_GENERAL_ERROR,
        }
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRef(r) => write!(f, "grant reference {r} is outside the table"),
            Self::NotPermitAccess(r) => write!(f, "grant {r} does not permit access"),
            Self::WrongDomain(r) => write!(f, "grant {r} is not for this domain"),
            Self::ReadOnly(r) => write!(f, "grant {r} is read-only"),
            Self::Unstable(r) => write!(f, "grant {r} is unstable"),
            Self::TooManyPins(r) => write!(f, "grant {r} has too many users"),
            Self::BadToken(r) => write!(f, "access token for grant {r} is not valid here"),
        }
    }
}

impl core::error::Error for AccessError {}

/// The hypervisor's private state for one entry in use (Xen's `active_grant_entry`):
/// who uses it, which frame it was pinned with, and how many accesses hold it.
#[derive(Clone, Copy, Debug, Default)]
struct Active {
    domid: DomId,
    frame: u32,
    readers: u32,
    writers: u32,
}

impl Active {
    fn pins(&self) -> u32 {
        self.readers.saturating_add(self.writers)
    }
}

/// Proof of one access begun with [`HostGrantTable::begin_access`]; hand it back to
/// [`HostGrantTable::end_access`]. Not `Clone`: each access ends once.
#[must_use = "an access that is never ended keeps the guest's grant pinned"]
#[derive(Debug, PartialEq, Eq)]
pub struct GrantAccess {
    table: u64,
    gref: GrantRef,
    domid: DomId,
    frame: u32,
    write: bool,
}

impl GrantAccess {
    /// The guest frame the grant names (a guest-physical frame number: the caller
    /// still checks it against the guest's memory before touching it).
    pub fn frame(&self) -> XenPfn {
        XenPfn::from(self.frame)
    }

    /// The reference.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// The accessing domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Whether the access may write the frame.
    pub fn writable(&self) -> bool {
        self.write
    }
}

/// Source of table ids, so that a token is only accepted by the table that issued it.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// The hypervisor's view of one guest's version-1 grant table: checked, pinned access
/// for backends.
///
/// Methods take `&mut self`: the private pin counts are not shared between threads (a
/// multi-threaded shim puts the table behind a lock, held only for begin and end, not
/// for the copy between).
#[derive(Debug)]
pub struct HostGrantTable<M> {
    mem: M,
    id: u64,
    /// Entries in the table now (`mem.len() / ENTRY_SIZE`).
    nr: usize,
    /// Private state per entry; never shorter than `nr` (see
    /// [`update_memory`](Self::update_memory)).
    active: Vec<Active>,
}

impl<M: SharedMemory> HostGrantTable<M> {
    /// Wraps the guest's grant-table memory; its size (whole entries) fixes the
    /// number of references.
    pub fn new(mem: M) -> Self {
        let nr = mem.len() / ENTRY_SIZE;
        Self {
            mem,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            nr,
            active: vec![Active::default(); nr],
        }
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Changes the table memory with `f` and adopts its new size: the guest added
    /// grant frames (Xen's `gnttab_grow_table`) or moved one to another address.
    /// Returns what `f` returns.
    ///
    /// Pins survive: the private state of every entry is kept, and the entries' flags
    /// are wherever `f` leaves them, so `f` must carry over the contents of a frame it
    /// replaces (Xen's frames keep theirs when the guest maps them elsewhere). Should
    /// the memory shrink, the entries beyond its end keep their private state, so
    /// accesses to them still end, but no new access begins there.
    pub fn update_memory<R>(&mut self, f: impl FnOnce(&mut M) -> R) -> R {
        let r = f(&mut self.mem);
        self.nr = self.mem.len() / ENTRY_SIZE;
        if self.active.len() < self.nr {
            self.active.resize(self.nr, Active::default());
        }
        r
    }

    /// Entries in the table.
    pub fn nr_entries(&self) -> usize {
        self.nr
    }

    /// `(readers, writers)` holding `gref` (a write access counts as a writer only).
    pub fn pins(&self, gref: GrantRef) -> Option<(u32, u32)> {
        self.active
            .get(gref as usize)
            .map(|a| (a.readers, a.writers))
    }

    /// Entries with at least one access in flight.
    pub fn pinned_entries(&self) -> usize {
        self.active.iter().filter(|a| a.pins() > 0).count()
    }

    /// Begins an access by domain `by` to the frame granted in `gref`, for writing if
    /// `write`. Checks, as Xen's `acquire_grant_for_copy` and `_set_status_v1` do, that
    /// the reference is in the table; that an entry already in use is in use by `by`;
    /// and, when the entry is not yet pinned, that its type is `GTF_permit_access` and
    /// its domid is `by`; for a write, that it is not `GTF_readonly`. Then sets
    /// `GTF_reading` (and `GTF_writing`) with a bounded compare-exchange loop, and reads
    /// the frame once.
    pub fn begin_access(
        &mut self,
        gref: GrantRef,
        by: DomId,
        write: bool,
    ) -> Result<GrantAccess, AccessError> {
        let act = *self
            .active
            .get(gref as usize)
            .filter(|_| (gref as usize) < self.nr)
            .ok_or(AccessError::BadRef(gref))?;
        let off = gref as usize * ENTRY_SIZE;
        if act.pins() > 0 && act.domid != by {
            return Err(AccessError::WrongDomain(gref));
        }
        let count = if write { act.writers } else { act.readers };
        if count == u32::MAX || act.pins() == u32::MAX {
            return Err(AccessError::TooManyPins(gref));
        }
        let mut next = act;
        if act.pins() == 0 || (write && act.writers == 0) {
            let newly = self.set_status(gref, off, act.pins() > 0, by, write)?;
            // Read the frame after pinning: from now on a well-behaved guest leaves
            // the entry alone, and this copy is the only one used.
            let frame = read_entry(&self.mem, off).frame;
            if act.pins() == 0 {
                next.domid = by;
                next.frame = frame;
            } else if frame != act.frame {
                // The guest rewrote a pinned entry: refuse the upgrade (Xen compares
                // the frame of an already active entry the same way). The readers
                // still hold the entry, so only the write flag set here is undone.
                self.clear_flags(off, newly & !GTF_READING);
                return Err(AccessError::Unstable(gref));
            }
        }
        if write {
            next.writers += 1;
        } else {
            next.readers += 1;
        }
        self.active[gref as usize] = next;
        Ok(GrantAccess {
            table: self.id,
            gref,
            domid: by,
            frame: next.frame,
            write,
        })
    }

    /// `_set_status_v1`: sets `GTF_reading` (and `GTF_writing` for `write`) on the
    /// entry at `off`, checking type and domid first unless the entry is already
    /// `pinned`; returns the flag bits this call set.
    ///
    /// Like Xen, compare-exchanges `flags` and `domid` as one 32-bit word, so the pin
    /// succeeds only if, at that instant, the entry still granted access to `by`.
    fn set_status(
        &self,
        gref: GrantRef,
        off: usize,
        pinned: bool,
        by: DomId,
        write: bool,
    ) -> Result<u16, AccessError> {
        let want = GTF_READING | if write { GTF_WRITING } else { 0 };
        let mut combo = self.mem.load_u32(off + FLAGS, Ordering::Acquire);
        for _ in 0..MAX_FLAG_RETRIES {
            let (flags, domid) = (combo as u16, (combo >> 16) as u16);
            if !pinned {
                if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                    return Err(AccessError::NotPermitAccess(gref));
                }
                if domid != by {
                    return Err(AccessError::WrongDomain(gref));
                }
            }
            if write && flags & GTF_READONLY != 0 {
                return Err(AccessError::ReadOnly(gref));
            }
            match self
                .mem
                .compare_exchange_u32(off + FLAGS, combo, combo | u32::from(want))
            {
                Ok(_) => return Ok(want & !flags),
                Err(now) => combo = now,
            }
        }
        Err(AccessError::Unstable(gref))
    }

    /// Clears `bits` of the entry's flags with one atomic AND (no retry loop for the
    /// guest to stretch), as Xen's `gnttab_clear_flags` does.
    fn clear_flags(&self, off: usize, bits: u16) {
        if bits != 0 {
            self.mem
                .fetch_and_u64(off, !u64::from(bits), Ordering::AcqRel);
        }
    }

    /// Ends an access: drops its pin; clears `GTF_writing` when the last writer ends
    /// and `GTF_reading` when the last user ends (Xen's `release_grant_for_copy` and
    /// `reduce_status_for_pin`). A token from another table is refused.
    pub fn end_access(&mut self, access: GrantAccess) -> Result<(), AccessError> {
        let gref = access.gref;
        if access.table != self.id {
            return Err(AccessError::BadToken(gref));
        }
        let Some(act) = self.active.get_mut(gref as usize) else {
            return Err(AccessError::BadToken(gref));
        };
        let count = if access.write {
            &mut act.writers
        } else {
            &mut act.readers
        };
        *count = count.checked_sub(1).ok_or(AccessError::BadToken(gref))?;
        let mut clear = 0;
        if act.writers == 0 {
            clear |= GTF_WRITING;
        }
        if act.pins() == 0 {
            clear |= GTF_READING;
        }
        let off = gref as usize * ENTRY_SIZE;
        self.clear_flags(off, clear);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::grant_table::{GNTTAB_RESERVED_XENSTORE, GTF_TRANSITIVE};
    use crate::evtchn::test_mem::{Hooked, Moment, SharedArc};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    const BACKEND: DomId = 0;
    const OTHER: DomId = 5;

    fn pair(frames: usize) -> (GrantTable<SharedArc>, HostGrantTable<SharedArc>) {
        let mem = SharedArc::new(frames * 4096);
        (
            GrantTable::new(mem.clone()).unwrap(),
            HostGrantTable::new(mem),
        )
    }

    fn flags(g: &GrantTable<SharedArc>, r: GrantRef) -> u16 {
        g.entry(r).unwrap().flags
    }

    #[test]
    fn allocator_skips_reserved_refs_and_detects_double_free() {
        let (mut g, _) = pair(1);
        assert_eq!(g.nr_entries(), 512);
        assert_eq!(g.free_count(), 504);
        let mut refs = Vec::new();
        while let Ok(r) = g.claim() {
            assert!((GNTTAB_NR_RESERVED_ENTRIES..512).contains(&r));
            refs.push(r);
        }
        assert_eq!(refs.len(), 504);
        assert_eq!(refs[0], 8, "lowest first");
        assert_eq!(g.claim(), Err(GrantError::NoFreeRefs));
        assert_eq!(g.free(refs[3]), Ok(()));
        assert_eq!(g.free(refs[3]), Err(GrantError::NotAllocated(refs[3])));
        assert_eq!(g.claim(), Ok(refs[3]), "most recently freed reused first");
        assert_eq!(g.free(GNTTAB_RESERVED_XENSTORE), Err(GrantError::BadRef(1)));
        assert_eq!(g.free(512), Err(GrantError::BadRef(512)));
        assert_eq!(g.end_access(u32::MAX), Err(GrantError::BadRef(u32::MAX)));
        assert_eq!(
            GrantTable::new(SharedArc::new(64)).err(),
            Some(GrantError::TableTooSmall(64))
        );
        assert_eq!(
            GrantTable::new(SharedArc::new(4097)).err(),
            Some(GrantError::TableTooSmall(4097))
        );
    }

    #[test]
    fn grant_writes_the_entry_in_the_header_layout() {
        let (mut g, _) = pair(1);
        let r = g.grant_access(7, 0xABCDE, true).unwrap();
        assert_eq!(
            g.entry(r),
            Some(GrantEntryV1 {
                flags: GTF_PERMIT_ACCESS | GTF_READONLY,
                domid: 7,
                frame: 0xABCDE
            })
        );
        let mut raw = [0u8; 8];
        g.memory().read_bytes(r as usize * 8, &mut raw);
        assert_eq!(raw, [5, 0, 7, 0, 0xDE, 0xBC, 0x0A, 0]);
        // Granting again over a live entry is refused.
        assert_eq!(
            g.grant_access_ref(r, 7, 1, false),
            Err(GrantError::StillGranted(r))
        );
        assert_eq!(g.free(r), Err(GrantError::StillGranted(r)));
        assert_eq!(g.end_access_and_free(r), Ok(()));
        assert_eq!(flags(&g, r), 0);
        assert_eq!(
            g.grant_access(7, 1 << 32, false),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
        assert_eq!(
            g.grant_access(crate::abi::xen::DOMID_SELF, 1, false),
            Err(GrantError::BadDomain(0x7FF0))
        );
        assert_eq!(g.free_count(), 504, "failed grants leak no reference");
    }

    #[test]
    fn full_protocol_both_sides() {
        let (mut g, mut h) = pair(2);
        let page = 0x1234;
        let r = g.grant_access(BACKEND, page, false).unwrap();

        let a = h.begin_access(r, BACKEND, true).unwrap();
        assert_eq!(
            (a.frame(), a.gref(), a.domid(), a.writable()),
            (page, r, 0, true)
        );
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
        // The guest cannot revoke or recycle the entry while it is in use.
        assert_eq!(g.end_access(r), Err(GrantError::StillInUse(r)));
        assert_eq!(g.end_access_and_free(r), Err(GrantError::StillInUse(r)));
        assert_eq!(flags(&g, r) & GTF_TYPE_MASK, GTF_PERMIT_ACCESS);

        // A second, read-only user; the writer ends first.
        let b = h.begin_access(r, BACKEND, false).unwrap();
        assert_eq!(h.pins(r), Some((1, 1)));
        h.end_access(a).unwrap();
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(g.end_access(r), Err(GrantError::StillInUse(r)));
        h.end_access(b).unwrap();
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS);
        assert_eq!(h.pins(r), Some((0, 0)));

        g.end_access_and_free(r).unwrap();
        // Revoked: the backend can no longer begin.
        assert_eq!(
            h.begin_access(r, BACKEND, false),
            Err(AccessError::NotPermitAccess(r))
        );
    }

    #[test]
    fn readonly_is_enforced() {
        let (mut g, mut h) = pair(1);
        let r = g.grant_access(BACKEND, 99, true).unwrap();
        let e = h.begin_access(r, BACKEND, true).unwrap_err();
        assert_eq!(e, AccessError::ReadOnly(r));
        assert_eq!(e.gntst(), GNTST_GENERAL_ERROR);
        assert_eq!(
            flags(&g, r),
            GTF_PERMIT_ACCESS | GTF_READONLY,
            "no flag left set"
        );
        let rd = h.begin_access(r, BACKEND, false).unwrap();
        // Upgrading a pinned read-only grant to write is refused too.
        assert_eq!(
            h.begin_access(r, BACKEND, true),
            Err(AccessError::ReadOnly(r))
        );
        h.end_access(rd).unwrap();
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READONLY);
    }

    #[test]
    fn foreign_domain_and_bad_entries_are_refused() {
        let (mut g, mut h) = pair(1);
        let r = g.grant_access(BACKEND, 99, false).unwrap();
        assert_eq!(
            h.begin_access(r, OTHER, false),
            Err(AccessError::WrongDomain(r))
        );
        // While the backend holds it, another domain is still refused.
        let a = h.begin_access(r, BACKEND, false).unwrap();
        assert_eq!(
            h.begin_access(r, OTHER, false),
            Err(AccessError::WrongDomain(r))
        );
        h.end_access(a).unwrap();

        let e = h.begin_access(512, BACKEND, false).unwrap_err();
        assert_eq!(e, AccessError::BadRef(512));
        assert_eq!(e.gntst(), GNTST_BAD_GNTREF);
        // Never granted, or a type other than permit_access.
        assert_eq!(
            h.begin_access(300, BACKEND, false),
            Err(AccessError::NotPermitAccess(300))
        );
        g.memory()
            .store_u16(300 * 8, GTF_TRANSITIVE, Ordering::Relaxed);
        assert_eq!(
            h.begin_access(300, BACKEND, false),
            Err(AccessError::NotPermitAccess(300))
        );
        assert_eq!(flags(&g, 300), GTF_TRANSITIVE);
        // An empty table refuses everything.
        let mut empty = HostGrantTable::new(SharedArc::new(0));
        assert_eq!(empty.begin_access(0, 0, false), Err(AccessError::BadRef(0)));
    }

    #[test]
    fn tokens_are_checked() {
        let (mut g, mut h) = pair(1);
        let (_, mut h2) = pair(1);
        let r = g.grant_access(BACKEND, 1, false).unwrap();
        let a = h.begin_access(r, BACKEND, false).unwrap();
        assert_eq!(h2.end_access(a), Err(AccessError::BadToken(r)));
        // The token is gone, but the pin it held is still there in `h`.
        assert_eq!(h.pins(r), Some((1, 0)));
        let forged = GrantAccess {
            table: h.id,
            gref: r,
            domid: BACKEND,
            frame: 1,
            write: true,
        };
        assert_eq!(h.end_access(forged), Err(AccessError::BadToken(r)));
        assert_eq!(h.pins(r), Some((1, 0)));
    }

    #[test]
    fn guest_rewriting_a_pinned_entry_cannot_get_a_write_upgrade() {
        let (mut g, mut h) = pair(1);
        let r = g.grant_access(BACKEND, 10, false).unwrap();
        let rd = h.begin_access(r, BACKEND, false).unwrap();
        // A misbehaving guest swaps the frame under the pin.
        g.memory()
            .store_u32(r as usize * 8 + 4, 11, Ordering::Relaxed);
        assert_eq!(
            h.begin_access(r, BACKEND, true),
            Err(AccessError::Unstable(r))
        );
        assert_eq!(
            flags(&g, r),
            GTF_PERMIT_ACCESS | GTF_READING,
            "upgrade undone"
        );
        // The pinned frame is the one read at pin time.
        let rd2 = h.begin_access(r, BACKEND, false).unwrap();
        assert_eq!(rd2.frame(), 10);
        h.end_access(rd).unwrap();
        h.end_access(rd2).unwrap();
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS);
    }

    /// The guest places a second frame while the backend holds a pin in the first,
    /// then moves the first frame elsewhere: the host table grows, the pin survives the
    /// move, and ending it clears the flags in the frame's new place.
    #[test]
    fn host_table_grows_and_moves_frames_keeping_pins() {
        use crate::shmem::PagedMemory;
        let (f0, f1) = (SharedArc::new(4096), SharedArc::new(4096));
        let frames = || PagedMemory::from_pages([f0.clone(), f1.clone()]).unwrap();
        let mut g = GrantTable::new(frames()).unwrap();
        let mut h = HostGrantTable::new(PagedMemory::from_pages([f0.clone()]).unwrap());
        assert_eq!(h.nr_entries(), 512);

        let r0 = g.grant_access(BACKEND, 7, false).unwrap();
        let r1 = loop {
            let r = g.claim().unwrap();
            if r >= 512 {
                break r;
            }
        };
        g.grant_access_ref(r1, BACKEND, 8, true).unwrap();
        let a = h.begin_access(r0, BACKEND, true).unwrap();
        assert_eq!(
            h.begin_access(r1, BACKEND, false),
            Err(AccessError::BadRef(r1))
        );

        h.update_memory(|m| m.set_page(1, f1.clone()).map(|_| ()))
            .unwrap();
        assert_eq!(h.nr_entries(), 1024);
        let b = h.begin_access(r1, BACKEND, false).unwrap();
        assert_eq!(
            (b.frame(), h.pins(r0), h.pinned_entries()),
            (8, Some((0, 1)), 2)
        );

        // Frame 0 moves, carrying its contents (and the pin's flags) along.
        let moved = SharedArc::new(4096);
        let old = h.update_memory(|m| {
            let mut page = [0u8; 4096];
            m.read_bytes(0, &mut page);
            moved.write_bytes(0, &page);
            m.set_page(0, moved.clone())
        });
        assert!(matches!(old, Ok(Some(_))));
        let off = r0 as usize * ENTRY_SIZE;
        assert_eq!(
            moved.load_u16(off, Ordering::Relaxed),
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        h.end_access(a).unwrap();
        assert_eq!(moved.load_u16(off, Ordering::Relaxed), GTF_PERMIT_ACCESS);
        assert_eq!(h.pinned_entries(), 1);

        h.end_access(b).unwrap();
        assert_eq!(h.pinned_entries(), 0);
        assert_eq!(g.end_access(r1), Ok(()));
    }

    #[test]
    fn hypervisor_gives_up_on_flags_that_never_settle() {
        let mem = SharedArc::new(4096);
        let mut g = GrantTable::new(mem.clone()).unwrap();
        let r = g.grant_access(BACKEND, 3, false).unwrap();
        let off = r as usize * 8;
        // Before every compare-exchange the "guest" toggles GTF_PAT.
        let mut h = HostGrantTable::new(Hooked {
            mem: mem.clone(),
            hook: move |m: &SharedArc, _: Moment| {
                let f = m.load_u16(off, Ordering::Relaxed);
                m.store_u16(off, f ^ crate::abi::grant_table::GTF_PAT, Ordering::Relaxed);
            },
        });
        assert_eq!(
            h.begin_access(r, BACKEND, false),
            Err(AccessError::Unstable(r))
        );
        assert_eq!(mem.load_u16(off, Ordering::Relaxed) & GTF_READING, 0);
        assert_eq!(h.pins(r), Some((0, 0)));
    }

    #[test]
    fn domid_change_during_pin_is_refused() {
        let mem = SharedArc::new(4096);
        let mut g = GrantTable::new(mem.clone()).unwrap();
        let r = g.grant_access(BACKEND, 3, false).unwrap();
        let off = r as usize * 8;
        // Between the hypervisor's check and its compare-exchange, the guest hands
        // the entry to another domain (without touching flags).
        let mut h = HostGrantTable::new(Hooked {
            mem: mem.clone(),
            hook: move |m: &SharedArc, _: Moment| m.store_u16(off + 2, OTHER, Ordering::Relaxed),
        });
        assert_eq!(
            h.begin_access(r, BACKEND, true),
            Err(AccessError::WrongDomain(r))
        );
        assert_eq!(mem.load_u16(off, Ordering::Relaxed), GTF_PERMIT_ACCESS);
        assert_eq!(h.pins(r), Some((0, 0)));
    }

    #[test]
    fn guest_gives_up_on_flags_that_never_settle() {
        let mem = SharedArc::new(4096);
        let mut plain = GrantTable::new(mem.clone()).unwrap();
        let r = plain.grant_access(BACKEND, 3, false).unwrap();
        let off = r as usize * 8;
        // Rebuild the guest table over meddling memory, with `r` allocated.
        let mut g = GrantTable::new(Hooked {
            mem: mem.clone(),
            hook: move |m: &SharedArc, _: Moment| {
                let f = m.load_u16(off, Ordering::Relaxed);
                m.store_u16(off, f ^ crate::abi::grant_table::GTF_PCD, Ordering::Relaxed);
            },
        })
        .unwrap();
        while g.claim().unwrap() != r {}
        assert_eq!(g.end_access(r), Err(GrantError::Unstable(r)));
    }

    /// The guest tries to revoke while a backend thread pins and unpins the grant; a
    /// revoke succeeds only at a moment with no pin, and after it no pin succeeds.
    #[test]
    fn racing_revoke_and_access() {
        for round in 0..50 {
            let mem = SharedArc::new(4096);
            let mut g = GrantTable::new(mem.clone()).unwrap();
            let r = g.grant_access(BACKEND, 0x42, round % 2 == 0).unwrap();
            let revoked = Arc::new(AtomicBool::new(false));
            let backend = {
                let (mem, revoked) = (mem.clone(), revoked.clone());
                std::thread::spawn(move || {
                    let mut h = HostGrantTable::new(mem);
                    let mut ok_after_revoke = 0;
                    for i in 0..2000 {
                        let was_revoked = revoked.load(Ordering::SeqCst);
                        if let Ok(a) = h.begin_access(r, BACKEND, i % 3 == 0) {
                            assert_eq!(a.frame(), 0x42);
                            if was_revoked {
                                ok_after_revoke += 1;
                            }
                            h.end_access(a).unwrap();
                        }
                    }
                    ok_after_revoke
                })
            };
            loop {
                match g.end_access(r) {
                    Ok(()) => break,
                    Err(GrantError::StillInUse(_) | GrantError::Unstable(_)) => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            revoked.store(true, Ordering::SeqCst);
            assert_eq!(backend.join().unwrap(), 0, "access after revoke");
            assert_eq!(mem.load_u16(r as usize * 8, Ordering::SeqCst), 0);
            g.free(r).unwrap();
        }
    }
}
