//! The emulated devices of the PV-against-emulated comparison, as both sides see them.
//!
//! - The register, descriptor and configuration-space layouts of each device are
//!   declared once here ([`pci`], [`ata`], [`e1000`], [`virtio`]) and imported by the guest's drivers
//!   and by host-shim's device models (`host_shim::devices`), as `pv_drivers::abi` does
//!   for Xen.
//! - The guest's drivers live here too, written against the small access traits of this
//!   module ([`PortIo`], [`Mmio`], [`DmaMemory`]), so each driver runs against the
//!   shim's model of its device in a plain `cargo test` (the emulated twin of the
//!   front-against-back tests), and in the guest over the real instructions.
//! - The drivers implement `pv_drivers::device::BlockDevice` and `NetDevice`, so the
//!   workloads and the TCP stack above cannot tell an emulated device from a PV one.
//!
//! The device is hostile to the driver: every value read from a register or written
//! back into a descriptor is checked before use, and no length or index the device
//! supplies reaches memory unchecked.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod ata;
pub mod bench;
pub mod e1000;
pub mod pci;
pub mod virtio;

pub use pv_drivers::frontend::PAGE_SIZE;
use pv_drivers::shmem::SharedMemory;

/// Port I/O as a driver sees it: the `in`/`out` instructions in the guest, the shim's
/// port bus (and so its device models) in host tests.
pub trait PortIo {
    /// `inb`.
    fn read8(&mut self, port: u16) -> u8;
    /// `inw`.
    fn read16(&mut self, port: u16) -> u16;
    /// `inl`.
    fn read32(&mut self, port: u16) -> u32;
    /// `outb`.
    fn write8(&mut self, port: u16, value: u8);
    /// `outw`.
    fn write16(&mut self, port: u16, value: u16);
    /// `outl`.
    fn write32(&mut self, port: u16, value: u32);
}

/// A memory-mapped register window (a memory BAR), accessed at byte offsets from its
/// base with naturally aligned accesses of the register's own width.
///
/// The narrow accesses are not derived from the 32-bit ones: a read-modify-write of
/// the surrounding word would write the neighbours too (virtio's `device_status` byte
/// shares its word with `config_generation` and `queue_select`).
pub trait Mmio {
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: u32) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: u32, value: u32);
    /// Reads the 16-bit register at `offset`.
    fn read16(&mut self, offset: u32) -> u16;
    /// Writes the 16-bit register at `offset`.
    fn write16(&mut self, offset: u32, value: u16);
    /// Reads the byte register at `offset`.
    fn read8(&mut self, offset: u32) -> u8;
    /// Writes the byte register at `offset`.
    fn write8(&mut self, offset: u32, value: u8);
}

/// Memory that a device reaches by DMA: whole zeroed pages at guest-physical addresses
/// below 4 GiB (every device here takes 32-bit addresses, or 64-bit ones that we keep
/// below 4 GiB).
///
/// In the guest these come from the frame allocator (identity mapped); in host tests
/// from the guest RAM that the shim's model also sees.
pub trait DmaMemory {
    /// A view of allocated pages.
    type Pages: SharedMemory;

    /// Allocates `count` physically contiguous zeroed pages; returns the
    /// guest-physical address of the first and a view of all of them. `None` when out of
    /// memory.
    fn alloc_pages(&mut self, count: usize) -> Option<(u64, Self::Pages)>;

    /// Returns pages from [`DmaMemory::alloc_pages`] (`paddr` as returned). Only call
    /// once the device can no longer write them (a page a device may still write must be
    /// leaked instead).
    fn free_pages(&mut self, paddr: u64, pages: Self::Pages);
}
