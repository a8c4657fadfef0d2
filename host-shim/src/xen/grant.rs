//! The hypervisor side of grant tables (v1): checked access to the guest's granted
//! pages, for the guest's own `GNTTABOP_copy` and for the shim's backends (domain 0).
//!
//! The guest's grant table lives in guest pages it placed with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`, at whatever addresses it chose;
//! the shim sees them as one table through [`PagedMemory`], and every check and pin is
//! `pv_drivers::grant::HostGrantTable`'s (Xen's `_set_status_v1` and
//! `acquire_grant_for_copy`): the entry must be `GTF_permit_access` to the accessor,
//! a write needs an entry without `GTF_readonly`, and `GTF_reading` (plus
//! `GTF_writing`) stays set while any access is in flight, so the guest cannot end
//! access and recycle the page underneath it.
//!
//! Backends never reach guest memory except through [`Xen::grant_read`],
//! [`Xen::grant_write`] and the pinned mappings of [`Xen::grant_map`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pv_drivers::abi::grant_table::*;
use pv_drivers::abi::xen::{DOMID_SELF, DomId};
use pv_drivers::grant::{GrantAccess, HostGrantTable};
use pv_drivers::shmem::{PagedMemory, SharedMemory};

use super::guest_mem::{PAGE_SIZE, SharedPage};
use super::{MAX_GRANT_FRAMES, Xen};

pub use pv_drivers::grant::ENTRIES_PER_FRAME;

/// The guest's grant-table frames, in table order (a frame the guest has not placed
/// yet is a hole: its entries read as zero, so they grant nothing).
pub type GrantFrames = PagedMemory<SharedPage>;

/// The shim's view of the guest's grant table, with its pins.
pub type Grants = HostGrantTable<GrantFrames>;

/// One end of a copy, acquired: the guest frame, and the pin to release after.
#[derive(Debug)]
pub(super) struct CopyEnd {
    pub pfn: u64,
    access: Option<GrantAccess>,
}

impl Xen {
    /// Places grant-table frame `idx` at the guest page `page`
    /// (`XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`): the table grows to `idx + 1`
    /// frames if it was smaller. A frame placed again moves with its entries (and the
    /// flags of pins in flight), as Xen's frames do; a new frame starts zeroed.
    pub(super) fn place_grant_frame(&self, idx: u64, page: SharedPage) -> Result<(), ()> {
        if idx >= u64::from(MAX_GRANT_FRAMES) {
            return Err(());
        }
        let idx = idx as usize;
        let mut st = self.lock();
        st.grants.update_memory(|frames| {
            // Copied under the lock: pins and unpins of other threads wait for it, and
            // the guest is in this hypercall.
            let mut contents = [0u8; PAGE_SIZE as usize];
            if let Some(old) = frames.page(idx) {
                old.read_bytes(0, &mut contents);
            }
            page.write_bytes(0, &contents);
            frames.set_page(idx, page).map(drop).map_err(drop)
        })
    }

    /// Grant entries the shim holds pinned now (by copies in flight and mappings).
    pub fn pinned_grants(&self) -> usize {
        self.lock().grants.pinned_entries()
    }

    /// Grant-table frames the guest has (`GNTTABOP_query_size`'s `nr_frames`).
    pub(super) fn grant_frames(&self) -> u32 {
        self.lock().grants.memory().nr_pages() as u32
    }

    /// Pins grant `gref` for an access by domain `by` and checks that the frame it
    /// names is guest RAM. Errors are `GNTST_*` values; on error nothing is pinned.
    fn pin(&self, by: DomId, gref: GrantRef, write: bool) -> Result<GrantAccess, i16> {
        let mut st = self.lock();
        let access = match st.grants.begin_access(gref, by, write) {
            Ok(a) => a,
            Err(e) => {
                st.stats.grant_refusals += 1;
                return Err(e.gntst());
            }
        };
        // A v1 frame is 32 bits: the address cannot overflow.
        if !self.ram.is_ram(access.frame() * PAGE_SIZE, PAGE_SIZE) {
            let _ = st.grants.end_access(access);
            st.stats.grant_refusals += 1;
            return Err(GNTST_BAD_PAGE);
        }
        Ok(access)
    }

    /// Ends an access begun by [`Xen::pin`].
    fn unpin(&self, access: GrantAccess) {
        // A token of this table is always accepted.
        let _ = self.lock().grants.end_access(access);
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
            return Ok(CopyEnd { pfn, access: None });
        }
        let access = self.pin(me, end.ref_(), write)?;
        Ok(CopyEnd {
            pfn: access.frame(),
            access: Some(access),
        })
    }

    /// Releases what [`Xen::copy_end`] acquired.
    pub(super) fn release_end(&self, end: CopyEnd) {
        if let Some(access) = end.access {
            self.unpin(access);
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
            self.lock().stats.grant_refusals += 1;
            return Err(GNTST_BAD_COPY_ARG);
        }
        let access = self.pin(0, gref, write)?;
        // The copy runs without the lock: the pin keeps the grant in place.
        let result = copy(&self.ram, access.frame() * PAGE_SIZE + u64::from(offset))
            .map_err(|_| GNTST_BAD_PAGE);
        self.unpin(access);
        result
    }

    /// Maps the guest frames granted in `grefs` to domain 0 (like
    /// `GNTTABOP_map_grant_ref`, e.g. a multi-page shared ring): pins each grant
    /// (`GTF_reading`, and `GTF_writing` if `write`), checks every frame is guest RAM,
    /// and returns one contiguous view of the pages in order. The pins are held until
    /// the mapping is dropped. Errors are `GNTST_*` values (`GNTST_bad_gntref` for a
    /// reference outside the table, `GNTST_general_error` for a grant that is not to
    /// domain 0, read-only for a `write` mapping, or unstable, `GNTST_bad_page` for a
    /// frame that is not RAM); on error nothing stays pinned.
    ///
    /// The same reference may appear more than once (each counts as a pin). An empty
    /// `grefs` gives an empty mapping. Bounding the count is the caller's business
    /// (a backend checks the ring order the guest asked for).
    pub fn grant_map(
        self: &Arc<Self>,
        grefs: &[GrantRef],
        write: bool,
    ) -> Result<GrantMapping, i16> {
        let mut accesses = Vec::with_capacity(grefs.len());
        let mut pages = PagedMemory::new();
        let mut st = self.lock();
        let mut map_all = || {
            for (i, &gref) in grefs.iter().enumerate() {
                let access = st
                    .grants
                    .begin_access(gref, 0, write)
                    .map_err(|e| e.gntst())?;
                let page = self.ram.page(access.frame());
                accesses.push(access);
                let page = page.map_err(|_| GNTST_BAD_PAGE)?;
                pages.set_page(i, page).map_err(|_| GNTST_GENERAL_ERROR)?;
            }
            Ok(())
        };
        if let Err(status) = map_all() {
            for access in accesses {
                let _ = st.grants.end_access(access);
            }
            st.stats.grant_refusals += 1;
            return Err(status);
        }
        st.stats.grant_maps += 1;
        drop(st);
        Ok(GrantMapping {
            xen: self.clone(),
            accesses,
            pages,
            write,
        })
    }
}

/// Guest pages granted to domain 0 and pinned there: one contiguous
/// [`SharedMemory`] of `4096 * grefs.len()` bytes, page `i` being the frame granted in
/// `grefs[i]` ([`Xen::grant_map`]). Dropping it ends the pins (the last pin of an entry
/// clears its `GTF_reading`/`GTF_writing`).
///
/// A read-only mapping (`write` false) refuses every store, exchange and atomic
/// update: it drops them, as the [`SharedMemory`] contract drops an access outside the
/// region (and `debug_assert!`s on it, being a backend bug).
pub struct GrantMapping {
    xen: Arc<Xen>,
    accesses: Vec<GrantAccess>,
    pages: PagedMemory<SharedPage>,
    write: bool,
}

// Backends hand mappings to their own threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GrantMapping>();
};

impl GrantMapping {
    /// The references mapped, in page order.
    pub fn grefs(&self) -> impl Iterator<Item = GrantRef> + '_ {
        self.accesses.iter().map(GrantAccess::gref)
    }

    /// The guest frames mapped, in page order.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.accesses.iter().map(GrantAccess::frame)
    }

    /// Whether the mapping may be written.
    pub fn writable(&self) -> bool {
        self.write
    }

    /// Whether a modifying access may go ahead.
    fn may_write(&self) -> bool {
        debug_assert!(self.write, "write through a read-only grant mapping");
        self.write
    }
}

impl fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantMapping")
            .field("grefs", &self.grefs().collect::<Vec<_>>())
            .field("frames", &self.frames().collect::<Vec<_>>())
            .field("write", &self.write)
            .finish()
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let mut st = self.xen.lock();
        for access in self.accesses.drain(..) {
            let _ = st.grants.end_access(access);
        }
        st.stats.grant_maps = st.stats.grant_maps.saturating_sub(1);
    }
}

impl SharedMemory for GrantMapping {
    fn len(&self) -> usize {
        self.pages.len()
    }
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.pages.load_u8(offset, order)
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        if self.may_write() {
            self.pages.store_u8(offset, value, order)
        }
    }
    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        self.pages.load_u16(offset, order)
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        if self.may_write() {
            self.pages.store_u16(offset, value, order)
        }
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        if !self.may_write() {
            return Err(0);
        }
        self.pages.compare_exchange_u16(offset, current, new)
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.pages.load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        if self.may_write() {
            self.pages.store_u32(offset, value, order)
        }
    }
    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        if !self.may_write() {
            return Err(0);
        }
        self.pages.compare_exchange_u32(offset, current, new)
    }
    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.pages.load_u64(offset, order)
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        if self.may_write() {
            self.pages.store_u64(offset, value, order)
        }
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        if !self.may_write() {
            return 0;
        }
        self.pages.swap_u64(offset, value, order)
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        if !self.may_write() {
            return 0;
        }
        self.pages.fetch_or_u64(offset, bits, order)
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        if !self.may_write() {
            return 0;
        }
        self.pages.fetch_and_u64(offset, bits, order)
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        self.pages.read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if self.may_write() {
            self.pages.write_bytes(offset, data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::xen_without_kvm;
    use pv_drivers::grant::GrantTable;

    /// Where the guest keeps its grant-table frames, and the pages it grants.
    const TABLE_PFN: u64 = 0x10;
    const DATA_PFN: u64 = 0x20;

    /// A Xen with one grant frame placed, and the guest's table over it.
    fn setup() -> (Arc<Xen>, GrantTable<SharedPage>) {
        let (xen, _) = xen_without_kvm(2);
        let page = xen.ram().page(TABLE_PFN).unwrap();
        xen.place_grant_frame(0, page).unwrap();
        let guest = GrantTable::new(xen.ram().page(TABLE_PFN).unwrap()).unwrap();
        (xen, guest)
    }

    fn flags(g: &GrantTable<SharedPage>, r: GrantRef) -> u16 {
        g.entry(r).unwrap().flags
    }

    #[test]
    fn grant_map_pins_until_dropped_and_sees_the_pages_in_order() {
        let (xen, mut g) = setup();
        let r0 = g.grant_access(0, DATA_PFN + 1, false).unwrap();
        let r1 = g.grant_access(0, DATA_PFN, false).unwrap();
        xen.ram()
            .write_phys((DATA_PFN + 1) * PAGE_SIZE + 4094, b"ab")
            .unwrap();
        xen.ram().write_phys(DATA_PFN * PAGE_SIZE, b"cd").unwrap();

        let map = xen.grant_map(&[r0, r1], true).unwrap();
        assert_eq!(map.len(), 2 * 4096);
        assert_eq!(map.grefs().collect::<Vec<_>>(), [r0, r1]);
        assert_eq!(map.frames().collect::<Vec<_>>(), [DATA_PFN + 1, DATA_PFN]);
        assert_eq!(xen.stats().grant_maps, 1);
        for r in [r0, r1] {
            assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
            assert_eq!(
                g.end_access(r),
                Err(pv_drivers::grant::GrantError::StillInUse(r))
            );
        }
        // One view across both pages, reads and writes reaching guest RAM.
        let mut buf = [0u8; 4];
        map.read_bytes(4094, &mut buf);
        assert_eq!(&buf, b"abcd");
        map.write_bytes(4095, b"XY");
        map.store_u32(4096 + 8, 0xfeed_f00d, Ordering::Release);
        let mut back = [0u8; 2];
        xen.ram()
            .read_phys(DATA_PFN * PAGE_SIZE, &mut back)
            .unwrap();
        assert_eq!(&back, b"Yd");
        let mut word = [0u8; 4];
        xen.ram()
            .read_phys(DATA_PFN * PAGE_SIZE + 8, &mut word)
            .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xfeed_f00d);
        // A second mapping of the same grant stacks its pin.
        let again = xen.grant_map(&[r1], false).unwrap();
        assert_eq!(xen.stats().grant_maps, 2);
        drop(map);
        assert_eq!(flags(&g, r0), GTF_PERMIT_ACCESS);
        assert_eq!(flags(&g, r1), GTF_PERMIT_ACCESS | GTF_READING);
        drop(again);
        assert_eq!(flags(&g, r1), GTF_PERMIT_ACCESS);
        assert_eq!(xen.stats().grant_maps, 0);
        assert_eq!(xen.lock().grants.pinned_entries(), 0);
        g.end_access_and_free(r0).unwrap();
        g.end_access_and_free(r1).unwrap();
    }

    #[test]
    fn grant_map_refuses_bad_grants_and_leaves_nothing_pinned() {
        let (xen, mut g) = setup();
        let ok = g.grant_access(0, DATA_PFN, false).unwrap();
        let readonly = g.grant_access(0, DATA_PFN + 1, true).unwrap();
        let foreign = g.grant_access(3, DATA_PFN + 2, false).unwrap();
        let not_ram = g.grant_access(0, 0xf_ffff, false).unwrap();
        let never = g.claim().unwrap();
        let cases: [(&[GrantRef], bool, i16); 6] = [
            (&[ok, readonly], true, GNTST_GENERAL_ERROR),
            (&[ok, foreign], false, GNTST_GENERAL_ERROR),
            (&[ok, ok, not_ram], false, GNTST_BAD_PAGE),
            (&[ok, never], false, GNTST_GENERAL_ERROR),
            (&[ok, 512], false, GNTST_BAD_GNTREF),
            (&[ok, u32::MAX], true, GNTST_BAD_GNTREF),
        ];
        for (grefs, write, status) in cases {
            assert_eq!(
                xen.grant_map(grefs, write).map(|_| ()),
                Err(status),
                "{grefs:?}"
            );
            for r in [ok, readonly, foreign, not_ram, never] {
                assert_eq!(flags(&g, r) & (GTF_READING | GTF_WRITING), 0, "{grefs:?}");
            }
            assert_eq!(xen.lock().grants.pinned_entries(), 0);
            assert_eq!(xen.stats().grant_maps, 0);
        }
        // Read-only is fine for a read-only mapping, which refuses stores.
        let map = xen.grant_map(&[readonly], false).unwrap();
        assert!(!map.writable());
        assert_eq!(
            flags(&g, readonly),
            GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING
        );
        #[cfg(not(debug_assertions))]
        {
            map.write_bytes(0, b"no");
            map.store_u64(8, 1, Ordering::Relaxed);
            assert_eq!(map.fetch_or_u64(8, 1, Ordering::Relaxed), 0);
            assert_eq!(map.compare_exchange_u32(8, 0, 1), Err(0));
            assert_eq!(map.load_u64(0, Ordering::Relaxed), 0);
        }
        drop(map);
        assert_eq!(flags(&g, readonly), GTF_PERMIT_ACCESS | GTF_READONLY);
        // The guest revokes: a later mapping is refused.
        g.end_access(ok).unwrap();
        assert_eq!(
            xen.grant_map(&[ok], false).map(|_| ()),
            Err(GNTST_GENERAL_ERROR)
        );
    }

    #[test]
    fn grants_follow_frames_the_guest_adds_and_moves() {
        let (xen, _) = xen_without_kvm(2);
        // Frame 1 first: frame 0 is a hole, whose entries grant nothing.
        xen.place_grant_frame(1, xen.ram().page(TABLE_PFN + 1).unwrap())
            .unwrap();
        assert_eq!(xen.grant_frames(), 2);
        assert_eq!(
            xen.grant_map(&[8], false).map(|_| ()),
            Err(GNTST_GENERAL_ERROR)
        );
        xen.place_grant_frame(0, xen.ram().page(TABLE_PFN).unwrap())
            .unwrap();
        let mut g = GrantTable::new(xen.ram().pages(TABLE_PFN, 2).unwrap()).unwrap();
        let mut r = g.grant_access(0, DATA_PFN, false).unwrap();
        while r < ENTRIES_PER_FRAME as u32 {
            r = g.grant_access(0, DATA_PFN, false).unwrap();
        }
        let map = xen.grant_map(&[r], true).unwrap();
        // The guest moves frame 1 elsewhere; its entries (and the pin) move along.
        let new_pfn = TABLE_PFN + 5;
        xen.place_grant_frame(1, xen.ram().page(new_pfn).unwrap())
            .unwrap();
        let moved = GrantTable::new(xen.ram().page(new_pfn).unwrap()).unwrap();
        let in_frame = r - ENTRIES_PER_FRAME as u32;
        assert_eq!(
            moved.entry(in_frame).unwrap().flags,
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        drop(map);
        assert_eq!(moved.entry(in_frame).unwrap().flags, GTF_PERMIT_ACCESS);
        assert_eq!(
            xen.place_grant_frame(u64::from(MAX_GRANT_FRAMES), xen.ram().page(1).unwrap()),
            Err(())
        );
        assert_eq!(xen.grant_frames(), 2);
    }

    #[test]
    fn backend_copies_go_through_the_same_pins() {
        let (xen, mut g) = setup();
        let r = g.grant_access(0, DATA_PFN, true).unwrap();
        xen.ram()
            .write_phys(DATA_PFN * PAGE_SIZE + 10, b"hi")
            .unwrap();
        let mut buf = [0u8; 2];
        xen.grant_read(r, 10, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        assert_eq!(xen.grant_write(r, 0, b"x"), Err(GNTST_GENERAL_ERROR));
        assert_eq!(xen.grant_read(r, 4095, &mut buf), Err(GNTST_BAD_COPY_ARG));
        // Held by a mapping, the grant still serves copies; read-only stays read-only.
        let map = xen.grant_map(&[r], false).unwrap();
        xen.grant_read(r, 10, &mut buf).unwrap();
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING);
        drop(map);
        assert_eq!(flags(&g, r), GTF_PERMIT_ACCESS | GTF_READONLY);
    }

    /// The grant enforcement probe (#16): a backend (domain 0) tries every access it
    /// must not make — to references never granted, outside the table, granted to
    /// another domain, granted read-only (for writing), revoked, of the transfer type,
    /// naming a frame that is not RAM, or beyond the page — by copy in both directions
    /// and by mapping (alone, and one bad reference among good ones). Every one is
    /// refused and counted in `grant_refusals`, no byte of the guest changes, and
    /// nothing stays pinned; the legitimate accesses beside them are served. Prints the
    /// figures (`cargo test -p host-shim --lib grant_enforcement -- --nocapture`).
    #[test]
    fn grant_enforcement_probe() {
        let (xen, mut g) = setup();
        let page = |i: u64| DATA_PFN + i;
        let ok = g.grant_access(0, page(0), false).unwrap();
        let readonly = g.grant_access(0, page(1), true).unwrap();
        let foreign = g.grant_access(3, page(2), false).unwrap();
        let not_ram = g.grant_access(0, 0xf_ffff, false).unwrap();
        let never = g.claim().unwrap();
        let revoked = g.grant_access(0, page(3), false).unwrap();
        // Revoking a grant a backend holds mapped fails, as on Xen; once unmapped it
        // succeeds and the reference is dead to the backend.
        let held = xen.grant_map(&[revoked], true).unwrap();
        assert_eq!(
            g.end_access(revoked),
            Err(pv_drivers::grant::GrantError::StillInUse(revoked))
        );
        drop(held);
        g.end_access(revoked).unwrap();
        // An entry of the transfer type (GTF_accept_transfer) permits no access.
        let transfer = g.claim().unwrap();
        let off = transfer as u64 * 8;
        let entry = TABLE_PFN * PAGE_SIZE + off;
        xen.ram()
            .write_phys(entry + 2, &0u16.to_le_bytes())
            .unwrap();
        xen.ram()
            .write_phys(entry + 4, &(page(4) as u32).to_le_bytes())
            .unwrap();
        xen.ram().write_phys(entry, &2u16.to_le_bytes()).unwrap();
        for i in 0..5 {
            xen.ram()
                .write_phys(page(i) * PAGE_SIZE, &[0xc5; 4096])
                .unwrap();
        }
        let before: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let mut b = vec![0u8; 4096];
                xen.ram().read_phys(page(i) * PAGE_SIZE, &mut b).unwrap();
                b
            })
            .collect();

        // (what, reference, readable, writable)
        let kinds: [(&str, GrantRef, bool, bool); 9] = [
            ("granted for writing", ok, true, true),
            ("granted read-only", readonly, true, false),
            ("granted to another domain", foreign, false, false),
            ("a frame that is not RAM", not_ram, false, false),
            ("never granted", never, false, false),
            ("revoked", revoked, false, false),
            ("transfer, not access", transfer, false, false),
            ("beyond the table", 512, false, false),
            ("the largest reference", u32::MAX, false, false),
        ];
        let (mut tried, mut refused, mut served) = (0u64, 0u64, 0u64);
        let refusals = || xen.stats().grant_refusals;
        let mut expect = |what: &str, allowed: bool, result: Result<(), i16>| {
            let before = refusals();
            if allowed {
                assert_eq!(result, Ok(()), "{what}");
                assert_eq!(refusals(), before, "{what}: counted as refused");
                served += 1;
            } else {
                tried += 1;
                assert!(result.is_err(), "{what}: allowed");
                refused += 1;
            }
        };
        for (what, gref, readable, writable) in kinds {
            let mut buf = [0u8; 16];
            let counted = refusals();
            expect(
                &format!("{what}: copy from"),
                readable,
                xen.grant_read(gref, 0, &mut buf),
            );
            expect(
                &format!("{what}: copy to"),
                writable,
                xen.grant_write(gref, 8, b"intruder"),
            );
            expect(
                &format!("{what}: map for reading"),
                readable,
                xen.grant_map(&[gref], false).map(drop),
            );
            expect(
                &format!("{what}: map for writing"),
                writable,
                xen.grant_map(&[gref], true).map(drop),
            );
            expect(
                &format!("{what}: map after a good reference"),
                readable,
                xen.grant_map(&[ok, gref], false).map(drop),
            );
            // Beyond the page, whatever the grant.
            expect(
                &format!("{what}: copy beyond the page"),
                false,
                xen.grant_read(gref, 4090, &mut buf),
            );
            expect(
                &format!("{what}: write beyond the page"),
                false,
                xen.grant_write(gref, 4095, b"xy"),
            );
            let bad = [!readable, !writable, !readable, !writable, !readable]
                .iter()
                .filter(|&&b| b)
                .count() as u64
                + 2;
            assert_eq!(refusals() - counted, bad, "{what}: refusals counted");
        }
        // The legitimate write landed where it was aimed, and nowhere else.
        let mut want = before.clone();
        want[0][8..16].copy_from_slice(b"intruder");
        for (i, w) in want.iter().enumerate() {
            let mut b = vec![0u8; 4096];
            xen.ram()
                .read_phys(page(i as u64) * PAGE_SIZE, &mut b)
                .unwrap();
            assert!(&b == w, "page {i} changed");
        }
        assert_eq!(xen.pinned_grants(), 0);
        assert_eq!(xen.stats().grant_maps, 0);
        assert_eq!(tried, refused);
        assert_eq!(refusals(), tried);
        println!(
            "grant probes: {tried} forbidden accesses tried, {refused} refused (100%), \
             {} counted in grant_refusals; {served} legitimate accesses served",
            refusals()
        );
    }
}
