//! Access to memory shared with the other side of a Xen interface: a ring page, a
//! console page, the xenstore page.
//!
//! Every protocol that lives in shared memory (`io/ring.h` rings, the xenstore and
//! console byte rings) is written once, generic over [`SharedMemory`]. The guest
//! implements it over a page it owns or granted ([`RawSharedMemory`]), the shim over
//! guest RAM (also [`RawSharedMemory`], on the host mapping of a checked guest range),
//! and tests over [`HeapSharedMemory`], so front and back halves exchange real messages
//! in a plain `cargo test`.
//!
//! The other side may write anything at any time. Nothing read through this trait is
//! trusted: callers copy values out once and check them before use.
//!
//! Offsets are computed by this crate's protocol code, never taken from the peer; an
//! access outside `0..len()` is a bug in that code. Implementations do not panic on it:
//! reads out of range yield zeros and writes out of range are dropped (and
//! `debug_assert!` flags them in tests).

use core::sync::atomic::{AtomicU32, Ordering};

/// A region of memory shared with another domain.
pub trait SharedMemory {
    /// Size of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Atomically loads the little-endian `u32` at `offset` (4-aligned).
    fn load_u32(&self, offset: usize, order: Ordering) -> u32;

    /// Atomically stores `value` at `offset` (4-aligned).
    fn store_u32(&self, offset: usize, value: u32, order: Ordering);

    /// Copies bytes from `offset` into `buf` (no atomicity across bytes).
    fn read_bytes(&self, offset: usize, buf: &mut [u8]);

    /// Copies `data` to `offset` (no atomicity across bytes).
    fn write_bytes(&self, offset: usize, data: &[u8]);
}

/// Whether `offset..offset + len` lies inside a region of `size` bytes.
fn in_range(offset: usize, len: usize, size: usize) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
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
// SAFETY: as above; `&self` methods never create Rust references to the bytes.
unsafe impl Sync for RawSharedMemory {}

impl RawSharedMemory {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be 4-aligned and valid for reads and writes of `len` bytes for as
    /// long as the value (or anything derived from it) is used, and no Rust reference
    /// to those bytes may exist in that time (the other side writes them concurrently).
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base.align_offset(4) == 0, "shared memory must be 4-aligned");
        Self { base, len }
    }

    fn word(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % 4 != 0 || !in_range(offset, 4, self.len) {
            debug_assert!(false, "shared memory word access out of range: {offset}");
            return None;
        }
        // SAFETY: `base + offset` is inside the region (checked), 4-aligned (base is
        // 4-aligned by `new`'s contract, offset checked), and the region stays valid
        // while `self` lives; `AtomicU32` has the layout of `u32`, and all concurrent
        // accesses to this word are atomic or volatile.
        Some(unsafe { AtomicU32::from_ptr(self.base.add(offset).cast::<u32>()) })
    }
}

impl SharedMemory for RawSharedMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.word(offset).map_or(0, |w| u32::from_le(w.load(order)))
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        if let Some(w) = self.word(offset) {
            w.store(value.to_le(), order);
        }
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        if !in_range(offset, buf.len(), self.len) {
            debug_assert!(false, "shared memory read out of range: {offset}+{}", buf.len());
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
        if !in_range(offset, data.len(), self.len) {
            debug_assert!(false, "shared memory write out of range: {offset}+{}", data.len());
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
/// Backed by atomic words, so two threads may use it at once without data races.
#[derive(Debug)]
pub struct HeapSharedMemory {
    words: alloc::boxed::Box<[AtomicU32]>,
    len: usize,
}

impl HeapSharedMemory {
    /// A zeroed region of `len` bytes.
    pub fn new(len: usize) -> Self {
        let words = (0..len.div_ceil(4)).map(|_| AtomicU32::new(0)).collect();
        Self { words, len }
    }

    fn byte(&self, offset: usize) -> u8 {
        let word = self.words[offset / 4].load(Ordering::Relaxed);
        word.to_le_bytes()[offset % 4]
    }

    fn set_byte(&self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let w = &self.words[offset / 4];
        // Little-endian byte `offset % 4` of the word is bits `shift..shift + 8`.
        let mask = u32::from_le(0xffu32 << shift);
        let bits = u32::from_le(u32::from(value) << shift);
        let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some((old & !mask) | bits)
        });
    }
}

impl SharedMemory for HeapSharedMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        if offset % 4 != 0 || !in_range(offset, 4, self.len) {
            debug_assert!(false, "shared memory word access out of range: {offset}");
            return 0;
        }
        u32::from_le(self.words[offset / 4].load(order))
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        if offset % 4 != 0 || !in_range(offset, 4, self.len) {
            debug_assert!(false, "shared memory word access out of range: {offset}");
            return;
        }
        self.words[offset / 4].store(value.to_le(), order);
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        if !in_range(offset, buf.len(), self.len) {
            debug_assert!(false, "shared memory read out of range: {offset}+{}", buf.len());
            buf.fill(0);
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(offset + i);
        }
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) {
        if !in_range(offset, data.len(), self.len) {
            debug_assert!(false, "shared memory write out of range: {offset}+{}", data.len());
            return;
        }
        for (i, b) in data.iter().enumerate() {
            self.set_byte(offset + i, *b);
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
        assert_eq!(m.load_u32(0, Ordering::Acquire), u32::from_le_bytes([0, 1, 2, 3]));
        m.store_u32(4, 0xdead_beef, Ordering::Release);
        m.read_bytes(4, &mut buf[..4]);
        assert_eq!(buf[..4], 0xdead_beefu32.to_le_bytes());
    }

    #[test]
    fn heap_memory_bytes_and_words_agree() {
        exercise(&HeapSharedMemory::new(16));
    }

    #[test]
    fn raw_memory_bytes_and_words_agree() {
        let mut backing = [0u32; 4];
        // SAFETY: `backing` is 16 bytes, 4-aligned, and only used through `m` below.
        let m = unsafe { RawSharedMemory::new(backing.as_mut_ptr().cast(), 16) };
        exercise(&m);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_range_is_harmless() {
        let m = HeapSharedMemory::new(8);
        let mut buf = [9u8; 4];
        m.read_bytes(6, &mut buf);
        assert_eq!(buf, [0; 4]);
        m.write_bytes(6, &[1, 2, 3]);
        assert_eq!(m.load_u32(8, Ordering::Relaxed), 0);
        m.store_u32(2, 1, Ordering::Relaxed);
        assert_eq!(m.load_u32(0, Ordering::Relaxed), 0);
    }
}
