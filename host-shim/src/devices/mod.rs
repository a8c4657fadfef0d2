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
//! - [`i8042`]: the keyboard controller's reset line (ports 0x60, 0x64), how a guest
//!   without ACPI reboots.
//! - [`rtc`]: the CMOS real-time clock (ports 0x70, 0x71): the host's wall time.
//! - [`pci`]: the [`pci::PciDevice`] trait and the configuration header PCI models
//!   embed.
//! - [`pci_bus`]: PCI bus 0 (configuration mechanism #1 at 0xCF8, BAR mapping onto the
//!   buses, firmware-style BAR assignment, INTx routing); [`pci_chipset`]: its i440FX
//!   host bridge and PIIX3 ISA bridge.
//! - [`ide`]: the PIIX3 IDE controller (8086:7010) with one disk, PIO and bus-master
//!   DMA.
//! - [`e1000`]: the Intel 82540EM (8086:100E) network controller on a TAP link.
//! - [`virtio_pci`]: the modern virtio-pci transport a virtio device plugs into;
//!   [`virtio_blk`]: the block device on it (issue #15: virtio-net is still to come).
//! - [`bench_mark`]: the benchmark's phase-mark port at 0xf8 (a counter snapshot per mark).
//!
//! Emulated devices reach guest memory as DMA through [`GuestMemory`], which checks
//! every access against guest RAM; they raise interrupts through an [`IrqLine`].

pub mod bench_mark;
pub mod console;
pub mod debugcon;
pub mod e1000;
pub mod exit_port;
pub mod i8042;
pub mod ide;
pub mod pci;
pub mod pci_bus;
pub mod pci_chipset;
pub mod rtc;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_net;
pub mod virtio_pci;

/// Guest RAM as a device's DMA sees it: every access is checked against the RAM
/// ranges (vm-memory's `Bytes` on it fails outside them).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Where a device sends message-signalled interrupts (MSI-X): the message's address
/// and data, as the guest programmed them. Callable from any thread.
pub trait MsiSink: Send + Sync {
    /// Sends one message; false if nothing took it.
    fn send(&self, address: u64, data: u32) -> bool;
    /// How messages were delivered, for `--stats`.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// An interrupt line from a device to the interrupt controller. A model drives its
/// output level: for a level-triggered line (PCI INTx) the line stays asserted while
/// the condition holds; for an edge-triggered ISA line a low-to-high change is the
/// interrupt. Callable from any thread.
pub trait IrqLine: Send + Sync {
    /// Sets the line's level (`true`: asserted).
    fn set_level(&self, asserted: bool);
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the vCPU loop must do after a device handled a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Continue,
    /// End the run: the guest exited with this status.
    Exit(u8),
    /// End the run: the guest reset the machine (8042 reset line), which ends it like
    /// QEMU's `-no-reboot`.
    Reset,
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
    /// The bus no longer exists (its machine is being dropped).
    #[error("the bus is gone (its machine is being dropped)")]
    Gone,
}

struct Entry {
    len: u64,
    /// Whose range this is, for per-device exit counts.
    name: Option<Arc<str>>,
    device: SharedDevice,
}

/// Maps disjoint address ranges to devices.
///
/// The bus is internally synchronized, so it can be shared (`Arc<Bus>`) between the vCPU
/// loop and a device that moves ranges while it handles an access (the PCI host moves
/// BARs during a configuration write that itself arrives through the port bus). The
/// map's lock is a leaf: [`Bus::read`] and [`Bus::write`] look the device up, clone its
/// handle and release the lock before they lock the device, so a device may call
/// [`Bus::insert`] or [`Bus::remove`] from inside an access without deadlock, and no
/// device lock is ever taken while the map is locked.
#[derive(Default)]
pub struct Bus {
    entries: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        // A panic while the map was locked left it consistent (every change is one
        // BTreeMap call), so a poisoned lock is still usable.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        self.insert_entry(base, len, None, device)
    }

    /// Puts `device` at `[base, base + len)` under `name`: exits that hit the range are
    /// counted for that device ([`Bus::name_at`]).
    pub fn insert_named(
        &self,
        base: u64,
        len: u64,
        name: impl Into<Arc<str>>,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        self.insert_entry(base, len, Some(name.into()), device)
    }

    fn insert_entry(
        &self,
        base: u64,
        len: u64,
        name: Option<Arc<str>>,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let mut map = self.map_mut();
        check_free(&map, base, len)?;
        map.insert(base, Entry { len, name, device });
        Ok(())
    }

    /// Whether `[base, base + len)` is a valid range that no device occupies.
    pub fn check_free(&self, base: u64, len: u64) -> Result<(), BusError> {
        check_free(&self.map(), base, len)
    }

    /// Takes the device at exactly `base` off the bus and returns it.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        self.map_mut().remove(&base).map(|e| e.device)
    }

    /// The ranges on the bus as `(base, len, name)`, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64, Option<Arc<str>>)> {
        self.map()
            .iter()
            .map(|(&base, e)| (base, e.len, e.name.clone()))
            .collect()
    }

    /// The name the device at `addr` was inserted under, if any.
    pub fn name_at(&self, addr: u64) -> Option<Arc<str>> {
        let map = self.map();
        find(&map, addr).and_then(|(_, e)| e.name.clone())
    }

    /// The device claiming `addr` and the base it sits at; the map is unlocked again
    /// when this returns.
    fn find(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let map = self.map();
        find(&map, addr).map(|(base, e)| (base, e.device.clone()))
    }

    /// Reads at `addr`. Returns false, with `data` set to all-ones as on a real bus with
    /// nothing answering, if no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, device)) => {
                lock(&device).read(addr - base, data);
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
        let (base, device) = self.find(addr)?;
        let action = lock(&device).write(addr - base, data);
        Some(action)
    }
}

fn check_free(map: &BTreeMap<u64, Entry>, base: u64, len: u64) -> Result<(), BusError> {
    let end = base
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or(BusError::BadRange { base, len })?;
    if let Some((&other, _)) = map
        .range(..end)
        .next_back()
        .filter(|(b, e)| **b + e.len > base)
    {
        return Err(BusError::Overlap { base, len, other });
    }
    Ok(())
}

fn find(map: &BTreeMap<u64, Entry>, addr: u64) -> Option<(u64, &Entry)> {
    let (&base, entry) = map.range(..=addr).next_back()?;
    (addr - base < entry.len).then_some((base, entry))
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
        let bus = Bus::new();
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
        let bus = Bus::new();
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
        let bus = Bus::new();
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

    #[test]
    fn remove_frees_the_range_and_names_follow_entries() {
        let bus = Bus::new();
        let a: SharedDevice = Arc::new(Mutex::new(Probe::default()));
        bus.insert_named(0x100, 0x10, "nic", a.clone())
            .expect("insert");
        assert_eq!(bus.name_at(0x10f).as_deref(), Some("nic"));
        assert_eq!(bus.name_at(0x110), None);
        assert!(bus.remove(0x104).is_none(), "only an exact base removes");
        let got = bus.remove(0x100).expect("removed");
        assert!(Arc::ptr_eq(&got, &a));
        let mut d = [0u8; 1];
        assert!(!bus.read(0x100, &mut d));
        assert!(bus.check_free(0x100, 0x10).is_ok());
        bus.insert(0x108, 0x10, a).expect("reinsert elsewhere");
        assert!(bus.read(0x117, &mut d));
        assert_eq!(bus.ranges().len(), 1);
    }

    /// Moves itself on the bus while it handles a write: must neither deadlock nor
    /// find the bus borrowed.
    struct Mover {
        bus: Arc<Bus>,
        at: u64,
    }

    impl BusDevice for Mover {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> Action {
            let to = u64::from(data[0]) << 8;
            let me = self.bus.remove(self.at).expect("on the bus");
            self.bus.insert(to, 4, me).expect("free");
            self.at = to;
            Action::Continue
        }
    }

    #[test]
    fn a_device_may_move_itself_during_an_access() {
        let bus = Arc::new(Bus::new());
        let mover: SharedDevice = Arc::new(Mutex::new(Mover {
            bus: bus.clone(),
            at: 0x100,
        }));
        bus.insert(0x100, 4, mover).expect("insert");
        assert_eq!(bus.write(0x100, &[0x02]), Some(Action::Continue));
        let mut d = [0u8; 1];
        assert!(!bus.read(0x100, &mut d));
        assert!(bus.read(0x203, &mut d));
        assert_eq!(d, [0x42]);
    }
}
