//! Guest memory as the Xen side sees it: guest-physical pages (checked against RAM),
//! and guest-virtual buffers named by hypercall arguments, translated through the
//! guest's own page tables as Xen's `copy_from_guest` does.
//!
//! Every address here comes from the guest and is checked: a range that is not RAM,
//! not mapped, or (for writes) not writable gives [`Fault`], which hypercalls report as
//! `-EFAULT`. Nothing is trusted between two reads either: the guest can change its
//! page tables at any time, so each access walks them afresh.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use std::sync::atomic::Ordering;

use pv_drivers::shmem::RawSharedMemory;

use crate::kvm::PagingState;

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// A guest address that cannot be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest address {addr:#x} is not accessible ({why})")]
pub struct Fault {
    /// The address at fault (virtual or physical, as given).
    pub addr: u64,
    /// Why.
    pub why: &'static str,
}

/// The guest's RAM. Cheap to clone (the mapping is reference-counted), and keeps the
/// mapping alive for as long as any clone, or any page handed out, lives.
#[derive(Clone, Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Wraps the VM's memory.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Self { mem }
    }

    /// Whether `[gpa, gpa + len)` is guest RAM (one region).
    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        len == 0
            || (gpa.checked_add(len as u64).is_some()
                && self.mem.find_region(GuestAddress(gpa)).is_some_and(|r| {
                    // One region: `[gpa, gpa + len)` within `[start, start + len)`.
                    let start = r.start_addr().0;
                    gpa + len as u64 <= start + r.len()
                }))
    }

    /// Reads guest-physical memory.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| Fault {
                addr: gpa,
                why: "not guest RAM",
            })
    }

    /// Writes guest-physical memory.
    pub fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| Fault {
                addr: gpa,
                why: "not guest RAM",
            })
    }

    /// Reads a little-endian `u64` of guest-physical memory.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, Fault> {
        let mut b = [0; 8];
        self.read_phys(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The guest-physical page `pfn` as shared memory (for structures the guest and the
    /// shim both use: shared_info, grant frames, rings).
    pub fn page(&self, pfn: u64) -> Result<SharedPage, Fault> {
        self.pages(pfn, 1)
    }

    /// `count` consecutive guest-physical pages from `pfn` (one RAM region).
    pub fn pages(&self, pfn: u64, count: u64) -> Result<SharedPage, Fault> {
        let fault = Fault {
            addr: pfn.wrapping_mul(PAGE_SIZE),
            why: "not a guest RAM page",
        };
        let gpa = pfn.checked_mul(PAGE_SIZE).ok_or(fault)?;
        let len = count.checked_mul(PAGE_SIZE).ok_or(fault)?;
        if count == 0 || !self.is_ram(gpa, len) {
            return Err(fault);
        }
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa), len as usize)
            .map_err(|_| fault)?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr` is the host mapping of `len` bytes of guest RAM (one region,
        // checked above), page-aligned because regions are. The mapping lives as long
        // as `self.mem`, a clone of which the returned value keeps. Guest RAM is never
        // referenced as Rust data elsewhere in the shim: all other access is through
        // vm-memory's volatile copies.
        let mem = unsafe { RawSharedMemory::new(ptr, len as usize) };
        Ok(SharedPage {
            mem,
            gpa,
            _keep: self.mem.clone(),
        })
    }

    /// Translates `gva` for an access of the given kind, walking the guest's page tables:
    /// 4-level long-mode paging, or, for a 32-bit guest, PAE or 2-level 32-bit paging
    /// (with 4 MiB pages under `CR4.PSE`). Returns the guest-physical address and how
    /// many bytes from there stay in the same page.
    pub fn translate(
        &self,
        paging: &PagingState,
        gva: u64,
        write: bool,
    ) -> Result<(u64, u64), Fault> {
        const CR0_PG: u64 = 1 << 31;
        const CR0_WP: u64 = 1 << 16;
        const CR4_PSE: u64 = 1 << 4;
        const CR4_PAE: u64 = 1 << 5;
        const CR4_LA57: u64 = 1 << 12;
        const EFER_LMA: u64 = 1 << 10;
        const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

        let fault = |why| Fault { addr: gva, why };
        if paging.cr0 & CR0_PG == 0 {
            return Ok((gva, PAGE_SIZE - gva % PAGE_SIZE));
        }
        let walk = Walk {
            gva,
            check_write: write && paging.cr0 & CR0_WP != 0,
        };
        if paging.efer & EFER_LMA != 0 {
            if paging.cr4 & CR4_LA57 != 0 {
                return Err(fault("5-level paging is not supported"));
            }
            // Canonical: bits 63..47 all equal.
            let top = gva >> 47;
            if top != 0 && top != 0x1_ffff {
                return Err(fault("non-canonical address"));
            }
            // PML4 (bits 47..39), PDPT (38..30, 1 GiB pages), PD (29..21, 2 MiB), PT.
            let levels = [(39, 9, false), (30, 9, true), (21, 9, true), (12, 9, false)];
            return walk.run(self, paging.cr3 & ADDR_MASK, 8, &levels);
        }
        // A 32-bit guest: its addresses are 32 bits wide.
        let walk = Walk {
            gva: gva & 0xffff_ffff,
            ..walk
        };
        if paging.cr4 & CR4_PAE != 0 {
            // Four PDPTEs at CR3 (32-byte aligned), which have no R/W bit; then PD, PT.
            let pdpte_at = (paging.cr3 & 0xffff_ffe0) + ((walk.gva >> 30) & 3) * 8;
            let pdpte = self
                .read_u64(pdpte_at)
                .map_err(|_| fault("page table outside guest RAM"))?;
            if pdpte & 1 == 0 {
                return Err(fault("not mapped"));
            }
            let levels = [(21, 9, true), (12, 9, false)];
            return walk.run(self, pdpte & ADDR_MASK, 8, &levels);
        }
        // 2-level 32-bit paging: PD (bits 31..22, 4 MiB pages with PSE), PT (21..12).
        let pse = paging.cr4 & CR4_PSE != 0;
        walk.run(
            self,
            paging.cr3 & 0xffff_f000,
            4,
            &[(22, 10, pse), (12, 10, false)],
        )
    }

    /// Gives the host memory of the RAM page at `gpa` back (the guest released it): it
    /// reads as zero from now on. Guest RAM is a private anonymous mapping, so
    /// `MADV_DONTNEED` frees it; should that fail, the page is zeroed instead.
    pub fn discard(&self, gpa: u64) {
        let Ok(slice) = self.mem.get_slice(GuestAddress(gpa), PAGE_SIZE as usize) else {
            return;
        };
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr` is the page-aligned host mapping of one page of guest RAM
        // (checked by `get_slice`); the shim never holds Rust references into guest
        // RAM, and KVM's MMU notifier drops the guest's mapping of it, so discarding the
        // contents affects only the values later reads see (zeros).
        let rc = unsafe { libc::madvise(ptr.cast(), PAGE_SIZE as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            let _ = self.write_phys(gpa, &[0u8; PAGE_SIZE as usize]);
        }
    }

    fn read_u32(&self, gpa: u64) -> Result<u32, Fault> {
        let mut b = [0u8; 4];
        self.read_phys(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Copies `buf.len()` bytes from guest-virtual `gva` (Xen's `copy_from_guest`).
    pub fn read_virt(&self, paging: &PagingState, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < buf.len() {
            let addr = gva.wrapping_add(done as u64);
            let (gpa, room) = self.translate(paging, addr, false)?;
            let n = (buf.len() - done).min(room as usize);
            self.read_phys(gpa, &mut buf[done..done + n])
                .map_err(|f| Fault { addr, why: f.why })?;
            done += n;
        }
        Ok(())
    }

    /// Copies `data` to guest-virtual `gva` (Xen's `copy_to_guest`). All pages are
    /// translated before anything is written, so a fault writes nothing.
    pub fn write_virt(&self, paging: &PagingState, gva: u64, data: &[u8]) -> Result<(), Fault> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let addr = gva.wrapping_add(done as u64);
            let (gpa, room) = self.translate(paging, addr, true)?;
            let n = (data.len() - done).min(room as usize);
            if !self.is_ram(gpa, n as u64) {
                return Err(Fault {
                    addr,
                    why: "not guest RAM",
                });
            }
            pieces.push((gpa, done, n));
            done += n;
        }
        for (gpa, at, n) in pieces {
            self.write_phys(gpa, &data[at..at + n])?;
        }
        Ok(())
    }
}

/// One page walk of [`GuestRam::translate`].
#[derive(Clone, Copy)]
struct Walk {
    gva: u64,
    check_write: bool,
}

impl Walk {
    /// Walks from the table at `table` through `levels` of `(index shift, index bits,
    /// may map a large page)`, with `entry_size`-byte entries (8, or 4 in 2-level
    /// 32-bit paging, whose large pages carry address bits 39..32 in bits 20..13).
    fn run(
        self,
        ram: &GuestRam,
        mut table: u64,
        entry_size: u64,
        levels: &[(u32, u32, bool)],
    ) -> Result<(u64, u64), Fault> {
        const PRESENT: u64 = 1 << 0;
        const WRITABLE: u64 = 1 << 1;
        const LARGE: u64 = 1 << 7;
        const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
        let fault = |why| Fault {
            addr: self.gva,
            why,
        };
        for (i, &(shift, bits, large_ok)) in levels.iter().enumerate() {
            let index = (self.gva >> shift) & ((1 << bits) - 1);
            let at = table + index * entry_size;
            let entry = if entry_size == 4 {
                ram.read_u32(at).map(u64::from)
            } else {
                ram.read_u64(at)
            }
            .map_err(|_| fault("page table outside guest RAM"))?;
            if entry & PRESENT == 0 {
                return Err(fault("not mapped"));
            }
            if self.check_write && entry & WRITABLE == 0 {
                return Err(fault("mapped read-only"));
            }
            let last = i + 1 == levels.len();
            let large = large_ok && entry & LARGE != 0;
            if last || large {
                let page_size = 1u64 << shift;
                let mut base = entry & ADDR_MASK & !(page_size - 1);
                if entry_size == 4 && large {
                    // PSE-36: bits 20..13 of a 4 MiB PDE are address bits 39..32.
                    base = (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32;
                } else if entry_size == 4 {
                    base = entry & 0xffff_f000;
                }
                let gpa = base | (self.gva & (page_size - 1));
                // Report at most up to the end of the 4 KiB page: callers check RAM
                // per page anyway.
                return Ok((gpa, PAGE_SIZE - gpa % PAGE_SIZE));
            }
            table = entry & ADDR_MASK;
        }
        Err(fault("page walk did not end"))
    }
}

/// Guest pages the shim shares with the guest, as [`pv_drivers::shmem::SharedMemory`].
#[derive(Debug)]
pub struct SharedPage {
    mem: RawSharedMemory,
    gpa: u64,
    _keep: GuestMemoryMmap,
}

impl pv_drivers::shmem::SharedMemory for SharedPage {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.mem.load_u8(offset, order)
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.mem.store_u8(offset, value, order)
    }
    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        self.mem.load_u16(offset, order)
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        self.mem.store_u16(offset, value, order)
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        self.mem.compare_exchange_u16(offset, current, new)
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.mem.load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.mem.store_u32(offset, value, order)
    }
    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        self.mem.compare_exchange_u32(offset, current, new)
    }
    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.mem.load_u64(offset, order)
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        self.mem.store_u64(offset, value, order)
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        self.mem.swap_u64(offset, value, order)
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.mem.fetch_or_u64(offset, bits, order)
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.mem.fetch_and_u64(offset, bits, order)
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        self.mem.read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        self.mem.write_bytes(offset, data)
    }
}

impl SharedPage {
    /// The guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The memory.
    pub fn mem(&self) -> &RawSharedMemory {
        &self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(mib: usize) -> GuestRam {
        GuestRam::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).expect("memory"),
        )
    }

    const P: u64 = 1;
    const W: u64 = 2;
    const LARGE: u64 = 0x80;

    /// Identity-maps the first 2 MiB with one large page, and maps virtual
    /// 0x4000_0000 to physical 0x30_0000 with a read-only 4 KiB page.
    fn tables(r: &GuestRam) -> PagingState {
        let (pml4, pdpt, pd, pt, pdpt_hi, pd_hi) = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000);
        r.write_phys(pml4, &(pdpt | P | W).to_le_bytes()).unwrap();
        r.write_phys(pdpt, &(pd | P | W).to_le_bytes()).unwrap();
        r.write_phys(pd, &(P | W | LARGE).to_le_bytes()).unwrap();
        // 0x4000_0000: PML4 0, PDPT 1, PD 0, PT 0.
        r.write_phys(pdpt + 8, &(pdpt_hi | P | W).to_le_bytes())
            .unwrap();
        let _ = pd_hi;
        r.write_phys(pdpt_hi, &(pt | P | W).to_le_bytes()).unwrap();
        r.write_phys(pt, &(0x30_0000 | P).to_le_bytes()).unwrap();
        PagingState {
            cr0: (1 << 31) | (1 << 16) | 1,
            cr3: pml4,
            cr4: 1 << 5,
            efer: (1 << 10) | (1 << 8),
            long_mode_code: true,
        }
    }

    #[test]
    fn walks_large_and_small_pages() {
        let r = ram(4);
        let p = tables(&r);
        assert_eq!(r.translate(&p, 0x1234, false), Ok((0x1234, 0x1000 - 0x234)));
        assert_eq!(r.translate(&p, 0x4000_0010, false), Ok((0x30_0010, 0xff0)));
        assert_eq!(
            r.translate(&p, 0x4000_0010, true).unwrap_err().why,
            "mapped read-only"
        );
        assert_eq!(
            r.translate(&p, 0x4000_1000, false).unwrap_err().why,
            "not mapped"
        );
        assert_eq!(
            r.translate(&p, 0x8000_0000_0000, false).unwrap_err().why,
            "non-canonical address"
        );
    }

    #[test]
    fn virtual_copies_cross_pages_and_fault_cleanly() {
        let r = ram(4);
        let p = tables(&r);
        r.write_virt(&p, 0xff8, &[7; 16]).unwrap();
        let mut b = [0; 16];
        r.read_phys(0xff8, &mut b).unwrap();
        assert_eq!(b, [7; 16]);
        let mut b = [0; 4];
        r.read_virt(&p, 0x4000_0ffe, &mut b).unwrap_err();
        // Read-only target: nothing written.
        assert!(r.write_virt(&p, 0x4000_0000, &[1, 2]).is_err());
        let mut b = [9; 2];
        r.read_phys(0x30_0000, &mut b).unwrap();
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn walks_32_bit_paging_with_and_without_pae() {
        let r = ram(8);
        let protected = |cr3, cr4| PagingState {
            cr0: (1 << 31) | (1 << 16) | 1,
            cr3,
            cr4,
            efer: 0,
            long_mode_code: false,
        };
        // 2-level: PD at 0x1000; 0xc000_0000 -> 4 MiB page at 0x40_0000 (PSE);
        // 0x0050_2000 -> PT at 0x2000 -> 0x50_3000 read-only.
        let (pd, pt) = (0x1000u64, 0x2000u64);
        let w32 = |at: u64, v: u64| r.write_phys(at, &(v as u32).to_le_bytes()).unwrap();
        w32(pd + (0xc000_0000u64 >> 22) * 4, 0x40_0000 | P | W | LARGE);
        w32(pd + 4, pt | P | W); // PD index 1 (0x0050_2000 >> 22)
        w32(pt + ((0x0050_2000u64 >> 12) & 0x3ff) * 4, 0x50_3000 | P);
        let p = protected(pd, 1 << 4);
        assert_eq!(r.translate(&p, 0xc012_3456, false), Ok((0x52_3456, 0xbaa)));
        assert_eq!(r.translate(&p, 0x0050_2008, false), Ok((0x50_3008, 0xff8)));
        assert_eq!(
            r.translate(&p, 0x0050_2008, true).unwrap_err().why,
            "mapped read-only"
        );
        // Without CR4.PSE the large bit is ignored: the PDE names a page table.
        let no_pse = protected(pd, 0);
        assert_eq!(
            r.translate(&no_pse, 0xc000_0000, false).unwrap_err().why,
            "not mapped"
        );
        // A 32-bit caller's pointer is 32 bits: upper bits of the register are ignored.
        assert_eq!(
            r.translate(&p, 0xdead_0000_c012_3456, false),
            Ok((0x52_3456, 0xbaa))
        );

        // PAE: PDPT at 0x3020 (32-byte aligned), entry 3 -> PD 0x4000; 0xc000_0000 -> a
        // 2 MiB page at 0x60_0000; 0xc020_1000 -> PT 0x5000 -> 0x70_1000.
        let (pdpt, pd, pt) = (0x3020u64, 0x4000u64, 0x5000u64);
        r.write_phys(pdpt + 3 * 8, &(pd | P).to_le_bytes()).unwrap();
        r.write_phys(pd, &(0x60_0000 | P | W | LARGE).to_le_bytes())
            .unwrap();
        r.write_phys(pd + 8, &(pt | P | W).to_le_bytes()).unwrap();
        r.write_phys(pt + 8, &(0x70_1000 | P | W).to_le_bytes())
            .unwrap();
        let p = protected(pdpt, 1 << 5);
        assert_eq!(r.translate(&p, 0xc001_0004, true), Ok((0x61_0004, 0xffc)));
        assert_eq!(r.translate(&p, 0xc020_1010, true), Ok((0x70_1010, 0xff0)));
        assert_eq!(
            r.translate(&p, 0x4000_0000, false).unwrap_err().why,
            "not mapped"
        );
    }

    #[test]
    fn paging_off_is_physical_and_pages_are_checked() {
        let r = ram(2);
        let p = PagingState::default();
        assert_eq!(r.translate(&p, 0x5000, true), Ok((0x5000, 0x1000)));
        assert!(r.read_virt(&p, (2 << 20) - 2, &mut [0; 4]).is_err());
        assert!(r.page(0x1ff).is_ok());
        assert!(r.page(0x200).is_err());
        assert!(r.page(u64::MAX).is_err());
        assert!(r.pages(0x1fe, 3).is_err());
        assert!(r.is_ram(0, 2 << 20));
        assert!(!r.is_ram(1, 2 << 20));
    }
}
