//! `virtio-drivers`' static `Hal` for the driver-against-model tests ([`TestHal`]): DMA
//! memory comes from the test's guest RAM ([`Ram`]), registered for the calling thread
//! by [`install`] (each test runs its driver on its own thread), and buffers outside
//! that RAM (the host heap: `virtio-drivers`' indirect descriptor tables, a caller's
//! stack) are bounced through pages of it on `share` and copied back on `unshare`, the
//! way `virtio-drivers` documents for memory a device cannot reach.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;

use hw_devices::PAGE_SIZE;
use hw_devices::virtio::VirtioHal;
use hw_devices::virtio::virtio_drivers::{BufferDirection, Hal, PhysAddr};
use pv_drivers::shmem::RawSharedMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use super::Ram;
use hw_devices::DmaMemory as _;

struct Registry {
    ram: Ram,
    base: *mut u8,
    len: usize,
    /// Bounce pages by device address: (bytes, pages).
    bounces: HashMap<u64, (usize, usize)>,
    /// Buffers bounced so far.
    bounced: u64,
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    REGISTRY.with(|r| {
        f(r.borrow_mut()
            .as_mut()
            .expect("emu_common::virtio_hal::install on this thread first"))
    })
}

/// Makes `ram` this thread's DMA memory for [`TestHal`] (replacing any before).
pub fn install(ram: Ram) {
    let len = (ram.mem.last_addr().0 + 1) as usize;
    let base = ram
        .mem
        .get_slice(GuestAddress(0), len)
        .expect("guest RAM is one region from 0")
        .ptr_guard_mut()
        .as_ptr();
    REGISTRY.with(|r| {
        *r.borrow_mut() = Some(Registry {
            ram,
            base,
            len,
            bounces: HashMap::new(),
            bounced: 0,
        })
    });
}

/// Buffers bounced so far on this thread, and bounce buffers still out.
pub fn bounces() -> (u64, usize) {
    with(|r| (r.bounced, r.bounces.len()))
}

/// The `Hal` of the tests' virtio drivers.
pub struct TestHal;

// SAFETY: `dma_alloc` hands out zeroed pages of guest RAM, page aligned, that the
// allocator gives to nobody else until `dma_dealloc`; pointers are the host mapping of
// that RAM, which lives as long as the registry's `Ram`.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        with(|r| match r.ram.alloc_pages(pages) {
            // SAFETY: `paddr + pages` lies in RAM, mapped from `base`.
            Some((paddr, _view)) => (paddr, unsafe {
                NonNull::new_unchecked(r.base.add(paddr as usize))
            }),
            None => (0, NonNull::dangling()),
        })
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes what `dma_alloc` returned, no longer used.
        let view = unsafe { RawSharedMemory::new(vaddr.as_ptr(), pages * PAGE_SIZE) };
        with(|r| r.ram.free_pages(paddr, view));
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        unreachable!("the tests' transport is hw_devices' PciTransport over the model")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let ptr = buffer.as_ptr().cast::<u8>();
        let len = buffer.len();
        with(|r| {
            let start = ptr as usize;
            let base = r.base as usize;
            if start >= base && start + len <= base + r.len {
                return (start - base) as u64;
            }
            let pages = len.div_ceil(PAGE_SIZE);
            let (paddr, _) = r.ram.alloc_pages(pages).expect("test RAM for bounce pages");
            // SAFETY: the caller's buffer is valid for `len` bytes; the bounce pages are
            // `pages * PAGE_SIZE >= len` bytes of RAM just allocated.
            unsafe { std::ptr::copy_nonoverlapping(ptr, r.base.add(paddr as usize), len) };
            r.bounces.insert(paddr, (len, pages));
            r.bounced += 1;
            paddr
        })
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        with(|r| {
            let Some((len, pages)) = r.bounces.remove(&paddr) else {
                return; // shared in place
            };
            assert_eq!(len, buffer.len(), "unshare of a different buffer");
            if direction != BufferDirection::DriverToDevice {
                // SAFETY: as in `share`; the device is done with the bounce pages.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        r.base.add(paddr as usize),
                        buffer.as_ptr().cast::<u8>(),
                        len,
                    )
                };
            }
            // SAFETY: the bounce pages, allocated in `share`.
            let view =
                unsafe { RawSharedMemory::new(r.base.add(paddr as usize), pages * PAGE_SIZE) };
            r.ram.free_pages(paddr, view);
        })
    }
}

// SAFETY: the pointer is the host mapping of guest RAM, valid while the registry lives.
unsafe impl VirtioHal for TestHal {
    fn dma_ptr(paddr: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        with(|r| {
            let end = (paddr as usize).checked_add(len)?;
            // SAFETY: `paddr + len` lies in RAM, mapped from `base`.
            (end <= r.len).then(|| unsafe { NonNull::new_unchecked(r.base.add(paddr as usize)) })
        })
    }
}
