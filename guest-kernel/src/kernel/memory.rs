//! Physical memory at boot: reserve what is in use, build the frame allocator, carve
//! the heap.
//!
//! Usable memory is the memory map's RAM inside the identity map, above 1 MiB (legacy
//! BIOS areas and the PVH loader's low structures), minus the kernel image and the
//! loader's boot structures and modules.

use guest_kernel::frames::{FrameAllocator, FrameMemory, MAX_RANGES, PAGE_SIZE};
use linked_list_allocator::LockedHeap;
use pvh_boot::entry::IDENTITY_MAP_END;
use pvh_boot::memmap::{RangeSet, RangeSetFull};
use pvh_boot::start_info::BootInfo;
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The frame allocator, once [`init`] ran.
pub static FRAMES: Mutex<Option<FrameAllocator<IdentityMapped>>> = Mutex::new(None);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Free-list links stored through the identity map.
pub struct IdentityMapped;

impl FrameMemory for IdentityMapped {
    unsafe fn write_link(&mut self, frame: u64, next: u64) {
        // SAFETY: the caller passes a free frame it owns; frames are RAM below
        // IDENTITY_MAP_END, mapped at their physical address.
        unsafe { core::ptr::write_volatile(frame as *mut u64, next) }
    }
    unsafe fn read_link(&self, frame: u64) -> u64 {
        // SAFETY: as for `write_link`.
        unsafe { core::ptr::read_volatile(frame as *const u64) }
    }
}

/// The kernel image's physical range.
pub fn kernel_image() -> (u64, u64) {
    (
        (&raw const __kernel_start) as u64,
        (&raw const __kernel_end) as u64,
    )
}

/// Results of [`init`].
pub struct MemoryInfo {
    pub usable_bytes: u64,
    pub heap_start: u64,
    pub heap_bytes: u64,
    pub free_frames: u64,
}

/// Why memory set-up failed.
#[derive(Debug)]
pub enum MemoryError {
    TooFragmented,
    NoRoomForHeap(u64),
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooFragmented => write!(f, "memory map too fragmented to track"),
            Self::NoRoomForHeap(b) => write!(f, "no contiguous free range for a {b}-byte heap"),
        }
    }
}

impl From<RangeSetFull> for MemoryError {
    fn from(_: RangeSetFull) -> Self {
        Self::TooFragmented
    }
}

/// Builds the frame allocator and the heap.
pub fn init(boot: &BootInfo, heap_bytes: u64) -> Result<MemoryInfo, MemoryError> {
    let mut usable = RangeSet::<MAX_RANGES>::default();
    for r in boot.memmap.ram() {
        usable.insert(r.start.max(1 << 20), r.end.min(IDENTITY_MAP_END))?;
    }
    let (ks, ke) = kernel_image();
    usable.remove(ks, ke)?;
    for (s, e) in boot.occupied() {
        // Clamp before rounding up: a range ending in the last page below 2^64 would
        // otherwise wrap to 0 and reserve nothing.
        let e = e.min(IDENTITY_MAP_END).next_multiple_of(PAGE_SIZE);
        usable.remove(s & !(PAGE_SIZE - 1), e)?;
    }
    let usable_bytes = usable.total();

    let mut frames = FrameAllocator::new(&usable, IdentityMapped);
    let pages = heap_bytes.div_ceil(PAGE_SIZE);
    let heap_start = frames
        .alloc_contiguous(pages, 2 << 20)
        .or_else(|| frames.alloc_contiguous(pages, PAGE_SIZE))
        .ok_or(MemoryError::NoRoomForHeap(heap_bytes))?;
    // SAFETY: the range was just taken from the frame allocator, so it is RAM that
    // nothing else uses, identity-mapped, and handed to the heap exactly once.
    unsafe {
        HEAP.lock()
            .init(heap_start as *mut u8, (pages * PAGE_SIZE) as usize)
    };
    let free_frames = frames.free_frames();
    *FRAMES.lock() = Some(frames);
    Ok(MemoryInfo {
        usable_bytes,
        heap_start,
        heap_bytes: pages * PAGE_SIZE,
        free_frames,
    })
}

/// Heap bytes in use and free.
pub fn heap_usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
