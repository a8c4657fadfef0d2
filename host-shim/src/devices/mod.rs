//! Emulated devices and the address bus that routes guest accesses to them.
//!
//! Every device implements [`BusDevice`], which knows nothing of KVM: the vCPU loop
//! decodes an exit and calls [`Bus::read`] or [`Bus::write`], which find the device by
//! address and pass it the offset into its range (the model of Firecracker's
//! `BusDevice`). The same [`Bus`] type serves port I/O (ports widened to `u64`) and MMIO.
//! One file per device:
//! - [`serial`]: COM1, a 16550 UART (vm-superio) at 0x3f8..0x400, IRQ 4.
//! - [`debugcon`]: the Bochs/QEMU debug console at port 0xe9.
//! - [`exit_port`]: an `isa-debug-exit`-compatible port at 0xf4..0xf8.
//! - [`pci`]: the [`pci::PciDevice`] trait and the configuration header PCI models
//!   embed.
//! - [`ide`]: the PIIX3 IDE controller (8086:7010) with one disk, PIO and bus-master
//!   DMA.
//! - [`e1000`]: the Intel 82540EM (8086:100E) network controller on a TAP link.
//!
//! Emulated devices reach guest memory as DMA through [`GuestMemory`], which checks
//! every access against guest RAM; they raise interrupts through an [`IrqLine`].

pub mod console;
pub mod debugcon;
pub mod e1000;
pub mod exit_port;
pub mod ide;
pub mod pci;
pub mod serial;

/// Guest RAM as a device's DMA sees it: every access is checked against the RAM
/// ranges (vm-memory's `Bytes` on it fails outside them).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// An interrupt line from a device to the interrupt controller. A model drives its
/// output level: for a level-triggered line (PCI INTx) the line stays asserted while
/// the condition holds; for an edge-triggered ISA line a low-to-high change is the
/// interrupt. Callable from any thread.
pub trait IrqLine: Send + Sync {
    /// Sets the line's level (`true`: asserted).
    fn set_level(&self, asserted: bool);
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What the vCPU loop must do after a device handled a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Continue,
    /// End the run: the guest exited with this status.
    Exit(u8),
}

/// A device on a [`Bus`]. `offset` is relative to the base the device was inserted at;
/// `data` is the access (1, 2 or 4 bytes for port I/O, up to 8 for MMIO, but a device
/// must accept any length and any offset without panicking: the guest controls both).
pub trait BusDevice: Send {
    /// Fills `data` with the bytes read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles the bytes written at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Action;
}

/// A device shared between the bus and whoever else drives it (for example a backend
/// thread that raises its interrupts).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors when populating a [`Bus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or runs past the end of the address space.
    #[error("device range [{base:#x}, +{len:#x}) is empty or wraps")]
    BadRange {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("device range [{base:#x}, +{len:#x}) overlaps a device at {other:#x}")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the device already there.
        other: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Maps disjoint address ranges to devices.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some((&other, _)) = self
            .entries
            .range(..end)
            .next_back()
            .filter(|(b, e)| **b + e.len > base)
        {
            return Err(BusError::Overlap { base, len, other });
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((base, entry))
    }

    /// Reads at `addr`. Returns false, with `data` set to all-ones as on a real bus with
    /// nothing answering, if no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, entry)) => {
                lock(&entry.device).read(addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes at `addr`. Returns `None` if no device claims the address (the write is
    /// dropped), otherwise what the device asks the vCPU loop to do.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<Action> {
        let (base, entry) = self.find(addr)?;
        Some(lock(&entry.device).write(addr - base, data))
    }
}

/// Locks a device. A poisoned lock means another thread panicked while holding it; the
/// device state is still the best there is, so keep using it rather than panic here too.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; reads return the offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Action {
            self.writes.push((offset, data.to_vec()));
            Action::Continue
        }
    }

    #[test]
    fn routes_by_range_and_passes_offsets() {
        let a = Arc::new(Mutex::new(Probe::default()));
        let b = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, a.clone()).expect("insert");
        bus.insert(0x400, 4, b.clone()).expect("insert");

        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.read(0x403, &mut d));
        assert_eq!(d, [3]);
        assert_eq!(bus.write(0x3f8, b"x"), Some(Action::Continue));
        assert_eq!(bus.write(0x401, &[1, 2]), Some(Action::Continue));
        assert_eq!(a.lock().expect("lock").writes, vec![(0, vec![b'x'])]);
        assert_eq!(b.lock().expect("lock").writes, vec![(1, vec![1, 2])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_writes_are_dropped() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Probe::default())))
            .expect("insert");
        let mut d = [0u8; 4];
        assert!(!bus.read(0x14, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.read(0x0f, &mut d));
        assert!(!bus.read(u64::MAX, &mut d));
        assert_eq!(bus.write(0x14, &[1]), None);
        assert_eq!(bus.write(0, &[]), None);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Probe::default())) };
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, dev()).expect("insert");
        assert!(matches!(
            bus.insert(0x108, 4, dev()),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(0xf8, 0x10, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x50, 0x1000, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(0xf0, 0x10, dev()).is_ok());
        assert!(bus.insert(0x110, 0x10, dev()).is_ok());
        assert!(matches!(
            bus.insert(0x200, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
    }
}
