//! The physical-frame allocator.
//!
//! Built from the sanitised memory map's RAM minus everything already in use (the
//! kernel image, the loader's boot structures, the low 1 MiB, the heap). Frames come
//! from those ranges in address order; freed frames go on an intrusive free list whose
//! links live in the freed frames themselves, so the allocator needs no memory of its
//! own and boot touches no more than a few words (no bitmap to zero: under kvm-pvm,
//! ring-0 code runs in KVM's instruction emulator at about 0.5 us per instruction).
//!
//! Freeing a frame the allocator never handed out (misaligned, or outside the memory
//! it manages) is refused. A double free of a valid frame is not detected: that would
//! need a per-frame bitmap.

use pvh_boot::memmap::{RangeSet, RangeSetFull};

/// Size of a frame.
pub const PAGE_SIZE: u64 = 4096;

/// Most disjoint free ranges tracked.
pub const MAX_RANGES: usize = 64;

/// Where the free-list links are stored: inside the free frames.
pub trait FrameMemory {
    /// Stores `next` in the first word of `frame`.
    ///
    /// # Safety
    /// `frame` is a free, page-aligned frame owned by the allocator calling this.
    unsafe fn write_link(&mut self, frame: u64, next: u64);
    /// Loads the word stored by [`FrameMemory::write_link`].
    ///
    /// # Safety
    /// As for `write_link`.
    unsafe fn read_link(&self, frame: u64) -> u64;
}

/// Errors of the frame allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is not page-aligned or not in managed memory.
    NotOwned(u64),
    /// Too many disjoint ranges to track.
    TooFragmented,
}

impl From<RangeSetFull> for FrameError {
    fn from(_: RangeSetFull) -> Self {
        Self::TooFragmented
    }
}

/// Hands out 4 KiB frames.
pub struct FrameAllocator<M: FrameMemory> {
    fresh: RangeSet<MAX_RANGES>,
    managed: RangeSet<MAX_RANGES>,
    free_list: u64,
    free_listed: u64,
    in_use: u64,
    mem: M,
}

/// Marks an empty free list (frame 0 is never managed: it is below 1 MiB).
const NIL: u64 = 0;

impl<M: FrameMemory> FrameAllocator<M> {
    /// Manages the page-aligned interior of `ranges`; frame 0 is never managed.
    pub fn new(ranges: &RangeSet<MAX_RANGES>, mem: M) -> Self {
        let mut fresh = RangeSet::default();
        for &(s, e) in ranges.ranges() {
            let s = s.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE);
            let e = e & !(PAGE_SIZE - 1);
            // Cannot overflow capacity: at most one output range per input range.
            let _ = fresh.insert(s, e);
        }
        Self {
            managed: fresh.clone(),
            fresh,
            free_list: NIL,
            free_listed: 0,
            in_use: 0,
            mem,
        }
    }

    /// Allocates one frame.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free_list != NIL {
            let frame = self.free_list;
            // SAFETY: `frame` is on the free list, so it is free and owned by us.
            self.free_list = unsafe { self.mem.read_link(frame) };
            self.free_listed -= 1;
            self.in_use += 1;
            return Some(frame);
        }
        self.alloc_contiguous(1, PAGE_SIZE)
    }

    /// Allocates `pages` physically contiguous frames aligned to `align` (a power of
    /// two, at least a page). Only never-used memory is searched.
    pub fn alloc_contiguous(&mut self, pages: u64, align: u64) -> Option<u64> {
        if pages == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return None;
        }
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        let start = self.fresh.ranges().iter().find_map(|&(s, e)| {
            let a = s.checked_next_multiple_of(align)?;
            (a.checked_add(bytes)? <= e).then_some(a)
        })?;
        self.fresh.remove(start, start + bytes).ok()?;
        self.in_use += pages;
        Some(start)
    }

    /// Returns a frame.
    pub fn free(&mut self, frame: u64) -> Result<(), FrameError> {
        let owned = frame.is_multiple_of(PAGE_SIZE)
            && frame != NIL
            && self
                .managed
                .ranges()
                .iter()
                .any(|&(s, e)| s <= frame && frame < e)
            && !self
                .fresh
                .ranges()
                .iter()
                .any(|&(s, e)| s <= frame && frame < e);
        if !owned {
            return Err(FrameError::NotOwned(frame));
        }
        // SAFETY: `frame` is managed, aligned, and not in the never-used ranges, so it
        // was handed out by us and is now being returned.
        unsafe { self.mem.write_link(frame, self.free_list) };
        self.free_list = frame;
        self.free_listed += 1;
        self.in_use -= 1;
        Ok(())
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.fresh.total() / PAGE_SIZE + self.free_listed
    }

    /// Frames currently allocated.
    pub fn used_frames(&self) -> u64 {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Links(HashMap<u64, u64>);

    impl FrameMemory for Links {
        unsafe fn write_link(&mut self, frame: u64, next: u64) {
            self.0.insert(frame, next);
        }
        unsafe fn read_link(&self, frame: u64) -> u64 {
            self.0[&frame]
        }
    }

    fn alloc_over(ranges: &[(u64, u64)]) -> FrameAllocator<Links> {
        let mut set = RangeSet::default();
        for &(s, e) in ranges {
            set.insert(s, e).unwrap();
        }
        FrameAllocator::new(&set, Links::default())
    }

    #[test]
    fn allocates_in_order_and_exhausts() {
        let mut a = alloc_over(&[(0x10_0000, 0x10_3000)]);
        assert_eq!(a.free_frames(), 3);
        assert_eq!(a.alloc(), Some(0x10_0000));
        assert_eq!(a.alloc(), Some(0x10_1000));
        assert_eq!(a.alloc(), Some(0x10_2000));
        assert_eq!(a.alloc(), None);
        assert_eq!(a.used_frames(), 3);
    }

    #[test]
    fn unaligned_ranges_are_trimmed_and_frame_0_never_managed() {
        let mut a = alloc_over(&[(0, 0x2000), (0x10_0800, 0x10_2800)]);
        // [0x1000, 0x2000) and [0x10_1000, 0x10_2000).
        assert_eq!(a.free_frames(), 2);
        assert_eq!(a.alloc(), Some(0x1000));
        assert_eq!(a.alloc(), Some(0x10_1000));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn freed_frames_are_reused_lifo() {
        let mut a = alloc_over(&[(0x10_0000, 0x10_4000)]);
        let f: Vec<_> = (0..3).map(|_| a.alloc().unwrap()).collect();
        a.free(f[0]).unwrap();
        a.free(f[2]).unwrap();
        assert_eq!(a.free_frames(), 3);
        assert_eq!(a.alloc(), Some(f[2]));
        assert_eq!(a.alloc(), Some(f[0]));
        assert_eq!(a.alloc(), Some(0x10_3000));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn foreign_frames_are_refused() {
        let mut a = alloc_over(&[(0x10_0000, 0x10_4000)]);
        let f = a.alloc().unwrap();
        assert_eq!(a.free(f + 8), Err(FrameError::NotOwned(f + 8)));
        assert_eq!(a.free(0x20_0000), Err(FrameError::NotOwned(0x20_0000)));
        // Managed but never handed out.
        assert_eq!(a.free(0x10_3000), Err(FrameError::NotOwned(0x10_3000)));
        assert_eq!(a.free(0), Err(FrameError::NotOwned(0)));
        assert_eq!(a.used_frames(), 1);
    }

    #[test]
    fn contiguous_aligned_allocation() {
        let mut a = alloc_over(&[(0x10_1000, 0x10_3000), (0x20_0000, 0x80_0000)]);
        // 2 MiB aligned, 512 pages: only the second range can hold it.
        assert_eq!(a.alloc_contiguous(512, 2 << 20), Some(0x20_0000));
        assert_eq!(a.alloc_contiguous(512 * 3, PAGE_SIZE), None);
        assert_eq!(a.alloc_contiguous(2, PAGE_SIZE), Some(0x10_1000));
        assert_eq!(a.alloc_contiguous(0, PAGE_SIZE), None);
        assert_eq!(a.alloc_contiguous(1, 3), None);
        assert_eq!(a.alloc_contiguous(u64::MAX, PAGE_SIZE), None);
    }
}
