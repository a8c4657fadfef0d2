//! The rig of the driver-against-model tests: a guest driver from `hw_devices` runs
//! against a shim device model in one process, over the same guest RAM.
//!
//! - [`Ram`]: guest RAM (vm-memory, as the shim allocates it) and a page allocator
//!   over it that implements the driver's [`DmaMemory`]: the driver writes descriptors
//!   and buffers through [`RawSharedMemory`] views of the host mapping, and the model
//!   reaches the same bytes by DMA through [`GuestMemory`].
//! - [`PciRegion`]: a driver's [`PortIo`] / [`Mmio`] routed to one region of a
//!   [`PciDevice`] model (a BAR, or a legacy range), as the bus would route it.
//! - [`LevelLog`]: an [`IrqLine`] that records the level the model drives.
//! - [`virtio_hal::TestHal`]: `virtio-drivers`' static `Hal` over a [`Ram`] registered
//!   for the test's thread.

#![allow(dead_code)] // each test binary uses a different part of the rig

pub mod virtio_hal;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use host_shim::devices::pci::PciDevice;
use host_shim::devices::{GuestMemory, IrqLine};
use hw_devices::{DmaMemory, Mmio, PAGE_SIZE, PortIo};
use pv_drivers::shmem::RawSharedMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

/// Guest RAM of `mib` MiB at address 0, and a bump allocator of its pages from 1 MiB up
/// (pages returned are kept on a free list).
pub struct Ram {
    pub mem: GuestMemory,
    next: u64,
    free: Vec<u64>,
}

impl Ram {
    pub fn new(mib: u64) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)])
            .expect("guest RAM");
        Self {
            mem,
            next: 1 << 20,
            free: Vec::new(),
        }
    }

    /// The host address of guest-physical `paddr` (`len` bytes must be in RAM).
    fn host(&self, paddr: u64, len: usize) -> *mut u8 {
        let slice = self
            .mem
            .get_slice(GuestAddress(paddr), len)
            .expect("range in guest RAM");
        slice.ptr_guard_mut().as_ptr()
    }
}

impl DmaMemory for Ram {
    type Pages = RawSharedMemory;

    fn alloc_pages(&mut self, count: usize) -> Option<(u64, RawSharedMemory)> {
        if count == 0 {
            return None;
        }
        let len = count * PAGE_SIZE;
        let paddr = if count == 1 && !self.free.is_empty() {
            self.free.pop()?
        } else {
            let p = self.next;
            if p + len as u64 > self.mem.last_addr().0 + 1 {
                return None;
            }
            self.next += len as u64;
            p
        };
        let host = self.host(paddr, len);
        // SAFETY: [host, host + len) is the mapping of guest RAM this allocator hands
        // out once; the mapping lives as long as `mem` (tests keep the Ram alive while
        // drivers use the views), and is page aligned.
        let view = unsafe { RawSharedMemory::new(host, len) };
        for i in 0..len / 8 {
            pv_drivers::shmem::SharedMemory::store_u64(&view, i * 8, 0, Ordering::Relaxed);
        }
        Some((paddr, view))
    }

    fn free_pages(&mut self, paddr: u64, pages: RawSharedMemory) {
        let n = pv_drivers::shmem::SharedMemory::len(&pages) / PAGE_SIZE;
        for i in 0..n {
            self.free.push(paddr + (i * PAGE_SIZE) as u64);
        }
    }
}

/// A driver's register accesses routed to region `region` of a PCI model, at port or
/// address `base` (so a driver that uses absolute ports, like the legacy IDE task
/// file, can be given the base it expects).
pub struct PciRegion<D: PciDevice + ?Sized> {
    pub dev: Arc<Mutex<D>>,
    pub region: usize,
    pub base: u64,
    /// Accesses made (each one a vCPU exit in a real run).
    pub accesses: Arc<AtomicU64>,
}

impl<D: PciDevice + ?Sized> PciRegion<D> {
    pub fn new(dev: Arc<Mutex<D>>, region: usize, base: u64) -> Self {
        Self {
            dev,
            region,
            base,
            accesses: Arc::new(AtomicU64::new(0)),
        }
    }

    fn read(&mut self, addr: u64, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let off = addr.wrapping_sub(self.base);
        self.dev.lock().unwrap().region_read(self.region, off, data);
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let off = addr.wrapping_sub(self.base);
        self.dev
            .lock()
            .unwrap()
            .region_write(self.region, off, data);
    }
}

impl<D: PciDevice + ?Sized> PortIo for PciRegion<D> {
    fn read8(&mut self, port: u16) -> u8 {
        let mut b = [0u8; 1];
        self.read(port.into(), &mut b);
        b[0]
    }
    fn read16(&mut self, port: u16) -> u16 {
        let mut b = [0u8; 2];
        self.read(port.into(), &mut b);
        u16::from_le_bytes(b)
    }
    fn read32(&mut self, port: u16) -> u32 {
        let mut b = [0u8; 4];
        self.read(port.into(), &mut b);
        u32::from_le_bytes(b)
    }
    fn write8(&mut self, port: u16, value: u8) {
        self.write(port.into(), &[value]);
    }
    fn write16(&mut self, port: u16, value: u16) {
        self.write(port.into(), &value.to_le_bytes());
    }
    fn write32(&mut self, port: u16, value: u32) {
        self.write(port.into(), &value.to_le_bytes());
    }
}

impl<D: PciDevice + ?Sized> Mmio for PciRegion<D> {
    fn read32(&mut self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.read(self.base + u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&mut self, offset: u32, value: u32) {
        self.write(self.base + u64::from(offset), &value.to_le_bytes());
    }
    fn read16(&mut self, offset: u32) -> u16 {
        let mut b = [0u8; 2];
        self.read(self.base + u64::from(offset), &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&mut self, offset: u32, value: u16) {
        self.write(self.base + u64::from(offset), &value.to_le_bytes());
    }
    fn read8(&mut self, offset: u32) -> u8 {
        let mut b = [0u8; 1];
        self.read(self.base + u64::from(offset), &mut b);
        b[0]
    }
    fn write8(&mut self, offset: u32, value: u8) {
        self.write(self.base + u64::from(offset), &[value]);
    }
}

/// An interrupt line that records its level and counts rising edges.
#[derive(Default)]
pub struct LevelLog {
    pub level: AtomicBool,
    pub rises: AtomicU64,
}

impl LevelLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn asserted(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    pub fn rises(&self) -> u64 {
        self.rises.load(Ordering::SeqCst)
    }
}

impl IrqLine for LevelLog {
    fn set_level(&self, asserted: bool) {
        let was = self.level.swap(asserted, Ordering::SeqCst);
        if asserted && !was {
            self.rises.fetch_add(1, Ordering::SeqCst);
        }
    }
}
