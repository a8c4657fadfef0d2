//! Access to memory shared with the other side of a Xen interface: ring pages, the
//! console and xenstore pages, shared_info's event bitmaps, grant-table entries.
//!
//! Every protocol that lives in shared memory (`io/ring.h` rings, the xenstore and
//! console byte rings, 2-level event channels, grant entries) is written once, generic
//! over [`SharedMemory`]. The guest implements it over a page it owns or granted
//! ([`RawSharedMemory`]), the shim over guest RAM (also [`RawSharedMemory`], on the host
//! mapping of a checked guest range), and tests over [`HeapSharedMemory`], so front and
//! back halves exchange real messages in a plain `cargo test`. [`PagedMemory`] joins
//! separate pages into one region: the hypervisor's view of a guest's grant-table
//! frames, or of a multi-page ring granted page by page, which lie at unrelated
//! addresses.
//!
//! The other side may write anything at any time. Nothing read through this trait is
//! trusted: callers copy values out once and check them before use.
//!
//! Offsets are computed by this crate's protocol code, never taken from the peer; an
//! access outside `0..len()` or a misaligned atomic access is a bug in that code.
//! Implementations do not panic on it: loads yield zero, stores are dropped, a
//! compare-exchange fails (and `debug_assert!` flags it in tests). Multi-byte values are
//! little-endian, as on x86.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// A region of memory shared with another domain.
pub trait SharedMemory {
    /// Size of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Atomically loads the byte at `offset`.
    fn load_u8(&self, offset: usize, order: Ordering) -> u8;
    /// Atomically stores the byte at `offset`.
    fn store_u8(&self, offset: usize, value: u8, order: Ordering);

    /// Atomically loads the `u16` at `offset` (2-aligned).
    fn load_u16(&self, offset: usize, order: Ordering) -> u16;
    /// Atomically stores the `u16` at `offset` (2-aligned).
    fn store_u16(&self, offset: usize, value: u16, order: Ordering);
    /// Atomic compare-exchange of the `u16` at `offset` (2-aligned), with the semantics
    /// of [`AtomicU16::compare_exchange`] (`AcqRel`/`Acquire`).
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16>;

    /// Atomically loads the `u32` at `offset` (4-aligned).
    fn load_u32(&self, offset: usize, order: Ordering) -> u32;
    /// Atomically stores the `u32` at `offset` (4-aligned).
    fn store_u32(&self, offset: usize, value: u32, order: Ordering);
    /// Atomic compare-exchange of the `u32` at `offset` (4-aligned), with the semantics
    /// of [`AtomicU32::compare_exchange`] (`AcqRel`/`Acquire`). Xen updates a grant
    /// entry's flags and domid together this way.
    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32>;

    /// Atomically loads the `u64` at `offset` (8-aligned).
    fn load_u64(&self, offset: usize, order: Ordering) -> u64;
    /// Atomically stores the `u64` at `offset` (8-aligned).
    fn store_u64(&self, offset: usize, value: u64, order: Ordering);
    /// Atomically replaces the `u64` at `offset` (8-aligned), returning the old value.
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64;
    /// Atomic OR into the `u64` at `offset` (8-aligned), returning the old value.
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64;
    /// Atomic AND into the `u64` at `offset` (8-aligned), returning the old value.
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64;

    /// Copies bytes from `offset` into `buf` (no atomicity across bytes).
    fn read_bytes(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` to `offset` (no atomicity across bytes).
    fn write_bytes(&self, offset: usize, data: &[u8]);
}

/// A reference to shared memory is shared memory (so protocol types can borrow a page
/// they do not own).
impl<T: SharedMemory + ?Sized> SharedMemory for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        (**self).load_u8(offset, order)
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        (**self).store_u8(offset, value, order)
    }
    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        (**self).load_u16(offset, order)
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        (**self).store_u16(offset, value, order)
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        (**self).compare_exchange_u16(offset, current, new)
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        (**self).load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        (**self).store_u32(offset, value, order)
    }
    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        (**self).compare_exchange_u32(offset, current, new)
    }
    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        (**self).load_u64(offset, order)
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        (**self).store_u64(offset, value, order)
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        (**self).swap_u64(offset, value, order)
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        (**self).fetch_or_u64(offset, bits, order)
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        (**self).fetch_and_u64(offset, bits, order)
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        (**self).read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        (**self).write_bytes(offset, data)
    }
}

/// Whether an access of `len` bytes at `offset`, aligned to `align`, fits `size` bytes.
fn check(offset: usize, len: usize, align: usize, size: usize) -> bool {
    let ok = offset.is_multiple_of(align) && offset.checked_add(len).is_some_and(|end| end <= size);
    debug_assert!(
        ok,
        "shared memory access {offset}+{len} outside 0..{size} or misaligned"
    );
    ok
}

/// Shared memory reached through a raw pointer: a page in the guest's own address
/// space, or the shim's host mapping of guest RAM.
#[derive(Debug)]
pub struct RawSharedMemory {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is shared memory by definition: every access goes through atomics
// or volatile copies, so using it from several threads is as sound as from one.
unsafe impl Send for RawSharedMemory {}
// SAFETY: as above; `&self` methods never create Rust references to plain bytes.
unsafe impl Sync for RawSharedMemory {}

impl RawSharedMemory {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be 8-aligned and valid for reads and writes of `len` bytes for as
    /// long as the value (or anything derived from it) is used, and no Rust reference
    /// to those bytes may exist in that time (the other side writes them concurrently).
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base.align_offset(8) == 0, "shared memory must be 8-aligned");
        Self { base, len }
    }

    /// A pointer to `len` bytes at `offset`, aligned to `len`, if they are in range.
    fn at(&self, offset: usize, len: usize) -> Option<*mut u8> {
        // SAFETY: `offset + len <= self.len` is checked first, so the pointer stays
        // inside the region that `new`'s contract makes valid.
        check(offset, len, len, self.len).then(|| unsafe { self.base.add(offset) })
    }
}

/// Implements the atomic methods of [`SharedMemory`] for [`RawSharedMemory`].
macro_rules! raw_atomic {
    ($ptr:expr, $atomic:ty) => {{
        // SAFETY: `at` checked that the value lies inside the region and is aligned to
        // its size (the region is 8-aligned); the region is valid while `self` lives;
        // every concurrent access to shared memory is atomic or volatile.
        $ptr.map(|p| unsafe { <$atomic>::from_ptr(p.cast()) })
    }};
}

impl SharedMemory for RawSharedMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        raw_atomic!(self.at(offset, 1), AtomicU8).map_or(0, |a| a.load(order))
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        if let Some(a) = raw_atomic!(self.at(offset, 1), AtomicU8) {
            a.store(value, order);
        }
    }

    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        raw_atomic!(self.at(offset, 2), AtomicU16).map_or(0, |a| u16::from_le(a.load(order)))
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        if let Some(a) = raw_atomic!(self.at(offset, 2), AtomicU16) {
            a.store(value.to_le(), order);
        }
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        let Some(a) = raw_atomic!(self.at(offset, 2), AtomicU16) else {
            return Err(0);
        };
        a.compare_exchange(
            current.to_le(),
            new.to_le(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .map(u16::from_le)
        .map_err(u16::from_le)
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        raw_atomic!(self.at(offset, 4), AtomicU32).map_or(0, |a| u32::from_le(a.load(order)))
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        if let Some(a) = raw_atomic!(self.at(offset, 4), AtomicU32) {
            a.store(value.to_le(), order);
        }
    }

    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        let Some(a) = raw_atomic!(self.at(offset, 4), AtomicU32) else {
            return Err(0);
        };
        a.compare_exchange(
            current.to_le(),
            new.to_le(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .map(u32::from_le)
        .map_err(u32::from_le)
    }

    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        raw_atomic!(self.at(offset, 8), AtomicU64).map_or(0, |a| u64::from_le(a.load(order)))
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        if let Some(a) = raw_atomic!(self.at(offset, 8), AtomicU64) {
            a.store(value.to_le(), order);
        }
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        raw_atomic!(self.at(offset, 8), AtomicU64)
            .map_or(0, |a| u64::from_le(a.swap(value.to_le(), order)))
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        raw_atomic!(self.at(offset, 8), AtomicU64)
            .map_or(0, |a| u64::from_le(a.fetch_or(bits.to_le(), order)))
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        raw_atomic!(self.at(offset, 8), AtomicU64)
            .map_or(0, |a| u64::from_le(a.fetch_and(bits.to_le(), order)))
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        if !check(offset, buf.len(), 1, self.len) {
            buf.fill(0);
            return;
        }
        // SAFETY: `offset + buf.len() <= len` (checked above), so the source is inside
        // the region, valid for reads; `buf` is private memory, valid for writes and
        // not overlapping the region (no Rust reference to the region exists).
        unsafe { copy_shared(self.base.add(offset), buf.as_mut_ptr(), buf.len()) };
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !check(offset, data.len(), 1, self.len) {
            return;
        }
        // SAFETY: as in `read_bytes`, the other way round.
        unsafe { copy_shared(data.as_ptr(), self.base.add(offset), data.len()) };
    }
}

/// Copies `len` bytes between shared memory and private memory, the peer possibly
/// reading or writing the shared side meanwhile (what it sees or leaves there is just
/// bytes: the caller treats a copy it read as untrusted).
///
/// On x86_64 this is `rep movsq` and `rep movsb` in inline assembly: opaque to the
/// compiler, so the peer's concurrent access is no data race in Rust's model (as with
/// volatile accesses), and one instruction instead of a loop per byte: under kvm-pvm,
/// where the guest kernel's instructions are emulated, a byte loop cost about 5 us a
/// byte (350 ms per 64 KiB) and the string copy about 0.12 us.
/// Elsewhere: a volatile byte loop.
///
/// # Safety
///
/// `src` valid for reads and `dst` for writes of `len` bytes, not overlapping.
unsafe fn copy_shared(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; the direction flag is clear (the ABI says so at
    // every call), so both copies go upwards: `rep movsq` moves `len / 8` words, then
    // `rep movsb` the `len % 8` bytes left, continuing from where rsi/rdi stopped.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            "mov rcx, {rest}",
            "rep movsb",
            rest = in(reg) len % 8,
            inout("rcx") len / 8 => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: `i < len`: inside both ranges (the caller's contract); volatile
        // because the peer may access the shared side.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// Shared memory on the heap, for tests and for one-process front-against-back runs.
///
/// Backed by atomic 64-bit words (smaller accesses are read-modify-write loops on the
/// containing word), so two threads may use it at once without data races.
#[derive(Debug)]
pub struct HeapSharedMemory {
    words: alloc::boxed::Box<[AtomicU64]>,
    len: usize,
}

impl HeapSharedMemory {
    /// A zeroed region of `len` bytes.
    ///
    /// Allocated zeroed (`calloc`), not zeroed word by word: a large region (the RAM of
    /// a one-process test domain) then costs no pass over its memory, and pages never
    /// touched are never faulted in.
    pub fn new(len: usize) -> Self {
        // `AtomicU64` has the size and bit validity of `u64`; checked here for the
        // alignment, which the slice's reinterpretation below also needs.
        const _: () = assert!(
            core::mem::size_of::<AtomicU64>() == core::mem::size_of::<u64>()
                && core::mem::align_of::<AtomicU64>() == core::mem::align_of::<u64>()
        );
        let zeroed: alloc::boxed::Box<[u64]> =
            alloc::vec![0u64; len.div_ceil(8)].into_boxed_slice();
        let raw = alloc::boxed::Box::into_raw(zeroed);
        // SAFETY: `raw` is a live, uniquely owned `[u64]` allocation from the global
        // allocator; `[AtomicU64]` has the same size, alignment (asserted above) and
        // bit validity (all zero words are `AtomicU64::new(0)`), so the allocation is a
        // valid `Box<[AtomicU64]>` of the same length, freed with the same layout.
        let words = unsafe { alloc::boxed::Box::from_raw(raw as *mut [AtomicU64]) };
        Self { words, len }
    }

    /// Loads `size` bytes at `offset` (which lie in one word).
    fn load_small(&self, offset: usize, size: usize, order: Ordering) -> Option<u64> {
        if !check(offset, size, size, self.len) {
            return None;
        }
        let shift = (offset % 8) * 8;
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        };
        Some((self.words[offset / 8].load(order) >> shift) & mask)
    }

    /// Applies `f` to the `size` bytes at `offset` atomically; returns the old value.
    fn update_small(
        &self,
        offset: usize,
        size: usize,
        order: Ordering,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> Option<Result<u64, u64>> {
        if !check(offset, size, size, self.len) {
            return None;
        }
        let shift = (offset % 8) * 8;
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        };
        let load = match order {
            Ordering::Release | Ordering::Relaxed => Ordering::Relaxed,
            _ => Ordering::Acquire,
        };
        let result = self.words[offset / 8].fetch_update(order, load, |word| {
            let old = (word >> shift) & mask;
            f(old).map(|new| (word & !(mask << shift)) | ((new & mask) << shift))
        });
        Some(
            result
                .map(|w| (w >> shift) & mask)
                .map_err(|w| (w >> shift) & mask),
        )
    }

    fn store_small(&self, offset: usize, size: usize, value: u64, order: Ordering) {
        let _ = self.update_small(offset, size, order, |_| Some(value));
    }
}

impl SharedMemory for HeapSharedMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.load_small(offset, 1, order).unwrap_or(0) as u8
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        self.store_small(offset, 1, value.into(), order);
    }

    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        self.load_small(offset, 2, order).unwrap_or(0) as u16
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        self.store_small(offset, 2, value.into(), order);
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        let current = u64::from(current);
        match self.update_small(offset, 2, Ordering::AcqRel, |old| {
            (old == current).then_some(new.into())
        }) {
            Some(Ok(old)) => Ok(old as u16),
            Some(Err(old)) => Err(old as u16),
            None => Err(0),
        }
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.load_small(offset, 4, order).unwrap_or(0) as u32
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.store_small(offset, 4, value.into(), order);
    }

    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        let current = u64::from(current);
        match self.update_small(offset, 4, Ordering::AcqRel, |old| {
            (old == current).then_some(new.into())
        }) {
            Some(Ok(old)) => Ok(old as u32),
            Some(Err(old)) => Err(old as u32),
            None => Err(0),
        }
    }

    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.load_small(offset, 8, order).unwrap_or(0)
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        self.store_small(offset, 8, value, order);
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        self.update_small(offset, 8, order, |_| Some(value))
            .map_or(0, |r| r.unwrap_or_else(|e| e))
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.update_small(offset, 8, order, |old| Some(old | bits))
            .map_or(0, |r| r.unwrap_or_else(|e| e))
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.update_small(offset, 8, order, |old| Some(old & bits))
            .map_or(0, |r| r.unwrap_or_else(|e| e))
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        if !check(offset, buf.len(), 1, self.len) {
            buf.fill(0);
            return;
        }
        // One load per word touched (the bytes of a word are read together, which
        // `read_bytes` allows: there is no atomicity across bytes either way).
        let mut at = offset;
        let mut out = buf;
        if at.is_multiple_of(8) {
            // Whole words first, each a fixed-size copy (the common case: pages).
            let whole = out.len() / 8;
            let (head, tail) = out.split_at_mut(whole * 8);
            for (chunk, word) in head.chunks_exact_mut(8).zip(&self.words[at / 8..]) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            out = tail;
            at += whole * 8;
        }
        while !out.is_empty() {
            let word = self.words[at / 8].load(Ordering::Relaxed).to_le_bytes();
            let from = at % 8;
            let n = (8 - from).min(out.len());
            out[..n].copy_from_slice(&word[from..from + n]);
            out = &mut out[n..];
            at += n;
        }
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !check(offset, data.len(), 1, self.len) {
            return;
        }
        // Whole words with one store each; a partial word at either end keeps its
        // other bytes (a read-modify-write of the word, as `store_u8` does).
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let from = at % 8;
            let n = (8 - from).min(rest.len());
            let word = &self.words[at / 8];
            if n == 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&rest[..8]);
                word.store(u64::from_le_bytes(w), Ordering::Relaxed);
            } else {
                let mut bytes = [0u8; 8];
                bytes[from..from + n].copy_from_slice(&rest[..n]);
                let value = u64::from_le_bytes(bytes);
                let mask = (u64::MAX >> (64 - 8 * n as u32)) << (8 * from);
                let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(old & !mask | value)
                });
            }
            rest = &rest[n..];
            at += n;
        }
    }
}

/// Bytes in each piece of a [`PagedMemory`].
pub const PAGE_SIZE: usize = 4096;

/// One region made of separate page-sized pieces: page `i` covers offsets
/// `i * PAGE_SIZE..(i + 1) * PAGE_SIZE`. The pieces may lie anywhere (guest frames the
/// guest placed at scattered addresses), and may be replaced or added while the region
/// is in use by its owner.
///
/// A page may be absent (a hole, e.g. a grant-table frame the guest has not placed
/// yet): it reads as zeros, drops stores and fails every compare-exchange with `Err(0)`,
/// like an access outside the region, but without flagging a bug, because which pages
/// exist is the peer's choice.
///
/// Atomic accesses are naturally aligned (the trait requires it) and pages are
/// `PAGE_SIZE`-aligned in the region, so no atomic crosses a page; byte copies may, and
/// are split.
#[derive(Debug)]
pub struct PagedMemory<M> {
    pages: Vec<Option<M>>,
}

impl<M> Default for PagedMemory<M> {
    fn default() -> Self {
        Self { pages: Vec::new() }
    }
}

impl<M: SharedMemory> PagedMemory<M> {
    /// An empty region.
    pub fn new() -> Self {
        Self::default()
    }

    /// A region of `pages` in order; `Err` returns the first piece that is not
    /// `PAGE_SIZE` bytes long.
    pub fn from_pages(pages: impl IntoIterator<Item = M>) -> Result<Self, M> {
        let mut m = Self::new();
        for page in pages {
            let i = m.pages.len();
            m.set_page(i, page)?;
        }
        Ok(m)
    }

    /// Pages in the region (holes included).
    pub fn nr_pages(&self) -> usize {
        self.pages.len()
    }

    /// Page `index`, unless it is a hole or beyond the end.
    pub fn page(&self, index: usize) -> Option<&M> {
        self.pages.get(index).and_then(Option::as_ref)
    }

    /// Puts `page` at `index`, growing the region (with holes) to reach it; returns the
    /// page it replaces. A piece that is not `PAGE_SIZE` bytes long is refused and
    /// handed back. The caller bounds `index`: the region grows to `index + 1` pages.
    pub fn set_page(&mut self, index: usize, page: M) -> Result<Option<M>, M> {
        if page.len() != PAGE_SIZE {
            return Err(page);
        }
        if index >= self.pages.len() {
            self.pages.resize_with(index + 1, || None);
        }
        Ok(self.pages[index].replace(page))
    }

    /// Takes page `index` out, leaving a hole.
    pub fn take_page(&mut self, index: usize) -> Option<M> {
        self.pages.get_mut(index).and_then(Option::take)
    }

    /// The page holding an access of `size` bytes at `offset` (aligned to `size`), and
    /// the offset within it; `None` outside the region, misaligned, or in a hole.
    fn at(&self, offset: usize, size: usize) -> Option<(&M, usize)> {
        if !check(offset, size, size, self.len()) {
            return None;
        }
        let page = self.page(offset / PAGE_SIZE)?;
        Some((page, offset % PAGE_SIZE))
    }

    /// Splits `offset..offset + len` (already checked to lie in the region) at page
    /// boundaries: `(page, offset in page, offset in the caller's buffer, length)`.
    fn pieces(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Iterator<Item = (Option<&M>, usize, usize, usize)> {
        let mut done = 0;
        core::iter::from_fn(move || {
            if done == len {
                return None;
            }
            let at = offset + done;
            let within = at % PAGE_SIZE;
            let n = (len - done).min(PAGE_SIZE - within);
            let piece = (self.page(at / PAGE_SIZE), within, done, n);
            done += n;
            Some(piece)
        })
    }
}

impl<M: SharedMemory> SharedMemory for PagedMemory<M> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        self.at(offset, 1).map_or(0, |(p, o)| p.load_u8(o, order))
    }
    fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        if let Some((p, o)) = self.at(offset, 1) {
            p.store_u8(o, value, order);
        }
    }

    fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        self.at(offset, 2).map_or(0, |(p, o)| p.load_u16(o, order))
    }
    fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        if let Some((p, o)) = self.at(offset, 2) {
            p.store_u16(o, value, order);
        }
    }
    fn compare_exchange_u16(&self, offset: usize, current: u16, new: u16) -> Result<u16, u16> {
        self.at(offset, 2)
            .map_or(Err(0), |(p, o)| p.compare_exchange_u16(o, current, new))
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.at(offset, 4).map_or(0, |(p, o)| p.load_u32(o, order))
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        if let Some((p, o)) = self.at(offset, 4) {
            p.store_u32(o, value, order);
        }
    }
    fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> Result<u32, u32> {
        self.at(offset, 4)
            .map_or(Err(0), |(p, o)| p.compare_exchange_u32(o, current, new))
    }

    fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.at(offset, 8).map_or(0, |(p, o)| p.load_u64(o, order))
    }
    fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        if let Some((p, o)) = self.at(offset, 8) {
            p.store_u64(o, value, order);
        }
    }
    fn swap_u64(&self, offset: usize, value: u64, order: Ordering) -> u64 {
        self.at(offset, 8)
            .map_or(0, |(p, o)| p.swap_u64(o, value, order))
    }
    fn fetch_or_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.at(offset, 8)
            .map_or(0, |(p, o)| p.fetch_or_u64(o, bits, order))
    }
    fn fetch_and_u64(&self, offset: usize, bits: u64, order: Ordering) -> u64 {
        self.at(offset, 8)
            .map_or(0, |(p, o)| p.fetch_and_u64(o, bits, order))
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        if !check(offset, buf.len(), 1, self.len()) {
            buf.fill(0);
            return;
        }
        for (page, within, at, n) in self.pieces(offset, buf.len()) {
            let chunk = &mut buf[at..at + n];
            match page {
                Some(p) => p.read_bytes(within, chunk),
                None => chunk.fill(0),
            }
        }
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !check(offset, data.len(), 1, self.len()) {
            return;
        }
        for (page, within, at, n) in self.pieces(offset, data.len()) {
            if let Some(p) = page {
                p.write_bytes(within, &data[at..at + n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_copies_move_exactly_the_bytes_asked_for_at_any_offset() {
        let mut page = alloc::vec![0u64; 16];
        // SAFETY: 128 bytes of an 8-aligned Vec, used only through `m` below.
        let m = unsafe { RawSharedMemory::new(page.as_mut_ptr().cast(), 128) };
        copies_at_any_offset(&m);
        // `m` borrows `page` through a raw pointer: the Vec outlives every use.
        drop(page);
    }

    #[test]
    fn heap_copies_move_exactly_the_bytes_asked_for_at_any_offset() {
        copies_at_any_offset(&HeapSharedMemory::new(128));
    }

    /// Byte copies of every length at every offset of a 128-byte region touch exactly
    /// their bytes.
    fn copies_at_any_offset(m: &dyn SharedMemory) {
        let src: alloc::vec::Vec<u8> = (1..=64).collect();
        for off in 0..20 {
            for len in 0..=40 {
                m.write_bytes(0, &[0xee; 128]);
                m.write_bytes(off, &src[..len]);
                let mut all = [0u8; 128];
                m.read_bytes(0, &mut all);
                assert!(all[..off].iter().all(|&b| b == 0xee), "before {off}+{len}");
                assert_eq!(&all[off..off + len], &src[..len], "{off}+{len}");
                assert!(
                    all[off + len..].iter().all(|&b| b == 0xee),
                    "after {off}+{len}"
                );
                let mut back = alloc::vec![0u8; len + 1];
                m.read_bytes(off, &mut back[1..]);
                assert_eq!((back[0], &back[1..]), (0, &src[..len]), "read {off}+{len}");
            }
        }
    }

    fn exercise(m: &dyn SharedMemory) {
        m.write_bytes(1, &[1, 2, 3, 4, 5, 6]);
        let mut buf = [0u8; 8];
        m.read_bytes(0, &mut buf);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 0]);
        assert_eq!(
            m.load_u32(0, Ordering::Acquire),
            u32::from_le_bytes([0, 1, 2, 3])
        );
        assert_eq!(m.load_u16(2, Ordering::Acquire), u16::from_le_bytes([2, 3]));
        assert_eq!(m.load_u8(5, Ordering::Acquire), 5);
        m.store_u32(4, 0xdead_beef, Ordering::Release);
        m.read_bytes(4, &mut buf[..4]);
        assert_eq!(buf[..4], 0xdead_beefu32.to_le_bytes());
        assert_eq!(m.load_u64(0, Ordering::Relaxed), 0xdead_beef_0302_0100);

        assert_eq!(m.compare_exchange_u16(8, 1, 2), Err(0));
        assert_eq!(m.compare_exchange_u16(8, 0, 0x1234), Ok(0));
        assert_eq!(m.load_u16(8, Ordering::Relaxed), 0x1234);
        assert_eq!(m.load_u64(8, Ordering::Relaxed), 0x1234);
        assert_eq!(m.compare_exchange_u32(8, 0, 1), Err(0x1234));
        assert_eq!(m.compare_exchange_u32(8, 0x1234, 0x5_1234), Ok(0x1234));
        assert_eq!(m.load_u16(10, Ordering::Relaxed), 5);
        m.store_u32(8, 0x1234, Ordering::Relaxed);

        assert_eq!(m.fetch_or_u64(16, 0b1010, Ordering::AcqRel), 0);
        assert_eq!(m.fetch_and_u64(16, !0b10, Ordering::AcqRel), 0b1010);
        assert_eq!(m.swap_u64(16, u64::MAX, Ordering::AcqRel), 0b1000);
        m.store_u8(17, 0, Ordering::Release);
        assert_eq!(m.load_u64(16, Ordering::Acquire), 0xffff_ffff_ffff_00ff);
        m.store_u64(16, 7, Ordering::Release);
        assert_eq!(m.load_u64(16, Ordering::Acquire), 7);
    }

    #[test]
    fn heap_memory_bytes_and_words_agree() {
        exercise(&HeapSharedMemory::new(24));
    }

    #[test]
    fn raw_memory_bytes_and_words_agree() {
        let mut backing = [0u64; 3];
        // SAFETY: `backing` is 24 bytes, 8-aligned, and only used through `m` below.
        let m = unsafe { RawSharedMemory::new(backing.as_mut_ptr().cast(), 24) };
        exercise(&m);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_range_or_misaligned_is_harmless() {
        for m in [
            &HeapSharedMemory::new(8) as &dyn SharedMemory,
            &HeapSharedMemory::new(16),
        ] {
            let mut buf = [9u8; 4];
            m.read_bytes(m.len() - 2, &mut buf);
            assert_eq!(buf, [0; 4]);
            m.write_bytes(m.len() - 2, &[1, 2, 3]);
            assert_eq!(m.load_u32(m.len(), Ordering::Relaxed), 0);
            m.store_u32(2, 1, Ordering::Relaxed);
            assert_eq!(m.compare_exchange_u16(1, 0, 1), Err(0));
            assert_eq!(m.fetch_or_u64(4, 1, Ordering::Relaxed), 0);
            assert_eq!(m.load_u64(0, Ordering::Relaxed), 0);
        }
    }

    fn paged(pages: usize) -> PagedMemory<HeapSharedMemory> {
        PagedMemory::from_pages((0..pages).map(|_| HeapSharedMemory::new(PAGE_SIZE))).unwrap()
    }

    #[test]
    fn paged_memory_bytes_and_words_agree() {
        exercise(&paged(1));
        // The same checks on the second page, through the page itself.
        let m = paged(2);
        exercise(m.page(1).unwrap());
        assert_eq!(
            m.load_u64(PAGE_SIZE, Ordering::Relaxed),
            0xdead_beef_0302_0100
        );
        assert_eq!(m.load_u64(PAGE_SIZE + 16, Ordering::Relaxed), 7);
    }

    #[test]
    fn paged_memory_splits_copies_at_page_boundaries() {
        let m = paged(3);
        assert_eq!(m.len(), 3 * PAGE_SIZE);
        // A copy across all three pages lands in each, in order.
        let data: Vec<u8> = (0..PAGE_SIZE + 20).map(|i| i as u8).collect();
        m.write_bytes(PAGE_SIZE - 10, &data);
        let mut tail = [0u8; 10];
        m.page(0).unwrap().read_bytes(PAGE_SIZE - 10, &mut tail);
        assert_eq!(tail[..], data[..10]);
        let mut head = [0u8; 10];
        m.page(2).unwrap().read_bytes(0, &mut head);
        assert_eq!(head[..], data[PAGE_SIZE + 10..]);
        let mut back = vec![0u8; data.len()];
        m.read_bytes(PAGE_SIZE - 10, &mut back);
        assert_eq!(back, data);
        // Atomics on either side of a boundary reach the right page.
        m.store_u64(PAGE_SIZE - 8, u64::MAX, Ordering::Relaxed);
        m.store_u64(PAGE_SIZE, 1, Ordering::Relaxed);
        assert_eq!(
            m.page(0)
                .unwrap()
                .load_u64(PAGE_SIZE - 8, Ordering::Relaxed),
            u64::MAX
        );
        assert_eq!(m.page(1).unwrap().load_u64(0, Ordering::Relaxed), 1);
        assert_eq!(m.compare_exchange_u32(2 * PAGE_SIZE + 16, 0, 9), Ok(0));
        assert_eq!(m.page(2).unwrap().load_u32(16, Ordering::Relaxed), 9);
    }

    #[test]
    fn paged_memory_holes_read_zero_and_pages_can_be_replaced() {
        let mut m = PagedMemory::new();
        assert_eq!(m.len(), 0);
        assert!(
            m.set_page(2, HeapSharedMemory::new(PAGE_SIZE))
                .unwrap()
                .is_none()
        );
        assert_eq!((m.nr_pages(), m.len()), (3, 3 * PAGE_SIZE));
        assert!(m.page(0).is_none() && m.page(1).is_none() && m.page(2).is_some());
        // A hole: zeros in, stores dropped, compare-exchange fails.
        m.store_u32(8, 5, Ordering::Relaxed);
        assert_eq!(m.load_u32(8, Ordering::Relaxed), 0);
        assert_eq!(m.compare_exchange_u16(8, 0, 1), Err(0));
        assert_eq!(m.fetch_or_u64(PAGE_SIZE, 1, Ordering::Relaxed), 0);
        // A copy through a hole into a page: only the page's part sticks.
        m.write_bytes(2 * PAGE_SIZE - 2, &[1, 2, 3, 4]);
        let mut buf = [9u8; 4];
        m.read_bytes(2 * PAGE_SIZE - 2, &mut buf);
        assert_eq!(buf, [0, 0, 3, 4]);
        // Filling the hole; replacing a page returns the old one.
        let first = HeapSharedMemory::new(PAGE_SIZE);
        first.store_u8(0, 0x11, Ordering::Relaxed);
        assert!(m.set_page(0, first).unwrap().is_none());
        assert_eq!(m.load_u8(0, Ordering::Relaxed), 0x11);
        let old = m
            .set_page(0, HeapSharedMemory::new(PAGE_SIZE))
            .unwrap()
            .unwrap();
        assert_eq!(old.load_u8(0, Ordering::Relaxed), 0x11);
        assert_eq!(m.load_u8(0, Ordering::Relaxed), 0);
        assert!(m.take_page(2).is_some());
        assert_eq!(m.load_u8(2 * PAGE_SIZE + 3, Ordering::Relaxed), 0);
        assert_eq!(m.nr_pages(), 3, "taking a page leaves a hole");
        // Pieces of another size are refused.
        let wrong = HeapSharedMemory::new(PAGE_SIZE - 8);
        assert_eq!(m.set_page(1, wrong).unwrap_err().len(), PAGE_SIZE - 8);
        assert!(PagedMemory::from_pages([HeapSharedMemory::new(8)]).is_err());
        assert!(m.page(1).is_none());
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn paged_memory_out_of_range_is_harmless() {
        let m = paged(2);
        let mut buf = [9u8; 4];
        m.read_bytes(2 * PAGE_SIZE - 2, &mut buf);
        assert_eq!(buf, [0; 4]);
        m.write_bytes(2 * PAGE_SIZE - 2, &[1, 2, 3]);
        assert_eq!(m.load_u16(2 * PAGE_SIZE - 2, Ordering::Relaxed), 0);
        assert_eq!(m.load_u64(2 * PAGE_SIZE, Ordering::Relaxed), 0);
        m.store_u32(2 * PAGE_SIZE, 1, Ordering::Relaxed);
        // Misaligned: would cross a page boundary.
        m.store_u64(PAGE_SIZE - 4, u64::MAX, Ordering::Relaxed);
        assert_eq!(m.load_u32(PAGE_SIZE - 4, Ordering::Relaxed), 0);
        assert_eq!(m.compare_exchange_u32(PAGE_SIZE - 2, 0, 1), Err(0));
    }
}
