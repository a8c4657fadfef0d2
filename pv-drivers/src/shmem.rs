//! Access to memory shared with the other side of a Xen interface: ring pages, the
//! console and xenstore pages, shared_info's event bitmaps, grant-table entries.
//!
//! Every protocol that lives in shared memory (`io/ring.h` rings, the xenstore and
//! console byte rings, 2-level event channels, grant entries) is written once, generic
//! over [`SharedMemory`]. The guest implements it over a page it owns or granted
//! ([`RawSharedMemory`]), the shim over guest RAM (also [`RawSharedMemory`], on the host
//! mapping of a checked guest range), and tests over [`HeapSharedMemory`], so front and
//! back halves exchange real messages in a plain `cargo test`.
//!
//! The other side may write anything at any time. Nothing read through this trait is
//! trusted: callers copy values out once and check them before use.
//!
//! Offsets are computed by this crate's protocol code, never taken from the peer; an
//! access outside `0..len()` or a misaligned atomic access is a bug in that code.
//! Implementations do not panic on it: loads yield zero, stores are dropped, a
//! compare-exchange fails (and `debug_assert!` flags it in tests). Multi-byte values are
//! little-endian, as on x86.

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
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `offset + i < len` (checked above), so the byte is inside the
            // region, which is valid for reads; volatile because the peer writes it.
            *b = unsafe { self.base.add(offset + i).read_volatile() };
        }
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !check(offset, data.len(), 1, self.len) {
            return;
        }
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `offset + i < len` (checked above), so the byte is inside the
            // region, which is valid for writes; volatile because the peer reads it.
            unsafe { self.base.add(offset + i).write_volatile(*b) };
        }
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
    pub fn new(len: usize) -> Self {
        let words = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
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
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.load_u8(offset + i, Ordering::Relaxed);
        }
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !check(offset, data.len(), 1, self.len) {
            return;
        }
        for (i, b) in data.iter().enumerate() {
            self.store_u8(offset + i, *b, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
