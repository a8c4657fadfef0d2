//! Physical memory at boot: reserve what is in use, build the frame allocator, carve
//! the heap.
//!
//! Usable memory is the memory map's RAM inside the identity map, above 1 MiB (legacy
//! BIOS areas and the PVH loader's low structures), minus the kernel image and the
//! loader's boot structures and modules.
//!
//! Also here: zeroed page allocation for device memory ([`alloc_zeroed`]) and the
//! mapping of device register windows ([`map_mmio`]).

use guest_kernel::frames::{FrameAllocator, FrameMemory, MAX_RANGES, PAGE_SIZE};
use linked_list_allocator::LockedHeap;
use pv_drivers::shmem::{RawSharedMemory, SharedMemory as _};
use pvh_boot::entry::{IDENTITY_MAP_END, UNCACHED_START};
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

/// Frames free in the frame allocator (0 before [`init`]).
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}

/// What the kernel has left to give devices, as `free_grants=G free_frames=F
/// heap_free=H` (`free_grants=none` without Xen): printed by the block workload around
/// its phases and added to the control port's `stats` answer, where `host-shim soak`
/// compares them at the start and the end of a long run. Taken when nothing is in
/// flight, two lines of the same phase must agree: a difference is a leak.
pub fn resources() -> alloc::string::String {
    let grants = super::xen::get().map(|x| x.grants.lock().free_count());
    let (_, heap_free) = heap_usage();
    match grants {
        Some(g) => alloc::format!(
            "free_grants={g} free_frames={} heap_free={heap_free}",
            free_frames()
        ),
        None => alloc::format!(
            "free_grants=none free_frames={} heap_free={heap_free}",
            free_frames()
        ),
    }
}

/// Allocates `count` physically contiguous pages from the frame allocator and zeroes
/// them; returns their physical address (also their address: identity map) and a view
/// of them. `None` when `count` is 0 or memory is short.
///
/// The one allocator of device memory: PV rings and buffers (`pv::GuestEnv`) and
/// emulated devices' DMA memory (`platform::GuestDma`) both come from here.
pub fn alloc_zeroed(count: usize) -> Option<(u64, RawSharedMemory)> {
    if count == 0 {
        return None;
    }
    let len = count.checked_mul(PAGE_SIZE as usize)?;
    let base = {
        let mut frames = FRAMES.lock();
        let f = frames.as_mut()?;
        if count == 1 {
            f.alloc()
        } else {
            f.alloc_contiguous(count as u64, PAGE_SIZE)
        }
    }?;
    // Zero with 64-bit stores (not a byte loop: ring-0 code may be emulated one
    // instruction at a time).
    let words = base as *mut u64;
    for i in 0..len / 8 {
        // SAFETY: [base, base + len) was just taken from the frame allocator: RAM
        // mapped at its physical address that nothing else uses; `i * 8 < len`.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: the frames are ours until `free_zeroed`, identity-mapped, and from now on
    // are only reached through this view (and by the device or backend).
    let view = unsafe { RawSharedMemory::new(base as *mut u8, len) };
    Some((base, view))
}

/// Returns pages from [`alloc_zeroed`] (its `paddr`, and the view, consumed here so
/// that nothing reaches the frames through it any more).
pub fn free_zeroed(paddr: u64, pages: RawSharedMemory) {
    let count = pages.len() as u64 / PAGE_SIZE;
    let mut frames = FRAMES.lock();
    let Some(f) = frames.as_mut() else { return };
    for i in 0..count {
        let frame = paddr + i * PAGE_SIZE;
        if let Err(e) = f.free(frame) {
            log::warn!("memory: freeing frame {frame:#x}: {e:?}");
        }
    }
}

/// Why a device's register window cannot be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Empty, or its end overflows.
    BadRange,
    /// Not inside the uncached MMIO window the boot page tables map (a BAR the VMM or
    /// firmware placed above 4 GiB, or over what the tables map cacheable as RAM).
    OutsideMmioWindow,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadRange => write!(f, "empty or wrapping range"),
            Self::OutsideMmioWindow => write!(
                f,
                "outside the uncached MMIO window [{UNCACHED_START:#x}, {IDENTITY_MAP_END:#x})"
            ),
        }
    }
}

/// The address at which the device registers at physical `[paddr, paddr + len)` are
/// reached, uncached.
///
/// The boot page tables already map the whole MMIO hole 3..4 GiB uncached at its
/// physical address (where PC firmware and host-shim place 32-bit BARs, the IOAPIC and
/// the LAPIC), so a range there needs no new mapping; anything else is refused rather
/// than reached through a cacheable mapping.
pub fn map_mmio(paddr: u64, len: u64) -> Result<u64, MapError> {
    let end = paddr
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or(MapError::BadRange)?;
    if paddr < UNCACHED_START || end > IDENTITY_MAP_END {
        return Err(MapError::OutsideMmioWindow);
    }
    Ok(paddr)
}
